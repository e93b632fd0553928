"""Fine-tune a pretrained timm or torchvision model after swapping its activations to LayerAct.

One run measures what the swap costs and what fine-tuning recovers: load the model (`timm/<name>`
or `torchvision/<name>`; weights from a local file or the library's download), evaluate it, convert
it, evaluate again, fine-tune, evaluate a third time; optionally fine-tune the unconverted model for
the same budget as the fair baseline.

Images go through the model's own preprocessing (timm's data config, torchvision's weights
transforms) as per-image PIL transforms in DataLoader workers (folders.py); models and weights
files are pretrained.py's; the training loop is spine.fit, as for every recipe. The settings and their checks
are finetune_config.py's, the command line finetune_cli.py's.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._eval_mode import evaluating
from .checkpoint import check_resume, load_checkpoint, save_checkpoint
from .distributed import resolve_device
from .finetune_config import (ACT_CHOICES, OPTIMIZERS, RUN_ONLY, FinetuneConfig, check_config,
                              conversion_target)
from .folders import EpochOrder, SeededDraws, check_images, image_folders
from .metrics import batch_scores, summarize_scores
from .outdir import claim_output
from .pretrained import (classifier_name, create_model, data_transforms, input_size_kwarg, load_weights,
                         logits_of, num_classes, parse_model_name, set_num_classes)
from .results import write_json
from .spine import LoopConfig, Run, fit

__all__ = [
    "FinetuneConfig", "check_config", "run_finetune", "format_results", "create_model", "load_weights",
    "parse_model_name", "classifier_name", "num_classes", "set_num_classes", "data_transforms", "image_folders",
    "check_images", "conversion_target", "evaluate_loader", "finetune", "build_optimizer", "warmup_cosine",
    "ACT_CHOICES", "OPTIMIZERS", "RUN_ONLY", "CHECKPOINT_FORMAT",
]

# The fine-tuning checkpoint's format: 2 since the schedule is torch's SequentialLR and the parameter groups timm's
# (format 1 held a LambdaLR's state, which does not load into it).
CHECKPOINT_FORMAT = 2


def _amp_dtype(device: torch.device, amp: Optional[bool]) -> Optional[torch.dtype]:
    """bf16 where the device supports it, fp16 (with loss scaling) on older GPUs, None for full precision."""
    if not (device.type == "cuda" if amp is None else amp):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@torch.no_grad()
def _to_device(images: Tensor, targets: Tensor, device: torch.device, channels_last: bool) -> Tuple[Tensor, Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def evaluate_loader(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                    channels_last: bool = False) -> Dict[str, float]:
    """{"top1", "top5", "loss", "loss_std", "count"} of `model` in eval mode over a loader of preprocessed batches.

    The keys and their meaning are those of metrics.evaluate (the CIFAR recipes'), which scores a data
    set held on the device; here the held-out split streams through the model's own eval transform.
    """
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # loss, loss^2, top1, top5, count
    with evaluating(model):  # no_grad: else every batch's graph stayed alive through `totals` (22 GB)
        for images, targets in loader:
            images, targets = _to_device(images, targets, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = logits_of(model(images))
            totals += batch_scores(logits, targets)
    return summarize_scores(totals, "the held-out split holds no images")


def build_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, momentum: float):
    """AdamW or SGD; biases, norm and LayerAct affine parameters (all 1-D) get no weight decay (timm's groups)."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, weight_decay)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {opt!r}; choose one of: {', '.join(OPTIMIZERS)}")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """The learning rate times (step + 1) / (warmup + 1) for the first `warmup` steps, then a cosine decay to 0 at
    step `total`: torch's schedulers chained as torchvision's references chain them."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup == 0:
        return cosine
    warm = LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return SequentialLR(optimizer, [warm, cosine], milestones=[warmup])


def finetune(model: nn.Module, train_set: Dataset, *, iterations: int, batch_size: int, opt: str, lr: float,
             weight_decay: float, momentum: float = 0.9, warmup_iters: int = 0, smoothing: float = 0.0,
             device: torch.device = torch.device("cpu"), amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, seed: int = 0, workers: int = 0, checkpoint: Optional[Path] = None,
             save_every: int = 200, resume: bool = False, settings: Optional[dict] = None, desc: str = "",
             stream: Optional[TextIO] = None) -> List[dict]:
    """Train `model` (already on `device`) for `iterations` steps with the spine's loop; returns its loss log.

    With `checkpoint`, the full training state is saved there atomically every `save_every` steps and when
    Ctrl-C stops the run (which then raises KeyboardInterrupt); `resume` continues from it, to the same weights
    as an uninterrupted run. At the end only the weights and the loss log are kept there (`"finished": True`).
    `settings` are stored with it and must match on resume.
    """
    optimizer = build_optimizer(model, opt, lr, weight_decay, momentum)
    scheduler = warmup_cosine(optimizer, warmup_iters, iterations)
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    torch.manual_seed(seed)  # dropout and drop-path; data augmentation has its own seeds
    run = Run(model, optimizer, scheduler, settings=settings or {},
              scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16),
              checkpoint_format=CHECKPOINT_FORMAT)
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, format=CHECKPOINT_FORMAT)
        check_resume(state["settings"], run.settings, checkpoint)
        if state.get("finished"):  # the run had ended: only its weights and log were kept
            model.load_state_dict(state["model"])
            return state["train_log"]
        run.load_state_dict(state)
    if run.step >= iterations:
        return run.train_log
    loader = DataLoader(SeededDraws(train_set, seed), batch_size=batch_size,
                        sampler=EpochOrder(len(train_set), seed, run.step * batch_size, iterations * batch_size),
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(seed))  # keeps the global RNG out of it
    stream_of_batches = iter(loader)

    def batches(step: int) -> Tuple[Tensor, Tensor]:  # the sampler already starts at the resumed step
        images, targets = next(stream_of_batches)
        return _to_device(images, targets, device, channels_last)

    loop = LoopConfig(iterations, log_every=max(1, iterations // 100), save_every=save_every, checkpoint=checkpoint,
                      final_checkpoint=False, amp_dtype=amp_dtype, desc=desc, stream=stream,
                      diverged_hint=f"lower --lr (now {lr:g}) or turn off --amp")
    fit(run, batches, loop, loss_fn=lambda output, targets: criterion(logits_of(output).float(), targets))
    if checkpoint is not None:
        # A finished run keeps its weights (for eval_corruptions.py) and log: its optimizer state, twice the model
        # for AdamW, is of no use once the run has ended.
        save_checkpoint({"format": CHECKPOINT_FORMAT, "finished": True, "step": run.step, "model": model.state_dict(),
                         "settings": run.settings, "train_log": run.train_log}, checkpoint)
    return run.train_log


# -------------------------------------------------------------------------------------------------- run


def _check_input_size(model: nn.Module, spec: str, example: Tensor, img_size: Optional[int]) -> None:
    """ValueError naming the flags to pass when the model cannot take the inputs its transforms make."""
    try:
        with evaluating(model):
            model(example)
    except (RuntimeError, AssertionError, ValueError) as err:
        side = example.shape[-1]
        native = getattr(model, "pretrained_cfg", {}).get("input_size") or (None, None, getattr(model, "image_size",
                                                                                                 None))
        own = f"--img-size {native[-1]} (its own input size), or " if native[-1] and native[-1] != side else ""
        raise ValueError(f"{spec} does not take {side}x{side} inputs ({str(err).splitlines()[0]}); pass {own}build "
                         f"it for {side}x{side} with --model-kwargs {input_size_kwarg(spec)}={side}") from None


def run_finetune(config: FinetuneConfig, stream: Optional[TextIO] = None) -> dict:
    """One run as described in the module docstring; writes `out/results.json` after every stage and returns it.

    Every input error is raised (ValueError / FileNotFoundError) before training starts and before anything
    is written to `out`, which is locked for the run (a second run on it refuses).

    results.json: {"original", "converted", "finetuned"[, "baseline"]: {"top1", "top5", "loss", "loss_std", "count"},
    "settings", "classes", "new_head", "iterations", "eval_split" (val or test: the folder scored), "conversion",
    "history", "seconds"}.
    """
    cfg = check_config(config)
    with claim_output(Path(cfg.out).expanduser()) as out:
        return _run(cfg, out, sys.stderr if stream is None else stream)


def _run(cfg: FinetuneConfig, out: Path, stream: TextIO) -> dict:
    target, affine = conversion_target(cfg.act)
    lr = OPTIMIZERS[cfg.opt][0] if cfg.lr is None else cfg.lr
    weight_decay = OPTIMIZERS[cfg.opt][1] if cfg.weight_decay is None else cfg.weight_decay
    device = resolve_device(cfg.device)
    amp_dtype = _amp_dtype(device, cfg.amp)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    results_path = out / "results.json"
    results: dict = {}
    if cfg.resume:
        if not results_path.exists():
            raise FileNotFoundError(f"--resume: {str(out)!r} holds no run to resume (no results.json); start "
                                    f"without --resume")
        results = json.loads(results_path.read_text())
    elif results_path.exists() or any(out.glob("checkpoint_*.pt")):
        raise ValueError(f"--out {str(out)!r} already holds a run; pass --resume to continue it, or choose another "
                         f"--out")

    # Data first: a wrong path should not wait for a model download.
    train_set, eval_set = image_folders(cfg.data_dir)
    per_epoch = len(train_set) // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"the training split holds {len(train_set)} images, fewer than --batch-size {cfg.batch_size}; "
                         f"lower --batch-size")
    settings = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}
    settings.update(lr=lr, weight_decay=weight_decay, data={"classes": list(train_set.classes),
                                                            "train_images": len(train_set),
                                                            "eval_images": len(eval_set)})
    if cfg.resume:
        check_resume(results.get("settings", {}), settings, results_path)
    check_images(train_set, eval_set)
    torch.manual_seed(cfg.seed)  # a new head starts the same in the converted and the baseline run
    model = create_model(cfg.model, cfg.weights, **(cfg.model_kwargs or {}))
    train_set.transform, eval_set.transform = data_transforms(model, cfg.model, cfg.img_size, cfg.crop_pct,
                                                              cfg.min_scale, cfg.augment)
    classes = len(train_set.classes)
    new_head = cfg.reset_head or classes != num_classes(model)
    if new_head:
        set_num_classes(model, classes)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # One example batch: checks the input size now, then records every call site for the conversion.
    example = torch.stack([eval_set[i][0] for i in range(min(2, len(eval_set)))]).to(device)
    _check_input_size(model, cfg.model, example, cfg.img_size)

    iterations = cfg.max_iter if cfg.max_iter is not None else (cfg.epochs or 1) * per_epoch
    warmup = round(0.05 * iterations) if cfg.warmup_iters is None else cfg.warmup_iters
    if cfg.calibrate is not None and cfg.calibrate > len(train_set):
        raise ValueError(f"--calibrate {cfg.calibrate} asks for more images than the training split's "
                         f"{len(train_set)}; lower it")
    results.update(model=cfg.model, act=cfg.act, weights=cfg.weights or "pretrained", settings=settings,
                   classes=classes, new_head=new_head, iterations=iterations, batch_size=cfg.batch_size,
                   eval_split=Path(eval_set.root).name)  # what every score was measured on: val or test
    results.setdefault("seconds", {})
    eval_loader = DataLoader(eval_set, batch_size=2 * cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                             pin_memory=device.type == "cuda")

    def measure(key: str, net: nn.Module) -> None:
        if key not in results:
            print(f"{key}: evaluating on the {len(eval_set)} images of {Path(eval_set.root).name}/", file=stream,
                  flush=True)
            start = time.perf_counter()
            results[key] = evaluate_loader(net, eval_loader, device, amp_dtype, channels_last)
            results["seconds"][f"eval_{key}"] = round(time.perf_counter() - start, 2)
            write_json(results, results_path)
            print(f"{key}: top1 {results[key]['top1']:.2f}%", file=stream)

    measure("original", model)
    baseline = copy.deepcopy(model) if cfg.baseline else None
    from ..convert import Calibration, convert_activations

    model.eval()  # the example forward then works for a batch of one and leaves BatchNorm alone
    calibration = None
    if cfg.calibrate is not None:
        # What the swap costs without calibration, on a copy: the same LayerAct with weight 1 and bias 0.
        if "plain_swap" not in results:
            plain = convert_activations(copy.deepcopy(model), to=target, example_input=example,
                                        functional=cfg.functional)
            measure("plain_swap", plain)
            del plain
        calibration = calibration_images(train_set, eval_set.transform, cfg.calibrate, cfg.seed, device)
        print(f"calibrating on {cfg.calibrate} training images", file=stream)
    start = time.perf_counter()
    model, report = convert_activations(model, to=target, affine=affine or calibration is not None,
                                        example_input=example, functional=cfg.functional, return_report=True,
                                        calibrate=None if calibration is None else
                                        Calibration(calibration, max_error=cfg.calibrate_max_error))
    results["conversion"] = {"swapped": len(report.swapped), "skipped": len(report.skipped),
                             "functional": [f"{c.fqn}: {c.function} ({c.status})" for c in report.functional]}
    if calibration is not None:
        results["conversion"]["calibration"] = [c._asdict() for c in report.calibration]
        results["seconds"]["calibrate"] = round(time.perf_counter() - start, 2)
    print(str(report).splitlines()[0], file=stream)
    measure("converted", model)
    if iterations == 0:
        return results

    runs = [("finetuned", model)] + ([("baseline", baseline)] if baseline is not None else [])
    results.setdefault("history", {})
    for key, net in runs:
        if key in results:
            continue
        start = time.perf_counter()
        results["history"][key] = finetune(
            net, train_set, iterations=iterations, batch_size=cfg.batch_size, opt=cfg.opt, lr=lr,
            weight_decay=weight_decay, momentum=cfg.momentum, warmup_iters=warmup, smoothing=cfg.smoothing,
            device=device, amp_dtype=amp_dtype, channels_last=channels_last, seed=cfg.seed, workers=cfg.workers,
            checkpoint=out / f"checkpoint_{key}.pt", save_every=cfg.save_every, resume=cfg.resume,
            settings=settings, desc=key, stream=stream)
        results["seconds"][f"train_{key}"] = round(time.perf_counter() - start, 2)
        measure(key, net)
    return results


def calibration_images(train_set, transform, count: int, seed: int, device: torch.device) -> List[Tensor]:
    """`count` training images drawn by `seed`, through the eval transform (no augmentation), in batches."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    images = torch.stack([transform(train_set.loader(train_set.samples[i][0])) for i in order]).to(device)
    return list(images.split(128))


def format_results(results: dict) -> str:
    """The printed table: one row per model state, top1 / top5 / loss and top1 change against the original."""
    calibrated = (results.get("settings") or {}).get("calibrate")
    act = results.get("act")
    rows = [("original", "pretrained, as loaded"), ("plain_swap", f"{act}, plain swap"),
            ("converted", f"{act}, calibrated ({calibrated} images)" if calibrated else f"{act}, before fine-tuning"),
            ("finetuned", f"{results.get('act')}, fine-tuned"), ("baseline", "unconverted, fine-tuned")]
    reference = results.get("original", {}).get("top1")
    lines = [f"{'model':<10} {'state':<40} {'top1':>7} {'top5':>7} {'loss':>7} {'d top1':>7}"]
    for key, state in rows:
        if key not in results:
            continue
        m = results[key]
        delta = "" if reference is None else f"{m['top1'] - reference:+.2f}"
        top5 = f"{m['top5']:>7.2f}" if "top5" in m else f"{'-':>7}"  # 5 classes or fewer: no top-5
        lines.append(f"{key:<10} {state:<40} {m['top1']:>7.2f} {top5} {m['loss']:>7.4f} {delta:>7}")
    if results.get("new_head"):
        lines.append(f"(new {results['classes']}-class head: original and converted are before any training)")
    return "\n".join(lines)
