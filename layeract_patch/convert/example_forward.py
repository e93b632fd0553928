"""One example forward that watches the model: who calls each activation, on what, and what the model does with
the results. It sizes affine call sites, finds functional activations exactly, and catches in-place activations
whose result the model throws away."""
from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from functools import partial
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .. import catalogue
from ..modules import LayerAct
from .report import ConversionReport, FunctionalCall
from .targets import is_activation
from .wrappers import strip_wrappers, unwrap

__all__ = ["Call", "ExampleForward", "record"]


class Call(NamedTuple):
    caller: Optional[nn.Module]  # the innermost module running when the call was made (None: the root's caller)
    position: int  # the k-th call of this module from that run of the caller's forward
    shape: Optional[Tuple[int, ...]]
    dtype: Optional[torch.dtype]
    device: Optional[torch.device]
    after: Optional[nn.Module] = None  # the leaf module that finished last before this call (its input's producer,
                                       # in the usual fc1 -> act); sizing reads a Linear there as "features last"


class ExampleForward(TorchFunctionMode):
    """Records every call of the `watched` modules, functional activation calls (with `spy_functional`) and the
    watched in-place activations whose result nothing reads (`discarded`)."""

    def __init__(self, root: nn.Module, watched: Dict[int, nn.Module], spy_functional: bool) -> None:
        super().__init__()
        self.root, self.watched = root, watched
        self.names = {id(m): strip_wrappers(n, root)
                      for n, m in reversed(list(root.named_modules(remove_duplicate=False)))}
        self.sources = catalogue.functional_sources() if spy_functional else {}
        self.calls: Dict[int, List[Call]] = defaultdict(list)
        self.functional: Dict[Tuple[str, str, int], None] = {}
        self.discarded: Dict[int, Tuple[str, nn.Module]] = {}
        self._unread: Dict[int, Tuple[nn.Module, Any]] = {}
        self._stack: List[Tuple[nn.Module, Counter]] = []
        self._last_leaf: Optional[nn.Module] = None

    def _pre(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if id(module) in self.watched:
            caller, counts = self._stack[-1] if self._stack else (None, Counter())
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.calls[id(module)].append(Call(caller, counts[id(module)], None if x is None else tuple(x.shape),
                                               None if x is None else x.dtype, None if x is None else x.device,
                                               self._last_leaf))
            counts[id(module)] += 1
        self._stack.append((module, Counter()))

    def _post(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._stack:
            self._stack.pop()
        if not module._modules:
            self._last_leaf = module
        if (id(module) in self.watched and getattr(module, "inplace", False) and not isinstance(module, LayerAct)
                and isinstance(output, torch.Tensor)):
            # An in-place activation returns its input, so "is the result used" cannot be told by identity. Hand
            # the caller a fresh view instead (same storage, same values): if it dies unread, the model called the
            # activation for its side effect alone, which a LayerAct (never in place) would silently drop.
            view = output.view_as(output)
            self._unread[id(view)] = (module, weakref.ref(view, partial(self._dropped, id(view))))
            return view
        return None

    def _dropped(self, key: int, _ref: Any) -> None:
        entry = self._unread.pop(key, None)
        if entry is not None:
            self.discarded[id(entry[0])] = (self.names.get(id(entry[0]), "?"), entry[0])

    def _read(self, values: Any) -> None:
        for leaf in tree_leaves(values):
            if isinstance(leaf, torch.Tensor):
                self._unread.pop(id(leaf), None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._unread:
            self._read((args, kwargs))
        if func in self.sources and self._stack and not is_activation(self._stack[-1][0]):
            label = self.sources[func][0]
            scope, counts = self._stack[-1]
            self.functional[(self.names.get(id(scope), "?"), label, counts[label])] = None
            counts[label] += 1
        return func(*args, **kwargs)

    def run(self, example_input: Any) -> None:
        buffers = [(b, b.detach().clone()) for b in self.root.buffers()]
        args, kwargs = ((), example_input) if isinstance(example_input, dict) else (
            (tuple(example_input), {}) if isinstance(example_input, (tuple, list)) else ((example_input,), {}))
        cuda = sorted({t.device.index or 0 for t in (*args, *kwargs.values())
                       if isinstance(t, torch.Tensor) and t.is_cuda})
        hidden, handles = _hide_user_hooks(self.root), []
        try:
            for module in self.root.modules():
                handles.append(module.register_forward_pre_hook(self._pre))
                handles.append(module.register_forward_hook(self._post, always_call=True))
            # Not a training step: BatchNorm statistics and the RNG come back as they were.
            with torch.no_grad(), torch.random.fork_rng(devices=cuda), self:
                self._read(unwrap(self.root)(*args, **kwargs))  # no DDP syncs, DataParallel threads or compiling
        finally:
            self._unread.clear()  # what is still alive was kept, not thrown away
            for handle in handles:
                handle.remove()
            for module, attr, hooks in hidden:  # the very dicts: the user's RemovableHandles keep working
                setattr(module, attr, hooks)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


def _hide_user_hooks(root: nn.Module) -> List[Tuple[nn.Module, str, Any]]:
    """Take the user's forward hooks off every module for the example forward, so that the example batch reaches
    none of them (a feature recorder, a ScaleMonitor). The hooks a forward needs stay: PyTorch's own (lazy modules'
    parameter inference, spectral_norm's weight) and those of a model converted before (CallSiteActs' callers).
    Returns what to put back."""
    hidden = []
    for module in root.modules():
        for attr in ("_forward_pre_hooks", "_forward_hooks"):  # the *_with_kwargs / always-called flags are keyed
            hooks = module.__dict__.get(attr)                  # by hook id: flags of absent hooks are ignored
            if hooks and not all(_needed(hook) for hook in hooks.values()):
                hidden.append((module, attr, hooks))
                setattr(module, attr, type(hooks)((key, hook) for key, hook in hooks.items() if _needed(hook)))
    return hidden


def _needed(hook: Any) -> bool:
    function = getattr(hook, "func", hook)  # functools.partial
    function = getattr(function, "__func__", function)  # a bound method
    where = getattr(function, "__module__", None) or type(function).__module__ or ""
    return where.startswith(("torch.", __name__.rsplit(".", 1)[0] + "."))


def record(root: nn.Module, watched: Dict[int, nn.Module], example_input: Any, spy_functional: bool,
           report: ConversionReport) -> ExampleForward:
    """Run the example forward; functional calls it saw go into the report."""
    forward = ExampleForward(root, watched, spy_functional)
    forward.run(example_input)
    per_forward = Counter((scope, label) for scope, label, _ in forward.functional)
    for (scope, label), count in per_forward.items():
        report.functional.append(FunctionalCall(scope, label, "found, not converted"
                                                + (f" ({count} calls per forward)" if count > 1 else "")))
    return forward
