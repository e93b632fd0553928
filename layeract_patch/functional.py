"""LayerAct as functions: the public face of the op.

`la_silu` / `la_hardsilu` / `la_gelu` / `layer_act` check their arguments and run the fused op of
`_kernels.op` (saved for backward: the input and two numbers per sample; the kernel is picked by
`layeract_patch.backend`). The math itself (the scales, the statistics and `la_reference`, the same
formula in plain tensor ops that the kernels are tested against) lives in `_math.py` and is re-exported
here, so `layeract_patch.functional.la_reference`, `SCALES`, `KINDS`, `layer_stats`... stay where users
know them. The layers run one way: `_math` <- `_kernels` <- `functional` <- `modules`.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ._kernels import op
from ._math import (DEFAULT_ALPHA, KINDS, LOW_PRECISION, SCALES, Scale, channel_view, check_alpha,  # noqa: F401
                    check_args, la_reference, layer_act_kinds, layer_stats, normalized, scale, scale_derivative)

__all__ = ["la_silu", "la_hardsilu", "la_gelu", "layer_act", "la_reference", "layer_stats", "normalized", "SCALES",
           "KINDS", "DEFAULT_ALPHA", "LOW_PRECISION"]


def layer_act(x: Tensor, kind: str = "silu", alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
              bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """LayerAct of `kind` ("silu", "hardsilu", "gelu" or "gelu_tanh"); see the module docstring.

    start_dim: the first dim of "the layer"; dims start_dim..end are normalized together
    (1, the default and the paper's, is all non-batch dims; -1 is per token over the last dim
    of an (N, L, D) tensor). weight/bias, of shape (C,), act along dim start_dim.
    """
    return op.layer_act(x, kind, alpha, weight, bias, check_args(x, kind, alpha, weight, bias, start_dim))


def la_silu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
            bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """LA-SiLU: x * sigmoid(layer-normalized x). See `layer_act`."""
    return layer_act(x, "silu", alpha, weight, bias, start_dim)


def la_hardsilu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """LA-HardSiLU: x * clamp(n / 6 + 1/2, 0, 1) with n the layer-normalized x. See `layer_act`."""
    return layer_act(x, "hardsilu", alpha, weight, bias, start_dim)


def la_gelu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
            bias: Optional[Tensor] = None, start_dim: int = 1, approximate: str = "none") -> Tensor:
    """LA-GELU: x * Phi(n) with n the layer-normalized x; approximate="tanh" for Phi's tanh form, as in F.gelu."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"la_gelu(approximate={approximate!r}): choose 'none' or 'tanh', as for F.gelu")
    return layer_act(x, "gelu" if approximate == "none" else "gelu_tanh", alpha, weight, bias, start_dim)
