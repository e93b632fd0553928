"""The activation catalogue: one record per activation, read by everything else.

Every activation this package knows is `a = y * s(z)` with a scale s in [0, 1] (the paper, Sec. 2.2).
An element-level activation feeds s the input itself (z = y); a LayerAct feeds it the
layer-normalized input (z = n, or w * n + b with an affine). So one record says:

    name, aliases       how users and CLIs spell it ("la_silu", "LA-SiLU", ...)
    scale               the key of its scale function in `functional.SCALES` (the math lives there)
    family              "relu", "smooth" or "hard": which LayerAct takes an element activation's place
    layer_act           True for the LayerAct variants
    kernel_code         the integer the C and Triton kernels switch on (LayerAct variants only)
    module              the nn.Module class, as a dotted name (imported only when asked for)
    replaces            element records: the module classes that ARE this activation (torch, timm), dotted
    functional          element records: (label, dotted function) calls a module walk cannot see

The registry (`get_act_layer`), the converter's default targets and functional-call detection, the
monitor's scale kinds, timm's names, fine-tuning's `auto` mapping and the kernels all read this table.
A new LayerAct variant (say LA-GELU) is one record here plus its scale function in `functional.py`
(and a kernel code in the kernels, or it runs on the eager backend).

Classes are named by string and resolved on use, so reading the catalogue never imports timm.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["Activation", "CATALOGUE", "GATES", "lookup", "layer_act_names", "element_of", "resolve",
           "replaced_types", "gate_types", "functional_sources", "layer_act_for", "kernel_code",
           "OTHER_ACTIVATIONS", "activation_types"]


@dataclass(frozen=True)
class Activation:
    name: str
    scale: str
    family: str
    aliases: Tuple[str, ...] = ()
    layer_act: bool = False
    kernel_code: Optional[int] = None
    module: Optional[str] = None
    replaces: Tuple[str, ...] = ()
    functional: Tuple[Tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        """The scale kind passed to `functional.layer_act` ("silu", "hardsilu")."""
        return self.scale

    def module_class(self) -> Any:
        return resolve(self.module)


_RECORDS = (
    Activation("relu", scale="relu", family="relu", module="torch.nn.ReLU",
               replaces=("torch.nn.modules.activation.ReLU",),
               functional=(("F.relu", "torch.nn.functional.relu"), ("F.relu_", "torch.nn.functional.relu_"),
                           ("torch.relu", "torch.relu"), ("torch.relu_", "torch.relu_"),
                           ("Tensor.relu", "torch.Tensor.relu"), ("Tensor.relu_", "torch.Tensor.relu_"))),
    Activation("silu", scale="silu", family="smooth", aliases=("swish",), module="torch.nn.SiLU",
               replaces=("torch.nn.modules.activation.SiLU", "timm.layers.activations.Swish",
                         "timm.layers.activations_me.SwishMe"),
               functional=(("F.silu", "torch.nn.functional.silu"),)),
    Activation("hardsilu", scale="hardsilu", family="hard", aliases=("hardswish", "hard_swish"),
               module="torch.nn.Hardswish",
               replaces=("torch.nn.modules.activation.Hardswish", "timm.layers.activations.HardSwish",
                         "timm.layers.activations_me.HardSwishMe"),
               functional=(("F.hardswish", "torch.nn.functional.hardswish"),)),
    Activation("la_silu", scale="silu", family="smooth", aliases=("lasilu", "la-silu"), layer_act=True,
               kernel_code=0, module="layeract_patch.modules.LASiLU"),
    Activation("la_hardsilu", scale="hardsilu", family="hard", aliases=("lahardsilu", "la-hardsilu"),
               layer_act=True, kernel_code=1, module="layeract_patch.modules.LAHardSiLU"),
)

CATALOGUE: Dict[str, Activation] = {record.name: record for record in _RECORDS}
_KERNEL_CODES: Dict[str, int] = {r.scale: r.kernel_code for r in _RECORDS if r.layer_act and r.kernel_code is not None}
_BY_ALIAS: Dict[str, Activation] = {alias: r for r in _RECORDS for alias in (r.name, *r.aliases)}

# Sigmoid-like gates (squeeze-excitation and friends): never converted, LayerAct is not a gate.
GATES = ("torch.nn.modules.activation.Sigmoid", "torch.nn.modules.activation.Hardsigmoid",
         "timm.layers.activations.Sigmoid", "timm.layers.activations.HardSigmoid",
         "timm.layers.activations_me.HardSigmoidMe")

# Other pointwise activations. No LayerAct family is theirs, so nothing converts them by default, but a
# `convert_activations(to={nn.GELU: "la_silu"})` mapping may name them; what is in none of these lists
# (a conv, a container, nn.Module itself) is not an activation and is refused as a source type.
OTHER_ACTIVATIONS = tuple(f"torch.nn.modules.activation.{name}" for name in (
    "CELU", "ELU", "GELU", "GLU", "Hardshrink", "Hardtanh", "LeakyReLU", "LogSigmoid", "Mish", "PReLU", "RReLU",
    "ReLU6", "SELU", "Softplus", "Softshrink", "Softsign", "Tanh", "Tanhshrink", "Threshold")) + tuple(
    f"timm.layers.{name}" for name in ("activations.GELU", "activations.GELUTanh", "activations.HardMish",
                                       "activations.Mish", "activations.PReLU", "activations.QuickGELU",
                                       "activations.Tanh", "activations_me.HardMishMe", "activations_me.MishMe"))


def resolve(dotted: str, import_missing: bool = True) -> Any:
    """The object a dotted name points to; None when its module cannot be imported (e.g. timm is absent)
    or, with import_missing=False, has not been imported yet."""
    import sys

    module_name, attr = dotted.rsplit(".", 1)
    module = sys.modules.get(module_name)
    if module is None and import_missing:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is None and "." in module_name:  # e.g. "torch.Tensor.relu": a method of a class
            owner = resolve(module_name, import_missing)
            return getattr(owner, attr, None) if owner is not None else None
    return getattr(module, attr, None) if module is not None else None


def lookup(name: str) -> Activation:
    """The record for a name or alias (case and surrounding space ignored); ValueError listing the names."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _BY_ALIAS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(CATALOGUE)}")
    return _BY_ALIAS[key]


def layer_act_names() -> Tuple[str, ...]:
    return tuple(r.name for r in _RECORDS if r.layer_act)


def kernel_code(kind: str) -> int:
    """The integer the fused kernels switch on for a LayerAct scale kind ("silu" -> 0, "hardsilu" -> 1)."""
    return _KERNEL_CODES[kind]


def layer_act_for(element: Activation) -> Activation:
    """The LayerAct of an element activation's family: the hard-swish family -> LA-HardSiLU, else LA-SiLU."""
    return CATALOGUE["la_hardsilu"] if element.family == "hard" else CATALOGUE["la_silu"]


def _type_names(cls: type) -> Iterable[str]:
    for klass in cls.__mro__:
        yield f"{klass.__module__}.{klass.__qualname__}"


def element_of(module_or_type: Any) -> Optional[Activation]:
    """The element-level record a module (or module type) is an instance of, by class name: no import needed."""
    cls = module_or_type if isinstance(module_or_type, type) else type(module_or_type)
    for type_name in _type_names(cls):
        for record in _RECORDS:
            if type_name in record.replaces:
                return record
    return None


def _classes(names: Iterable[str]) -> Tuple[type, ...]:
    found = (resolve(name) for name in names)
    return tuple(dict.fromkeys(cls for cls in found if isinstance(cls, type)))


def replaced_types() -> Tuple[type, ...]:
    """Every module class an element record names (the converter's default targets); imports timm."""
    return _classes(name for record in _RECORDS for name in record.replaces)


def gate_types() -> Tuple[type, ...]:
    return _classes(GATES)


def functional_sources() -> Dict[Any, Tuple[str, type]]:
    """function -> (label, the module class of its record): calls a module walk cannot see."""
    sources: Dict[Any, Tuple[str, type]] = {}
    for record in _RECORDS:
        module_class = record.module_class() if record.functional else None
        for label, dotted in record.functional:
            fn = resolve(dotted)
            if fn is not None:
                sources[fn] = (label, module_class)
    return sources


def activation_types() -> Tuple[type, ...]:
    """Every module class that is an activation (element records' types and OTHER_ACTIVATIONS), gates excluded."""
    return _classes([name for record in _RECORDS for name in record.replaces] + list(OTHER_ACTIVATIONS))
