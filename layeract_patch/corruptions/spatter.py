"""Spatter: water drops (severities 1-3) or mud (4-5) on the lens, x is float (N, 3, H, W) in [0, 1].

The water branch of the generator runs OpenCV's Canny, distance transform and histogram equalisation
to shade the drops' rims; they are rebuilt here on batches (Canny: 3x3 Sobel with replicated borders,
L1 magnitude, OpenCV's non-maximum suppression and 8-connected hysteresis; the distance transform is
the exact Euclidean one, where OpenCV's DIST_L2 with a 5x5 mask is a chamfer approximation within a
few percent, and it is truncated at 20 anyway)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops

# CIFAR-C severity parameters (Hendrycks & Dietterich, make_cifar_c.py), severity 1..5:
# (liquid mean, liquid std, liquid blur sigma, threshold, rim strength or mud blur sigma, mud?)
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1))
WATER_RGB = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD_RGB = (63 / 255, 42 / 255, 20 / 255)
CANNY_LOW, CANNY_HIGH = 50, 150
RIM_KERNEL = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))  # an emboss: light from one side
DIST_CAP = 20.0


def canny(img: Tensor) -> Tensor:
    """OpenCV Canny(img, 50, 150) on 0..255 levels (N, 1, H, W) -> bool edge map."""
    sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=img.device)
    gx = _ops.correlate2d(img, sobel_x, "nearest")
    gy = _ops.correlate2d(img, sobel_x.T, "nearest")
    mag = gx.abs() + gy.abs()
    pad = F.pad(mag, (1, 1, 1, 1))  # OpenCV compares against zero magnitude outside the image

    def at(dr, dc):
        h, w = mag.shape[-2:]
        return pad[..., 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    # direction sectors with OpenCV's fixed-point tan(22.5 deg) = 13573 / 2^15 (exact in float64)
    ax, ay = gx.abs().double(), gy.abs().double() * 32768
    tg22 = ax * 13573
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg22 + ax * 65536)
    s = torch.where((gx < 0) != (gy < 0), -1, 1)
    peak_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    peak_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    diag_pos = (mag > at(-1, -1)) & (mag > at(1, 1))  # s = +1: previous row left, next row right
    diag_neg = (mag > at(-1, 1)) & (mag > at(1, -1))
    peak = torch.where(horizontal, peak_h, torch.where(vertical, peak_v, torch.where(s > 0, diag_pos, diag_neg)))
    weak = peak & (mag > CANNY_LOW)
    edges = weak & (mag > CANNY_HIGH)
    while True:  # hysteresis: grow strong edges through 8-connected weak ones
        grown = weak & (F.max_pool2d(edges.float(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def distance_to(mask: Tensor) -> Tensor:
    """Euclidean distance (N, 1, H, W) from each pixel to the nearest True pixel of `mask` (inf when
    there is none), as two exact 1-D minimisations (squared distance separates over rows and columns)."""
    n, _, h, w = mask.shape
    inf = torch.tensor(float("inf"), device=mask.device)
    r = torch.arange(h, device=mask.device, dtype=torch.float32)
    c = torch.arange(w, device=mask.device, dtype=torch.float32)
    # column pass: g[n, y, x] = min over y' on an edge in column x of (y - y')^2
    d_rows = (r.view(h, 1) - r.view(1, h)) ** 2  # (y, y')
    g = torch.where(mask[:, 0].unsqueeze(1), d_rows.view(1, h, h, 1), inf).amin(dim=2)  # (n, y, x)
    d_cols = (c.view(w, 1) - c.view(1, w)) ** 2  # (x, x')
    return (g.unsqueeze(2) + d_cols.view(1, 1, w, w)).amin(dim=3).sqrt().unsqueeze(1)


def equalize_hist(levels: Tensor) -> Tensor:
    """OpenCV equalizeHist per image on integer levels (N, 1, H, W): the lowest present level maps to 0,
    level v to round(255 * (cdf(v) - count(lowest)) / (pixels - count(lowest)))."""
    n = levels.shape[0]
    flat = levels.reshape(n, -1).long()
    hist = torch.zeros(n, 256, device=levels.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    first = (hist > 0).float().argmax(dim=1, keepdim=True)
    lowest = hist.gather(1, first)
    total = float(flat.shape[1])
    scale = 255.0 / (total - lowest).clamp_min(1)
    lut = ((hist.cumsum(1) - lowest) * scale).round().clamp(0, 255)
    lut = torch.where(lowest == total, first.float().expand(-1, 256), lut)  # one level only: unchanged
    return lut.gather(1, flat).reshape(levels.shape)


def water(x: Tensor, liquid: Tensor, strength: float) -> Tensor:
    levels = (liquid.clamp(0, 1) * 255).floor()  # astype(uint8); clamped where numpy would wrap around
    dist = distance_to(canny(levels)).clamp(max=DIST_CAP)
    dist = (_ops.box_blur3(dist) + _ops.LEVEL_LIFT).floor()
    dist = equalize_hist(dist)
    dist = _ops.correlate2d(dist, torch.tensor(RIM_KERNEL, device=x.device), "reflect101").clamp(0, 255)
    dist = _ops.box_blur3(dist)
    m = levels * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    m = torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * strength
    return x + m * torch.tensor(WATER_RGB, device=x.device).view(1, 3, 1, 1)


def mud(x: Tensor, liquid: Tensor, threshold: float, sigma: float) -> Tensor:
    m = _ops.gaussian_filter((liquid > threshold).float(), sigma)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    return x * (1 - m) + torch.tensor(MUD_RGB, device=x.device).view(1, 3, 1, 1) * m


def spatter(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    loc, scale, sigma, threshold, strength, is_mud = SPATTER[severity - 1]
    n, _, h, w = x.shape
    liquid = torch.randn((n, 1, h, w), generator=gen, device=x.device) * scale + loc
    liquid = _ops.gaussian_filter(liquid, sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    return mud(x, liquid, threshold, strength) if is_mud else water(x, liquid, strength)
