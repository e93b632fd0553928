"""layeract-patch: LayerAct (layer-wise balanced) activations for any torchvision or timm model."""
from ._kernels import backend, set_backend
from .convert import CallSiteActs, ConversionReport, convert_activations, default_activation_types, gate_types
from .functional import la_hardsilu, la_reference, la_silu, layer_act
from .modules import LAHardSiLU, LASiLU, LayerAct
from .monitor import ScaleMonitor, pearson_per_layer
from .registry import create_act_layer, get_act_layer
from .timm_compat import register_timm_activations, unregister_timm_activations

__version__ = "0.1.0"


def __getattr__(name):
    # models and training import timm and the recipes' machinery: load them on first use only
    if name in ("models", "training"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LASiLU",
    "LAHardSiLU",
    "LayerAct",
    "la_silu",
    "la_hardsilu",
    "layer_act",
    "la_reference",
    "convert_activations",
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
