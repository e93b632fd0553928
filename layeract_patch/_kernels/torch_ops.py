"""LayerAct forward and backward in eager PyTorch ops: the portable backend.

Runs on any device and dtype. Statistics come from `torch.native_layer_norm` on a
(rows, layer) view, which on CPU is several times faster than a multi-dim `var_mean`.
Only x, mean and rstd are kept for backward; n and the scale are recomputed there.

`backward` is written in differentiable ops, so the op's double backward runs it with
statistics recomputed from x (`_math.layer_stats`) to differentiate through them too.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._math import channel_view, layer_stats, scale, scale_derivative
from .layout import as_rows, compute_dtype, stat_view

NAME = "torch"


def available(device: torch.device) -> bool:
    return True


def _affine(n: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], start_dim: int) -> Tensor:
    if weight is None:
        return n
    return n * channel_view(weight.to(n.dtype), n.dim(), start_dim) + channel_view(bias.to(n.dtype), n.dim(), start_dim)


def statistics(rows: Tensor, alpha: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(n, mean, rstd) of a (rows, layer) tensor in its compute dtype."""
    n, mean, rstd = torch.native_layer_norm(rows, (rows.shape[1],), None, None, alpha)
    # rstd is 0 only where the variance overflowed (|x| beyond ~1e19 in float32), NaN where the sample
    # holds inf or NaN: redo those batches with statistics of the sample scaled by its largest value.
    # (A sync on CUDA, but this backend is only CUDA's fallback; the check is O(rows) on CPU.)
    if rows.numel() and not bool((rstd > 0).all()):
        mean, rstd = layer_stats(rows, 1, alpha)
        n = (rows - mean) * rstd
    return n, mean, rstd


def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
            start_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    rows, unrows = as_rows(x, start_dim)
    n, mean, rstd = statistics(rows.to(compute_dtype(x.dtype)), alpha)
    xf = x.to(compute_dtype(x.dtype))
    out = xf * scale(_affine(unrows(n), weight, bias, start_dim), kind)
    return out.to(x.dtype), mean.view(-1), rstd.view(-1)


def backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
             bias: Optional[Tensor], kind: str, start_dim: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    xf = x.to(compute_dtype(x.dtype))
    g = grad.to(compute_dtype(grad.dtype))
    rstd_b = stat_view(rstd, x, start_dim)
    n = (xf - stat_view(mean, x, start_dim)) * rstd_b
    z = _affine(n, weight, bias, start_dim)
    s = scale(z, kind)
    ds_dz = scale_derivative(z, s, kind)
    dz = g * xf * ds_dz
    # dx = g s + rstd (dn - mean(dn) - n mean(dn n)) with dn = w dz; rstd dn is formed as g s' w (x rstd),
    # which stays in range where x itself is near float32's limit (dn alone would overflow there)
    w = channel_view(weight.to(dz.dtype), x.dim(), start_dim) if weight is not None else 1.0
    q = g * ds_dz * w * (xf * rstd_b)
    q_rows, _ = as_rows(q, start_dim)
    qn_rows, _ = as_rows(q * n, start_dim)
    dx = g * s + q - stat_view(q_rows.mean(1), x, start_dim) - n * stat_view(qn_rows.mean(1), x, start_dim)
    dweight = dbias = None
    if weight is not None:
        others = [d for d in range(x.dim()) if d != start_dim]
        dweight = (dz * n).sum(others).to(weight.dtype)
        dbias = dz.sum(others).to(bias.dtype)
    return dx.to(x.dtype), dweight, dbias


def differentiable_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str,
                            alpha: float, start_dim: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """`backward` with the statistics recomputed from x, for create_graph=True and torch.func."""
    mean, rstd = layer_stats(x.to(compute_dtype(x.dtype)), start_dim, alpha)
    return backward(grad, x, mean, rstd, weight, bias, kind, start_dim)
