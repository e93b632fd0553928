"""LayerAct's names in timm's activation tables, so `act_layer="la_silu"` works wherever timm takes a name.

timm builds activations from classes or from names; a class needs nothing from here:

    timm.create_model("resnet18", act_layer=LASiLU)

Names ("la_silu", "la_hardsilu", "la_gelu", "la_gelu_tanh": the catalogue's LayerAct records) are looked up
in timm's own tables. `register_timm_activations()` adds these entries and nothing else: no existing timm name
changes meaning, so every other model and user of timm in the process is unaffected. It is explicit (importing
layeract_patch changes nothing in timm), idempotent, and undone by `unregister_timm_activations()`.

    register_timm_activations()
    model = timm.create_model("efficientnet_b0", act_layer="la_silu")
    vit = timm.create_model("vit_tiny_patch16_224", act_layer="la_gelu")   # timm's "gelu" -> "la_gelu"

The affine variants are not registered: timm builds activations as `act_layer(inplace=True)`, without
the channel count an affine LayerAct needs; use `convert_activations(model, affine=True, ...)` for those.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Tuple

import torch

from .catalogue import CATALOGUE
from .functional import layer_act

__all__ = ["register_timm_activations", "unregister_timm_activations"]


def _timm_function(kind: str, name: str) -> Callable:  # kind: the record's scale kind (la_gelu_tanh: gelu_tanh)
    def fn(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return layer_act(x, kind)
    fn.__name__ = name
    fn.__doc__ = f"{name} with the (x, inplace) signature of timm's activation functions; inplace is ignored."
    return fn


# Built once: registering compares identities, so the same objects must come back each time.
_LAYERS: Dict[str, Callable] = {name: r.builder() for name, r in CATALOGUE.items() if r.layer_act}
_FUNCTIONS: Dict[str, Callable] = {name: _timm_function(r.kind, name) for name, r in CATALOGUE.items() if r.layer_act}


def _spelled(layer: Callable) -> str:
    """How to pass a layer as act_layer in code: LAGELU, or partial(LAGELU, approximate='tanh')."""
    if isinstance(layer, partial):
        options = ", ".join(f"{key}={value!r}" for key, value in layer.keywords.items())
        return f"partial({layer.func.__name__}, {options})"
    return layer.__name__


def _tables():
    """timm's name -> layer and name -> function tables (what timm.layers.get_act_layer / get_act_fn read)."""
    try:
        from timm.layers import create_act
    except ImportError as err:
        raise ImportError("register_timm_activations needs timm (pip install timm)") from err
    for table in ("_ACT_LAYER_DEFAULT", "_ACT_FN_DEFAULT"):
        if not isinstance(getattr(create_act, table, None), dict):
            raise RuntimeError(f"this timm version ({getattr(__import__('timm'), '__version__', '?')}) has no "
                               f"timm.layers.create_act.{table}; pass the class instead, e.g. act_layer=LASiLU")
    return ((create_act._ACT_LAYER_DEFAULT, _LAYERS), (create_act._ACT_FN_DEFAULT, _FUNCTIONS))


def register_timm_activations() -> Tuple[str, ...]:
    """Add the LayerAct names ("la_silu", "la_hardsilu", "la_gelu", "la_gelu_tanh") to timm's activation names;
    returns the names. Safe to call again.

    Raises RuntimeError, changing nothing, if timm already uses one of these names for something else.
    """
    tables = _tables()
    for table, ours in tables:
        for name, obj in ours.items():
            if table.get(name, obj) is not obj:
                raise RuntimeError(f"timm already defines the activation name {name!r} as {table[name]!r}; "
                                   f"not overriding it (pass act_layer={_spelled(_LAYERS[name])} to use LayerAct)")
    for table, ours in tables:
        table.update(ours)
    return tuple(_LAYERS)


def unregister_timm_activations() -> None:
    """Remove the names `register_timm_activations` added (only entries that are still ours)."""
    for table, ours in _tables():
        for name, obj in ours.items():
            if table.get(name) is obj:
                del table[name]
