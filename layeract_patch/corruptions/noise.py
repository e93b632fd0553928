"""Noise corruptions: pixel-wise random perturbations, x is float (N, 3, H, W) in [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor

# CIFAR-C severity parameters (Hendrycks & Dietterich, make_cifar_c.py), severity 1..5
GAUSSIAN_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_PHOTONS = (500, 250, 100, 75, 50)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_STD = (0.06, 0.1, 0.12, 0.16, 0.2)


def gaussian_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    return x + torch.randn(x.shape, generator=gen, device=x.device) * GAUSSIAN_STD[severity - 1]


def shot_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Photon counting: Poisson(x * c) / c, so a brighter pixel gets more absolute noise."""
    c = SHOT_PHOTONS[severity - 1]
    return torch.poisson(x * c, generator=gen) / c


def impulse_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Salt and pepper as skimage's random_noise(mode='s&p'): each value (each channel on its own) is
    hit with probability `amount`, and a hit value becomes 1 or 0 with equal odds."""
    hit = torch.rand(x.shape, generator=gen, device=x.device) < IMPULSE_AMOUNT[severity - 1]
    salt = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def speckle_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Multiplicative Gaussian noise: x + x * N(0, c^2)."""
    return x + x * torch.randn(x.shape, generator=gen, device=x.device) * SPECKLE_STD[severity - 1]
