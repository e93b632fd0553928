"""LayerAct as functions: the one place the math lives.

For each sample (by default all dims but the batch dim form "the layer"):

    n = (y - mean(y)) / sqrt(var(y) + alpha)          population variance
    z = weight * n + bias                             only with an affine, per channel
    LA-SiLU:     a = y * sigmoid(z)
    LA-HardSiLU: a = y * clamp(z / 6 + 1/2, 0, 1)

`la_silu` / `la_hardsilu` run a fused autograd Function (saved for backward: the input
and two float32 numbers per sample; the fast kernel is picked by `layeract_patch.backend`).
`la_reference` is the same math written as plain tensor ops: it is what the kernels are
tested against, and what runs while tracing, exporting to ONNX or compiling, where plain
ops are what those tools understand.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["la_silu", "la_hardsilu", "layer_act", "la_reference", "KINDS", "DEFAULT_ALPHA"]

KINDS = ("silu", "hardsilu")
DEFAULT_ALPHA = 1e-5
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"LayerAct alpha must be a finite number >= 0 (it is added to the variance), got {alpha!r}; "
                         f"the paper's default is alpha={DEFAULT_ALPHA}")
    return float(alpha)


def _check(x: Tensor, kind: str, alpha: float, weight: Optional[Tensor], bias: Optional[Tensor],
           start_dim: int) -> int:
    """Validate the arguments; return start_dim as a non-negative index."""
    if not isinstance(x, Tensor):
        raise TypeError(f"LayerAct expects a torch.Tensor, got {type(x).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown LayerAct kind {kind!r}; choose one of {KINDS}")
    if not x.is_floating_point():
        raise TypeError(f"LayerAct needs a floating-point tensor, got dtype {x.dtype}; convert it first, e.g. x.float()")
    if x.dim() < 2:
        raise ValueError(f"LayerAct normalizes each sample over its non-batch dims, but got a {x.dim()}-D tensor of "
                         f"shape {tuple(x.shape)}: add the batch dim, e.g. x.unsqueeze(0) for one sample")
    check_alpha(alpha)
    sd = start_dim + x.dim() if start_dim < 0 else start_dim
    if not 1 <= sd < x.dim():
        raise ValueError(f"start_dim={start_dim} is out of range for a {x.dim()}-D input: it must leave the batch dim "
                         f"out and keep at least one dim to normalize (1 <= start_dim < {x.dim()}, or negative)")
    channels = x.shape[sd]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.dim() != 1 or p.shape[0] != channels):
            raise ValueError(f"LayerAct affine {name} has shape {tuple(p.shape)} but the input {tuple(x.shape)} has "
                             f"{channels} channels on dim {sd}: build the module with num_channels={channels}")
    if (weight is None) != (bias is None):
        raise ValueError("LayerAct affine needs both weight and bias (or neither)")
    return sd


def channel_view(p: Tensor, ndim: int, start_dim: int) -> Tensor:
    """Shape a per-channel (C,) parameter to broadcast along dim `start_dim` of an ndim tensor."""
    return p.view((-1,) + (1,) * (ndim - start_dim - 1))


def scale(z: Tensor, kind: str) -> Tensor:
    return torch.sigmoid(z) if kind == "silu" else F.hardsigmoid(z)


def la_reference(x: Tensor, kind: str = "silu", alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
                 bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """The plain formula in tensor ops (autograd through every step); float32 statistics for half inputs."""
    sd = _check(x, kind, alpha, weight, bias, start_dim)
    dims = tuple(range(sd, x.dim()))
    y = x.float() if x.dtype in _LOW_PRECISION else x
    mean = y.mean(dims, keepdim=True)
    var = (y - mean).pow(2).mean(dims, keepdim=True)
    z = (y - mean) * torch.rsqrt(var + alpha)
    if weight is not None:
        z = z * channel_view(weight.to(z.dtype), x.dim(), sd) + channel_view(bias.to(z.dtype), x.dim(), sd)
    return (y * scale(z, kind)).to(x.dtype)


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _use_plain_ops() -> bool:
    # ONNX export traces with torch.jit (dynamo=False) or torch.export (dynamo=True): both are caught here.
    return torch.jit.is_scripting() or torch.jit.is_tracing() or _is_compiling()


class _LayerActFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kind, alpha, start_dim):
        from . import _kernels
        impl = _kernels.select(x)
        out, mean, rstd = impl.forward(x, weight, bias, kind, alpha, start_dim)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.impl, ctx.kind, ctx.start_dim = impl, kind, start_dim
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = ctx.impl.backward(grad, x, mean, rstd, weight, bias, ctx.kind, ctx.start_dim)
        return dx, dweight, dbias, None, None, None


def layer_act(x: Tensor, kind: str = "silu", alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
              bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """LayerAct of `kind` ("silu" or "hardsilu"); see the module docstring.

    start_dim: the first dim of "the layer"; dims start_dim..end are normalized together
    (1, the default and the paper's, is all non-batch dims; -1 is per token over the last dim
    of an (N, L, D) tensor). weight/bias, of shape (C,), act along dim start_dim.
    """
    sd = _check(x, kind, alpha, weight, bias, start_dim)
    if _use_plain_ops():
        return la_reference(x, kind, alpha, weight, bias, sd)
    return _LayerActFunction.apply(x, weight, bias, kind, float(alpha), sd)


def la_silu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
            bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """LA-SiLU: x * sigmoid(layer-normalized x). See `layer_act`."""
    return layer_act(x, "silu", alpha, weight, bias, start_dim)


def la_hardsilu(x: Tensor, alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None, start_dim: int = 1) -> Tensor:
    """LA-HardSiLU: x * clamp(n / 6 + 1/2, 0, 1) with n the layer-normalized x. See `layer_act`."""
    return layer_act(x, "hardsilu", alpha, weight, bias, start_dim)
