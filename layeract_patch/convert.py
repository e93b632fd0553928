"""convert_activations: swap a torchvision or timm model's activations for LayerAct, in place, with a report.

    model = convert_activations(torchvision.models.resnet50(weights="DEFAULT"), to="la_silu")

What it converts (by default): nn.ReLU, nn.SiLU, nn.Hardswish and timm's Swish, HardSwish, SwishMe,
HardSwishMe, also inside timm's norm-act modules (BatchNormAct2d.act). Gates (sigmoid-like modules, and
whatever sits in a `scale_activation` or `gate` slot) are never touched. Without `affine` nothing is added
to the state_dict, so pretrained weights load before or after the conversion.

Two things a plain module swap cannot do, and how this one does them:
- Reused instances. torchvision's ResNet blocks call one `self.relu` two or three times. With affine=True
  every call site needs its own weight/bias: an example forward records each site and its channel count, and
  the reused module becomes a `CallSiteActs` holding one LayerAct per site. (Sites called once are sized
  without an example input when the traced graph shows what feeds them.)
- Functional activations (`F.relu` in googlenet, inception_v3, densenet121's last one). They are found and
  reported; functional="convert" rewrites them into modules with torch.fx, which makes the root a
  GraphModule (it loses the model's own methods, e.g. timm's `forward_features`, `reset_classifier`).
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import operator
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from .call_sites import CallSiteActs
from .modules import LayerAct
from .registry import LAYERACT_NAMES, get_act_layer

__all__ = ["convert_activations", "ConversionReport", "CallSiteActs", "default_activation_types", "gate_types"]

logger = logging.getLogger(__name__)

FUNCTIONAL_MODES = ("report", "convert", "ignore")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_GATE_SLOTS = ("scale_activation", "gate")  # torchvision SqueezeExcitation, timm SE/ECA/CBAM gates
_HOOK_ATTRS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook")
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)
_MAX_LISTED = 40
# Modules whose output has the input's dim 1 (channels).
_SAME_CHANNELS = (nn.Identity, nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
                  nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                  nn.modules.pooling._AdaptiveMaxPoolNd)
_SUMS = (operator.add, operator.iadd, torch.add)


def _timm_types(*names: str) -> Tuple[type, ...]:
    """timm classes by "module.Class" name; none when timm (or that class) is not there."""
    found = []
    for name in names:
        module_name, cls_name = name.rsplit(".", 1)
        try:
            module = importlib.import_module(f"timm.layers.{module_name}")
        except ImportError:
            continue
        cls = getattr(module, cls_name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def default_activation_types() -> Tuple[type, ...]:
    """The module types converted when `to` is a name or a class."""
    return (nn.ReLU, nn.SiLU, nn.Hardswish) + _timm_types(
        "activations.Swish", "activations.HardSwish", "activations_me.SwishMe", "activations_me.HardSwishMe")


def gate_types() -> Tuple[type, ...]:
    """Sigmoid-like gates: never converted (LayerAct is an activation, not a gate)."""
    return (nn.Sigmoid, nn.Hardsigmoid) + _timm_types(
        "activations.Sigmoid", "activations.HardSigmoid", "activations_me.HardSigmoidMe")


def _strip_wrappers(fqn: str) -> str:
    """The name as in the unwrapped model: DDP/DataParallel's `module.`, torch.compile's `_orig_mod.` removed."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if fqn.startswith(prefix):
                fqn, stripped = fqn[len(prefix):], True
    return fqn


# ---------------------------------------------------------------------------------------------------- targets

class _Target(NamedTuple):
    cls: type
    kwargs: Dict[str, Any]
    affine: bool


def _target(value: Any, layer_kwargs: Dict[str, Any], affine: bool) -> _Target:
    """A `to` value (name, LayerAct class or partial of one) as the class and its constructor kwargs."""
    if isinstance(value, str):
        try:
            value = get_act_layer(value)
        except ValueError:
            raise ValueError(f"unknown activation {value!r} for convert_activations(to=...); choose one of: "
                             f"{', '.join(LAYERACT_NAMES)}, a LayerAct class, or a mapping "
                             f"{{source module type: target}}") from None
    kwargs: Dict[str, Any] = {}
    if isinstance(value, partial):
        kwargs, value = dict(value.keywords), value.func
    if not (isinstance(value, type) and issubclass(value, LayerAct)):
        raise ValueError(f"convert_activations converts to LayerAct, and {getattr(value, '__name__', value)!r} is not "
                         f"one; choose one of: {', '.join(LAYERACT_NAMES)}, or a LayerAct subclass")
    kwargs.update(layer_kwargs)
    for reserved in ("num_channels", "device", "dtype"):
        if reserved in kwargs:
            raise ValueError(f"convert_activations sets {reserved!r} for each call site itself; drop it from the "
                             f"arguments (device and dtype follow the model's)")
    affine = bool(kwargs.pop("affine", False)) or affine
    # Built once here so a bad option fails before the model is touched.
    value(affine=affine, num_channels=1 if affine else None, **kwargs)
    return _Target(value, kwargs, affine)


def _resolve_to(to: Any, layer_kwargs: Dict[str, Any], affine: bool) -> Dict[type, _Target]:
    if isinstance(to, Mapping):
        if not to:
            raise ValueError("convert_activations(to={}) has nothing to convert; map source module types to targets, "
                             "e.g. to={nn.Hardswish: 'la_hardsilu', nn.ReLU: 'la_silu'}")
        gates = gate_types()
        resolved = {}
        for source, target in to.items():
            if not (isinstance(source, type) and issubclass(source, nn.Module)):
                raise TypeError(f"convert_activations(to=...) mapping keys must be nn.Module classes (e.g. nn.ReLU), "
                                f"got {source!r}")
            if issubclass(source, gates):
                raise ValueError(f"{source.__name__} is a gate and gates are never converted (LayerAct replaces "
                                 f"activations, not the sigmoid of squeeze-excitation); remove it from `to`")
            resolved[source] = _target(target, layer_kwargs, affine)
        return resolved
    target = _target(to, layer_kwargs, affine)
    return {source: target for source in default_activation_types()}


def _lookup(mapping: Dict[type, _Target], cls: type) -> Optional[_Target]:
    """The target for a module class: its own entry or its nearest base class's."""
    for base in cls.__mro__:
        if base in mapping:
            return mapping[base]
    return None


# ---------------------------------------------------------------------------------------------------- report

class Swap(NamedTuple):
    fqn: str
    old: str
    new: str


class Skip(NamedTuple):
    fqn: str
    type: str
    reason: str


class FunctionalCall(NamedTuple):
    fqn: str  # the module whose forward makes the call, or the module the call became
    function: str
    status: str


@dataclass
class ConversionReport:
    """What `convert_activations` did: `swapped`, `skipped` (with the reason) and `functional` call sites.

    Names are fully qualified as in the unwrapped model (no `module.` / `_orig_mod.` prefix);
    "" is the root. `notes` says what could not be checked or was given up.
    """

    model: str
    swapped: List[Swap] = field(default_factory=list)
    skipped: List[Skip] = field(default_factory=list)
    functional: List[FunctionalCall] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        kinds = Counter(f"{s.old} -> {s.new.split('(')[0]}" for s in self.swapped)
        lines = [f"convert_activations({self.model}): {len(self.swapped)} swapped"
                 + (f" ({', '.join(f'{k}: {n}' for k, n in kinds.items())})" if kinds else "")
                 + f", {len(self.skipped)} skipped, {len(self.functional)} functional call sites"]
        sections = (("swapped", [f"{s.fqn or '<root>'}: {s.old} -> {s.new}" for s in self.swapped]),
                    ("skipped", [f"{s.fqn or '<root>'}: {s.type} ({s.reason})" for s in self.skipped]),
                    ("functional", [f"{c.fqn or '<root>'}: {c.function} ({c.status})" for c in self.functional]),
                    ("notes", list(self.notes)))
        for title, entries in sections:
            if entries:
                lines.append(f"{title}:")
                lines += [f"  {e}" for e in entries[:_MAX_LISTED]]
                if len(entries) > _MAX_LISTED:
                    lines.append(f"  ... and {len(entries) - _MAX_LISTED} more (see report.{title})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- recording

class _Call(NamedTuple):
    caller: Optional[nn.Module]
    position: int
    shape: Optional[Tuple[int, ...]]
    dtype: Optional[torch.dtype]
    device: Optional[torch.device]


def _functional_sources() -> Dict[Any, Tuple[str, type]]:
    """Functions (and Tensor methods) that a module walk cannot see -> (label, equivalent module type)."""
    return {F.relu: ("F.relu", nn.ReLU), F.relu_: ("F.relu_", nn.ReLU), torch.relu: ("torch.relu", nn.ReLU),
            torch.relu_: ("torch.relu_", nn.ReLU), torch.Tensor.relu: ("Tensor.relu", nn.ReLU),
            torch.Tensor.relu_: ("Tensor.relu_", nn.ReLU), F.silu: ("F.silu", nn.SiLU),
            F.hardswish: ("F.hardswish", nn.Hardswish)}


class _Recorder(TorchFunctionMode):
    """One example forward: every call of the watched modules (caller, position, input) and functional calls."""

    def __init__(self, root: nn.Module, watched: Dict[int, nn.Module], names: Dict[int, str],
                 spy_functional: bool) -> None:
        super().__init__()
        self.root, self.watched, self.names, self.spy = root, watched, names, spy_functional
        self.calls: Dict[int, List[_Call]] = defaultdict(list)
        self.functional: Dict[Tuple[str, str, int], None] = {}
        self.sources = _functional_sources()
        self.stack: List[Tuple[nn.Module, Counter]] = []

    def _pre(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if id(module) in self.watched:
            caller, counts = self.stack[-1] if self.stack else (None, Counter())
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.calls[id(module)].append(_Call(caller, counts[id(module)], None if x is None else tuple(x.shape),
                                                None if x is None else x.dtype, None if x is None else x.device))
            counts[id(module)] += 1
        self.stack.append((module, Counter()))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.sources and self.stack and not _is_activation_like(self.stack[-1][0]):
            label = self.sources[func][0]
            scope, counts = self.stack[-1]
            self.functional[(self.names.get(id(scope), "?"), label, counts[label])] = None
            counts[label] += 1
        return func(*args, **(kwargs or {}))

    def run(self, example_input: Any) -> None:
        handles = []
        for module in self.root.modules():
            handles.append(module.register_forward_pre_hook(self._pre))
            handles.append(module.register_forward_hook(self._post, always_call=True))
        buffers = [(b, b.detach().clone()) for b in self.root.buffers()]
        args, kwargs = ((), example_input) if isinstance(example_input, dict) else (
            (tuple(example_input), {}) if isinstance(example_input, (tuple, list)) else ((example_input,), {}))
        cuda = sorted({t.device.index or 0 for t in (*args, *kwargs.values())
                       if isinstance(t, torch.Tensor) and t.is_cuda})
        try:
            # Not a training step: BatchNorm statistics and the RNG come back as they were.
            with torch.no_grad(), torch.random.fork_rng(devices=cuda), (self if self.spy else contextlib.nullcontext()):
                _unwrap(self.root)(*args, **kwargs)  # no DDP syncs, DataParallel threads or compiling
        finally:
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


def _is_activation_like(module: nn.Module) -> bool:
    if isinstance(module, (LayerAct, CallSiteActs)):
        return True
    if isinstance(module, _NOT_ACTIVATIONS):
        return False
    return type(module).__module__ in ("torch.nn.modules.activation", "timm.layers.activations",
                                       "timm.layers.activations_me")


# ---------------------------------------------------------------------------------------------------- torch.fx

class _LeafTracer(fx.Tracer):
    """Keeps activations, gates, LayerAct and timm's norm-act modules as module calls instead of tracing into them.

    For each module of the `leaves` types it notes how often it is called (`module_calls`) and, per call, the
    module its input comes from (`inputs`), which sizes affine sites when there is no example input.
    """

    def __init__(self, leaves: Tuple[type, ...]) -> None:
        super().__init__()
        self.leaves = leaves
        self.module_calls: Counter = Counter()
        self.inputs: Dict[int, List[Optional[nn.Module]]] = defaultdict(list)
        self.producers: Dict[fx.Node, Optional[nn.Module]] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # timm's norm-act modules stay whole: they are _BatchNorm/GroupNorm subclasses that size what follows.
        return (isinstance(m, self.leaves) or type(m).__module__ == "timm.layers.norm_act"
                or super().is_leaf_module(m, qualname))

    def call_module(self, m, forward, args, kwargs):
        if isinstance(m, self.leaves):
            self.module_calls[id(m)] += 1
            self.inputs[id(m)].append(self._producer(args[0].node) if args and isinstance(args[0], fx.Proxy) else None)
        return super().call_module(m, forward, args, kwargs)

    def _producer(self, node: Any) -> Optional[nn.Module]:
        """The module whose output `node` is, looking through modules that keep the channels (activations,
        Identity, Dropout, pooling) and through a residual sum (when both operands agree on the channels)."""
        if not isinstance(node, fx.Node):
            return None
        if node not in self.producers:  # memo: residual chains would otherwise be walked exponentially often
            self.producers[node] = None
            if node.op == "call_function" and node.target in _SUMS and len(node.args) == 2:
                found = [self._producer(arg) for arg in node.args]
                sized = {_channels_of(p) for p in found}
                self.producers[node] = found[0] if len(sized) == 1 and None not in sized else None
            elif node.op == "call_module":
                module = self.root.get_submodule(node.target)
                same = isinstance(module, _SAME_CHANNELS) or _is_activation_like(module)
                self.producers[node] = self._producer(node.args[0]) if same and node.args else module
        return self.producers[node]


def _node_source(node: fx.Node, sources: Dict[Any, Tuple[str, type]]) -> Optional[Tuple[str, type, bool]]:
    """(label, equivalent module type, in place) for a functional activation node, else None."""
    if node.op == "call_function" and node.target in sources:
        label, kind = sources[node.target]
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        label, kind = f"Tensor.{node.target}", nn.ReLU
    else:
        return None
    inplace = label.endswith("_") or bool(node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False))
    return label, kind, inplace


def _node_scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return _strip_wrappers(last[0] if isinstance(last, tuple) else str(last))


def _trace(root: nn.Module, leaves: Tuple[type, ...]) -> Tuple[_LeafTracer, fx.Graph]:
    tracer = _LeafTracer(leaves)
    return tracer, tracer.trace(root)


def _free_name(gm: fx.GraphModule, scope: str, base: str) -> str:
    prefix = f"{scope}." if scope else ""
    name, i = f"{prefix}{base}", 0
    while _find(gm, name) is not None:
        i += 1
        name = f"{prefix}{base}_{i}"
    return name


def _find(root: nn.Module, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _functional_to_modules(root: nn.Module, mapping: Dict[type, _Target], leaves: Tuple[type, ...],
                           report: ConversionReport) -> nn.Module:
    """Rewrite functional activations into module calls (nn.ReLU, ...) that the module pass then converts."""
    if _is_wrapper(root):
        raise ValueError(f"functional='convert' rewrites the model with torch.fx and cannot see through "
                         f"{type(root).__name__}; convert the inner model (e.g. model.module or model._orig_mod) "
                         f"first, then wrap it")
    try:
        tracer, graph = _trace(root, leaves)
    except Exception as err:
        raise ValueError(f"functional='convert' needs a model torch.fx can trace, and tracing {type(root).__name__} "
                         f"failed ({type(err).__name__}: {err}); use functional='report' to list its functional "
                         f"activations, or 'ignore'") from err
    gm = fx.GraphModule(tracer.root, graph, class_name=type(root).__name__)
    order = {node: i for i, node in enumerate(graph.nodes)}
    sources, changed = _functional_sources(), False
    for node in list(graph.nodes):
        found = _node_source(node, sources)
        if found is None:
            continue
        label, kind, inplace = found
        scope = _node_scope(node)
        if _lookup(mapping, kind) is None:
            report.functional.append(FunctionalCall(scope, label, f"left as is: {kind.__name__} is not a target"))
            continue
        source = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(source, fx.Node):
            report.functional.append(FunctionalCall(scope, label, "left as is: its input is not a traced tensor"))
            continue
        if inplace and any(order[user] > order[node] for user in source.users if user is not node):
            report.functional.append(FunctionalCall(scope, label, "left as is: in place, and its input is used "
                                                                   "again after it"))
            continue
        name = _free_name(gm, scope, label.split(".")[-1].rstrip("_"))
        gm.add_submodule(name, kind(inplace=inplace))
        with graph.inserting_before(node):
            call = graph.call_module(name, (source,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        report.functional.append(FunctionalCall(name, label, f"now module {name}"))
        changed = True
    if not changed:
        return root  # nothing rewritten: keep the user's model object (idempotence)
    graph.lint()
    gm.recompile()
    gm.training = root.training
    _move_hooks(root, gm, share=True)
    lost = [n for n, m in root.named_modules() if m is not root and any(getattr(m, a) for a in _HOOK_ATTRS[:5])
            and _find(gm, n) is not m]
    report.notes.append(f"functional='convert' made the root a torch.fx GraphModule ({type(root).__name__}'s own "
                        f"methods, e.g. forward_features / reset_classifier, are gone; control flow was fixed at "
                        f"trace time in {'train' if root.training else 'eval'} mode)")
    if lost:
        report.notes.append(f"forward hooks on modules traced through are gone: {', '.join(lost)}")
    missing = sorted(set(root.state_dict()) - set(gm.state_dict()))
    if missing:
        report.notes.append(f"unused by the traced forward, so not in the new state_dict: {', '.join(missing[:10])}"
                            + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return gm


def _is_wrapper(module: nn.Module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(module, "_orig_mod")


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers: the same forward, without their machinery."""
    while _is_wrapper(module):
        module = module._orig_mod if hasattr(module, "_orig_mod") else module.module
    return module


# ---------------------------------------------------------------------------------------------------- the swap

class _Slot(NamedTuple):
    parent: Optional[nn.Module]
    name: Optional[str]
    child: nn.Module
    fqn: str


def _slots(root: nn.Module) -> List[_Slot]:
    """Every (parent, attribute) holding a module, in module order; an instance under two parents gives two."""
    slots = [_Slot(None, None, root, "")]
    seen = {id(root)}

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, (LayerAct, CallSiteActs)):
            return
        for name, child in module._modules.items():
            if child is None:
                continue
            fqn = _strip_wrappers(f"{prefix}{name}")
            slots.append(_Slot(module, name, child, fqn))
            if id(child) not in seen:
                seen.add(id(child))
                visit(child, f"{prefix}{name}.")

    visit(root, "")
    return slots


def _channels_from_structure(slot: _Slot) -> Tuple[Optional[int], Optional[nn.Module]]:
    """The channel count of the activation's input where the model's structure fixes it, with the module that says so.

    Reliable cases only: the `act` of a timm norm-act module (it normalizes its own input), and a module
    right after a BatchNorm, GroupNorm or conv in an nn.Sequential that keeps Sequential's forward.
    """
    parent, name = slot.parent, slot.name
    if name == "act" and (isinstance(parent, (_BatchNorm, nn.GroupNorm))
                          or type(parent).__module__.startswith("timm.layers.norm_act")):
        channels = getattr(parent, "num_features", None) or getattr(parent, "num_channels", None)
        return (channels, parent) if isinstance(channels, int) else (None, None)
    if isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
        keys = list(parent._modules)
        index = keys.index(name)
        previous = parent._modules[keys[index - 1]] if index > 0 else None
        channels = _channels_of(previous)
        return (channels, previous) if channels is not None else (None, None)
    return None, None


def _move_hooks(old: nn.Module, new: nn.Module, share: bool) -> None:
    """Give `new` the hooks of `old`; shared dicts keep the user's RemovableHandles working."""
    for attr in _HOOK_ATTRS:
        value = old.__dict__.get(attr)
        if value is not None:
            new.__dict__[attr] = value if share or isinstance(value, bool) else copy.copy(value)


def _build(target: _Target, old: nn.Module, channels: Optional[int] = None,
           like: Optional[Union[nn.Module, _Call]] = None) -> LayerAct:
    kwargs = dict(target.kwargs)
    kwargs.setdefault("inplace", bool(getattr(old, "inplace", False)))
    if channels is not None:
        device = dtype = None
        if isinstance(like, _Call):
            device, dtype = like.device, like.dtype
        elif isinstance(like, nn.Module):
            tensor = next(iter(like.parameters()), None)
            tensor = tensor if tensor is not None else next(iter(like.buffers()), None)
            if tensor is not None:
                device, dtype = tensor.device, tensor.dtype
        dtype = dtype if dtype is not None and dtype.is_floating_point else None
        kwargs.update(affine=True, num_channels=channels, device=device, dtype=dtype)
    new = target.cls(**kwargs)
    new.train(old.training)
    return new


def _call_sites(calls: List[_Call], start_dim: int) -> Tuple[List[_Call], List[List[int]], List[nn.Module], str]:
    """Unique (caller, position) sites in first-call order -> (sites, schedule, callers, problem)."""
    sites: Dict[Tuple[int, int], int] = {}
    first: List[_Call] = []
    callers: Dict[int, int] = {}
    caller_modules: List[Optional[nn.Module]] = []
    schedule: List[List[int]] = []
    for call in calls:
        if call.shape is None or not -len(call.shape) <= start_dim < len(call.shape):
            return [], [], [], "its input in the example forward is not a tensor with a channel dim"
        key = (id(call.caller), call.position)
        if key not in sites:
            sites[key] = len(first)
            first.append(call)
            if id(call.caller) not in callers:
                callers[id(call.caller)] = len(caller_modules)
                caller_modules.append(call.caller)
                schedule.append([])
            schedule[callers[id(call.caller)]].append(sites[key])
        elif first[sites[key]].shape[start_dim] != call.shape[start_dim]:
            return [], [], [], (f"one call site saw {first[sites[key]].shape[start_dim]} and {call.shape[start_dim]} "
                                f"channels")
    return first, schedule, caller_modules, ""


def convert_activations(model: nn.Module, to: Union[str, type, Mapping[type, Any]] = "la_silu", *,
                        filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, affine: bool = False,
                        example_input: Any = None, functional: str = "report", return_report: bool = False,
                        **layer_kwargs: Any):
    """Replace the activations of `model` with LayerAct, in place; returns the (possibly new) root.

    Args:
        model: any nn.Module; the root itself may be an activation. Load pretrained weights before, build the
            optimizer after (with affine=True the new parameters exist only after the conversion).
        to: "la_silu" / "la_hardsilu" (any name of `layeract_patch.get_act_layer`), a LayerAct class, or a
            mapping {source module type: target}, which converts exactly those types, e.g.
            {nn.Hardswish: "la_hardsilu", nn.ReLU: "la_silu", nn.SiLU: "la_silu"}. A name or a class converts
            `default_activation_types()`.
        filter_fn: `filter_fn(module, fqn) -> bool`, False keeps that module as it is. `fqn` is its name in the
            unwrapped model (DDP's `module.` and torch.compile's `_orig_mod.` removed). Functional call sites
            (functional="convert") are offered as the equivalent module, e.g. an nn.ReLU named "conv1.relu".
        affine: give each call site a learnable per-channel weight/bias (see LayerAct). Needs each site's channel
            count: from `example_input`; else from a torch.fx trace, where the module feeding the activation fixes
            it (a BatchNorm, GroupNorm or conv, seen through pooling, dropout and residual sums) and the module is
            called once; else from the structure (a timm BatchNormAct2d's act, a module right after a
            BatchNorm/conv in an nn.Sequential); else a ValueError naming the modules. A module called several
            times per forward (torchvision ResNet's `relu`) always needs `example_input`.
        example_input: a tensor (or tuple of positional args, or dict of kwargs) on the model's device, for one
            example forward, run in the model's current mode without grad; BatchNorm statistics and the RNG state
            are restored after it.
            It records every call site (needed for affine with reused modules) and functional calls.
        functional: what to do with F.relu / F.silu / F.hardswish calls that no module swap reaches:
            "report" (default) lists them in the report and warns; "convert" rewrites them into modules with
            torch.fx first, which returns a GraphModule (the model's own methods such as timm's forward_features
            are gone, train/eval control flow is fixed at trace time; load weights before converting);
            "ignore" skips the search.
        return_report: return `(model, ConversionReport)` instead of the model. The report is also logged at
            INFO level on the "layeract_patch.convert" logger.
        **layer_kwargs: passed to every new LayerAct, e.g. alpha=1e-5, start_dim=1.

    Raises:
        ValueError: unknown `to`, bad options, affine without a way to size every site, or nothing to convert
            (the message names the model's class and what it found instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_activations expects an nn.Module, got {type(model).__name__}")
    if functional not in FUNCTIONAL_MODES:
        raise ValueError(f"functional={functional!r} is not one of {FUNCTIONAL_MODES}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable as filter_fn(module, fqn) -> bool, got {type(filter_fn).__name__}")
    mapping = _resolve_to(to, layer_kwargs, affine)
    any_affine = any(t.affine for t in mapping.values())
    if any_affine and isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("affine=True adds parameters, which DistributedDataParallel would not synchronize: convert "
                         "model.module first, then wrap it in DDP and build the optimizer")
    report = ConversionReport(model=type(model).__name__)
    leaves = tuple(mapping) + gate_types() + default_activation_types() + (LayerAct, CallSiteActs)

    root, traced, recorder = model, None, None
    if not isinstance(root, leaves):  # a root that is itself an activation is a call, not a functional site
        if functional == "convert":
            root = _functional_to_modules(root, mapping, leaves, report)
        elif functional == "report" and example_input is None:
            traced = _report_functional_by_tracing(root, leaves, report)
        if traced is None and example_input is None and any_affine:
            with contextlib.suppress(Exception):  # untraceable: only the structural rules size affine sites
                traced = _trace(_unwrap(root), leaves)[0]
    if example_input is not None:
        recorder = _record(root, mapping, example_input, functional == "report", report)

    accepted, all_slots = _choose_slots(root, mapping, filter_fn, report)
    replacements, attachments = _plan(model, mapping, accepted, all_slots, recorder, traced)

    # Swap. Nothing above touched the model, so an error leaves it as it was.
    for key, chosen in accepted.items():
        new, description = replacements[key]
        old = chosen[0].child
        _move_hooks(old, new, share=len(chosen) == len(all_slots[key]))
        for slot in chosen:
            if slot.parent is None:
                root = new
            else:
                slot.parent._modules[slot.name] = new
            report.swapped.append(Swap(slot.fqn, type(old).__name__, description))
    for dispatch, callers in attachments:
        for index, caller in enumerate(callers):
            dispatch.attach(caller if caller is not None else root, index)

    _check_something_done(model, root, report)
    logger.info("%s", report)
    return (root, report) if return_report else root


def _record(root: nn.Module, mapping: Dict[type, _Target], example_input: Any, spy_functional: bool,
            report: ConversionReport) -> _Recorder:
    """Run the example forward; functional calls it saw go into the report."""
    names: Dict[int, str] = {}
    for fqn, module in root.named_modules():
        names.setdefault(id(module), _strip_wrappers(fqn))
    watched = {id(m): m for m in root.modules() if _lookup(mapping, type(m)) is not None}
    recorder = _Recorder(root, watched, names, spy_functional)
    recorder.run(example_input)
    per_forward = Counter((scope, label) for scope, label, _ in recorder.functional)
    for (scope, label), count in per_forward.items():
        report.functional.append(FunctionalCall(scope, label, "found, not converted"
                                                + (f" ({count} calls per forward)" if count > 1 else "")))
    return recorder


def _choose_slots(root: nn.Module, mapping: Dict[type, _Target], filter_fn: Optional[Callable],
                  report: ConversionReport) -> Tuple[Dict[int, List[_Slot]], Dict[int, List[_Slot]]]:
    """The slots to convert, by module instance, and every slot of each instance; skips go into the report."""
    gates = gate_types()
    accepted: Dict[int, List[_Slot]] = defaultdict(list)
    all_slots: Dict[int, List[_Slot]] = defaultdict(list)
    for slot in _slots(root):
        module = slot.child
        first_time = id(module) not in all_slots
        all_slots[id(module)].append(slot)
        target = _lookup(mapping, type(module))
        name = type(module).__name__
        if isinstance(module, (LayerAct, CallSiteActs)) and target is None:
            reason = "already LayerAct"
        elif isinstance(module, gates) or (slot.name in _GATE_SLOTS and (target or _is_activation_like(module))):
            reason = "gate, never converted"
        elif target is None:
            if not _is_activation_like(module):
                continue
            reason = "not a target type" + (f"; to={{nn.{name}: 'la_silu'}} would convert it"
                                            if type(module).__module__.startswith("torch.nn") else "")
        elif filter_fn is not None and not filter_fn(module, slot.fqn):
            report.skipped.append(Skip(slot.fqn, name, "excluded by filter_fn"))
            continue
        else:
            accepted[id(module)].append(slot)
            continue
        if first_time:
            report.skipped.append(Skip(slot.fqn, name, reason))
    return accepted, all_slots


def _plan(model: nn.Module, mapping: Dict[type, _Target], accepted: Dict[int, List[_Slot]],
          all_slots: Dict[int, List[_Slot]], recorder: Optional[_Recorder], traced: Optional[_LeafTracer]):
    """One replacement per accepted instance (with its description), and the CallSiteActs to attach to callers.

    Raises one ValueError listing every affine module whose call sites cannot all be sized.
    """
    replacements: Dict[int, Tuple[nn.Module, str]] = {}
    attachments: List[Tuple[CallSiteActs, List[Optional[nn.Module]]]] = []
    problems: List[str] = []
    for key, chosen in accepted.items():
        old, target = chosen[0].child, _lookup(mapping, type(chosen[0].child))
        name = target.cls.__name__
        where = f"{chosen[0].fqn or '<root>'} ({type(old).__name__}" + (
            f" in {type(chosen[0].parent).__name__})" if chosen[0].parent is not None else ")")
        if not target.affine:
            replacements[key] = (_build(target, old), name)
            continue
        start_dim = target.kwargs.get("start_dim", 1)
        calls = recorder.calls.get(key, []) if recorder is not None else []
        sites, schedule, callers, problem = _call_sites(calls, start_dim)
        shared = len(all_slots[key])
        if problem:
            problems.append(f"{where}: {problem}")
        elif len(sites) > 1 and len(chosen) != shared:
            problems.append(f"{where}: reused at {len(sites)} call sites and excluded by filter_fn under another "
                            f"name; include or exclude all of {', '.join(s.fqn for s in all_slots[key])}")
        elif len(sites) > 1:
            acts = [_build(target, old, site.shape[start_dim], site) for site in sites]
            dispatch = CallSiteActs(acts, schedule)
            dispatch.train(old.training)
            attachments.append((dispatch, callers))
            replacements[key] = (dispatch, f"CallSiteActs({len(acts)} x {name}: "
                                           f"{', '.join(str(a.num_channels) for a in acts)})")
        elif len(sites) == 1:
            channels = sites[0].shape[start_dim]
            replacements[key] = (_build(target, old, channels, sites[0]), f"{name}({channels})")
        else:
            count = traced.module_calls[key] if traced is not None else 0
            like = traced.inputs[key][0] if count == 1 else None
            channels = _channels_of(like) if start_dim == 1 else None
            if channels is None and start_dim == 1:
                channels, like = _channels_from_structure(chosen[0])
            if shared > 1:
                problems.append(f"{where}: one instance held in {shared} places "
                                f"({', '.join(s.fqn for s in all_slots[key])})")
            elif count > 1:
                problems.append(f"{where}: called {count} times per forward")
            elif channels is None:
                problems.append(f"{where}: " + ("not called in the example forward, and " if recorder else "")
                                + "its channel count does not follow from the model's structure")
            else:
                replacements[key] = (_build(target, old, channels, like), f"{name}({channels})")
    if problems:
        raise ValueError(
            f"convert_activations(affine=True) gives every call site its own weight and bias, sized by its channel "
            f"count, and cannot do that for {len(problems)} module(s) of {type(model).__name__}:\n  "
            + "\n  ".join(problems[:_MAX_LISTED]) + ("\n  ..." if len(problems) > _MAX_LISTED else "")
            + "\nPass example_input=<a batch like your data, e.g. torch.randn(2, 3, 224, 224)> so one forward records "
              "every call site and its shape (or exclude these with filter_fn)")
    return replacements, attachments


def _report_functional_by_tracing(root: nn.Module, leaves: Tuple[type, ...],
                                  report: ConversionReport) -> Optional[_LeafTracer]:
    """List functional activations via a symbolic trace; returns the tracer (None if the model is untraceable)."""
    try:
        tracer, graph = _trace(_unwrap(root), leaves)
    except Exception as err:
        report.notes.append(f"functional activations not checked: torch.fx could not trace {type(root).__name__} "
                            f"({type(err).__name__}); pass example_input to check with one forward")
        return None
    sources = _functional_sources()
    for node in graph.nodes:
        found = _node_source(node, sources)
        if found is not None:
            report.functional.append(FunctionalCall(_node_scope(node), found[0], "found, not converted"))
    return tracer


def _channels_of(producer: Optional[nn.Module]) -> Optional[int]:
    """Dim 1 of a module's output, where its type fixes it."""
    if isinstance(producer, _BatchNorm):
        return producer.num_features
    if isinstance(producer, nn.GroupNorm):
        return producer.num_channels
    if isinstance(producer, _ConvNd):
        return producer.out_channels
    return None


def _check_something_done(model: nn.Module, root: nn.Module, report: ConversionReport) -> None:
    """Never a silent no-op: nothing converted (now or before) raises, naming the model and what it has instead."""
    pending = [c for c in report.functional if c.status.startswith("found")]
    labels = ", ".join(f"{k} x{n}" for k, n in Counter(c.function for c in pending).items())
    if report.swapped or any(isinstance(m, (LayerAct, CallSiteActs)) for m in root.modules()):
        if pending:
            warnings.warn(f"convert_activations: {type(model).__name__} makes {len(pending)} functional activation "
                          f"call(s) that a module swap cannot reach ({labels}, e.g. in {pending[0].fqn or '<root>'}); "
                          f"functional='convert' turns them into LayerAct (the model becomes a torch.fx "
                          f"GraphModule), functional='ignore' silences this", UserWarning, stacklevel=3)
        return
    excluded = sum(1 for s in report.skipped if s.reason == "excluded by filter_fn")
    others = Counter(s.type for s in report.skipped if s.reason.startswith("not a target"))
    hints = []
    if excluded:
        hints.append(f"filter_fn excluded all {excluded} candidates")
    if pending:
        hints.append(f"its activations are functional calls ({labels}): pass functional='convert'")
    if others:
        hints.append(f"it has {', '.join(f'{t} x{n}' for t, n in others.items())}: map them, e.g. "
                     f"to={{nn.{next(iter(others))}: 'la_silu'}}")
    raise ValueError(f"convert_activations found nothing to convert in {type(model).__name__}"
                     + ("; " + "; ".join(hints) if hints else
                        ": it has no ReLU, SiLU or Hardswish modules (nor timm's Swish/HardSwish)"))
