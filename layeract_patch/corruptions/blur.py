"""Blur corruptions, x is float (N, 3, H, W) in [0, 1]."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _ops

# CIFAR-C severity parameters (Hendrycks & Dietterich, make_cifar_c.py), severity 1..5
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # (disk radius, anti-alias sigma)
GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # (sigma, max shift, passes)
MOTION = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # ImageMagick (radius, sigma)
MOTION_ANGLE = (-45.0, 45.0)
ZOOM_STOP = (1.06, 1.11, 1.16, 1.21, 1.26)  # zoom factors 1, 1.01, ... below this (numpy arange)
GAUSSIAN_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)


def disk_kernel(radius: float, alias_blur: float, device) -> Tensor:
    """The generator's defocus kernel: a 17x17 aliased disk (for radius <= 8, all CIFAR uses), normalised,
    softened by OpenCV's 3x3 Gaussian of sigma `alias_blur` (REFLECT_101 borders)."""
    t = torch.arange(-8, 9, device=device, dtype=torch.float32)
    disk = ((t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) <= radius ** 2).float()
    disk = (disk / disk.sum()).view(1, 1, 17, 17)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], device=device) / (2 * alias_blur ** 2))
    g = g / g.sum()
    return _ops.correlate2d(disk, g.view(3, 1) * g.view(1, 3), "reflect101").view(17, 17)


def defocus_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    radius, alias = DEFOCUS[severity - 1]
    return _ops.correlate2d(x, disk_kernel(radius, alias, x.device), "reflect101")


def glass_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Blur, quantise to uint8, then walk the pixels from the bottom-right corner up and to the left,
    `passes` times, and blur again. At each position the generator means to swap the pixel with a random
    neighbour (offset in [-d, d), numpy randint's half-open range), but its numpy tuple swap of two views
    only copies the neighbour onto the pixel; CIFAR-C is made that way, so we copy too. The walk is
    sequential within an image (a copied pixel can be copied on), so it loops over positions, each one
    batched across all images."""
    sigma, d, passes = GLASS[severity - 1]
    n, _, h, w = x.shape
    x = _ops.to_levels(_ops.gaussian_filter(x, sigma))
    rows, cols = range(h - d, d, -1), range(w - d, d, -1)
    shifts = torch.randint(-d, d, (passes, len(rows), len(cols), 2, n), generator=gen, device=x.device)
    batch = torch.arange(n, device=x.device)
    for p in range(passes):
        for a, r in enumerate(rows):
            for b, c in enumerate(cols):
                x[:, :, r, c] = x[batch, :, r + shifts[p, a, b, 0], c + shifts[p, a, b, 1]]
    return _ops.gaussian_filter(x / 255, sigma)


def motion_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A one-sided line blur at an angle uniform in [-45, 45] degrees per image, as ImageMagick's
    motion blur; rounded to 8 bits as the generator's PNG round trip through ImageMagick does."""
    radius, sigma = MOTION[severity - 1]
    angles = _ops.uniform((x.shape[0],), *MOTION_ANGLE, gen, x.device)
    return (_ops.motion_blur(x * 255, radius, sigma, angles).round()) / 255


def zoom_factors(severity: int):
    """numpy.arange(1, stop, 0.01) value for value: numpy steps by (1 + 0.01) - 1, which is not 0.01 in
    binary, and the difference decides scipy's rounding of the zoomed size (26 * 1.25 -> 33, not 32)."""
    stop = ZOOM_STOP[severity - 1]
    step = (1 + 0.01) - 1
    return [1 + step * i for i in range(math.ceil((stop - 1) / 0.01))]


def zoom_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """The mean of the image and its centre zoomed by each factor (a radial streak)."""
    factors = zoom_factors(severity)
    out = x.clone()
    for z in factors:
        out += _ops.clipped_zoom(x, z)
    return out / (len(factors) + 1)


def gaussian_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    return _ops.gaussian_filter(x, GAUSSIAN_SIGMA[severity - 1])
