"""CallSiteActs: one activation module that the model calls at several places, split into one LayerAct per place.

`convert_activations(affine=True, example_input=...)` builds it for reused instances such as the single
`self.relu` of each torchvision ResNet block, so that every call site gets its own, correctly sized parameters.
"""
from __future__ import annotations

import threading
from functools import partial
from typing import Any, List, Sequence

import torch
from torch import nn

__all__ = ["CallSiteActs"]


class CallSiteActs(nn.Module):
    """One LayerAct per call site of an activation module the model calls at several places.

    A call site is "the k-th call from one run of a caller's forward", the caller being the innermost module
    running when the call is made (as `convert_activations` recorded it in an example forward). Hooks on each
    caller mark which one is running, so every call picks its own site in train or eval mode, with or without
    grad, forward after forward, from several threads at once, under torch.compile and activation checkpointing;
    a call from a path the example forward did not take raises, never guesses. (Not under nn.DataParallel on
    several GPUs: use DDP.)
    """

    def __init__(self, sites: Sequence[nn.Module], schedule: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.sites = nn.ModuleList(sites)
        self.schedule = [list(order) for order in schedule]  # schedule[caller][k]: the site of its k-th call
        self._local = threading.local()

    # Which caller runs, and how often it has called, is per thread: threads running the same model at once
    # (serving, thread pools) each walk their own forward. A shared list here once mixed them up.
    def _running(self) -> List[List[int]]:
        """[caller, calls so far] for each caller forward in progress in this thread."""
        frames = getattr(self._local, "frames", None)
        if frames is None:
            frames = self._local.frames = []
        return frames

    def attach(self, caller: nn.Module, index: int) -> None:
        """Make `caller` (the `index`-th in `schedule`) announce its forward to this module."""
        caller.register_forward_pre_hook(partial(self._enter, index))
        caller.register_forward_hook(partial(self._leave, index), always_call=True)

    def _enter(self, index: int, module: nn.Module, args: Any) -> None:
        self._running().append([index, 0])

    def _leave(self, index: int, module: nn.Module, args: Any, output: Any) -> None:
        frames = self._running()
        while frames and frames.pop()[0] != index:
            pass

    def __getstate__(self):
        state = super().__getstate__().copy()
        state.pop("_local", None)  # thread-local state is neither picklable nor worth copying
        return state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def _replicate_for_data_parallel(self):
        # Replicas would share the originals' hooks, which announce callers to the original only.
        raise RuntimeError("a model with CallSiteActs (convert_activations(affine=True) on reused activations) cannot "
                           "run under nn.DataParallel on several GPUs; use DistributedDataParallel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self._running()
        if not frames:
            raise RuntimeError("CallSiteActs was called from a module that did not call it in convert_activations' "
                               "example forward, so its call site is unknown; convert with an example_input that "
                               "runs this path (or call the model itself, not a method that skips its forward)")
        frame = frames[-1]
        order = self.schedule[frame[0]]
        if frame[1] >= len(order):
            raise RuntimeError(f"CallSiteActs: this caller made {len(order)} call(s) in convert_activations' example "
                               f"forward and is now making more; convert with an example_input that takes this path")
        site = self.sites[order[frame[1]]]
        frame[1] += 1
        return site(x)

    def extra_repr(self) -> str:
        return f"call_sites={len(self.sites)}, callers={len(self.schedule)}"
