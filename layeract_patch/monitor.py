"""How evenly each activation layer treats the samples of a batch: the activation-scale monitor.

Every activation studied here is `a = y * s(y)` with a scale s in [0, 1] (the paper, Sec. 2.2):

    ReLU         s = 1[y >= 0]
    SiLU         s = sigmoid(y)
    Hardswish    s = clamp(y / 6 + 1/2, 0, 1)
    GELU         s = Phi(y)            the standard normal CDF (its tanh form for approximate="tanh")
    LA-SiLU      s = sigmoid(n)        n = y normalized over the sample's layer (affine: w * n + b)
    LA-HardSiLU  s = clamp(n / 6 + 1/2, 0, 1)
    LA-GELU      s = Phi(n)

Summed over a sample's layer, s says how much of that sample passes the layer. With element-level
activations the sum differs from sample to sample and follows the loss, so training leans toward some
samples; LayerAct keeps it nearly equal. `ScaleMonitor` records that sum per sample and per activation
call, `pearson_per_layer` correlates it with per-sample losses:

    with ScaleMonitor(model) as monitor:
        losses = F.cross_entropy(model(x), y, reduction="none")
    r = pearson_per_layer(losses, monitor.sums)     # {"layer1.0.act1": 0.31, ...}
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from .catalogue import element_of
from ._math import LOW_PRECISION, normalized, scale
from .modules import LayerAct

__all__ = ["ScaleMonitor", "pearson_per_layer", "activation_scale", "scale_kind"]


def scale_kind(module: nn.Module) -> Optional[str]:
    """"relu", "silu", "hardsilu", "layer_act" for the activations the monitor understands, else None."""
    if isinstance(module, LayerAct):
        return "layer_act"
    record = element_of(module)  # by class name, from the catalogue: timm is never imported here
    return None if record is None else record.scale


def activation_scale(module: nn.Module, y: Tensor) -> Tensor:
    """The scale s of `module` at its input y, element by element (so that module(y) == y * s)."""
    kind = scale_kind(module)
    if kind is None:
        raise TypeError(f"no activation scale is defined for {type(module).__name__}; the monitor handles nn.ReLU, "
                        f"nn.SiLU, nn.Hardswish, nn.GELU, their timm versions and LayerAct modules")
    y = y.float() if y.dtype in LOW_PRECISION else y
    if kind != "layer_act":
        return scale(y, kind)
    # the normalization of _math.la_reference, with the module's own alpha, start_dim and affine (and its dim)
    z = normalized(y, module.start_dim % y.dim(), module.alpha, module.weight, module.bias, module.affine_dim)
    return scale(z, module.kind)


class ScaleMonitor:
    """Records, per sample and per activation call, the sum of the activation scale over the layer.

    Args:
        model: any module; every nn.ReLU / nn.SiLU / nn.Hardswish, timm Swish / HardSwish (and the
            `Me` versions) and LayerAct inside it (the model itself included) is watched.
        filter_fn: optional `filter_fn(module, name) -> bool` choosing which of those to watch.

    `attach()` (or `with ScaleMonitor(model) as monitor:`) adds forward pre-hooks; `detach()` (or leaving
    the block) removes every one of them, so a detached model runs exactly as before. The scale is read
    from the activation's input, before the module runs, so in-place activations are measured right.
    Dim 0 is the batch dim; everything else is summed (in float64) into one number per sample.

    A module called several times per forward (torchvision's ResNet reuses one ReLU per block) is a
    separate layer per call: `name`, `name#2`, `name#3`, ... The call count restarts with each forward
    of `model`, so run the model through its own forward while monitoring.

    Results: `sums` is {layer: float64 tensor of the per-sample sums of every batch seen since the last
    `reset()`}, in the order the layers ran; `spread()` is their standard deviation across samples
    (`relative=True`: divided by the mean, comparable across layer sizes).
    """

    def __init__(self, model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ScaleMonitor needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.watched = {name or type(model).__name__: module for name, module in model.named_modules()
                        if scale_kind(module) is not None and (filter_fn is None or filter_fn(module, name))}
        if not self.watched:
            raise ValueError(f"{type(model).__name__} has no activation the monitor can read (nn.ReLU, nn.SiLU, "
                             f"nn.Hardswish, timm Swish/HardSwish, LayerAct)"
                             + ("" if filter_fn is None else " that filter_fn accepts"))
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._calls: Dict[str, int] = {}
        self._sums: Dict[str, List[Tensor]] = {}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "ScaleMonitor":
        if self.attached:
            raise RuntimeError("this ScaleMonitor is already attached; detach() it first")
        # Registered before the activation hooks, so it runs first when the model itself is an activation.
        self._handles.append(self.model.register_forward_pre_hook(self._new_forward))
        for name, module in self.watched.items():
            self._handles.append(module.register_forward_pre_hook(self._recorder(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "ScaleMonitor":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget what was recorded (e.g. before the next evaluation pass)."""
        self._sums.clear()

    def _new_forward(self, module: nn.Module, args) -> None:
        self._calls.clear()

    def _recorder(self, name: str):
        def hook(module: nn.Module, args) -> None:
            calls = self._calls[name] = self._calls.get(name, 0) + 1
            layer = name if calls == 1 else f"{name}#{calls}"
            with torch.no_grad():
                y = args[0].detach()
                per_sample = activation_scale(module, y).reshape(y.shape[0], -1).sum(1, dtype=torch.float64)
            self._sums.setdefault(layer, []).append(per_sample)
        return hook

    @property
    def sums(self) -> Dict[str, Tensor]:
        return {layer: torch.cat(parts) for layer, parts in self._sums.items()}

    def spread(self, relative: bool = False) -> Dict[str, float]:
        """Per layer, the standard deviation of the per-sample sums (over >= 2 samples); / mean if relative."""
        out = {}
        for layer, sums in self.sums.items():
            std = sums.std().item() if sums.numel() > 1 else math.nan
            out[layer] = std / sums.mean().item() if relative else std
        return out


def pearson_per_layer(losses: Tensor, sums: Dict[str, Tensor], rtol: float = 1e-6) -> Dict[str, float]:
    """Pearson correlation between per-sample `losses` and each layer's per-sample scale sums.

    A layer whose sums are constant has no correlation: nan. Sums that vary less than `rtol` times their
    mean count as constant, since that much is float rounding (LA-HardSiLU without affine gives every
    sample exactly half its layer size whenever all |n| <= 3, up to rounding).
    """
    losses = torch.as_tensor(losses).detach().flatten().double()
    if losses.numel() < 2:
        raise ValueError(f"a correlation needs at least 2 samples, got {losses.numel()} losses")
    loss_c = losses - losses.mean()
    out = {}
    for layer, values in sums.items():
        values = torch.as_tensor(values).detach().flatten().double().to(losses.device)
        if values.numel() != losses.numel():
            raise ValueError(f"layer {layer!r} has {values.numel()} scale sums but there are {losses.numel()} losses: "
                             f"record the sums over the same samples as the losses (monitor.reset() between passes)")
        values_c = values - values.mean()
        denom = torch.sqrt(loss_c.pow(2).sum() * values_c.pow(2).sum())
        if values_c.abs().max() <= rtol * values.mean().abs() or denom == 0:
            out[layer] = math.nan
        else:
            out[layer] = float((loss_c * values_c).sum() / denom)
    return out
