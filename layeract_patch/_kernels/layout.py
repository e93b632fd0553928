"""How a LayerAct input is laid out in memory: the shapes every backend and the op agree on.

A fused kernel reads each sample ("row") as one contiguous block. `dense_layout` gives that block
structure (a contiguous tensor, or a channels_last one as it is), and outputs follow its format, so the
op's shape function (`empty_output`) and every backend produce the same strides.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .._math import LOW_PRECISION


def dense_layout(x: Tensor, start_dim: int) -> Tuple[Tensor, Optional[torch.memory_format]]:
    """x as a dense tensor whose samples are contiguous blocks, and its memory format.

    The format is channels_last(_3d) when x is in it (start_dim 1), else None for a contiguous
    tensor (x itself, or a contiguous copy of an input with other strides).
    """
    fmt = channels_last_format(x, start_dim)
    return (x, fmt) if fmt is not None else (x.contiguous(), None)


def channels_last_format(x: Tensor, start_dim: int) -> Optional[torch.memory_format]:
    if start_dim == 1 and x.dim() in (4, 5) and not x.is_contiguous():
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return fmt
    return None


def row_count(x: Tensor, start_dim: int) -> int:
    return math.prod(x.shape[:start_dim])


def as_rows(x: Tensor, start_dim: int) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """View x as (rows, layer) in memory order, and a function mapping such a tensor back to x's layout.

    A channels_last map is one contiguous block per sample, so it needs no copy either. The layer
    length is spelled out (not -1) so that an empty batch keeps its shape.
    """
    dense, fmt = dense_layout(x, start_dim)
    rows, length = row_count(x, start_dim), math.prod(x.shape[start_dim:])
    if fmt is None:
        return dense.view(rows, length), lambda r: r.view(x.shape)
    channels_to_end = dense.permute((0,) + tuple(range(2, x.dim())) + (1,))
    inverse = (0, x.dim() - 1) + tuple(range(1, x.dim() - 1))
    return channels_to_end.reshape(rows, length), lambda r: r.view(channels_to_end.shape).permute(inverse)


def sample_geometry(x: Tensor, start_dim: int, fmt: Optional[torch.memory_format]) -> Tuple[int, int, int, int]:
    """(rows, elements per row, channels, inner) of a `dense_layout` tensor; inner is the run of one channel."""
    rows, channels = row_count(x, start_dim), x.shape[start_dim]
    length = math.prod(x.shape[start_dim:])
    return rows, length, channels, 1 if fmt is not None else length // max(channels, 1)


def stat_view(stat: Tensor, x: Tensor, start_dim: int) -> Tensor:
    return stat.view(tuple(x.shape[:start_dim]) + (1,) * (x.dim() - start_dim))


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-sample statistics are float32, or float64 for a float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


def empty_output(x: Tensor, start_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Uninitialised (out, mean, rstd) with the layout every backend returns: out in x's dense format."""
    fmt = channels_last_format(x, start_dim) or torch.contiguous_format
    rows = row_count(x, start_dim)
    stats = dict(dtype=stat_dtype(x.dtype), device=x.device)
    return torch.empty_like(x, memory_format=fmt), torch.empty(rows, **stats), torch.empty(rows, **stats)
