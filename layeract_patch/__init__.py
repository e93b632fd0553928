"""layeract-patch: LayerAct (layer-wise balanced) activations for any torchvision or timm model.

Importing the package is light: timm and torchvision load only with what needs them (the
converter, models, training), which are imported on first use.
"""
import importlib

from ._kernels import backend, set_backend
from .functional import la_gelu, la_hardsilu, la_reference, la_silu, layer_act
from .modules import LAGELU, LAHardSiLU, LASiLU, LayerAct
from .monitor import ScaleMonitor, pearson_per_layer
from .registry import create_act_layer, get_act_layer
from .timm_compat import register_timm_activations, unregister_timm_activations

__version__ = "0.1.0"

# name -> the submodule that defines it, imported when the name is first used
_LAZY = {name: "convert" for name in ("convert_activations", "Calibration", "ConversionReport", "CallSiteActs",
                                      "default_activation_types", "gate_types")}
_LAZY_MODULES = ("models", "training", "convert")


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LASiLU",
    "LAHardSiLU",
    "LAGELU",
    "LayerAct",
    "la_silu",
    "la_hardsilu",
    "la_gelu",
    "layer_act",
    "la_reference",
    "convert_activations",
    "Calibration",
    "ConversionReport",
    "CallSiteActs",
    "default_activation_types",
    "gate_types",
    "register_timm_activations",
    "unregister_timm_activations",
    "ScaleMonitor",
    "pearson_per_layer",
    "create_act_layer",
    "get_act_layer",
    "backend",
    "set_backend",
    "__version__",
]
