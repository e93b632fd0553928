"""The activation catalogue: one record per activation, read by everything else.

Every activation this package knows is `a = y * s(z)` with a scale s in [0, 1] (the paper, Sec. 2.2).
An element-level activation feeds s the input itself (z = y); a LayerAct feeds it the
layer-normalized input (z = n, or w * n + b with an affine). So one record says:

    name, aliases       how users and CLIs spell it ("la_silu", "LA-SiLU", ...)
    scale               the key of its scale function in `_math.SCALES` (the math lives there)
    family              "relu", "smooth", "hard" or "gelu": which LayerAct takes an element activation's place
    layer_act           True for the LayerAct variants
    kernel_code         the integer the C and Triton kernels switch on (LayerAct variants only)
    module, options     the nn.Module class, as a dotted name (imported only when asked for), and the constructor
                        options that make this record of it (LA-GELU's tanh form: approximate="tanh")
    replaces            element records: the module classes that ARE this activation (torch, timm), dotted
    replaces_when       element records: (dotted class, attribute, value): instances that are this activation
                        only with that attribute value (nn.GELU(approximate="tanh") is GELU's tanh form)
    functional          element records: (label, dotted function) calls a module walk cannot see
    converts            LayerAct records: the element families `convert_activations(to=name)` replaces

The registry (`get_act_layer`), the converter's default targets and functional-call detection, the
monitor's scale kinds, timm's names, fine-tuning's `auto` mapping and the kernels all read this table.
A new LayerAct variant is one record here plus its scale function in `_math.py` (and a kernel code
in the kernels, or it runs on the eager backend).

A LayerAct's forms (LA-GELU's erf and tanh forms) are records of one module with different options. A
conversion to such a module gives each source the form of its own scale (nn.GELU(approximate="tanh") ->
LAGELU(approximate="tanh")) unless the options are given (`form_options`).

Classes are named by string and resolved on use, so reading the catalogue never imports timm.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["Activation", "CATALOGUE", "GATES", "lookup", "layer_act_names", "element_of", "resolve",
           "replaced_types", "gate_types", "functional_sources", "layer_act_for", "kernel_code",
           "OTHER_ACTIVATIONS", "NO_LAYER_ACT_FORM", "no_layer_act_form", "activation_types", "converted_families",
           "form_options", "records_of_module", "AFFINE_SUFFIX", "layer_act_spellings", "parse_name"]


@dataclass(frozen=True)
class Activation:
    name: str
    scale: str
    family: str
    aliases: Tuple[str, ...] = ()
    layer_act: bool = False
    kernel_code: Optional[int] = None
    module: Optional[str] = None
    options: Tuple[Tuple[str, Any], ...] = ()
    replaces: Tuple[str, ...] = ()
    replaces_when: Tuple[Tuple[str, str, Any], ...] = ()
    functional: Tuple[Tuple[str, str], ...] = ()
    converts: Tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The scale kind passed to `functional.layer_act` ("silu", "hardsilu", "gelu", "gelu_tanh")."""
        return self.scale

    def module_class(self) -> Any:
        return resolve(self.module)

    def builder(self) -> Any:
        """What builds this record's module: the class, or a partial of it with the record's options."""
        cls = self.module_class()
        return partial(cls, **dict(self.options)) if self.options else cls


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
    # GELU(y) = y Phi(y). timm's QuickGELU, y sigmoid(1.702 y), is neither form: see NO_LAYER_ACT_FORM.
    # F.gelu(x, approximate="tanh") is the tanh form: the call's own `approximate` picks it (functional_calls).
    Activation("gelu", scale="gelu", family="gelu", module="torch.nn.GELU",
               replaces=("torch.nn.modules.activation.GELU", "timm.layers.activations.GELU"),
               functional=(("F.gelu", "torch.nn.functional.gelu"),)),
    Activation("gelu_tanh", scale="gelu_tanh", family="gelu", aliases=("gelutanh",), module="torch.nn.GELU",
               options=(("approximate", "tanh"),), replaces=("timm.layers.activations.GELUTanh",),
               replaces_when=(("torch.nn.modules.activation.GELU", "approximate", "tanh"),)),
    Activation("la_silu", scale="silu", family="smooth", aliases=("lasilu", "la-silu"), layer_act=True,
               kernel_code=0, module="layeract_patch.modules.LASiLU", converts=("relu", "smooth", "hard")),
    Activation("la_hardsilu", scale="hardsilu", family="hard", aliases=("lahardsilu", "la-hardsilu"),
               layer_act=True, kernel_code=1, module="layeract_patch.modules.LAHardSiLU",
               converts=("relu", "smooth", "hard")),
    # GELU models convert to LA-GELU only, and ReLU/SiLU/hard-swish models to LA-SiLU/LA-HardSiLU only: a GELU
    # network asked to become LA-SiLU is more likely a mistake than a wish (a mapping can still say so).
    Activation("la_gelu", scale="gelu", family="gelu", aliases=("lagelu", "la-gelu"), layer_act=True,
               kernel_code=2, module="layeract_patch.modules.LAGELU", converts=("gelu",)),
    Activation("la_gelu_tanh", scale="gelu_tanh", family="gelu", aliases=("lagelutanh", "la-gelu-tanh"),
               layer_act=True, kernel_code=3, module="layeract_patch.modules.LAGELU",
               options=(("approximate", "tanh"),), converts=("gelu",)),
)

CATALOGUE: Dict[str, Activation] = {record.name: record for record in _RECORDS}
_KERNEL_CODES: Dict[str, int] = {r.scale: r.kernel_code for r in _RECORDS if r.layer_act and r.kernel_code is not None}
_BY_ALIAS: Dict[str, Activation] = {alias: r for r in _RECORDS for alias in (r.name, *r.aliases)}
_DEFAULT_FAMILIES = CATALOGUE["la_silu"].converts  # what a LayerAct class outside the catalogue converts

# Sigmoid-like gates (squeeze-excitation and friends): never converted, LayerAct is not a gate.
GATES = ("torch.nn.modules.activation.Sigmoid", "torch.nn.modules.activation.Hardsigmoid",
         "timm.layers.activations.Sigmoid", "timm.layers.activations.HardSigmoid",
         "timm.layers.activations_me.HardSigmoidMe")

# Other pointwise activations. No LayerAct family is theirs, so nothing converts them by default, but a
# `convert_activations(to={nn.ELU: "la_silu"})` mapping may name them; what is in none of these lists
# (a conv, a container, nn.Module itself) is not an activation and is refused as a source type.
OTHER_ACTIVATIONS = tuple(f"torch.nn.modules.activation.{name}" for name in (
    "CELU", "ELU", "GLU", "Hardshrink", "Hardtanh", "LeakyReLU", "LogSigmoid", "Mish", "PReLU", "RReLU",
    "ReLU6", "SELU", "Softplus", "Softshrink", "Softsign", "Tanh", "Tanhshrink", "Threshold")) + tuple(
    f"timm.layers.{name}" for name in ("activations.HardMish", "activations.Mish", "activations.PReLU",
                                       "activations.QuickGELU", "activations.Tanh", "activations_me.HardMishMe",
                                       "activations_me.MishMe"))

# Activations close to a LayerAct family but matching none of its forms: never converted by a name, and what
# the converter says about them ({cls}: the class as code spells it). QuickGELU's LayerAct form would be
# y sigmoid(1.702 n): LA-SiLU with a gain of 1.702, which an affine LA-SiLU holds exactly (calibration can fit
# it); LA-GELU's Phi(n) is within 0.0095 of it. Converting it as either silently would pick one for the user.
NO_LAYER_ACT_FORM = {
    "timm.layers.activations.QuickGELU": (
        "y * sigmoid(1.702 y) is neither LA-GELU form; map it on purpose: to={{{cls}: 'la_silu_affine'}} with "
        "calibrate= (sigmoid(1.702 n) is LA-SiLU with weight 1.702) or to={{{cls}: 'la_gelu'}} (Phi(n), within "
        "0.0095 of sigmoid(1.702 n))"),
}


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


AFFINE_SUFFIX = "_affine"  # "la_silu_affine": LA-SiLU with a per-channel weight and bias


def layer_act_spellings() -> Tuple[str, ...]:
    """Every LayerAct name a command line takes: the names, then each with AFFINE_SUFFIX."""
    return layer_act_names() + tuple(name + AFFINE_SUFFIX for name in layer_act_names())


def parse_name(name: str) -> Tuple[Activation, bool]:
    """(record, affine) of a name as users spell it: "LA-SiLU_affine" -> (la_silu's record, True). ValueError from
    `lookup` for an unknown name; whether the record can be affine (only LayerAct can) is the caller's to say."""
    key = name.strip().lower() if isinstance(name, str) else name
    affine = isinstance(key, str) and key.endswith(AFFINE_SUFFIX)
    return lookup(key[: -len(AFFINE_SUFFIX)] if affine else key), affine


def kernel_code(kind: str) -> int:
    """The integer the fused kernels switch on for a LayerAct scale kind (silu 0, hardsilu 1, gelu 2, gelu_tanh 3)."""
    return _KERNEL_CODES[kind]


def layer_act_for(element: Activation) -> Activation:
    """The LayerAct taking an element activation's place: the one of the same scale (SiLU -> LA-SiLU, hard-swish
    -> LA-HardSiLU, GELU's tanh form -> LA-GELU's), else the first that converts its family (ReLU -> LA-SiLU)."""
    layer_acts = [r for r in _RECORDS if r.layer_act]
    return next((r for r in layer_acts if r.scale == element.scale),
                next(r for r in layer_acts if element.family in r.converts))


def _type_names(cls: type) -> Iterable[str]:
    for klass in cls.__mro__:
        yield f"{klass.__module__}.{klass.__qualname__}"


def element_of(module_or_type: Any) -> Optional[Activation]:
    """The element-level record a module (or module type) is an instance of, by class name: no import needed.

    An instance is matched on its attributes too (nn.GELU(approximate="tanh") is "gelu_tanh"); a type is
    matched on its class alone (nn.GELU is "gelu")."""
    is_type = isinstance(module_or_type, type)
    cls = module_or_type if is_type else type(module_or_type)
    for type_name in _type_names(cls):
        if not is_type:
            for record in _RECORDS:
                if any(type_name == name and getattr(module_or_type, attr, None) == value
                       for name, attr, value in record.replaces_when):
                    return record
        for record in _RECORDS:
            if type_name in record.replaces:
                return record
    return None


def no_layer_act_form(cls: type) -> Optional[str]:
    """Why `cls` (QuickGELU) has no LayerAct form and how to convert it anyway, or None."""
    return next((NO_LAYER_ACT_FORM[name] for name in _type_names(cls) if name in NO_LAYER_ACT_FORM), None)


def records_of_module(cls: type) -> Tuple[Activation, ...]:
    """The LayerAct records built by `cls` or its nearest catalogued base (LAGELU: la_gelu, la_gelu_tanh)."""
    for type_name in _type_names(cls):
        found = tuple(r for r in _RECORDS if r.layer_act and r.module == type_name)
        if found:
            return found
    return ()


def converted_families(cls: type) -> Tuple[str, ...]:
    """The element families a conversion to the LayerAct class `cls` replaces by default (LAGELU: gelu)."""
    records = records_of_module(cls)
    return tuple(dict.fromkeys(f for r in records for f in r.converts)) if records else _DEFAULT_FAMILIES


def form_options(cls: type, source: Any) -> Dict[str, Any]:
    """The options of the form of LayerAct `cls` whose scale is that of the activation `source` it replaces
    (LAGELU for nn.GELU(approximate="tanh"): approximate="tanh"; for nn.GELU(): {}, the class's default form);
    {} when no form of cls has the source's scale."""
    element = element_of(source)
    match = next((r for r in records_of_module(cls) if element is not None and r.scale == element.scale), None)
    return dict(match.options) if match is not None else {}


def _classes(names: Iterable[str]) -> Tuple[type, ...]:
    found = (resolve(name) for name in names)
    return tuple(dict.fromkeys(cls for cls in found if isinstance(cls, type)))


def replaced_types(families: Optional[Iterable[str]] = None) -> Tuple[type, ...]:
    """Every module class an element record (of `families`, default all) names; imports timm."""
    wanted = None if families is None else set(families)
    return _classes(name for record in _RECORDS if wanted is None or record.family in wanted
                    for name in (*record.replaces, *(entry[0] for entry in record.replaces_when)))


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
