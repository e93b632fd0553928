"""Image operations the corruptions share, on float (N, C, H, W) batches, each named after the library
behaviour it reproduces (scipy/skimage, OpenCV, ImageMagick), because the CIFAR-C generator's numbers
only mean what they meant there if borders, kernel radii and rounding match."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Quantising to uint8 truncates like numpy's astype(uint8); the small lift keeps a float32 value that is
# an exact level in exact arithmetic (v / 255 * 255) from dropping one level to rounding error.
LEVEL_LIFT = 1e-3

# RGB -> gray weights of OpenCV's COLOR_RGB2GRAY (ITU-R BT.601), used by snow
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def to_levels(x: Tensor) -> Tensor:
    """[0, 1] floats -> the 0..255 integer levels numpy's uint8 conversion would give (still float)."""
    return (x * 255 + LEVEL_LIFT).floor().clamp(0, 255)


def fold_index(idx: Tensor, n: int, mode: str) -> Tensor:
    """Map out-of-range positions back into [0, n) the way a library extends an image past its border.

    nearest     a a | a b c d | d d       scipy/skimage 'nearest', OpenCV BORDER_REPLICATE, ImageMagick edge
    reflect     b a | a b c d | d c       scipy/skimage 'reflect' (the edge pixel repeats)
    reflect101  c b | a b c d | c b       OpenCV's default BORDER_REFLECT_101 (torch's 'reflect')
    """
    if mode == "nearest":
        return idx.clamp(0, n - 1)
    if mode == "reflect":
        idx = idx.remainder(2 * n)
        return torch.where(idx >= n, 2 * n - 1 - idx, idx)
    if mode == "reflect101":
        period = 2 * n - 2
        idx = idx.remainder(period)
        return torch.where(idx >= n, period - idx, idx)
    raise ValueError(f"unknown border mode {mode!r}")


def pad2d(x: Tensor, radius: int, mode: str) -> Tensor:
    """Pad the last two dims by `radius` with a library's border rule (any radius, unlike F.pad)."""
    h, w = x.shape[-2:]
    rows = fold_index(torch.arange(-radius, h + radius, device=x.device), h, mode)
    cols = fold_index(torch.arange(-radius, w + radius, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def correlate_axis(x: Tensor, kernel: Tensor, dim: int, mode: str) -> Tensor:
    """1-D correlation with an odd kernel along `dim` (-1 or -2), borders extended by `mode`."""
    radius = (kernel.numel() - 1) // 2
    n = x.shape[dim]
    idx = fold_index(torch.arange(-radius, n + radius, device=x.device), n, mode)
    windows = x.index_select(dim, idx).unfold(dim, kernel.numel(), 1)  # window lands in the last dim
    return windows @ kernel.to(x.dtype)


def correlate2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """2-D correlation (OpenCV filter2D's convention: no kernel flip) of every channel with one kernel."""
    c = x.shape[1]
    radius = (kernel.shape[-1] - 1) // 2
    weight = kernel.to(x.dtype).expand(c, 1, *kernel.shape[-2:])
    return F.conv2d(pad2d(x, radius, mode), weight, groups=c)


def gaussian_kernel1d(sigma: float, truncate: float, device) -> Tensor:
    """scipy.ndimage's Gaussian: radius int(truncate * sigma + 0.5), weights normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_filter(x: Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """skimage.filters.gaussian over H and W only (its defaults: mode 'nearest', truncate 4)."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, truncate, x.device)
    return correlate_axis(correlate_axis(x, k, -2, mode), k, -1, mode)


def box_blur3(x: Tensor) -> Tensor:
    """OpenCV blur(x, (3, 3)): the normalised 3x3 box with BORDER_REFLECT_101."""
    k = torch.full((3,), 1.0 / 3.0, device=x.device)
    return correlate_axis(correlate_axis(x, k, -2, "reflect101"), k, -1, "reflect101")


def bilinear_sample(x: Tensor, rows: Tensor, cols: Tensor, mode: str) -> Tensor:
    """x (N, C, H, W) read at float positions rows, cols (N, H', W'), linear interpolation, borders by
    `mode` (scipy map_coordinates(order=1) with mode 'reflect'; OpenCV warpAffine with REFLECT_101)."""
    n, c, h, w = x.shape
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)
    r0, c0 = r0.long(), c0.long()
    r = (fold_index(r0, h, mode), fold_index(r0 + 1, h, mode))
    q = (fold_index(c0, w, mode), fold_index(c0 + 1, w, mode))
    flat = x.reshape(n, c, h * w)

    def at(ri, ci):
        index = (ri * w + ci).reshape(n, 1, -1).expand(n, c, -1)
        return flat.gather(2, index).reshape(n, c, *rows.shape[1:])

    top = at(r[0], q[0]) * (1 - fc) + at(r[0], q[1]) * fc
    bottom = at(r[1], q[0]) * (1 - fc) + at(r[1], q[1]) * fc
    return top * (1 - fr) + bottom * fr


def shift_gather(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """out[n, :, i, j] = x[n, :, i + dy[n], j + dx[n]], positions clamped to the image (edge pixels)."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy.view(n, 1, 1)).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx.view(n, 1, 1)).clamp(0, w - 1)
    index = (rows * w + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def motion_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """ImageMagick's MotionBlurImage(radius, sigma, angle), one angle per image.

    ImageMagick blurs along a one-sided line: 2*ceil(radius)+1 taps at distance i = 0, 1, ... from the
    pixel, weighted exp(-i^2 / (2 sigma^2)) (normalised), tap i read at offset
    (ceil(i*sin(angle) - 0.5), ceil(i*cos(angle) - 0.5)) in (row, col), edge pixels beyond the border."""
    width = 2 * math.ceil(radius) + 1
    taps = torch.arange(width, device=x.device, dtype=torch.float64)
    weights = torch.exp(-taps ** 2 / (2.0 * sigma * sigma))
    weights = (weights / weights.sum()).tolist()
    angle = torch.deg2rad(angles_deg.double())
    out = torch.zeros_like(x)
    for i, weight in enumerate(weights):
        dy = torch.ceil(i * torch.sin(angle) - 0.5).long()
        dx = torch.ceil(i * torch.cos(angle) - 0.5).long()
        out += weight * shift_gather(x, dy, dx)
    return out


def zoom_matrix(n: int, zoom: float, device) -> Tensor:
    """One axis of the generator's clipped zoom as an (n, n) matrix: crop the centre ceil(n / zoom)
    pixels, enlarge them with scipy.ndimage.zoom(order=1) (output round(crop * zoom) pixels, end points
    aligned), and keep the centre n. Applied as M @ image @ M.T, so every image zooms in one matmul."""
    crop = math.ceil(n / zoom)
    top = (n - crop) // 2
    out_n = int(round(crop * zoom))
    trim = (out_n - n) // 2
    k = torch.arange(n, device=device, dtype=torch.float64)
    src = top + (k + trim) * ((crop - 1) / (out_n - 1) if out_n > 1 else 0.0)
    i0 = src.floor().clamp(max=n - 1)
    frac = src - i0
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=n - 1)
    m = torch.zeros(n, n, device=device, dtype=torch.float64)
    rows = torch.arange(n, device=device)
    m.index_put_((rows, i0), 1 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.float()


def clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """Zoom the centre of every image by `zoom` about its middle, keeping the size."""
    mh = zoom_matrix(x.shape[-2], zoom, x.device)
    mw = zoom_matrix(x.shape[-1], zoom, x.device)
    return mh @ x @ mw.T


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, gen: torch.Generator, device) -> Tensor:
    """Diamond-square height maps (n, mapsize, mapsize) in [0, 1], the generator's fog texture.

    Start from zeros; at each scale set the square centres, then the edge midpoints, to the mean of
    their four neighbours (wrapping around) plus uniform noise of amplitude wibble**2; wibble starts at
    100 and is divided by `wibbledecay` per scale, so a larger decay gives smoother fog."""
    m = torch.zeros(n, mapsize, mapsize, device=device, dtype=torch.float64)
    wibble = 100.0
    step = mapsize

    def noisy_mean(total: Tensor) -> Tensor:
        noise = torch.rand(total.shape, generator=gen, device=device, dtype=torch.float64)
        return total / 4 + wibble * (noise * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = noisy_mean(square)
        centres = m[:, half::step, half::step]
        corners = m[:, ::step, ::step]
        m[:, ::step, half::step] = noisy_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, half::step, ::step] = noisy_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step = half
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return (m / m.amax(dim=(1, 2), keepdim=True)).float()


def rgb_to_gray(x: Tensor) -> Tensor:
    w = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def uniform(shape: Sequence[int], low: float, high: float, gen: torch.Generator, device) -> Tensor:
    return torch.rand(tuple(shape), generator=gen, device=device) * (high - low) + low
