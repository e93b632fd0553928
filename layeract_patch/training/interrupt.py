"""Ctrl-C (or SIGTERM from a scheduler) ends training at a step boundary, so the saved state is consistent."""
from __future__ import annotations

import signal
import sys
import threading

import torch

from .distributed import DistInfo, any_rank

__all__ = ["GracefulStop"]


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM sets `requested`; a second SIGINT interrupts at once.

    The loop asks `should_stop(step)` after each optimizer step. Under DDP the ranks agree (an
    all-reduce every `sync_every` steps) so they all stop, and save, at the same iteration.
    Signal handlers can only be installed from the main thread; elsewhere this only watches the flag.
    """

    def __init__(self, dist: DistInfo = DistInfo(), device: torch.device = torch.device("cpu"),
                 sync_every: int = 10) -> None:
        self.dist, self.device, self.sync_every = dist, device, sync_every
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this iteration and saving a checkpoint "
              f"(Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        if not self.dist.enabled:
            return self.requested
        if step % self.sync_every:
            return False
        return any_rank(self.requested, self.dist, self.device)
