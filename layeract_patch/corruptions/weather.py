"""Weather corruptions (and brightness, which CIFAR-C files under weather), x is float (N, 3, H, W)
in [0, 1]. Spatter, the fifth weather-like one, has its own module."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _ops

# CIFAR-C severity parameters (Hendrycks & Dietterich, make_cifar_c.py), severity 1..5
# snow: (flake mean, flake std, zoom, threshold, motion radius, motion sigma, image weight)
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
SNOW_ANGLE = (-135.0, -45.0)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image weight, frost weight)
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # (fog strength, fractal wibble decay)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value

# The generator overlays a random 32x32 crop of one of five frost photographs (frost1-5; the two
# PNGs frost2/frost3 are the same picture) shrunk to 20%. We cannot ship them, so each image draws one
# of five (mean, std) per RGB channel, measured on those shrunk photographs, and a synthetic ice texture
# is scaled to them.
FROST_STATS = (((77.5, 149.0, 165.7), (26.8, 16.4, 15.3)),
               ((200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
               ((200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
               ((138.0, 153.2, 165.6), (29.0, 29.0, 30.2)),
               ((112.3, 123.3, 134.7), (44.3, 43.2, 41.6)))


def snow(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Gaussian flakes, zoomed and thresholded, quantised to 8 bits, streaked by a motion blur at an angle
    in [-135, -45] degrees (falling), added twice (once turned 180 degrees) to the image brightened
    towards 1.5 * gray + 0.5."""
    loc, scale, zoom, threshold, radius, sigma, keep = SNOW[severity - 1]
    n, _, h, w = x.shape
    flakes = torch.randn((n, 1, h, w), generator=gen, device=x.device) * scale + loc
    flakes = _ops.clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    levels = (flakes.clamp(0, 1) * 255).floor()  # astype(uint8) of the PNG the generator writes
    angles = _ops.uniform((n,), *SNOW_ANGLE, gen, x.device)
    flakes = _ops.motion_blur(levels, radius, sigma, angles).round() / 255
    x = keep * x + (1 - keep) * torch.maximum(x, _ops.rgb_to_gray(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-2, -1)


def frost_texture(n: int, h: int, w: int, gen: torch.Generator, device) -> Tensor:
    """Ice-like texture (n, 1, h, w) with zero mean and unit std per image: ridged noise (1 - |noise|:
    thin bright crests, like crystal edges) summed over four octaves, each half the amplitude and twice
    the frequency of the previous, so it has the photographs' mix of large patches and fine needles."""
    texture = torch.zeros(n, 1, h, w, device=device)
    for octave in range(4):
        cells = 2 ** (octave + 2)
        noise = torch.randn((n, 1, cells, cells), generator=gen, device=device)
        noise = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
        texture += 0.5 ** octave * (1 - noise.abs())
    texture = texture - texture.mean(dim=(2, 3), keepdim=True)
    return texture / texture.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def frost(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """c_image * image + c_frost * frost layer (0..255 units, as the generator mixes them)."""
    keep, amount = FROST[severity - 1]
    n, _, h, w = x.shape
    pick = torch.randint(0, len(FROST_STATS), (n,), generator=gen, device=x.device)
    stats = torch.tensor(FROST_STATS, device=x.device)  # (5, 2, 3)
    mean, std = stats[pick, 0].view(n, 3, 1, 1), stats[pick, 1].view(n, 3, 1, 1)
    layer = (mean + std * frost_texture(n, h, w, gen, x.device)).clamp(0, 255)
    return (keep * x * 255 + amount * layer) / 255


def fog(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Add a diamond-square fractal (its top-left H x W of a power-of-two map, 32 for CIFAR), then
    rescale so the image's old maximum stays where it was: x * max / (max + strength)."""
    strength, decay = FOG[severity - 1]
    n, _, h, w = x.shape
    mapsize = 1 << (max(h, w) - 1).bit_length()
    layer = _ops.plasma_fractal(n, mapsize, decay, gen, x.device)[:, :h, :w].unsqueeze(1)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * layer) * peak / (peak + strength)


def brightness(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """skimage's HSV round trip with V += c (clipped to 1), in closed form: hue and saturation are kept,
    and every channel of an HSV colour is V times a function of (H, S), so the pixel scales by
    V'/V; a black pixel (V = 0, S = 0) becomes the gray V' = c."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + BRIGHTNESS[severity - 1]).clamp(max=1)
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new)
