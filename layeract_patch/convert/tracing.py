"""A torch.fx trace that keeps activations whole: used to rewrite functional calls and to size affine sites.

Run only when asked for (functional="convert"), when affine=True has no example input, or to explain an
error; a plain swap never traces.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch.fx as fx
from torch import nn

__all__ = ["LeafTracer", "trace", "discarded_calls", "node_scope", "HOOK_ATTRS"]

# Where nn.Module keeps its hooks: the swap hands them to the module that replaces an activation, and a trace
# inlines the modules it goes through, so their hooks no longer run in the GraphModule.
HOOK_ATTRS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook")


class LeafTracer(fx.Tracer):
    """Keeps the `leaves` types and timm's norm-act modules as module calls instead of tracing into them.

    For each call of a `leaves` module it notes the node its input comes from (`inputs`), which sizes affine
    sites when there is no example input.
    """

    def __init__(self, leaves: Tuple[type, ...]) -> None:
        super().__init__()
        self.leaves = leaves
        self.inputs: Dict[int, List[Optional[fx.Node]]] = defaultdict(list)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # timm's norm-act modules stay whole: they are _BatchNorm/GroupNorm subclasses that size what follows.
        return (isinstance(m, self.leaves) or type(m).__module__ == "timm.layers.norm_act"
                or super().is_leaf_module(m, qualname))

    def call_module(self, m, forward, args, kwargs):
        if isinstance(m, self.leaves):
            self.inputs[id(m)].append(args[0].node if args and isinstance(args[0], fx.Proxy) else None)
        return super().call_module(m, forward, args, kwargs)


def trace(root: nn.Module, leaves: Tuple[type, ...]) -> Tuple[LeafTracer, fx.Graph]:
    tracer = LeafTracer(leaves)
    return tracer, tracer.trace(root)


def discarded_calls(tracer: LeafTracer, graph: fx.Graph) -> Dict[int, Tuple[str, nn.Module]]:
    """Module calls whose result nothing uses: id(module) -> (name, module)."""
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and not node.users:
            module = tracer.root.get_submodule(node.target)
            found[id(module)] = (node.target, module)
    return found


def node_scope(node: fx.Node) -> str:
    """The name of the module whose forward made this node's call ("" for the root); traces are of unwrapped models."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)
