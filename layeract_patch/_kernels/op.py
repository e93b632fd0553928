"""The LayerAct op: one autograd rule, one dispatch to the backend kernels, three ways in.

    torch.ops.layeract.layer_act(x, weight, bias, kind, alpha, start_dim) -> (out, mean, rstd)
    torch.ops.layeract.layer_act_backward(grad, x, mean, rstd, weight, bias, kind, start_dim) -> (dx, dparams)

are `torch.library.custom_op`s with fake (shape) functions, an autograd rule and vmap rules, so
torch.compile and torch.export see LayerAct as one opaque node and keep the fused kernel, with no
graph break.

`layer_act` picks the way in:
  - compiling / exporting: the custom op;
  - eager: `_EagerLayerAct`, an autograd.Function running the same forward and backward. Going
    through the custom op's dispatcher adds 40-75% to a small call (2x8x4x4, forward / forward and
    backward, on CPU), so eager calls skip it;
  - no_grad / inference_mode: the backend's forward alone, no autograd node;
  - jit.trace, ONNX export, torch.func transforms, forward-mode AD (dual tensors) and tensor subclasses
    (make_fx's fake tensors...): `_math.la_reference`, plain ops that those tools can record, batch,
    differentiate forward or export (an opaque op cannot be exported to ONNX).

Backward keeps only x and two numbers per sample. When it runs with grad mode on (create_graph=True,
gradient penalties) or under a torch.func transform, it is computed in differentiable tensor ops with
the statistics recomputed from x, so second derivatives are exact; otherwise it is the fused kernel.
"""
from __future__ import annotations

import inspect
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from ..catalogue import CATALOGUE
from .._math import la_reference
from . import select, torch_ops
from .layout import channels_last_format, empty_output

_functorch_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling
# batched (autograd.grad(is_grads_batched=True)), fake and other subclass tensors have no data for a kernel
_special = torch._C._dispatch_isTensorSubclassLike
# scale kinds the fused kernels have a case for; others (a new variant) run on the eager ops
FUSED_KINDS = frozenset(r.kind for r in CATALOGUE.values() if r.layer_act and r.kernel_code is not None)


def _backend(x: Tensor, kind: str) -> ModuleType:
    return select(x) if kind in FUSED_KINDS else torch_ops


def _forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
             start_dim: int) -> Tuple[Tuple[Tensor, Tensor, Tensor], ModuleType]:
    """(out, mean, rstd) and the backend that made them, whose backward the eager path then runs.

    No check of the statistics follows (a reduction over rstd per call cost more than a small sample's
    whole activation): the C kernel re-sums overflowing blocks in double, so every finite sample gets a
    positive, finite rstd (~3e-39 for one spanning all of float32; a test says so), the eager ops rescale
    such samples themselves, and NaN or inf inputs give NaN samples in every backend.
    """
    backend = _backend(x, kind)
    return backend.forward(x, weight, bias, kind, alpha, start_dim), backend


def _backward_kernel(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                     bias: Optional[Tensor], kind: str, start_dim: int):
    return _backend(x, kind).backward(grad, x, mean, rstd, weight, bias, kind, start_dim)


# ---------------------------------------------------------------- the custom ops (compile / export)

# Inductor runs convolutions channels_last on CPU. Without this tag it hands a custom op its inputs in the
# strides eager mode had (contiguous) and converts the output back: two extra passes over every activation,
# which made the compiled ResNet-20 step 1.27x the SiLU step at 2 threads. Both ops take any layout (a
# channels_last sample is as contiguous a block as an NCHW one) and give outputs in their input's format.
# (Older torch, whose custom_op takes no tags, keeps its default strides: slower, still correct.)
_ANY_LAYOUT = ({"tags": (torch.Tag.flexible_layout,)}
               if "tags" in inspect.signature(torch.library.custom_op).parameters else {})


@torch.library.custom_op("layeract::layer_act", mutates_args=(), **_ANY_LAYOUT)
def layer_act_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
                 start_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    (out, mean, rstd), _ = _forward(x, weight, bias, kind, alpha, start_dim)
    # the fake function promises x's dense format (inductor checks strides); the eager backend may differ
    fmt = channels_last_format(x, start_dim) or torch.contiguous_format
    return out.contiguous(memory_format=fmt), mean, rstd


@layer_act_op.register_fake
def _(x, weight, bias, kind, alpha, start_dim):
    return empty_output(x, start_dim)


@torch.library.custom_op("layeract::layer_act_backward", mutates_args=(), **_ANY_LAYOUT)
def layer_act_backward_op(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                          bias: Optional[Tensor], kind: str, start_dim: int) -> Tuple[Tensor, Tensor]:
    """(dx, dparams): dparams stacks the weight and bias gradients, (2, C), or (2, 0) without an affine
    (an op returns tensors only, and two empty ones would count as aliases of each other)."""
    dx, dweight, dbias = _backward_kernel(grad, x, mean, rstd, weight, bias, kind, start_dim)
    dparams = x.new_empty(2, 0) if weight is None else torch.stack([dweight, dbias])
    return dx.contiguous(memory_format=channels_last_format(x, start_dim) or torch.contiguous_format), dparams


@layer_act_backward_op.register_fake
def _(grad, x, mean, rstd, weight, bias, kind, start_dim):
    fmt = channels_last_format(x, start_dim) or torch.contiguous_format
    dparams = x.new_empty(2, 0) if weight is None else weight.new_empty(2, weight.shape[0])
    return torch.empty_like(x, memory_format=fmt), dparams


# ---------------------------------------------------------------- vmap rules (torch.vmap of the op itself)

@layer_act_op.register_vmap
def _(info, in_dims, x, weight, bias, kind, alpha, start_dim):
    x_dim, weight_dim, bias_dim = in_dims[:3]
    if x_dim is None or weight_dim is not None or bias_dim is not None:
        return _vmap_by_loop(layer_act_op, info, in_dims, (x, weight, bias, kind, alpha, start_dim))
    # the vmapped dim becomes one more leading dim of "rows": each inner sample keeps its own statistics
    out, mean, rstd = layer_act_op(x.movedim(x_dim, 0), weight, bias, kind, alpha, start_dim + 1)
    return (out, mean.view(info.batch_size, -1), rstd.view(info.batch_size, -1)), (0, 0, 0)


@layer_act_backward_op.register_vmap
def _(info, in_dims, *args):
    # reached only by batched gradients without grad mode, e.g. torch.autograd.functional.jacobian(vectorize=True)
    return _vmap_by_loop(layer_act_backward_op, info, in_dims, args)


def _vmap_by_loop(op, info, in_dims, args):
    """The op once per vmapped index, outputs stacked along dim 0."""
    results = [op(*(a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)))
               for i in range(info.batch_size)]
    return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * len(results[0])


# ---------------------------------------------------------------- the autograd rule, shared by both ways in

def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, kind, alpha, start_dim = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, bias)
    ctx.kind, ctx.alpha, ctx.start_dim = kind, alpha, start_dim
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad: Tensor, *unused_stat_grads):
    x, mean, rstd, weight, bias = ctx.saved_tensors
    if _is_compiling() and not torch.is_grad_enabled():
        dx, dparams = layer_act_backward_op(grad, x, mean, rstd, weight, bias, ctx.kind, ctx.start_dim)
        dweight, dbias = (None, None) if weight is None else dparams.unbind()
    elif torch.is_grad_enabled() or _functorch_active() or _special(grad):
        dx, dweight, dbias = torch_ops.differentiable_backward(grad, x, weight, bias, ctx.kind, ctx.alpha,
                                                               ctx.start_dim)
    elif getattr(ctx, "backend", None) is not None:  # eager: the forward chose it
        dx, dweight, dbias = ctx.backend.backward(grad, x, mean, rstd, weight, bias, ctx.kind, ctx.start_dim)
    else:
        dx, dweight, dbias = _backward_kernel(grad, x, mean, rstd, weight, bias, ctx.kind, ctx.start_dim)
    return dx, dweight, dbias, None, None, None


layer_act_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLayerAct(torch.autograd.Function):
    """The custom op's forward and autograd rule without the dispatcher round trip (eager calls).

    Written in the (ctx, inputs) style: a separate setup_context makes every apply() bind its arguments
    with inspect.signature, which costs more than a small kernel itself.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, kind, alpha, start_dim):
        (out, mean, rstd), ctx.backend = _forward(x, weight, bias, kind, alpha, start_dim)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.kind, ctx.alpha, ctx.start_dim = kind, alpha, start_dim
        return out  # one output: the statistics stay in ctx, which saves the autograd bookkeeping of two more

    backward = staticmethod(_backward)


def layer_act(x: Tensor, kind: str, alpha: float, weight: Optional[Tensor], bias: Optional[Tensor],
              start_dim: int) -> Tensor:
    """LayerAct on checked arguments (start_dim non-negative): see `functional.layer_act`."""
    if _is_compiling():
        # torch.onnx.export(dynamo=True) runs through torch.export: ONNX knows plain ops, not ours
        if torch.onnx.is_in_onnx_export():
            return la_reference(x, kind, alpha, weight, bias, start_dim)
        return layer_act_op(x, weight, bias, kind, float(alpha), start_dim)[0]
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _functorch_active() or _special(x) \
            or getattr(_forward_ad, "_current_level", -1) >= 0:  # forward-mode AD: plain ops have jvps
        return la_reference(x, kind, alpha, weight, bias, start_dim)
    if not torch.is_grad_enabled():  # no_grad / inference_mode: no autograd node to build (~4 us a call)
        return _forward(x, weight, bias, kind, float(alpha), start_dim)[0][0]
    return _EagerLayerAct.apply(x, weight, bias, kind, float(alpha), start_dim)
