"""LayerAct forward and backward in eager PyTorch ops: the portable backend.

Runs on any device and dtype. Statistics come from `torch.native_layer_norm` on a
(rows, layer) view, which on CPU is several times faster than a multi-dim `var_mean`.
Only x, mean and rstd are kept for backward; n and the scale are recomputed there.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ..functional import channel_view, scale

NAME = "torch"
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def available(device: torch.device) -> bool:
    return True


def as_rows(x: Tensor, start_dim: int) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """View x as (rows, layer) in memory order, and a function mapping such a tensor back to x's layout.

    A channels_last map is one contiguous block per sample, so it needs no copy either.
    """
    dense, fmt = dense_layout(x, start_dim)
    rows = math.prod(x.shape[:start_dim])
    if fmt is None:
        return dense.view(rows, -1), lambda r: r.view(x.shape)
    channels_to_end = dense.permute((0,) + tuple(range(2, x.dim())) + (1,))
    inverse = (0, x.dim() - 1) + tuple(range(1, x.dim() - 1))
    return channels_to_end.reshape(rows, -1), lambda r: r.view(channels_to_end.shape).permute(inverse)


def dense_layout(x: Tensor, start_dim: int) -> Tuple[Tensor, Optional[torch.memory_format]]:
    """x as a dense tensor whose samples are contiguous blocks, and its memory format.

    The format is channels_last(_3d) when x is in it (start_dim 1), else None for a contiguous
    tensor (x itself, or a contiguous copy of an input with other strides). Fused kernels
    read each sample as one block, and their outputs follow the format.
    """
    if start_dim == 1 and x.dim() in (4, 5) and not x.is_contiguous():
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return x, fmt
    return x.contiguous(), None


def sample_geometry(x: Tensor, start_dim: int, fmt: Optional[torch.memory_format]) -> Tuple[int, int, int, int]:
    """(rows, elements per row, channels, inner) of a `dense_layout` tensor; inner is the run of one channel."""
    numel, channels = x.numel(), x.shape[start_dim]
    rows = math.prod(x.shape[:start_dim]) if start_dim > 1 else x.shape[0]
    length = numel // rows
    return rows, length, channels, 1 if fmt is not None else length // channels


def stat_view(stat: Tensor, x: Tensor, start_dim: int) -> Tensor:
    return stat.view(tuple(x.shape[:start_dim]) + (1,) * (x.dim() - start_dim))


def _affine(n: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], start_dim: int) -> Tensor:
    if weight is None:
        return n
    return n * channel_view(weight.to(n.dtype), n.dim(), start_dim) + channel_view(bias.to(n.dtype), n.dim(), start_dim)


def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
            start_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    rows, unrows = as_rows(x, start_dim)
    if rows.dtype in _LOW_PRECISION:
        rows = rows.float()
    n, mean, rstd = torch.native_layer_norm(rows, (rows.shape[1],), None, None, alpha)
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    out = xf * scale(_affine(unrows(n), weight, bias, start_dim), kind)
    return out.to(x.dtype), mean.view(-1), rstd.view(-1)


def backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
             bias: Optional[Tensor], kind: str, start_dim: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    g = grad.float() if grad.dtype in _LOW_PRECISION else grad
    rstd_b = stat_view(rstd, x, start_dim)
    n = (xf - stat_view(mean, x, start_dim)) * rstd_b
    z = _affine(n, weight, bias, start_dim)
    s = scale(z, kind)
    ds_dz = s * (1 - s) if kind == "silu" else ((z > -3) & (z < 3)).to(z.dtype) / 6
    dz = g * xf * ds_dz
    dn = dz * channel_view(weight.to(dz.dtype), x.dim(), start_dim) if weight is not None else dz
    dn_rows, _ = as_rows(dn, start_dim)
    dnn_rows, _ = as_rows(dn * n, start_dim)
    mean_dn = stat_view(dn_rows.mean(1), x, start_dim)
    mean_dnn = stat_view(dnn_rows.mean(1), x, start_dim)
    dx = g * s + rstd_b * (dn - mean_dn - n * mean_dnn)
    dweight = dbias = None
    if weight is not None:
        others = [d for d in range(x.dim()) if d != start_dim]
        dweight = (dz * n).sum(others).to(weight.dtype)
        dbias = dz.sum(others).to(bias.dtype)
    return dx.to(x.dtype), dweight, dbias
