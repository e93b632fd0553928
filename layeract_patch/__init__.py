"""layeract-patch: LayerAct (layer-wise balanced) activations for any torchvision or timm model."""
from ._kernels import backend, set_backend
from .functional import la_hardsilu, la_reference, la_silu, layer_act
from .modules import LAHardSiLU, LASiLU, LayerAct
from .registry import create_act_layer, get_act_layer

__version__ = "0.1.0"

__all__ = [
    "LASiLU",
    "LAHardSiLU",
    "LayerAct",
    "la_silu",
    "la_hardsilu",
    "layer_act",
    "la_reference",
    "create_act_layer",
    "get_act_layer",
    "backend",
    "set_backend",
    "__version__",
]
