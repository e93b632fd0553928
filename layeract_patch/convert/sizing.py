"""Call-site sizing for affine=True: every call site of a converted activation gets its own weight and bias,
sized by its channel count. Entered only when a target is affine.

Sizes come from the example forward (exact; the only way for a module called several times per forward, which
becomes a CallSiteActs), else from a torch.fx trace (the module feeding the site), else from the structure (a
timm norm-act module's `act`, a module after a BatchNorm/conv in an nn.Sequential).
"""
from __future__ import annotations

import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .call_sites import CallSiteActs
from .example_forward import Call, ExampleForward
from .report import MAX_LISTED
from .targets import is_activation
from .tracing import LeafTracer

__all__ = ["size_affine"]

# Modules whose output has the input's dim 1 (channels).
_SAME_CHANNELS = (nn.Identity, nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
                  nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                  nn.modules.pooling._AdaptiveMaxPoolNd)
_SUMS = (operator.add, operator.iadd, torch.add)


def _channels_of(producer: Optional[nn.Module]) -> Optional[int]:
    """Dim 1 of a module's output, where its type fixes it."""
    if isinstance(producer, _BatchNorm):
        return producer.num_features
    if isinstance(producer, nn.GroupNorm):
        return producer.num_channels
    if isinstance(producer, _ConvNd):
        return producer.out_channels
    return None


def _producer(node: Optional[fx.Node], root: nn.Module, memo: Dict[fx.Node, Optional[nn.Module]]):
    """The module whose output `node` is, looking through modules that keep the channels (activations,
    Identity, Dropout, pooling) and through a residual sum (when both operands agree on the channels)."""
    if not isinstance(node, fx.Node):
        return None
    if node not in memo:  # memo: residual chains would otherwise be walked exponentially often
        memo[node] = None
        if node.op == "call_function" and node.target in _SUMS and len(node.args) == 2:
            found = [_producer(arg, root, memo) for arg in node.args]
            sized = {_channels_of(p) for p in found}
            memo[node] = found[0] if len(sized) == 1 and None not in sized else None
        elif node.op == "call_module":
            module = root.get_submodule(node.target)
            same = isinstance(module, _SAME_CHANNELS) or is_activation(module)
            memo[node] = _producer(node.args[0], root, memo) if same and node.args else module
    return memo[node]


def _channels_from_structure(parent: Optional[nn.Module], name: Optional[str]):
    """The channel count of the activation's input where the model's structure fixes it, with the module that says so.

    Reliable cases only: the `act` of a timm norm-act module (it normalizes its own input), and a module
    right after a BatchNorm, GroupNorm or conv in an nn.Sequential that keeps Sequential's forward.
    """
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


def _features_last(call: Call) -> bool:
    """Whether the input's channels are its last dim: it comes straight from an nn.Linear (a transformer's or a
    channels-last ConvNeXt block's fc1), whose output features are always last."""
    return (isinstance(call.after, nn.Linear) and call.shape is not None and len(call.shape) >= 3
            and call.shape[-1] == call.after.out_features)


def _site_dim(call: Call, start_dim: int, affine_dim: Optional[int]) -> int:
    """The dim of the call's input that the affine acts along: the one asked for, else the last dim of a features-last
    input, else start_dim."""
    if affine_dim is not None:
        return affine_dim
    return -1 if _features_last(call) else start_dim


def _call_sites(calls: List[Call], start_dim: int, affine_dim: Optional[int]):
    """Unique (caller, position) sites in first-call order -> (sites, their affine dims, schedule, callers, problem)."""
    sites: Dict[Tuple[int, int], int] = {}
    first: List[Call] = []
    dims: List[int] = []
    callers: Dict[int, int] = {}
    caller_modules: List[Optional[nn.Module]] = []
    schedule: List[List[int]] = []
    for call in calls:
        dim = _site_dim(call, start_dim, affine_dim)
        if call.shape is None or not -len(call.shape) <= min(start_dim, dim) <= max(start_dim, dim) < len(call.shape):
            return [], [], [], [], "its input in the example forward is not a tensor with a channel dim"
        key = (id(call.caller), call.position)
        if key not in sites:
            sites[key] = len(first)
            first.append(call)
            dims.append(dim)
            if id(call.caller) not in callers:
                callers[id(call.caller)] = len(caller_modules)
                caller_modules.append(call.caller)
                schedule.append([])
            schedule[callers[id(call.caller)]].append(sites[key])
        else:
            seen, seen_dim = first[sites[key]], dims[sites[key]]
            if seen_dim != dim or seen.shape[seen_dim] != call.shape[dim]:
                return [], [], [], [], f"one call site saw {seen.shape[seen_dim]} and {call.shape[dim]} channels"
    return first, dims, schedule, caller_modules, ""


def _affine_dim_kwarg(site: Call, dim: int, start_dim: int, affine_dim: Optional[int]) -> Optional[int]:
    """What the new module is built with: -1 where sizing chose the last dim and it is not start_dim already."""
    if affine_dim is not None or dim % len(site.shape) == start_dim % len(site.shape):
        return None
    return -1


def size_affine(model_name: str, jobs, recorded: Optional[ExampleForward],
                traced: Optional[Tuple[LeafTracer, fx.Graph]]):
    """One affine replacement per job, and the CallSiteActs to attach to their callers.

    `jobs`: (key, old module, target, chosen slots, every slot of the instance) per affine instance. Returns
    ({key: (new module, description)}, [(CallSiteActs, callers)]); raises one ValueError listing every module
    whose call sites cannot all be sized.
    """
    replacements: Dict[int, Tuple[nn.Module, str]] = {}
    attachments: List[Tuple[CallSiteActs, List[Optional[nn.Module]]]] = []
    problems: List[str] = []
    memo: Dict[fx.Node, Optional[nn.Module]] = {}
    for key, old, target, chosen, every in jobs:
        name = target.cls.__name__
        where = f"{chosen[0].fqn or '<root>'} ({type(old).__name__}" + (
            f" in {type(chosen[0].parent).__name__})" if chosen[0].parent is not None else ")")
        start_dim, affine_dim = target.kwargs.get("start_dim", 1), target.kwargs.get("affine_dim")
        sites, dims, schedule, callers, problem = _call_sites(recorded.calls.get(key, []) if recorded else [],
                                                              start_dim, affine_dim)
        if problem:
            problems.append(f"{where}: {problem}")
        elif len(sites) > 1 and len(chosen) != len(every):
            problems.append(f"{where}: reused at {len(sites)} call sites and excluded by filter_fn under another "
                            f"name; include or exclude all of {', '.join(s.fqn for s in every)}")
        elif len(sites) > 1:
            acts = [target.build(old, site.shape[dim], site, _affine_dim_kwarg(site, dim, start_dim, affine_dim))
                    for site, dim in zip(sites, dims)]
            dispatch = CallSiteActs(acts, schedule)
            dispatch.train(old.training)
            attachments.append((dispatch, callers))
            replacements[key] = (dispatch, f"CallSiteActs({len(acts)} x {name}: "
                                           f"{', '.join(str(a.num_channels) for a in acts)})")
        elif len(sites) == 1:
            channels = sites[0].shape[dims[0]]
            built = target.build(old, channels, sites[0], _affine_dim_kwarg(sites[0], dims[0], start_dim, affine_dim))
            replacements[key] = (built, f"{name}({channels}" + (", features last)" if built.affine_dim == -1 else ")"))
        else:
            inputs = traced[0].inputs[key] if traced is not None else []
            like = _producer(inputs[0], traced[0].root, memo) if len(inputs) == 1 else None
            channels = _channels_of(like) if start_dim == 1 and affine_dim in (None, 1) else None
            if channels is None and start_dim == 1 and affine_dim in (None, 1):
                channels, like = _channels_from_structure(chosen[0].parent, chosen[0].name)
            if len(every) > 1:
                problems.append(f"{where}: one instance held in {len(every)} places "
                                f"({', '.join(s.fqn for s in every)})")
            elif len(inputs) > 1:
                problems.append(f"{where}: called {len(inputs)} times per forward")
            elif channels is None:
                problems.append(f"{where}: " + ("not called in the example forward, and " if recorded else "")
                                + "its channel count does not follow from the model's structure")
            else:
                replacements[key] = (target.build(old, channels, like), f"{name}({channels})")
    if problems:
        raise ValueError(
            f"convert_activations(affine=True) gives every call site its own weight and bias, sized by its channel "
            f"count, and cannot do that for {len(problems)} module(s) of {model_name}:\n  "
            + "\n  ".join(problems[:MAX_LISTED]) + ("\n  ..." if len(problems) > MAX_LISTED else "")
            + "\nPass example_input=<a batch like your data, e.g. torch.randn(2, 3, 224, 224)> so one forward records "
              "every call site and its shape (or exclude these with filter_fn)")
    return replacements, attachments
