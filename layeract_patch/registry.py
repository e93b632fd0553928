"""Activation names -> classes, for recipes, CLIs and `convert_activations(to=...)`."""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Optional

from torch import nn

from .modules import LAHardSiLU, LASiLU, LayerAct

__all__ = ["ACTIVATIONS", "LAYERACT_NAMES", "get_act_layer", "create_act_layer"]

ACTIVATIONS: Dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "hardsilu": nn.Hardswish,
    "la_silu": LASiLU,
    "la_hardsilu": LAHardSiLU,
    "la_silu_affine": partial(LASiLU, affine=True),
    "la_hardsilu_affine": partial(LAHardSiLU, affine=True),
}
_ALIASES = {"swish": "silu", "hardswish": "hardsilu", "hard_swish": "hardsilu", "lasilu": "la_silu",
            "la-silu": "la_silu", "lahardsilu": "la_hardsilu", "la-hardsilu": "la_hardsilu"}
LAYERACT_NAMES = tuple(name for name in ACTIVATIONS if name.startswith("la_"))


def get_act_layer(name: str) -> Callable[..., nn.Module]:
    """The class (or partial) registered under `name`; ValueError listing the names on a miss."""
    key = name.strip().lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]


def create_act_layer(name: str, num_channels: Optional[int] = None, inplace: bool = False, **kwargs) -> nn.Module:
    """Build the activation `name`; LayerAct classes get num_channels (and any kwargs), others only inplace."""
    layer = get_act_layer(name)
    cls = layer.func if isinstance(layer, partial) else layer
    if isinstance(cls, type) and issubclass(cls, LayerAct):
        return layer(num_channels=num_channels, inplace=inplace, **kwargs)
    if kwargs:
        raise ValueError(f"activation {name!r} takes no options, got {sorted(kwargs)}")
    return layer(inplace=inplace)
