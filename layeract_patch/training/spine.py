"""The one training loop: batches in, optimizer step, periodic evaluation, checkpoint / stop / resume.

Every recipe (the CIFAR recipes, fine-tuning, the correlation study) builds a `Run` and calls `fit`;
they differ only in where batches come from and what `on_eval` measures. One iteration, top to bottom:

    batch = batches(step) -> forward under autocast -> loss -> backward (through the loss scaler)
    -> optimizer step -> scheduler step -> step += 1 -> add the loss to the log window
    -> every log_every steps: close the window (one device sync; a NaN loss stops the run here)
    -> every eval_every steps and at the end: on_eval(run), then a checkpoint
    -> Ctrl-C / SIGTERM: checkpoint at this step boundary, then KeyboardInterrupt

A checkpoint is `Run.state_dict()` (see checkpoint.py for the format and the resume rule).
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import get_rng_state, save_checkpoint, set_rng_state
from .distributed import DistInfo, all_reduce_sum, any_rank
from .progress import Progress

__all__ = ["Run", "LoopConfig", "fit", "GracefulStop", "on_stop_signals", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


@dataclass
class Run:
    """What the loop advances and a checkpoint holds.

    `settings` are what the resume rule compares; `records` are the caller's own plain-python (or
    tensor) bookkeeping, e.g. the evaluation history and the best weights; `window` is the
    (loss sum, count) of the log window still open, saved so a resumed run logs what a straight one does.
    """
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    settings: Dict[str, Any] = field(default_factory=dict)
    scaler: Optional[torch.amp.GradScaler] = None
    step: int = 0
    train_log: List[dict] = field(default_factory=list)
    records: Dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    window: List[float] = field(default_factory=lambda: [0.0, 0.0])
    checkpoint_format: int = CHECKPOINT_FORMAT  # a recipe whose scheduler state changed layout stamps its own

    def state_dict(self) -> dict:
        return {"format": self.checkpoint_format, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": get_rng_state(), "settings": self.settings, "train_log": self.train_log,
                "records": self.records, "train_seconds": self.train_seconds, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint (the settings were checked by the caller, see checkpoint.check_resume)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step, self.train_log, self.records = state["step"], state["train_log"], state["records"]
        self.train_seconds, self.window = state["train_seconds"], list(state["window"])


@dataclass
class LoopConfig:
    """How `fit` runs: the budget, the intervals, where checkpoints go, the precision."""
    max_iter: int
    log_every: int = 100
    eval_every: Optional[int] = None  # None: evaluate (and checkpoint) only at the end
    save_every: Optional[int] = None  # extra checkpoints between evaluations
    checkpoint: Optional[Path] = None  # None: no checkpoints, Ctrl-C just stops
    final_checkpoint: bool = True  # False: the caller keeps its own record of the finished run
    amp_dtype: Optional[torch.dtype] = None
    desc: str = ""
    diverged_hint: str = "lower --lr"
    stream: Optional[TextIO] = None


Batches = Callable[[int], Tuple[Tensor, Tensor]]


def fit(run: Run, batches: Batches, loop: LoopConfig, *, on_eval: Optional[Callable[[Run], None]] = None,
        loss_fn: Callable[[Any, Tensor], Tensor] = F.cross_entropy, net: Optional[nn.Module] = None,
        dist: DistInfo = DistInfo()) -> Run:
    """Advance `run` to `loop.max_iter` steps; `batches(step)` gives the (inputs, targets) of 0-based step `step`.

    `net` is what is called (a DDP or compiled wrapper of run.model; default run.model). FloatingPointError
    when the logged loss is not finite; KeyboardInterrupt after saving when a stop is requested.
    """
    net = run.model if net is None else net
    device = next(run.model.parameters()).device
    scaler = run.scaler if run.scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    autocast = torch.autocast(device.type, dtype=loop.amp_dtype or torch.bfloat16, enabled=loop.amp_dtype is not None)
    window = torch.tensor(run.window, device=device)
    one = torch.ones((), device=device)
    clock = [time.perf_counter()]

    def lap() -> None:  # training time only: evaluations and checkpoint writes are left out
        now = time.perf_counter()
        run.train_seconds += now - clock[0]
        clock[0] = now

    def save() -> None:
        run.window = window.tolist()
        if loop.checkpoint is not None and dist.is_main:
            save_checkpoint(run.state_dict(), loop.checkpoint)
        clock[0] = time.perf_counter()

    progress = Progress(loop.max_iter, desc=loop.desc, stream=loop.stream) if dist.is_main else None
    # Evaluations and checkpoint writes are not training steps: they stay out of the ETA and of images/s.
    aside = progress.paused if progress is not None else nullcontext
    run.model.train()
    with GracefulStop(dist, device) as stop, progress or nullcontext():  # the bar's line ends however the loop ends
        while run.step < loop.max_iter:
            inputs, targets = batches(run.step)
            with autocast:
                loss = loss_fn(net(inputs), targets)
            run.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(run.optimizer)
            scaler.update()
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            run.step += 1
            window += torch.stack([loss.detach().float(), one])
            if progress is not None:
                progress.update(run.step, images=len(targets) * dist.world_size, loss=loss.detach(), lr=lr)

            evaluating = run.step == loop.max_iter or bool(loop.eval_every and run.step % loop.eval_every == 0)
            if run.step % loop.log_every == 0 or evaluating:
                run.train_log.append(_close_window(window, run.step, lr, dist, loop.diverged_hint))
                window.zero_()
            if evaluating:
                lap()
                with aside():
                    if on_eval is not None:
                        on_eval(run)
                    if run.step < loop.max_iter or loop.final_checkpoint:
                        save()
            elif loop.save_every and run.step % loop.save_every == 0:
                lap()
                with aside():
                    save()
            if stop.should_stop(run.step):
                lap()
                save()
                where = f"; checkpoint saved to {loop.checkpoint}" if loop.checkpoint is not None else ""
                raise KeyboardInterrupt(f"stopped at iteration {run.step}{where}")
    return run


def _close_window(window: Tensor, step: int, lr: float, dist: DistInfo, hint: str) -> dict:
    total, count = all_reduce_sum(window.clone(), dist).tolist()
    loss = total / max(count, 1)
    if not math.isfinite(loss):
        raise FloatingPointError(f"training diverged: loss {loss} at iteration {step}; {hint}")
    return {"iteration": step, "train_loss": loss, "lr": lr, "steps": int(count) // dist.world_size}


@contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]):
    """`handler(signum, frame)` answers SIGINT and SIGTERM inside the block; the previous handlers come back after.
    Signal handlers can only be installed from the main thread; elsewhere the block runs without them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM sets `requested`; a second SIGINT interrupts at once.

    The loop asks `should_stop(step)` after each optimizer step, so the saved state is consistent. Under
    DDP the ranks agree (an all-reduce every `sync_every` steps) so they all stop, and save, at the same
    iteration. Signal handlers can only be installed from the main thread; elsewhere this only watches the flag.
    """

    def __init__(self, dist: DistInfo = DistInfo(), device: torch.device = torch.device("cpu"),
                 sync_every: int = 10) -> None:
        self.dist, self.device, self.sync_every = dist, device, sync_every
        self.requested = False
        self._signals = ExitStack()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this iteration and saving a checkpoint "
              f"(Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        self._signals.enter_context(on_stop_signals(self._handle))
        return self

    def __exit__(self, *exc) -> None:
        self._signals.close()

    def should_stop(self, step: int) -> bool:
        if not self.dist.enabled:
            return self.requested
        if step % self.sync_every:
            return False
        return any_rank(self.requested, self.dist, self.device)
