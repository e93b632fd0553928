"""Digital corruptions, x is float (N, 3, H, W) in [0, 1]."""
from __future__ import annotations

import io
from functools import lru_cache

import torch
from torch import Tensor

from . import _ops

# CIFAR-C severity parameters (Hendrycks & Dietterich, make_cifar_c.py), severity 1..5
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
# elastic: (displacement alpha, displacement smoothing sigma, affine jitter), fractions of the image
# side (the generator writes them as IMSIZE * fraction with IMSIZE = 32)
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # HSV S -> S * a + b


def contrast(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * CONTRAST[severity - 1] + mean


def elastic_transform(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A random affine (three anchor points around the centre jittered by up to `affine` pixels, the
    OpenCV warpAffine with REFLECT_101 borders), then a smooth random displacement field (uniform noise
    blurred by a Gaussian of `sigma`, truncate 3, scaled by `alpha`) read with linear interpolation
    and scipy's 'reflect' borders."""
    n, _, h, w = x.shape
    side = min(h, w)
    alpha, sigma, jitter = (f * side for f in ELASTIC[severity - 1])
    dev = x.device
    cx, cy, half = float(w // 2), float(h // 2), float(side // 3)
    src = torch.tensor([[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]], device=dev)
    dst = src + _ops.uniform((n, 3, 2), -jitter, jitter, gen, dev)
    # the affine maps src -> dst; warpAffine reads each output pixel at the inverse image of it
    ones = torch.ones(3, 1, device=dev)
    forward = torch.linalg.solve(torch.cat([src, ones], 1).double(), dst.double())  # (n, 3, 2): [A^T; b]
    a_inv = torch.linalg.inv(forward[:, :2].transpose(1, 2))
    b = forward[:, 2]
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64),
                            torch.arange(w, device=dev, dtype=torch.float64), indexing="ij")
    out_xy = torch.stack([xs, ys], -1).view(1, h * w, 2) - b.view(n, 1, 2)
    src_xy = (out_xy @ a_inv.transpose(1, 2)).float().view(n, h, w, 2)
    x = _ops.bilinear_sample(x, src_xy[..., 1], src_xy[..., 0], "reflect101")

    def field():
        noise = _ops.uniform((n, 1, h, w), -1.0, 1.0, gen, dev)
        return (_ops.gaussian_filter(noise, sigma, mode="reflect", truncate=3) * alpha)[:, 0]

    dx, dy = field(), field()
    return _ops.bilinear_sample(x, ys.float() + dy, xs.float() + dx, "reflect")


@lru_cache(maxsize=None)
def _pil_box_weights(in_n: int, out_n: int):
    """Pillow's BOX resampling along one axis as fixed-point weights (out_n, in_n): each output pixel
    averages the input pixels whose centres fall in its footprint (for enlarging: the nearest one),
    weights rounded to 22 fractional bits as Pillow's 8-bit path does."""
    scale = in_n / out_n
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros(out_n, in_n, dtype=torch.float64)
    for o in range(out_n):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_n)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / filterscale
            weights[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        weights[o] /= weights[o].sum()
    return (weights * (1 << 22) + 0.5).floor()


def _pil_resize_box(levels: Tensor, out_h: int, out_w: int) -> Tensor:
    """Pillow's resize(BOX) of 0..255 levels: horizontal pass, round to 8 bits, vertical pass, round."""
    def one_pass(v: Tensor, weights: Tensor) -> Tensor:
        acc = v.double() @ weights.to(v.device).T + (1 << 21)
        return torch.floor(acc / (1 << 22)).clamp(0, 255).float()

    h, w = levels.shape[-2:]
    if out_w != w:
        levels = one_pass(levels, _pil_box_weights(w, out_w))
    if out_h != h:
        levels = one_pass(levels.transpose(-1, -2), _pil_box_weights(h, out_h)).transpose(-1, -2)
    return levels


def pixelate(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Shrink to int(side * c) with Pillow's BOX filter and enlarge back with it (exact Pillow numbers,
    checked against Pillow in the tests), batched on the device."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    small = _pil_resize_box(_ops.to_levels(x), int(h * c), int(w * c))
    return _pil_resize_box(small, h, w) / 255


def jpeg_compression(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A Pillow JPEG round trip at the CIFAR quality. JPEG needs an encoder, so this one goes through the
    CPU image by image; everything else stays on the device."""
    import numpy as np
    from PIL import Image

    levels = _ops.to_levels(x).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in levels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY[severity - 1])
        out.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.device).float() / 255


def saturate(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """skimage's HSV round trip with S -> clip(S * a + b, 0, 1), in closed form. With V = max, D = max -
    min and S = D / V, each channel is V - V * S * (V - channel) / D, so the new channel is
    V - S' * V * (V - channel) / D. A gray pixel (D = 0) has hue 0 in skimage, so it comes back as
    (V, V(1 - S'), V(1 - S')): reddish when b > 0, as in CIFAR-C."""
    a, b = SATURATE[severity - 1]
    v = x.amax(dim=1, keepdim=True)
    d = v - x.amin(dim=1, keepdim=True)
    s = torch.where(d > 0, d / v.clamp_min(1e-12), torch.zeros_like(d))
    s_new = (s * a + b).clamp(0, 1)
    colour = v - s_new * v * (v - x) / d.clamp_min(1e-12)
    red_hue = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(d > 0, colour, red_hue)
