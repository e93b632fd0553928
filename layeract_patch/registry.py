"""Activation names -> classes, for recipes, CLIs and `convert_activations(to=...)`.

The names and aliases come from the catalogue; each LayerAct also has an "_affine" name (a partial
with affine=True). As in timm's `get_act_layer`, a class, a partial or any other callable is passed
through unchanged, so code that takes `act_layer` may be given either a name or the thing itself.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Dict, Optional

from torch import nn

from .catalogue import AFFINE_SUFFIX, CATALOGUE, layer_act_spellings, parse_name
from .modules import LayerAct

__all__ = ["ACTIVATIONS", "LAYERACT_NAMES", "get_act_layer", "create_act_layer"]

ACTIVATIONS: Dict[str, Callable[..., nn.Module]] = {name: record.builder() for name, record in CATALOGUE.items()}
ACTIVATIONS.update({name + AFFINE_SUFFIX: partial(record.module_class(), affine=True, **dict(record.options))
                    for name, record in CATALOGUE.items() if record.layer_act})
LAYERACT_NAMES = layer_act_spellings()


def _canonical(name: str) -> str:
    try:
        record, affine = parse_name(name)
    except ValueError:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}") from None
    canonical = record.name + (AFFINE_SUFFIX if affine else "")
    if canonical not in ACTIVATIONS:
        raise ValueError(f"activation {record.name!r} has no affine variant (only LayerAct does); choose one of: "
                         f"{', '.join(ACTIVATIONS)}")
    return canonical


def get_act_layer(name: Any) -> Optional[Callable[..., nn.Module]]:
    """The class (or partial) for `name`; a class, partial or other callable is returned as it is, None as None.

    ValueError listing the names on an unknown name.
    """
    if name is None or callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"get_act_layer takes an activation name, class or callable, got {type(name).__name__} "
                        f"{name!r}; names: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[_canonical(name)]


def _is_layer_act(layer: Callable[..., nn.Module]) -> bool:
    cls = layer.func if isinstance(layer, partial) else layer
    return isinstance(cls, type) and issubclass(cls, LayerAct)


def create_act_layer(name: Any, num_channels: Optional[int] = None, inplace: bool = False, **kwargs) -> nn.Module:
    """Build the activation `name` (or class); LayerAct gets num_channels (and any kwargs), others only inplace."""
    layer = get_act_layer(name)
    if layer is None:
        raise ValueError("create_act_layer needs an activation name or class, got None")
    if _is_layer_act(layer):
        return layer(num_channels=num_channels, inplace=inplace, **kwargs)
    if kwargs:
        raise ValueError(f"activation {name!r} takes no options, got {sorted(kwargs)}")
    return layer(inplace=inplace) if _takes_inplace(layer) else layer()  # nn.GELU has no inplace


def _takes_inplace(layer: Callable[..., nn.Module]) -> bool:
    try:
        return "inplace" in inspect.signature(layer).parameters
    except (TypeError, ValueError):  # no signature to read: assume timm's convention
        return True
