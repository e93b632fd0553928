"""One training run (one seed): SGD with step decay, evaluation, checkpoints, resume, the test of the best model.

Reads top to bottom: split -> model/optimizer (or resume) -> iterate (log, evaluate, checkpoint) ->
test the best-validation weights -> write results. The caller (cli.py) owns data loading and seeds.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .data import stratified_split
from .distributed import DistInfo, all_reduce_sum, broadcast_buffers
from .interrupt import GracefulStop
from .loader import TrainBatches
from .metrics import evaluate
from .progress import Progress
from .results import write_csv, write_json

__all__ = ["DeviceData", "train_seed", "seed_dir", "check_resumable", "RESUME_KEYS"]

# Arguments that must match between a checkpoint and the command resuming it: they change the
# model or which images are trained on. (--max-iter may grow, to train longer.)
RESUME_KEYS = ("model", "depth", "act", "norm", "dataset", "batch_size", "val_fraction")

HISTORY_COLUMNS = ("iteration", "lr", "train_loss", "val_top1", "val_top5", "val_loss", "val_loss_std",
                   "train_seconds")


@dataclass
class DeviceData:
    """The whole data set on the training device, as uint8 images; mean/std in [0, 1] units."""
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: List[str]
    mean: Sequence[float]
    std: Sequence[float]


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def check_resumable(args, seeds: Sequence[int]) -> None:
    """ValueError before any training when --out holds a run we would overwrite or cannot continue."""
    for seed in seeds:
        path = seed_dir(args.out, seed) / "checkpoint.pt"
        if not path.is_file():
            continue
        if not args.resume:
            raise ValueError(f"{str(path)!r} exists; pass --resume to continue that run, or choose another --out")
        saved = load_checkpoint(path).get("args", {})
        for key in RESUME_KEYS:
            if key in saved and saved[key] != getattr(args, key, None):
                raise ValueError(f"{str(path)!r} was trained with --{key.replace('_', '-')} {saved[key]}, not "
                                 f"{getattr(args, key, None)}; resume with the same settings or choose another --out")


def train_seed(args, seed: int, data: DeviceData, model_fn: Callable[[], nn.Module], device: torch.device,
               dist: DistInfo = DistInfo(), model_name: str = "model") -> Dict:
    """Train (or resume, or just reload) seed `seed`; return its results dict (also in seed_<seed>/results.json)."""
    out = seed_dir(args.out, seed)
    ckpt_path, results_path = out / "checkpoint.pt", out / "results.json"
    state = load_checkpoint(ckpt_path) if args.resume and ckpt_path.is_file() else None
    if state is not None and state["step"] >= args.max_iter and results_path.is_file():
        return json.loads(results_path.read_text())

    # Split and model: both functions of the seed only, so a resumed run rebuilds the same ones.
    train_idx, val_idx = stratified_split(data.train_labels.cpu(), args.val_fraction, seed)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx]
    batches = TrainBatches(data.train_images[train_idx], data.train_labels[train_idx], args.batch_size, data.mean,
                           data.std, seed, dist.rank, dist.world_size, channels_last=args.channels_last)
    torch.manual_seed(seed)
    model = model_fn().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)

    step, history, train_log, train_seconds = 0, [], [], 0.0
    best = {"top1": float("-inf"), "iteration": 0, "model": None}
    window = torch.zeros(2, device=device)  # (sum of losses, count) since the last log line
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history, train_log = state["step"], state["history"], state["train_log"]
        train_seconds, best = state["train_seconds"], state["best"]
        window = torch.tensor(state["window"], device=device)
        set_rng_state(state["rng"])
        if dist.is_main:
            print(f"seed {seed}: resumed from {ckpt_path} at iteration {step}", file=sys.stderr)

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()
    eval_kwargs = dict(mean=data.mean, std=data.std, batch_size=args.eval_batch_size, amp=args.amp,
                       channels_last=args.channels_last, dist=dist)

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint({"step": step, "seed": seed, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "best": best, "history": history, "train_log": train_log,
                             "window": window.tolist(), "train_seconds": train_seconds,
                             "rng": get_rng_state(), "args": vars(args)}, ckpt_path)

    progress = Progress(args.max_iter, desc=f"seed {seed}") if dist.is_main else None
    segment_start = time.perf_counter()
    model.train()
    with GracefulStop(dist, device) as stop:
        while step < args.max_iter:
            inputs, targets = batches(step)
            with autocast:
                loss = F.cross_entropy(net(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            window += torch.stack([loss.detach().float(), torch.ones((), device=device)])
            if progress is not None:
                progress.update(step, images=args.batch_size, loss=loss.detach(), lr=lr)

            evaluating = step % args.eval_every == 0 or step == args.max_iter
            if step % args.log_every == 0 or evaluating:
                train_log.append(_close_window(window, step, lr, dist))
                window.zero_()
            if evaluating:
                train_seconds += time.perf_counter() - segment_start  # the log line above synchronised the device
                row = {"iteration": step, "lr": lr, "train_loss": _mean_since(train_log, history),
                       "train_seconds": train_seconds}
                if len(val_images):
                    broadcast_buffers(model, dist)
                    val = evaluate(model, val_images, val_labels, **eval_kwargs)
                    row.update({f"val_{k}": v for k, v in val.items() if k != "count"})
                    if val["top1"] > best["top1"]:
                        best = {"top1": val["top1"], "iteration": step, "val": val, "model": _snapshot(model)}
                    if dist.is_main:
                        print(f"seed {seed} iter {step}: val top1 {val['top1']:.2f} loss {val['loss']:.4f} "
                              f"(best {best['top1']:.2f} at {best['iteration']})", file=sys.stderr)
                history.append(row)
                checkpoint()
                segment_start = time.perf_counter()
            if stop.should_stop(step):
                train_seconds += time.perf_counter() - segment_start
                checkpoint()
                if progress is not None:
                    progress.close()
                raise KeyboardInterrupt(f"stopped at iteration {step}; checkpoint saved to {ckpt_path}")
    if progress is not None:
        progress.close()

    # The paper's protocol: the weights with the best validation accuracy are the ones tested.
    if best["model"] is not None:
        model.load_state_dict(best["model"])
    broadcast_buffers(model, dist)
    test = evaluate(model, data.test_images, data.test_labels, **eval_kwargs)
    test.pop("count")
    results = {
        "model": model_name, "act": args.act, "norm": args.norm, "dataset": args.dataset, "seed": seed,
        "iterations": step, "best_iteration": best["iteration"] or step,
        "val": {k: v for k, v in best.get("val", {}).items() if k != "count"} or None,
        "test": test,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds, "seconds_per_iter": train_seconds / max(step, 1),
        "world_size": dist.world_size, "device": str(device),
        "history": history, "train_log": train_log,
    }
    if dist.is_main:
        save_checkpoint(model.state_dict(), out / "model.pt")  # the tested (best-validation) weights
        write_csv(history, out / "history.csv", HISTORY_COLUMNS)
        write_csv(train_log, out / "train_log.csv", ("iteration", "train_loss", "lr"))
        write_json(results, results_path)
    return results


def _close_window(window: Tensor, step: int, lr: float, dist: DistInfo) -> dict:
    total, count = all_reduce_sum(window.clone(), dist).tolist()
    loss = total / max(count, 1)
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise FloatingPointError(f"training diverged: loss {loss} at iteration {step}; lower --lr (the paper uses "
                                 f"0.01 without normalization) or use --norm bn")
    return {"iteration": step, "train_loss": loss, "lr": lr, "steps": int(count) // dist.world_size}


def _mean_since(train_log: List[dict], history: List[dict]) -> Optional[float]:
    """Mean training loss over the iterations since the previous evaluation (log windows end at evaluations)."""
    start = history[-1]["iteration"] if history else 0
    rows = [row for row in train_log if row["iteration"] > start]
    steps = sum(row["steps"] for row in rows)
    return sum(row["train_loss"] * row["steps"] for row in rows) / steps if steps else None


def _snapshot(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

