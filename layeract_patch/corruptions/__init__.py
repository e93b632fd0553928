"""CIFAR-C style corruptions (Hendrycks & Dietterich, ICLR 2019) generated in torch on the images' device.

    corrupt(images, "fog", severity=3, seed=0)   # uint8 (N, 3, H, W) -> uint8, same shape and device

The 15 standard corruptions and the 4 extra ones of CIFAR-10-C / CIFAR-100-C, with the severity
parameters of the authors' CIFAR generator (`make_cifar_c.py` in hendrycks/robustness; the ImageNet
generator uses other, stronger ones). Every step works on the whole batch; the random draws come from a
`torch.Generator` on the device seeded with `seed`, so a (seed, batch) gives the same images every time
on a device (CPU and GPU random streams differ). Results are truncated to uint8 like the generator's
np.uint8. The parameters are in pixels of 32 x 32 images (elastic's are fractions of the side); other
sizes (at least 16 x 16) run with the same pixel parameters.

`GROUPS` follows the LayerAct paper (AAAI 2025, appendix tables): Noise, Blur, Digital and Weather hold
the 15 standard corruptions as Hendrycks & Dietterich group them, Extra the 4 extra ones, Total all 19
(the tables' Total is the 19-corruption mean: e.g. ResNet20/ReLU, 3 * 53.27 + 4 * (62.12 + 70.93 + 75.91
+ 71.38) = 19 * 67.43).

Where the generator needs what we cannot ship, the torch version differs as follows:
- frost: the generator overlays crops of five frost photographs. We draw one of five per-channel
  (mean, std) pairs measured on those photographs at CIFAR scale and scale a synthetic ridged
  multi-octave noise texture to it (same brightness and contrast, not the same crystal shapes).
- motion_blur and snow's flake streaks: ImageMagick's MotionBlurImage is rebuilt exactly as its
  documented kernel (one-sided Gaussian line of 2*ceil(radius)+1 taps, edge pixels past the border),
  rounded to 8 bits as the PNG round trip does; ImageMagick's own rounding inside may differ by a level.
- spatter (water, severities 1-3): OpenCV's Canny, DIST_L2 distance transform, equalizeHist and
  filters are rebuilt in torch; the distance transform is the exact Euclidean one (OpenCV's 5x5 mask is
  a close approximation). Liquid levels above 1 are clamped where numpy's uint8 cast would wrap around.
- elastic_transform: OpenCV's warpAffine interpolates with 5-bit fixed-point weights, ours are exact.
- glass_blur: not a difference but a quirk kept on purpose: the generator's "swap" of two numpy pixel
  views copies the neighbour onto the pixel (the neighbour keeps its value), and CIFAR-C was made so.
  The walk is sequential, so it runs one batched step per pixel position (about 1,800 at severity 4-5).
- jpeg_compression: a Pillow JPEG round trip, as in the generator, so it runs on the CPU image by
  image and the result is moved back to the device.
- brightness, saturate: skimage's HSV round trip in closed form (the same numbers up to float error).
Checked against the generator's own functions (skimage, OpenCV, scipy, Pillow) on 200 CIFAR-10 test
images: pixelate and jpeg_compression are identical; the other deterministic ones agree to one level
(float rounding before the uint8 truncation); the random ones' mean change agrees within ~2% (frost,
our synthetic texture: within 6%).
Users with the official files use `load_cifar_c` (the recipes' --corruptions-dir) instead.
"""
from __future__ import annotations

import numbers
from typing import Callable, Dict

import torch
from torch import Tensor

from . import blur, digital, noise, spatter as _spatter, weather
from ._ops import to_levels
from .files import load_cifar_c
from .names import CORRUPTIONS, EXTRA, GROUPS, SEVERITIES, STANDARD, check_name_and_severity

__all__ = ["CORRUPTIONS", "STANDARD", "EXTRA", "GROUPS", "SEVERITIES", "corrupt", "load_cifar_c",
           "check_name_and_severity", "check_seed"]

MIN_SIDE = 16

_FUNCTIONS: Dict[str, Callable] = {
    "gaussian_noise": noise.gaussian_noise, "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise, "speckle_noise": noise.speckle_noise,
    "defocus_blur": blur.defocus_blur, "glass_blur": blur.glass_blur, "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur, "gaussian_blur": blur.gaussian_blur,
    "snow": weather.snow, "frost": weather.frost, "fog": weather.fog, "brightness": weather.brightness,
    "spatter": _spatter.spatter,
    "contrast": digital.contrast, "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate, "jpeg_compression": digital.jpeg_compression,
    "saturate": digital.saturate,
}
assert set(_FUNCTIONS) == set(CORRUPTIONS)


def check_seed(seed) -> int:
    """The seed as torch.Generator takes it: an int from 0 to 2**64 - 1 (a float would be silently truncated)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an int from 0 to 2**64 - 1, got {seed!r}")
    return int(seed)


def check_images(images) -> None:
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {images.dtype}; convert with "
                         f"(x * 255).round().to(torch.uint8) from [0, 1] floats")
    if images.dim() != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"images must be (N, 3, H, W) RGB with H, W >= {MIN_SIDE}, got shape "
                         f"{tuple(images.shape)}; add a batch dimension with images[None] if needed")


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """`images` (uint8, (N, 3, H, W)) with corruption `name` (one of CORRUPTIONS) at `severity` (1..5):
    uint8 of the same shape on the same device, the same for the same seed."""
    check_name_and_severity(name, severity)
    check_images(images)
    seed = check_seed(seed)
    if images.shape[0] == 0:
        return images.clone()
    gen = torch.Generator(device=images.device)
    gen.manual_seed(seed)
    out = _FUNCTIONS[name](images.float() / 255, severity, gen)
    return to_levels(out.clamp(0, 1)).to(torch.uint8)
