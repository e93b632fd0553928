"""LayerAct as functions: the public face of the op.

`la_silu` / `la_hardsilu` / `la_gelu` / `layer_act` check their arguments and run the fused op of
`_kernels.op` (saved for backward: the input and two numbers per sample; the kernel is picked by
`layeract_patch.backend`). The math itself (the scales, the statistics and `la_reference`, the same
formula in plain tensor ops that the kernels are tested against) lives in `_math.py` and is re-exported
here, so `layeract_patch.functional.la_reference`, `SCALES`, `KINDS`, `layer_stats`... stay where users
know them. The layers run one way: `_math` <- `_kernels` <- `functional` <- `modules`.
"""
from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from ._kernels import op
from ._math import (DEFAULT_ALPHA, KINDS, LOW_PRECISION, SCALES, Scale, affine_dim_of, channel_view,  # noqa: F401
                    check_alpha, check_args, la_reference, layer_act_kinds, layer_stats, normalized, scale,
                    scale_derivative)

__all__ = ["la_silu", "la_hardsilu", "la_gelu", "layer_act", "la_reference", "layer_stats", "normalized", "SCALES",
           "KINDS", "DEFAULT_ALPHA", "LOW_PRECISION"]


def layer_act(x: Tensor, kind: str = "silu", alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
              bias: Optional[Tensor] = None, start_dim: int = 1, affine_dim: Optional[int] = None) -> Tensor:
    """LayerAct of `kind` ("silu", "hardsilu", "gelu" or "gelu_tanh"); see the module docstring.

    start_dim: the first dim of "the layer"; dims start_dim..end are normalized together
    (1, the default and the paper's, is all non-batch dims; -1 is per token over the last dim
    of an (N, L, D) tensor). weight/bias, of shape (C,), act along dim start_dim, or along the
    last dim with affine_dim=-1 (the features of an (N, L, D) or (N, H, W, C) tensor).
    """
    sd = check_args(x, kind, alpha, weight, bias, start_dim, affine_dim)
    if weight is not None and affine_dim_of(x.dim(), sd, affine_dim) != sd:
        return _features_last(x, kind, alpha, weight, bias, sd)
    return op.layer_act(x, kind, alpha, weight, bias, sd)


def _features_last(x: Tensor, kind: str, alpha: float, weight: Tensor, bias: Tensor, start_dim: int) -> Tensor:
    """The affine along the last dim, through the op's channels_last support: each sample's layer (R, ..., C) is
    viewed as a channels_last (R, C, M, 1) map, whose memory is the same, so every backend (the kernels' interleaved
    channels, the reference) runs it without a copy of a contiguous input."""
    rows, channels = math.prod(x.shape[:start_dim]), x.shape[-1]
    middle = math.prod(x.shape[start_dim:-1])
    as_map = x.reshape(rows, middle, 1, channels).permute(0, 3, 1, 2)
    out = op.layer_act(as_map, kind, alpha, weight, bias, 1)
    return out.permute(0, 2, 3, 1).reshape(x.shape)


def la_silu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
            bias: Optional[Tensor] = None, start_dim: int = 1, affine_dim: Optional[int] = None) -> Tensor:
    """LA-SiLU: x * sigmoid(layer-normalized x). See `layer_act`."""
    return layer_act(x, "silu", alpha, weight, bias, start_dim, affine_dim)


def la_hardsilu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None, start_dim: int = 1, affine_dim: Optional[int] = None) -> Tensor:
    """LA-HardSiLU: x * clamp(n / 6 + 1/2, 0, 1) with n the layer-normalized x. See `layer_act`."""
    return layer_act(x, "hardsilu", alpha, weight, bias, start_dim, affine_dim)


def la_gelu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
            bias: Optional[Tensor] = None, start_dim: int = 1, approximate: str = "none",
            affine_dim: Optional[int] = None) -> Tensor:
    """LA-GELU: x * Phi(n) with n the layer-normalized x; approximate="tanh" for Phi's tanh form, as in F.gelu."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"la_gelu(approximate={approximate!r}): choose 'none' or 'tanh', as for F.gelu")
    return layer_act(x, "gelu" if approximate == "none" else "gelu_tanh", alpha, weight, bias, start_dim, affine_dim)
