"""LayerAct as nn.Modules: LASiLU, LAHardSiLU and LAGELU, drop-in for nn.SiLU, nn.Hardswish and nn.GELU."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import catalogue
from ._math import DEFAULT_ALPHA, check_alpha
from .functional import layer_act

__all__ = ["LayerAct", "LASiLU", "LAHardSiLU", "LAGELU"]


class LayerAct(nn.Module):
    """Base of the LayerAct modules; `kind` names the scale function.

    Args:
        alpha: added to the variance before the square root (the paper's 1e-5).
        affine: learn a per-channel gain `weight` (ones) and `bias` (zeros) that the scale
            function sees (g * n + b), acting along dim `start_dim` as GroupNorm's affine does
            along dim 1, so one module serves any spatial size.
        num_channels: the size of that dim; required with affine=True.
        inplace: accepted and ignored (the input is needed for backward), so the class works
            wherever timm or torchvision build activations with `act_layer(inplace=True)`.
        start_dim: the first dim of "the layer": 1 (default, the paper's) normalizes all non-batch
            dims together (for an (N, L, D) transformer activation: L x D per sample); -1 normalizes each
            token of an (N, L, D) tensor over D.
        affine_dim: the dim the affine acts along: None (default) is start_dim, the channels of an
            (N, C, H, W) map; -1 is the last dim, the features of an (N, L, D) token tensor or an (N, H, W, C)
            map (timm's ConvNeXt blocks, Swin), so that one module serves any sequence length or image size.
            (With the default, an (N, L, D) input's affine would be per token, for one sequence length.)
    """

    kind = "silu"

    def __init__(self, alpha: float = DEFAULT_ALPHA, affine: bool = False, num_channels: Optional[int] = None,
                 inplace: bool = False, start_dim: int = 1, device=None, dtype=None, *,
                 affine_dim: Optional[int] = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.alpha = check_alpha(alpha)
        self.affine = bool(affine)
        self.inplace = inplace
        self.start_dim = int(start_dim)
        if affine_dim is not None and (isinstance(affine_dim, bool) or affine_dim not in (-1, self.start_dim)):
            raise ValueError(f"{name}(affine_dim={affine_dim!r}): the affine acts along start_dim (affine_dim=None, "
                             f"the default) or the last dim (affine_dim=-1)")
        self.affine_dim = affine_dim
        if affine:
            if num_channels is None or int(num_channels) <= 0:
                where = "the last dim" if affine_dim == -1 else f"dim {start_dim}"
                raise ValueError(f"{name}(affine=True) needs num_channels, the size of {where} of its input "
                                 f"(e.g. {name}(affine=True, num_channels=64)); got {num_channels!r}")
            self.num_channels = int(num_channels)
            self.weight = nn.Parameter(torch.ones(self.num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(self.num_channels, device=device, dtype=dtype))
        else:
            self.num_channels = None if num_channels is None else int(num_channels)
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.affine:  # skips nn.Module.__getattr__ for the two None parameters (a small call's cost counts)
            return layer_act(x, self.kind, self.alpha, None, None, self.start_dim)
        dim = self.start_dim if self.affine_dim is None else self.affine_dim
        if x.dim() > 1:
            channels = x.shape[dim] if -x.dim() <= dim < x.dim() else None
            if channels != self.num_channels:
                raise ValueError(f"{type(self).__name__} was built with num_channels={self.num_channels} but its input "
                                 f"{tuple(x.shape)} has {channels} on dim {dim}; build it with "
                                 f"num_channels={channels} (or convert with an example input so each call site gets "
                                 f"its own size)")
        return layer_act(x, self.kind, self.alpha, self.weight, self.bias, self.start_dim, self.affine_dim)

    def extra_repr(self) -> str:
        text = f"alpha={self.alpha}, affine={self.affine}"
        if self.affine:
            text += f", num_channels={self.num_channels}"
        if self.start_dim != 1:
            text += f", start_dim={self.start_dim}"
        if self.affine_dim is not None:
            text += f", affine_dim={self.affine_dim}"
        return text


class LASiLU(LayerAct):
    """LA-SiLU: x * sigmoid(n), n the input normalized over each sample's layer."""

    kind = "silu"


class LAHardSiLU(LayerAct):
    """LA-HardSiLU: x * clamp(n / 6 + 1/2, 0, 1), n the input normalized over each sample's layer."""

    kind = "hardsilu"


class LAGELU(LayerAct):
    """LA-GELU: x * Phi(n), Phi the standard normal CDF, n the input normalized over each sample's layer.

    approximate: "none" (Phi itself) or "tanh" (Phi's tanh approximation), as in nn.GELU; the two forms are
    the catalogue's la_gelu and la_gelu_tanh. Keyword-only, so that a positional argument is never mistaken
    for it (the first positional argument of every LayerAct is alpha).
    """

    kind = "gelu"

    def __init__(self, alpha: float = DEFAULT_ALPHA, affine: bool = False, num_channels: Optional[int] = None,
                 inplace: bool = False, start_dim: int = 1, device=None, dtype=None, *,
                 approximate: str = "none", affine_dim: Optional[int] = None) -> None:
        forms = _forms(LAGELU)
        if isinstance(alpha, str):  # LAGELU("tanh"), as nn.GELU("tanh") would be written
            raise TypeError(f"LAGELU's first argument is alpha, a number; got {alpha!r}: pass the GELU form by name, "
                            f"LAGELU(approximate={alpha!r})")
        if approximate not in forms:
            raise ValueError(f"LAGELU(approximate={approximate!r}): choose one of {', '.join(map(repr, forms))}, "
                             f"as for nn.GELU")
        super().__init__(alpha, affine, num_channels, inplace, start_dim, device, dtype, affine_dim=affine_dim)
        self.approximate = approximate
        self.kind = forms[approximate]

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (f", approximate={self.approximate!r}" if self.approximate != "none" else "")


def _forms(cls: type) -> Dict[str, str]:
    """approximate value -> scale kind, from the catalogue's records of the class (la_gelu, la_gelu_tanh)."""
    return {dict(r.options).get("approximate", "none"): r.kind for r in catalogue.records_of_module(cls)}
