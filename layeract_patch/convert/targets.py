"""What to convert into what: `to=` resolved into LayerAct targets per source module type, read from the catalogue."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from torch import nn

from .. import catalogue
from ..modules import LayerAct
from .call_sites import CallSiteActs

__all__ = ["Target", "Targets", "resolve_targets", "default_activation_types", "gate_types", "is_activation",
           "conversion_hint"]


def default_activation_types(to: Any = "la_silu") -> Tuple[type, ...]:
    """The module types converted when `to` is this name or class: the element families its catalogue record
    converts (la_silu, la_hardsilu: nn.ReLU, nn.SiLU, nn.Hardswish and timm's kin; la_gelu: nn.GELU and timm's
    GELU, GELUTanh)."""
    return catalogue.replaced_types(catalogue.converted_families(_target(to, {}, False).cls))


def gate_types() -> Tuple[type, ...]:
    """Sigmoid-like gates: never converted (LayerAct is an activation, not a gate)."""
    return catalogue.gate_types()


@lru_cache(maxsize=None)
def _activation_like_types() -> Tuple[type, ...]:
    return catalogue.activation_types() + gate_types() + (LayerAct, CallSiteActs)


def is_activation(module: nn.Module) -> bool:
    """An activation (converted or not) or a gate: worth a line in the report when it is not converted."""
    return isinstance(module, _activation_like_types())


def _spelled(cls: type) -> str:
    """A class as code names it: nn.ELU, or timm's by module (timm.layers.activations.GELUTanh is not nn's)."""
    return f"nn.{cls.__name__}" if getattr(nn, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"


def conversion_hint(cls: type) -> str:
    """How an activation class that `to` does not target would be converted, from the catalogue: the LayerAct of
    its family by name (GELU: to='la_gelu'), why it has none (QuickGELU), or a mapping to LA-SiLU."""
    record = catalogue.element_of(cls)
    if record is not None:
        return f"to={catalogue.layer_act_for(record).name!r} converts it"
    note = catalogue.no_layer_act_form(cls)
    if note is not None:
        return note.format(cls=_spelled(cls))
    return f"to={{{_spelled(cls)}: 'la_silu'}} would convert it"


class Target(NamedTuple):
    cls: type
    kwargs: Dict[str, Any]
    affine: bool

    def describe(self) -> str:
        return self.cls.__name__ + ("(affine)" if self.affine else "")

    def matches(self, module: nn.Module) -> bool:
        """Is this converted module already what the target would build?"""
        if isinstance(module, CallSiteActs):
            return all(self.matches(site) for site in module.sites)
        return (type(module) is self.cls and module.affine == self.affine
                and all(getattr(module, k, v) == v for k, v in self.kwargs.items() if k != "inplace"))

    def build(self, old: nn.Module, channels: Optional[int] = None, like: Any = None,
              affine_dim: Optional[int] = None) -> LayerAct:
        """The LayerAct replacing `old`, in its mode; with `channels`, affine, on the device and dtype of `like`
        (an example call or the module feeding the site), along `affine_dim` where sizing chose one."""
        kwargs = dict(self.kwargs)
        if affine_dim is not None:
            kwargs.setdefault("affine_dim", affine_dim)
        kwargs.setdefault("inplace", bool(getattr(old, "inplace", False)))
        for key, value in catalogue.form_options(self.cls, old).items():  # the source's form unless one was given
            kwargs.setdefault(key, value)
        if channels is not None:
            if isinstance(like, nn.Module):
                like = next(iter(like.parameters()), next(iter(like.buffers()), None))
            dtype = getattr(like, "dtype", None)
            kwargs.update(affine=True, num_channels=channels, device=getattr(like, "device", None),
                          dtype=dtype if dtype is not None and dtype.is_floating_point else None)
        new = self.cls(**kwargs)
        new.train(old.training)
        return new


@dataclass
class Targets:
    by_type: Dict[type, Target]
    requested: Optional[Target]  # the one target of `to="name"` / a class; None for a mapping

    def for_type(self, cls: type) -> Optional[Target]:
        """The target for a module class: its own entry or its nearest base class's."""
        return next((self.by_type[base] for base in cls.__mro__ if base in self.by_type), None)

    def leaves(self) -> Tuple[type, ...]:
        """Module types a trace keeps whole: every activation, gate and LayerAct."""
        return tuple(self.by_type) + _activation_like_types()

    @property
    def any_affine(self) -> bool:
        return any(t.affine for t in self.by_type.values())


def _names() -> str:
    return ", ".join(catalogue.layer_act_names())


def _target(value: Any, layer_kwargs: Dict[str, Any], affine: bool) -> Target:
    """A `to` value (name, LayerAct class or partial of one) as the class and its constructor kwargs."""
    kwargs: Dict[str, Any] = {}
    if isinstance(value, str):
        try:  # "la_silu_affine" as the registry and the recipes' --act spell it: affine LA-SiLU
            record, affine_name = catalogue.parse_name(value)
        except ValueError:
            raise ValueError(f"unknown activation {value!r} for convert_activations(to=...); choose one of: "
                             f"{_names()} (each also as name + '_affine'), a LayerAct class, or a mapping "
                             f"{{source module type: target}}") from None
        if affine_name:
            kwargs["affine"] = True
        if record.layer_act:
            value, kwargs = record.module_class(), {**kwargs, **dict(record.options)}
    if isinstance(value, partial):
        kwargs, value = {**kwargs, **value.keywords}, value.func
    if not (isinstance(value, type) and issubclass(value, LayerAct)):
        raise ValueError(f"convert_activations converts to LayerAct, and {getattr(value, '__name__', value)!r} is not "
                         f"one; choose one of: {_names()}, or a LayerAct subclass")
    kwargs.update(layer_kwargs)
    for reserved in ("num_channels", "device", "dtype"):
        if reserved in kwargs:
            raise ValueError(f"convert_activations sets {reserved!r} for each call site itself; drop it from the "
                             f"arguments (device and dtype follow the model's)")
    affine = bool(kwargs.pop("affine", False)) or affine
    # Built once here so a bad option fails before the model is touched.
    value(affine=affine, num_channels=1 if affine else None, **kwargs)
    return Target(value, kwargs, affine)


def _check_source(source: Any) -> None:
    if not (isinstance(source, type) and issubclass(source, nn.Module)):
        raise TypeError(f"convert_activations(to=...) mapping keys must be nn.Module classes (e.g. nn.ReLU), "
                        f"got {source!r}")
    if issubclass(source, gate_types()):
        raise ValueError(f"{source.__name__} is a gate and gates are never converted (LayerAct replaces "
                         f"activations, not the sigmoid of squeeze-excitation); remove it from `to`")
    accepted = catalogue.activation_types() + (LayerAct,)
    if not issubclass(source, accepted):
        names = ", ".join(dict.fromkeys(cls.__name__ for cls in accepted))
        raise ValueError(f"convert_activations(to={{{source.__name__}: ...}}): {source.__name__} is not an "
                         f"activation, and only activations are replaced by LayerAct; the keys of `to` must be "
                         f"(subclasses of) {names} (a LayerAct class re-targets modules converted before)")


def resolve_targets(to: Any, layer_kwargs: Dict[str, Any], affine: bool) -> Targets:
    """`to` as Targets; every bad value raises here, before the model is touched."""
    if not isinstance(to, Mapping):
        target = _target(to, layer_kwargs, affine)
        sources = catalogue.replaced_types(catalogue.converted_families(target.cls))
        return Targets({source: target for source in sources}, target)
    if not to:
        raise ValueError("convert_activations(to={}) has nothing to convert; map source module types to targets, "
                         "e.g. to={nn.Hardswish: 'la_hardsilu', nn.ReLU: 'la_silu'}")
    for source in to:
        _check_source(source)
    return Targets({source: _target(target, layer_kwargs, affine) for source, target in to.items()}, None)
