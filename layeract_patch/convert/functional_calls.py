"""Functional activations (F.relu, torch.relu, x.relu(), F.silu, F.hardswish, F.gelu): calls no module swap reaches.

Found three ways, cheapest first: by reading each module's forward code (a plain swap; no trace), by the
example forward (see example_forward.py), or by a torch.fx trace, which functional="convert" needs anyway to
rewrite them into activation modules that the swap then converts.
"""
from __future__ import annotations

import ast
import dis
import functools
import inspect
import textwrap
from types import CodeType
from typing import Any, Dict, List, Optional, Tuple

import torch.fx as fx
from torch import nn

from .. import catalogue
from .report import ConversionReport, FunctionalCall
from .targets import Targets, is_activation
from .tracing import HOOK_ATTRS, discarded_calls, node_scope, trace
from .wrappers import is_wrapper, unwrap

__all__ = ["find_in_code", "discarded_in_code", "find_by_tracing", "rewrite"]


def _methods(sources: Dict[Any, Tuple[str, type]]) -> Dict[str, Tuple[str, type]]:
    """Tensor method name -> (label, module type), e.g. "relu" -> ("Tensor.relu", nn.ReLU)."""
    return {label.split(".", 1)[1]: (label, kind) for label, kind in sources.values() if label.startswith("Tensor.")}


def _source(obj: Any, sources: Dict[Any, Tuple[str, type]]) -> Optional[Tuple[str, type]]:
    try:
        return sources.get(obj)
    except TypeError:  # unhashable
        return None


def _labels_in_code(code: CodeType, scope: Dict[str, Any], sources, methods) -> List[str]:
    """Functional activations named in `code`, in order: `F.relu`, `torch.nn.functional.silu`, a global `relu`
    imported from torch, and `<value>.relu()` on anything but `self` (self.relu is a submodule)."""
    self_name = code.co_varnames[0] if code.co_argcount else None
    labels: List[str] = []
    chain: Tuple[str, Any] = ("value", None)  # what the last instruction left: a global (resolved), self, a value
    for ins in dis.get_instructions(code):
        name = ins.argval[-1] if isinstance(ins.argval, tuple) else ins.argval
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            chain = ("global", scope.get(name))
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain[0] == "global":
            try:
                chain = ("global", getattr(chain[1], name, None))
            except Exception:  # a property that fails outside its context: not a function we know
                chain = ("global", None)
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            if chain[0] == "value" and name in methods:  # x.relu() is the Tensor method; self.a.relu a submodule
                labels.append(methods[name][0])
            continue
        else:
            chain = ("self" if ins.opname.startswith("LOAD_FAST") and name == self_name else "value", None)
            continue
        found = _source(chain[1], sources)
        if found is not None:
            labels.append(found[0])
    for const in code.co_consts:  # lambdas, comprehensions, nested functions
        if isinstance(const, CodeType):
            labels += _labels_in_code(const, scope, sources, methods)
    return labels


def find_in_code(root: nn.Module, report: ConversionReport) -> None:
    """Report the functional activations each module's forward names in its code: cheap, no trace, no forward.

    Static, so a call in a branch not taken is listed too, and one in a helper function or through an attribute
    (nn.TransformerEncoderLayer's `self.activation = F.relu`) is missed; an example_input gives the exact picture.
    """
    sources = catalogue.functional_sources()
    methods = _methods(sources)
    per_code: Dict[CodeType, List[str]] = {}
    for fqn, module in unwrap(root).named_modules():
        forward = inspect.unwrap(type(module).forward)
        code = getattr(forward, "__code__", None)
        if code is None or is_activation(module):  # nn.ReLU's own F.relu is no functional call site
            continue
        if code not in per_code:
            per_code[code] = _labels_in_code(code, getattr(forward, "__globals__", {}), sources, methods)
        report.functional += [FunctionalCall(fqn, label, "found in its forward's code, not converted")
                              for label in per_code[code]]


def discarded_in_code(slots: Dict[int, List[Any]]) -> Dict[int, Tuple[str, nn.Module]]:
    """In-place activations whose parent's forward throws their result away (`self.act(y)` as a statement, or
    `unused = self.act(y)` never read), read from the source: no trace, no forward. A plain swap's check; it
    cannot see calls without source or through another name (an example_input sees those)."""
    found: Dict[int, Tuple[str, nn.Module]] = {}
    for key, module_slots in slots.items():
        for slot in module_slots:
            if slot.parent is not None and getattr(slot.child, "inplace", False) \
                    and slot.name in _discarded_self_calls(type(slot.parent)):
                found[key] = (slot.fqn, slot.child)
    return found


@functools.lru_cache(maxsize=None)
def _discarded_self_calls(cls: type) -> frozenset:
    """Attribute names `a` whose call `self.a(...)` in cls.forward has its result discarded."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cls.forward))))
    except (OSError, TypeError, SyntaxError):  # no source (C, REPL, generated): nothing to read
        return frozenset()
    function = tree.body[0]
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or not function.args.args:
        return frozenset()
    self_name = function.args.args[0].arg
    read = {node.id for node in ast.walk(function) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}

    def self_call(value: ast.AST) -> Optional[str]:
        func = value.func if isinstance(value, ast.Call) else None
        return func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
            and func.value.id == self_name else None

    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Expr) and self_call(node.value):
            names.add(self_call(node.value))
        elif isinstance(node, ast.Assign) and self_call(node.value) and all(
                isinstance(t, ast.Name) and t.id not in read for t in node.targets):
            names.add(self_call(node.value))
    return frozenset(names)


def _node_source(node: fx.Node, sources, methods) -> Optional[Tuple[str, type, Dict[str, Any]]]:
    """(label, equivalent module type, its options) for a functional activation node, else None. The options are
    the call's own second argument: F.relu's `inplace` (F.relu_ and x.relu_() are in place by name), F.gelu's
    `approximate`."""
    if node.op == "call_function" and _source(node.target, sources) is not None:
        label, kind = sources[node.target]
    elif node.op == "call_method" and node.target in methods:
        label, kind = methods[node.target]
    else:
        return None
    second = "approximate" if issubclass(kind, nn.GELU) else "inplace"
    value = node.kwargs.get(second, node.args[1] if len(node.args) > 1 else None)
    if second == "approximate":
        return label, kind, {"approximate": "none" if value is None else value}
    return label, kind, {"inplace": label.endswith("_") or bool(value)}


def find_by_tracing(root: nn.Module, leaves: Tuple[type, ...], report: ConversionReport) -> None:
    """Report functional activations from a symbolic trace (a note when the model cannot be traced)."""
    try:
        _, graph = trace(unwrap(root), leaves)
    except Exception as err:
        report.notes.append(f"functional activations not checked: torch.fx could not trace {type(root).__name__} "
                            f"({type(err).__name__}); pass example_input to check with one forward")
        return
    sources = catalogue.functional_sources()
    methods = _methods(sources)
    for node in graph.nodes:
        found = _node_source(node, sources, methods)
        if found is not None:
            report.functional.append(FunctionalCall(node_scope(node), found[0], "found, not converted"))


def _free_name(gm: fx.GraphModule, scope: str, base: str) -> str:
    prefix = f"{scope}." if scope else ""
    name, i = f"{prefix}{base}", 0
    while _taken(gm, name):
        i += 1
        name = f"{prefix}{base}_{i}"
    return name


def _taken(root: nn.Module, path: str) -> bool:
    """Whether `path` already names something (a module, parameter, buffer, method) under `root`."""
    scope, _, name = path.rpartition(".")
    try:
        return getattr(root.get_submodule(scope), name, None) is not None
    except AttributeError:  # no module at `scope`
        return False


def _submodule(root: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def rewrite(root: nn.Module, targets: Targets, report: ConversionReport) -> Tuple[nn.Module, Dict[int, Any]]:
    """Rewrite functional activations into module calls (nn.ReLU, ...) that the swap then converts.

    Returns the new root (a GraphModule, or `root` itself when nothing was rewritten) and the module calls
    whose result the trace shows unused (see tracing.discarded_calls).
    """
    if is_wrapper(root):
        raise ValueError(f"functional='convert' rewrites the model with torch.fx and cannot see through "
                         f"{type(root).__name__}; convert the inner model (e.g. model.module or model._orig_mod) "
                         f"first, then wrap it")
    try:
        tracer, graph = trace(root, targets.leaves())
    except Exception as err:
        raise ValueError(f"functional='convert' needs a model torch.fx can trace, and tracing {type(root).__name__} "
                         f"failed ({type(err).__name__}: {err}); use functional='report' to list its functional "
                         f"activations, or 'ignore'") from err
    discarded = discarded_calls(tracer, graph)
    gm = fx.GraphModule(tracer.root, graph, class_name=type(root).__name__)
    order = {node: i for i, node in enumerate(graph.nodes)}
    sources = catalogue.functional_sources()
    methods = _methods(sources)
    changed = False
    for node in list(graph.nodes):
        found = _node_source(node, sources, methods)
        if found is None:
            continue
        label, kind, options = found
        inplace = options.get("inplace", False)
        scope = node_scope(node)
        source = node.args[0] if node.args else node.kwargs.get("input")
        if targets.for_type(kind) is None:
            status = f"left as is: {kind.__name__} is not a target"
        elif not isinstance(source, fx.Node):
            status = "left as is: its input is not a traced tensor"
        elif not all(isinstance(v, (bool, str)) for v in options.values()):  # e.g. approximate computed at run time
            status = f"left as is: its {', '.join(options)} is not a constant of the trace"
        elif inplace and any(order[user] > order[node] for user in source.users if user is not node):
            status = "left as is: in place, and its input is used again after it"  # LayerAct would not mutate it
        else:
            name = _free_name(gm, scope, label.split(".")[-1].rstrip("_"))
            gm.add_submodule(name, kind(**options))
            with graph.inserting_before(node):
                call = graph.call_module(name, (source,))
            call.meta = dict(node.meta)
            node.replace_all_uses_with(call)
            graph.erase_node(node)
            scope, status, changed = name, f"now module {name}", True
        report.functional.append(FunctionalCall(scope, label, status))
    if not changed:
        return root, discarded  # nothing rewritten: keep the user's model object (idempotence)
    graph.lint()
    gm.recompile()
    gm.training = root.training
    lost = [n for n, m in root.named_modules() if m is not root and any(getattr(m, a) for a in HOOK_ATTRS)
            and _submodule(gm, n) is not m]
    report.notes.append(f"functional='convert' made the root a torch.fx GraphModule ({type(root).__name__}'s own "
                        f"methods, e.g. forward_features / reset_classifier, are gone; control flow was fixed at "
                        f"trace time in {'train' if root.training else 'eval'} mode)")
    if lost:
        report.notes.append(f"hooks on modules traced through are gone: {', '.join(lost)}")
    missing = sorted(set(root.state_dict()) - set(gm.state_dict()))
    if missing:
        report.notes.append(f"unused by the traced forward, so not in the new state_dict: {', '.join(missing[:10])}"
                            + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return gm, discarded
