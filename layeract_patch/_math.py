"""The LayerAct math: the leaf of the package (it imports nothing of it).

For each sample (by default all dims but the batch dim form "the layer"):

    n = (y - mean(y)) / sqrt(var(y) + alpha)          population variance
    z = weight * n + bias                             only with an affine, per channel
    a = y * s(z)                                      s from SCALES:
        LA-SiLU:     s(z) = sigmoid(z)
        LA-HardSiLU: s(z) = clamp(z / 6 + 1/2, 0, 1)
        LA-GELU:     s(z) = Phi(z), the standard normal CDF (GELU(y) = y Phi(y))
                     "gelu_tanh": Phi's tanh approximation, as nn.GELU(approximate="tanh")

Here live the scale functions and their derivatives (SCALES), the argument checks, the per-sample
statistics (`layer_stats`, `normalized`), the dtype rule (LOW_PRECISION) and `la_reference`: the formula
in plain tensor ops, the oracle the kernels are tested against. The op in `_kernels/` builds on this
module; the public functions in `functional.py` build on the op. (timm's activations_me.py keeps the
same order in one file: math, then the autograd Function, then the module.)

Adding a LayerAct variant is one record in `catalogue.py` (with its module, a LayerAct subclass naming
the kind) plus its entry in SCALES here: s(z) and ds/dz written in differentiable tensor ops (the double
backward differentiates ds/dz again). It then runs everywhere, on the eager backend; the C and Triton
kernels switch on the record's kernel_code and take a kind only once they have a case for it.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_ALPHA = 1e-5
# Half-precision inputs get float32 statistics and arithmetic everywhere (reference, kernels, monitor).
LOW_PRECISION = (torch.float16, torch.bfloat16)


class Scale(NamedTuple):
    """A scale function s(z) in [0, 1] and its derivative ds/dz, given z and s(z)."""
    value: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor, Tensor], Tensor]
    element_only: bool = False  # True for relu: an element-level scale no LayerAct of this package uses


def _hard_sigmoid(z: Tensor) -> Tensor:
    # F.hardsigmoid's backward has no derivative of its own; the clamp form is twice differentiable
    # (and what a trace records, so that its graph does not depend on grad mode)
    if torch.jit.is_tracing() or (z.requires_grad and torch.is_grad_enabled()):
        return torch.clamp(z / 6 + 0.5, 0, 1)
    return F.hardsigmoid(z)


def _hard_derivative(z: Tensor, s: Tensor) -> Tensor:
    return ((z > -3) & (z < 3)).to(z.dtype) / 6


_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(z: Tensor) -> Tensor:
    # Phi(z) = erfc(-z / sqrt 2) / 2: accurate in relative terms far into the lower tail, where 1 + erf(.) cancels
    return 0.5 * torch.erfc(z * -_SQRT1_2)


def _normal_density(z: Tensor, s: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


# GELU's tanh form: Phi(z) ~ (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) / 2 = sigmoid(z (A + B z^2)),
# with A = 2 sqrt(2/pi) and B = 0.044715 A; ds/dz = s (1 - s) (A + 3 B z^2).
_TANH_A = 2 * math.sqrt(2 / math.pi)
_TANH_B = 0.044715 * _TANH_A


def _tanh_cdf(z: Tensor) -> Tensor:
    return torch.sigmoid(z * (_TANH_A + _TANH_B * z * z))


def _tanh_cdf_derivative(z: Tensor, s: Tensor) -> Tensor:
    # s (1 - s) is exactly 0 beyond |z| ~ 10 in float32 and float64; the clamp keeps z^2 finite there (0 * inf)
    z = z.clamp(-100, 100)
    return s * (1 - s) * (_TANH_A + 3 * _TANH_B * z * z)


SCALES: Dict[str, Scale] = {
    "silu": Scale(torch.sigmoid, lambda z, s: s * (1 - s)),
    "hardsilu": Scale(_hard_sigmoid, _hard_derivative),
    "gelu": Scale(_normal_cdf, _normal_density),
    "gelu_tanh": Scale(_tanh_cdf, _tanh_cdf_derivative),
    "relu": Scale(lambda z: (z >= 0).to(z.dtype), lambda z, s: torch.zeros_like(z), element_only=True),
}


def layer_act_kinds() -> Tuple[str, ...]:
    """The scale kinds a LayerAct can use: every SCALES entry but the element-only ones."""
    return tuple(kind for kind, entry in SCALES.items() if not entry.element_only)


KINDS = layer_act_kinds()  # as the package ships; a variant added to SCALES later is accepted too


def scale(z: Tensor, kind: str) -> Tensor:
    return SCALES[kind].value(z)


def scale_derivative(z: Tensor, s: Tensor, kind: str) -> Tensor:
    return SCALES[kind].derivative(z, s)


def check_alpha(alpha: float) -> float:
    # alpha > 0 even in float32 (where the statistics are computed; 2**-150 and below round to 0 there): a sample
    # whose values are all equal (a dead or padded map) has variance 0, and with alpha 0 its n would be 0/0 = NaN.
    if (not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha)
            or alpha <= 2.0 ** -150):
        raise ValueError(f"LayerAct alpha must be a finite number > 0, also in float32 (it is added to the variance; "
                         f"with 0 a sample whose values are all equal gives NaN), got {alpha!r}; the paper's default "
                         f"is alpha={DEFAULT_ALPHA}")
    return float(alpha)


def check_args(x: Tensor, kind: str, alpha: float, weight: Optional[Tensor], bias: Optional[Tensor],
               start_dim: int, affine_dim: Optional[int] = None) -> int:
    """Validate the arguments; return start_dim as a non-negative index."""
    if not isinstance(x, Tensor):
        raise TypeError(f"LayerAct expects a torch.Tensor, got {type(x).__name__}")
    entry = SCALES.get(kind)
    if entry is None or entry.element_only:
        raise ValueError(f"unknown LayerAct kind {kind!r}; choose one of {layer_act_kinds()}")
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
    ad = affine_dim_of(x.dim(), sd, affine_dim)
    channels = x.shape[ad]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.dim() != 1 or p.shape[0] != channels):
            raise ValueError(f"LayerAct affine {name} has shape {tuple(p.shape)} but the input {tuple(x.shape)} has "
                             f"{channels} channels on dim {ad}: build the module with num_channels={channels}")
        if p is not None and p.device != x.device:  # a kernel would read a meta (null) or CUDA pointer as CPU memory
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{x.device} (the input) and {p.device} (the affine {name}); move the module with "
                               f".to({str(x.device)!r})")
    if (weight is None) != (bias is None):
        raise ValueError("LayerAct affine needs both weight and bias (or neither)")
    return sd


def affine_dim_of(ndim: int, start_dim: int, affine_dim: Optional[int]) -> int:
    """The non-negative dim the affine weight and bias act along: start_dim (None, the default: the channels of an
    (N, C, H, W) map) or the last dim (-1: the features of an (N, L, D) token tensor or an (N, H, W, C) map, which
    keeps one module valid for any sequence length or image size)."""
    if affine_dim is None:
        return start_dim
    if isinstance(affine_dim, bool) or not isinstance(affine_dim, int) or affine_dim not in (start_dim, ndim - 1,
                                                                                             start_dim - ndim, -1):
        raise ValueError(f"LayerAct affine_dim={affine_dim!r} for a {ndim}-D input with start_dim={start_dim}: the "
                         f"affine acts along start_dim (affine_dim=None) or the last dim (affine_dim=-1)")
    return affine_dim % ndim


def channel_view(p: Tensor, ndim: int, start_dim: int) -> Tensor:
    """Shape a per-channel (C,) parameter to broadcast along dim `start_dim` of an ndim tensor."""
    return p.view((-1,) + (1,) * (ndim - start_dim - 1))


def layer_stats(y: Tensor, start_dim: int, alpha: float) -> Tuple[Tensor, Tensor]:
    """Per-sample mean and 1/sqrt(var + alpha) over dims start_dim.. (kept as size-1 dims), in y's dtype.

    Finite for any finite y: a float32 variance overflows once |y| passes ~1e19, so samples larger than 1
    are divided by their largest magnitude m first. n = (y - mean) * rstd does not change under that
    (with alpha / m^2 for alpha), so m is a constant to autograd and first and second derivatives stay exact.
    """
    dims = tuple(range(start_dim, y.dim()))
    m = y.detach().abs().amax(dims, keepdim=True)
    m = torch.where(m > 1, m, torch.ones_like(m))  # NaN and small samples are not scaled
    var, mean = torch.var_mean(y / m, dims, correction=0, keepdim=True)
    # alpha / m^2 underflows to 0 for |y| past ~1e16 in float32, which made a constant large sample 0 * inf = NaN.
    # The floor sqrt(tiny) (1e-19 in float32) keeps rstd and its derivative (eps^-1.5) finite there, and lies far
    # below the variance of any non-constant sample of y / m (at least ~1e-14 in float32).
    eps = (alpha / m / m).clamp_min(torch.finfo(var.dtype).tiny ** 0.5)
    rstd = torch.rsqrt(var + eps) / m
    return mean * m, rstd


def normalized(y: Tensor, start_dim: int, alpha: float, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, affine_dim: Optional[int] = None) -> Tensor:
    """z = n (or weight * n + bias): what the scale function of a LayerAct sees; y already in compute dtype."""
    mean, rstd = layer_stats(y, start_dim, alpha)
    z = (y - mean) * rstd
    if weight is not None:
        ad = affine_dim_of(y.dim(), start_dim, affine_dim)
        z = z * channel_view(weight.to(z.dtype), y.dim(), ad) + channel_view(bias.to(z.dtype), y.dim(), ad)
    return z


def la_reference(x: Tensor, kind: str = "silu", alpha: float = DEFAULT_ALPHA, weight: Optional[Tensor] = None,
                 bias: Optional[Tensor] = None, start_dim: int = 1, affine_dim: Optional[int] = None) -> Tensor:
    """The plain formula in tensor ops (autograd through every step); float32 statistics for half inputs."""
    sd = check_args(x, kind, alpha, weight, bias, start_dim, affine_dim)
    y = x.float() if x.dtype in LOW_PRECISION else x
    return (y * scale(normalized(y, sd, alpha, weight, bias, affine_dim), kind)).to(x.dtype)
