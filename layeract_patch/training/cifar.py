"""CIFAR training (the paper's ResNets and CNN, a small ConvNeXt, timm's MobileNetV3): the data on the device, one
run per seed.

One training step, file by file: recipes/cifar_resnet.py (flags) -> cli.py (flags -> CifarConfig, checked and
completed by cifar_config.py) -> this file (`train_seed` builds the Run: split, model, SGD, step decay) ->
spine.py (`fit`: the step) -> batches.py (`TrainBatches`: the batch, cropped and flipped on the device).
Evaluation is metrics.py (and robustness.py with --eval-corruptions); checkpoints and the resume rule are
checkpoint.py. The paper's defaults are cifar_config.py's.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .batches import TrainBatches
from .checkpoint import check_resume, load_checkpoint, save_checkpoint
from .cifar_config import CIFAR_MODEL_SPECS, EXTENDABLE, TORCHVISION_ONLY, CifarConfig
from .data import data_source, dataset_stats, load_images, stratified_split
from .distributed import DistInfo, barrier, broadcast_buffers, init_distributed, resolve_device
from .metrics import evaluate
from .command import install_hint
from .progress import say
from .results import format_summary, plot_losses, summarize, write_csv, write_json
from .spine import CHECKPOINT_FORMAT, LoopConfig, Run, fit

__all__ = ["Plan", "prepare", "train", "train_seed", "seed_dir", "architecture", "build_model",
           "evaluate_seeds_on_corruptions"]

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
    source: str  # "cifar10", "cifar100" or "imagefolder:<folder name>"

    def fingerprint(self) -> dict:
        """What the resume rule checks of the data: a changed data set is a different run."""
        return {"classes": list(self.classes), "train_images": len(self.train_images),
                "test_images": len(self.test_images)}


@dataclass
class Plan:
    """Everything validated and loaded, ready to train."""
    cfg: CifarConfig
    model_fn: Callable[[], nn.Module]
    data: DeviceData
    device: torch.device
    dist: DistInfo
    extensions: List[str] = field(default_factory=list)


def seed_dir(out, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def prepare(cfg: CifarConfig, explicit_milestones: bool = True, explicit_log_every: bool = True) -> Plan:
    """Check what resuming would do, load the data onto the device; ValueError / FileNotFoundError on bad input.

    `cfg` is resolved (see `cifar_config.resolve_config`). With `explicit_milestones` False (the user gave none) a resumed run
    that raises --max-iter keeps the schedule it started with instead of moving the milestones.
    """
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    cfg, saved, extensions = _check_resumable(cfg, explicit_milestones, explicit_log_every)

    # Under torchrun rank 0 loads first, so only it downloads a missing data set.
    if not dist.is_main:
        barrier(dist)
    train_images, train_labels, classes = load_images(cfg.data_dir, cfg.dataset, train=True, download=cfg.download)
    test_images, test_labels, _ = load_images(cfg.data_dir, cfg.dataset, train=False, download=cfg.download)
    if dist.is_main:
        barrier(dist)
    train_count = len(stratified_split(train_labels, cfg.val_fraction, cfg.seeds[0])[0])
    if cfg.batch_size > train_count:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training set ({train_count} images after "
                         f"holding out --val-fraction {cfg.val_fraction}); lower --batch-size")
    source = data_source(cfg.data_dir, cfg.dataset)
    mean, std = dataset_stats(source, train_images)
    data = DeviceData(train_images.to(device), train_labels.to(device), test_images.to(device),
                      test_labels.to(device), classes, mean, std, source)
    for path, settings in saved:  # a changed data set under the same --data-dir is a different run too
        check_resume(settings, {"data": data.fingerprint()}, path, keys=["data"])
    if cfg.eval_corruptions and (test_images.shape[1] != 3 or min(test_images.shape[-2:]) < 16):
        # refuse now rather than after hours of training
        raise ValueError(f"--eval-corruptions needs RGB images of at least 16x16 (the CIFAR-C corruptions are "
                         f"defined on them); the test images are {test_images.shape[1]}-channel "
                         f"{'x'.join(map(str, test_images.shape[-2:]))}: drop --eval-corruptions")
    return Plan(cfg, partial(build_model, architecture(cfg, data)), data, device, dist, extensions)


def architecture(cfg: CifarConfig, data: DeviceData) -> dict:
    """What `build_model` needs to rebuild the network; results.json records it for later evaluations."""
    depth = cfg.depth if CIFAR_MODEL_SPECS[cfg.model].has_depth else None
    return {"model": cfg.model, "depth": depth, "act": cfg.act, "norm": cfg.norm, "init": cfg.init,
            "num_classes": len(data.classes), "in_chans": int(data.train_images.shape[1]),
            "image_size": list(data.train_images.shape[-2:])}


def build_model(arch: dict) -> nn.Module:
    """The (untrained) network of an `architecture` record."""
    from .. import models  # looked up at call time, so a test can record what reaches the builder

    builder = getattr(models, arch["model"])  # a name of CIFAR_MODEL_SPECS: the builders in layeract_patch.models
    # runs recorded before --init existed were all He-initialised
    options = dict(num_classes=arch["num_classes"], act=arch["act"], norm=arch["norm"], in_chans=arch["in_chans"],
                   init=arch.get("init", "he"))
    if CIFAR_MODEL_SPECS[arch["model"]].has_depth:
        options["depth"] = arch["depth"]
    return builder(**options)


def _check_resumable(cfg: CifarConfig, explicit_milestones: bool, explicit_log_every: bool = True):
    """Refuse before any work: a run in --out without --resume, --resume with nothing to resume, changed settings."""
    paths = [seed_dir(cfg.out, seed) / "checkpoint.pt" for seed in cfg.seeds]
    found = [path for path in paths if path.is_file()]
    if cfg.resume and not found:
        raise FileNotFoundError(f"--resume: no checkpoint to continue ({str(paths[0])!r} does not exist); start "
                                f"without --resume")
    saved, extensions = [], []
    for path in found:
        if not cfg.resume:
            raise ValueError(f"{str(path)!r} exists; pass --resume to continue that run, or choose another --out")
        state = load_checkpoint(path, format=CHECKPOINT_FORMAT)
        settings = state["settings"]
        if not explicit_milestones and cfg.max_iter >= settings.get("max_iter", 0) and "milestones" in settings:
            cfg = replace(cfg, milestones=tuple(settings["milestones"]))  # keep the schedule that ran
        if not explicit_log_every and "log_every" in settings:
            cfg = replace(cfg, log_every=settings["log_every"])  # and its log, which a longer --max-iter would move
        extensions = check_resume(settings, cfg.settings(), path, EXTENDABLE, keys=list(cfg.settings()))
        saved.append((path, settings))
    return cfg, saved, extensions


def train(plan: Plan) -> Dict:
    """Run every seed, then write the summary (results.json, history.csv, loss_curves.png) to cfg.out."""
    cfg, dist, data = plan.cfg, plan.dist, plan.data
    runs = [train_seed(plan, seed) for seed in cfg.seeds]
    summary = {"test": summarize([run["test"] for run in runs])}
    if all(run["val"] for run in runs):
        summary["val"] = summarize([run["val"] for run in runs])
    results = {
        "model": cfg.model_name, "act": cfg.act, "norm": cfg.norm, "init": cfg.init, "dataset": data.source,
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "architecture": architecture(cfg, data), "classes": list(data.classes),
        "iterations": cfg.max_iter, "lr": cfg.lr, "milestones": list(cfg.milestones), "seeds": list(cfg.seeds),
        "extensions": plan.extensions,
        "test": {metric: stats["mean"] for metric, stats in summary["test"].items()},
        "summary": summary,
        "runs": [{key: run[key] for key in ("seed", "iterations", "best_iteration", "val", "test", "params",
                                            "train_seconds", "seconds_per_iter")} for run in runs],
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()
                 if not (k in TORCHVISION_ONLY and data.source.startswith("imagefolder:"))},
    }
    if dist.is_main:
        out = Path(cfg.out)
        write_json(results, out / "results.json")
        if cfg.eval_corruptions:
            results["corruptions"] = evaluate_seeds_on_corruptions(plan)
            write_json(results, out / "results.json")
        write_csv(({"seed": run["seed"], **row} for run in runs for row in run["history"]),
                  out / "history.csv", ("seed", "iteration"))
        plot = plot_losses(runs, out / "loss_curves.png",
                           title=f"{cfg.model_name} {cfg.act} {cfg.norm} ({data.source})")
        print(f"{cfg.model_name} act={cfg.act} norm={cfg.norm} init={cfg.init} on {data.source}, "
              f"{cfg.max_iter} iterations")
        print(format_summary(summary["test"]))
        if "corruptions" in results:
            found = results["corruptions"]
            means = found["groups"] or {f"mean of {len(found['corruptions'])} corruptions": found["mean"]}
            print(f"corrupted test top1, mean of {len(cfg.seeds)} seed{'s' if len(cfg.seeds) > 1 else ''}: "
                  + ", ".join(f"{group} {value:.2f}" for group, value in means.items())
                  + f" (clean {found['clean']:.2f}; per corruption in seed_<n>/corruptions.json)")
        print(f"results in {out / 'results.json'}" + (f", loss curves in {plot}" if plot else
                                                      f" (no loss-curve plot: {install_hint('matplotlib')})"))
    return results


def train_seed(plan: Plan, seed: int) -> Dict:
    """Train (or resume, or just reload) seed `seed`; return its results dict (also in seed_<seed>/results.json)."""
    cfg, data, device, dist = plan.cfg, plan.data, plan.device, plan.dist
    out = seed_dir(cfg.out, seed)
    ckpt_path, results_path = out / "checkpoint.pt", out / "results.json"
    state = load_checkpoint(ckpt_path) if cfg.resume and ckpt_path.is_file() else None
    if state is not None and state["step"] >= cfg.max_iter and results_path.is_file():
        return json.loads(results_path.read_text())

    # Split and model: both functions of the seed only, so a resumed run rebuilds the same ones.
    train_idx, val_idx = stratified_split(data.train_labels.cpu(), cfg.val_fraction, seed)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx]
    batches = TrainBatches(data.train_images[train_idx], data.train_labels[train_idx], cfg.batch_size, data.mean,
                           data.std, seed, dist.rank, dist.world_size, channels_last=cfg.channels_last)
    torch.manual_seed(seed)
    model = plan.model_fn().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    settings = {**cfg.settings(), "data": data.fingerprint(), "seed": seed}
    run = Run(model, optimizer, scheduler, settings=settings,
              records={"history": [], "best": {"top1": float("-inf"), "iteration": 0, "model": None},
                       "extensions": []})
    if state is not None:
        run.load_state_dict(state)
        if state["settings"]["max_iter"] < cfg.max_iter:  # a deliberate extension: say what ran
            run.records["extensions"].append({"at_iteration": run.step, "max_iter": [state["settings"]["max_iter"],
                                                                                     cfg.max_iter]})
        if dist.is_main:
            print(f"seed {seed}: resumed from {ckpt_path} at iteration {run.step}", file=sys.stderr)

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    eval_kwargs = dict(mean=data.mean, std=data.std, batch_size=cfg.eval_batch_size, amp=cfg.amp,
                       channels_last=cfg.channels_last, dist=dist)

    def on_eval(run: Run) -> None:
        history, best = run.records["history"], run.records["best"]
        row = {"iteration": run.step, "lr": run.train_log[-1]["lr"], "train_loss": _mean_since(run.train_log, history),
               "train_seconds": run.train_seconds}
        if len(val_images):
            broadcast_buffers(model, dist)
            val = evaluate(model, val_images, val_labels, **eval_kwargs)
            row.update({f"val_{k}": v for k, v in val.items() if k != "count"})
            if val["top1"] > best["top1"]:
                run.records["best"] = best = {"top1": val["top1"], "iteration": run.step, "val": val,
                                              "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            if dist.is_main:
                print(f"seed {seed} iter {run.step}: val top1 {val['top1']:.2f} loss {val['loss']:.4f} "
                      f"(best {best['top1']:.2f} at {best['iteration']})", file=sys.stderr)
        history.append(row)

    if dist.is_main and len(val_images) and run.step < cfg.max_iter:
        say(f"seed {seed}: validating every {min(cfg.eval_every, cfg.max_iter)} iterations on {len(val_images)} "
            f"held-out training images")
    loop = LoopConfig(cfg.max_iter, cfg.log_every, cfg.eval_every, checkpoint=ckpt_path,
                      amp_dtype=torch.bfloat16 if cfg.amp else None, desc=f"seed {seed}",
                      diverged_hint="lower --lr (the paper uses 0.01 without normalization) or use --norm bn")
    fit(run, batches, loop, on_eval=on_eval, net=net, dist=dist)

    # The paper's protocol: the weights with the best validation accuracy are the ones tested.
    best = run.records["best"]
    if best["model"] is not None:
        model.load_state_dict(best["model"])
    broadcast_buffers(model, dist)
    if dist.is_main:
        which = f"the best-validation weights (iteration {best['iteration']})" if best["model"] is not None else \
            "the last weights"
        say(f"seed {seed}: testing {which} on {len(data.test_images)} test images")
    test = evaluate(model, data.test_images, data.test_labels, **eval_kwargs)
    test.pop("count")
    results = {
        "model": cfg.model_name, "act": cfg.act, "norm": cfg.norm, "init": cfg.init, "dataset": data.source,
        "seed": seed, "iterations": run.step, "milestones": list(cfg.milestones), "lr": cfg.lr,
        "extensions": run.records["extensions"], "best_iteration": best["iteration"] or run.step,
        "val": {k: v for k, v in best.get("val", {}).items() if k != "count"} or None,
        "test": test,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": run.train_seconds, "seconds_per_iter": run.train_seconds / max(run.step, 1),
        "world_size": dist.world_size, "device": str(device),
        "history": run.records["history"], "train_log": run.train_log,
        "architecture": architecture(cfg, data), "classes": list(data.classes),
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
    }
    if dist.is_main:
        save_checkpoint(model.state_dict(), out / "model.pt")  # the tested (best-validation) weights
        write_csv(run.records["history"], out / "history.csv", HISTORY_COLUMNS)
        write_csv(run.train_log, out / "train_log.csv", ("iteration", "train_loss", "lr"))
        write_json(results, results_path)
    return results


def evaluate_seeds_on_corruptions(plan: Plan) -> dict:
    """--eval-corruptions: each seed's tested weights (seed_<n>/model.pt) on the corrupted test set, written to
    seed_<n>/corruptions.json; returns the summary for the run's results.json (group means per seed and
    averaged over the seeds). Every seed sees the same corrupted images (corruption seed 0), scored as the
    run's test set is (bfloat16 autocast with --amp, channels-last with --channels-last);
    recipes/eval_corruptions.py with the same two flags reproduces it."""
    from ..corruptions import CORRUPTIONS
    from .robustness import evaluate_corruptions

    cfg, data = plan.cfg, plan.data
    summary: dict = {"corruptions": list(cfg.corruptions or CORRUPTIONS),
                     "severities": sorted(set(cfg.corruption_severities)), "seeds": {}}
    for seed in cfg.seeds:
        weights = seed_dir(cfg.out, seed) / "model.pt"
        model = plan.model_fn().to(plan.device)
        model.load_state_dict(load_checkpoint(weights, map_location=plan.device))
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        found = evaluate_corruptions(model, data.test_images, data.test_labels, data.mean, data.std,
                                     corruptions=summary["corruptions"], severities=summary["severities"],
                                     batch_size=cfg.eval_batch_size, device=plan.device, seed=0, amp=cfg.amp,
                                     channels_last=cfg.channels_last,
                                     progress=lambda line: print(f"seed {seed} {line}", file=sys.stderr, flush=True))
        write_json({"checkpoint": str(weights), **found}, seed_dir(cfg.out, seed) / "corruptions.json")
        summary["seeds"][str(seed)] = {"clean": found["clean"]["top1"], "groups": found["groups"],
                                       "corruption_mean": found["corruption_mean"]}
        mean = sum(found["corruption_mean"].values()) / len(found["corruption_mean"])
        print(f"seed {seed} corrupted test top1: {mean:.2f} over {len(found['corruption_mean'])} corruptions "
              f"(clean {found['clean']['top1']:.2f})", file=sys.stderr)
    runs = list(summary["seeds"].values())
    for key in ("groups", "corruption_mean"):
        summary[key] = {name: sum(run[key][name] for run in runs) / len(runs) for name in runs[0][key]}
    summary["clean"] = sum(run["clean"] for run in runs) / len(runs)
    summary["mean"] = sum(summary["corruption_mean"].values()) / len(summary["corruption_mean"])
    return summary


def _mean_since(train_log: List[dict], history: List[dict]) -> Optional[float]:
    """Mean training loss over the iterations since the previous evaluation (log windows end at evaluations)."""
    start = history[-1]["iteration"] if history else 0
    rows = [row for row in train_log if row["iteration"] > start]
    steps = sum(row["steps"] for row in rows)
    return sum(row["train_loss"] * row["steps"] for row in rows) / steps if steps else None
