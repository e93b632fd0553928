"""LayerAct's names in timm's activation tables, so `act_layer="la_silu"` works wherever timm takes a name.

timm builds activations from classes or from names; a class needs nothing from here:

    timm.create_model("resnet18", act_layer=LASiLU)

Names ("la_silu", "la_hardsilu") are looked up in timm's own tables. `register_timm_activations()` adds
these two entries and nothing else: no existing timm name changes meaning, so every other model and
user of timm in the process is unaffected. It is explicit (importing layeract_patch changes nothing in
timm), idempotent, and undone by `unregister_timm_activations()`.

    register_timm_activations()
    model = timm.create_model("efficientnet_b0", act_layer="la_silu")

The affine variants are not registered: timm builds activations as `act_layer(inplace=True)`, without
the channel count an affine LayerAct needs; use `convert_activations(model, affine=True, ...)` for those.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from .functional import la_hardsilu, la_silu
from .modules import LAHardSiLU, LASiLU

__all__ = ["register_timm_activations", "unregister_timm_activations"]


def _la_silu_fn(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """la_silu with the (x, inplace) signature of timm's activation functions; inplace is ignored."""
    return la_silu(x)


def _la_hardsilu_fn(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """la_hardsilu with the (x, inplace) signature of timm's activation functions; inplace is ignored."""
    return la_hardsilu(x)


_LAYERS: Dict[str, Callable] = {"la_silu": LASiLU, "la_hardsilu": LAHardSiLU}
_FUNCTIONS: Dict[str, Callable] = {"la_silu": _la_silu_fn, "la_hardsilu": _la_hardsilu_fn}


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
    """Add "la_silu" and "la_hardsilu" to timm's activation names; returns the names. Safe to call again.

    Raises RuntimeError, changing nothing, if timm already uses one of these names for something else.
    """
    tables = _tables()
    for table, ours in tables:
        for name, obj in ours.items():
            if table.get(name, obj) is not obj:
                raise RuntimeError(f"timm already defines the activation name {name!r} as {table[name]!r}; "
                                   f"not overriding it (pass act_layer={_LAYERS[name].__name__} to use LayerAct)")
    for table, ours in tables:
        table.update(ours)
    return tuple(_LAYERS)


def unregister_timm_activations() -> None:
    """Remove the names `register_timm_activations` added (only entries that are still ours)."""
    for table, ours in _tables():
        for name, obj in ours.items():
            if table.get(name) is obj:
                del table[name]
