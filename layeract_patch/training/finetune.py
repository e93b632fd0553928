"""Fine-tune a pretrained timm or torchvision model after swapping its activations to LayerAct.

One run measures what the swap costs and what fine-tuning recovers: load the model (`timm/<name>`
or `torchvision/<name>`; weights from a local file or the library's download), evaluate it, convert
it, evaluate again, fine-tune, evaluate a third time; optionally fine-tune the unconverted model for
the same budget as the fair baseline.

Images go through the model's own preprocessing (timm's data config, torchvision's weights
transforms) as per-image PIL transforms in DataLoader workers. Unlike the CIFAR recipes, which keep
the whole set as one uint8 tensor on the device, a fine-tuning set at the model's resolution rarely
fits in memory, and random resized crops need the full-size image.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, TextIO, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .distributed import resolve_device
from .data import find_imagefolder
from .interrupt import GracefulStop
from .metrics import batch_scores, summarize_scores
from .progress import Progress
from .results import write_json

__all__ = [
    "FinetuneConfig", "run_finetune", "format_results", "create_model", "load_weights", "parse_model_name",
    "classifier_name", "num_classes", "set_num_classes", "data_transforms", "image_folders", "conversion_target",
    "evaluate", "finetune", "build_optimizer", "WarmupCosine", "ACT_CHOICES", "OPTIMIZERS",
]

LIBRARIES = ("timm", "torchvision")
OPTIMIZERS = {"adamw": (1e-4, 0.05), "sgd": (1e-2, 1e-4)}  # name -> (default lr, default weight decay)
_MIX = 0x9E3779B97F4A7C15  # odd constant: distinct (seed, counter) pairs give distinct generator seeds
# Settings that do not change what is computed, so a run may resume with other values.
_RUN_ONLY = ("out", "resume", "device", "workers", "save_every")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run depends on; the recipe's flags map one to one onto these fields.

    `epochs` or `max_iter` sets the budget (iterations of `batch_size` images); `lr` and
    `weight_decay` default by optimizer (AdamW 1e-4 / 0.05, SGD 1e-2 / 1e-4); `warmup_iters`
    defaults to 5% of the budget; `amp` and `channels_last` default to on for CUDA, off for the CPU.
    """

    model: str
    data_dir: str
    out: str
    weights: Optional[str] = None
    model_kwargs: Optional[Dict[str, object]] = None
    act: str = "la_silu"
    epochs: Optional[int] = None
    max_iter: Optional[int] = None
    batch_size: int = 64
    img_size: Optional[int] = None
    crop_pct: Optional[float] = None
    min_scale: float = 0.08
    opt: str = "adamw"
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: float = 0.9
    warmup_iters: Optional[int] = None
    smoothing: float = 0.1
    reset_head: bool = False
    functional: str = "report"
    baseline: bool = False
    seed: int = 0
    device: str = "auto"
    amp: Optional[bool] = None
    channels_last: Optional[bool] = None
    workers: int = min(4, os.cpu_count() or 1)
    save_every: int = 200
    resume: bool = False


# ----------------------------------------------------------------------------------------------- models


def parse_model_name(spec: str) -> Tuple[str, str]:
    """'timm/resnet18' -> ('timm', 'resnet18'); ValueError naming the expected form otherwise."""
    library, _, name = str(spec).partition("/")
    if library not in LIBRARIES or not name:
        raise ValueError(f"model {spec!r} must name its library: timm/<name> (e.g. timm/resnet18) or "
                         f"torchvision/<name> (e.g. torchvision/mobilenet_v3_small)")
    return library, name


def create_model(spec: str, weights: Optional[str] = None, **kwargs) -> nn.Module:
    """The model `spec` ('timm/<name>' or 'torchvision/<name>') with pretrained weights.

    `weights` is a local file (a state_dict, a timm checkpoint with 'state_dict' / 'state_dict_ema' /
    'model' keys, a torchvision checkpoint {'model': ...}, or .safetensors); its classifier may have
    any class count. Without it the library's own pretrained weights are used (downloaded when not
    cached); when that fails the error says to pass a local file. `kwargs` go to the library's factory
    (e.g. act="silu" for this package's timm-registered cifar_resnet20).
    """
    library, name = parse_model_name(spec)
    model = _build(library, name, weights is None, kwargs)
    if weights is not None:
        state_dict = load_weights(weights)
        head = classifier_name(model)
        head_weight = state_dict.get(f"{head}.weight")
        if head_weight is not None and head_weight.shape[0] != num_classes(model):
            set_num_classes(model, head_weight.shape[0])
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            found = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                     for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "mis-shaped"))
                     if keys]
            raise ValueError(f"weights {str(weights)!r} do not fit {spec}: {'; '.join(found)} keys; pass a checkpoint "
                             f"of this architecture")
        model.load_state_dict(state_dict)
    return model


def _build(library: str, name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    if library == "timm":
        import timm

        importlib.import_module("..models", __package__)  # registers this package's models (cifar_resnet20, ...)

        if not timm.is_model(name):
            close = timm.list_models(f"*{name}*")[:5]
            raise ValueError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
        if pretrained and not timm.is_model_pretrained(name):
            raise ValueError(f"timm has no pretrained weights for {name!r}; pass a local file with --weights PATH")
        return _download(lambda: timm.create_model(name, pretrained=pretrained, **kwargs), f"timm/{name}")
    import torchvision

    if name not in torchvision.models.list_models(torchvision.models):
        close = [m for m in torchvision.models.list_models(torchvision.models) if name in m or m in name][:5]
        raise ValueError(f"unknown torchvision classification model {name!r}"
                         + (f"; similar: {', '.join(close)}" if close else ""))
    weights = "DEFAULT" if pretrained else None
    return _download(lambda: torchvision.models.get_model(name, weights=weights, **kwargs), f"torchvision/{name}")


def _download(build, spec: str) -> nn.Module:
    try:
        return build()
    except TypeError as err:  # an option the model's factory does not take
        raise ValueError(f"{spec} does not take these options ({err})") from err
    except OSError as err:  # URLError, huggingface_hub's LocalEntryNotFoundError, a full disk
        raise ValueError(f"could not get the pretrained weights of {spec} ({type(err).__name__}: {err}); offline, "
                         f"pass a local state_dict or checkpoint with --weights PATH") from err


def load_weights(path: str) -> Dict[str, Tensor]:
    """The model state_dict inside a weights file, as create_model accepts it, with DDP/compile prefixes removed."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(file))
        else:
            # timm's training checkpoints carry their argparse.Namespace; nothing else outside plain data is unpickled.
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read weights file {str(path)!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); save the model's state_dict with "
                         f"torch.save(model.state_dict(), path)") from err
    # timm prefers the EMA weights of a training checkpoint (timm.models.load_checkpoint(use_ema=True)).
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not (isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values())):
        raise ValueError(f"weights file {str(path)!r} holds no state_dict (expected a dict of tensors, or a checkpoint "
                         f"with one under 'state_dict', 'state_dict_ema' or 'model')")
    prefixes = ("module.", "_orig_mod.")
    clean = {}
    for key, value in checkpoint.items():
        while key.startswith(prefixes):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the final nn.Linear: timm's pretrained_cfg['classifier'], else the last Linear."""
    named = getattr(model, "pretrained_cfg", {}).get("classifier")
    named = named[0] if isinstance(named, (tuple, list)) else named
    modules = dict(model.named_modules())
    if isinstance(modules.get(named), nn.Linear):
        return named
    linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier whose class count could be changed; "
                         f"fine-tune it on data with its own class count")
    return linears[-1]


def num_classes(model: nn.Module) -> int:
    return model.get_submodule(classifier_name(model)).out_features


def set_num_classes(model: nn.Module, count: int) -> nn.Module:
    """A new, randomly initialised classifier for `count` classes: timm's reset_classifier, else a new last Linear."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(count)
        return model
    name = classifier_name(model)
    old = model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = nn.Linear(old.in_features, count, bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    return model


def _logits(output) -> Tensor:
    # torchvision's googlenet / inception_v3 return (logits, aux...) in training mode.
    return output[0] if isinstance(output, tuple) else output


# ------------------------------------------------------------------------------------------------- data


def data_transforms(model: nn.Module, spec: str, img_size: Optional[int] = None, crop_pct: Optional[float] = None,
                    min_scale: float = 0.08):
    """(train, eval) transforms from the model's own data config, at `img_size` when given.

    timm: resolve_data_config + create_transform. torchvision: the weights' transforms() for eval (its
    resize / crop sizes scaled to `img_size`), and random resized crop + flip with its mean, std and
    interpolation for training, as torchvision's reference recipe.
    """
    library, name = parse_model_name(spec)
    if library == "timm":
        from timm.data import create_transform, resolve_data_config

        overrides = {}
        if img_size is not None:
            overrides["input_size"] = (3, img_size, img_size)
        if crop_pct is not None:
            overrides["crop_pct"] = crop_pct
        config = resolve_data_config(overrides, model=model)
        train = create_transform(**config, is_training=True, scale=(min_scale, 1.0))
        return train, create_transform(**config, is_training=False)

    import torchvision
    from torchvision import transforms as T
    from torchvision.transforms._presets import ImageClassification

    try:
        preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        crop, resize = preset.crop_size[0], preset.resize_size[0]
        mean, std, interpolation = preset.mean, preset.std, preset.interpolation
    except (ValueError, KeyError, AttributeError):  # a model without published weights: ImageNet's defaults
        crop, resize = 224, 256
        mean, std, interpolation = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), T.InterpolationMode.BILINEAR
    ratio = crop / resize if crop_pct is None else crop_pct
    crop = crop if img_size is None else img_size
    resize = round(crop / ratio)
    eval_tf = ImageClassification(crop_size=crop, resize_size=resize, mean=mean, std=std, interpolation=interpolation)
    train_tf = T.Compose([
        T.RandomResizedCrop(crop, scale=(min_scale, 1.0), interpolation=interpolation, antialias=True),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(mean, std),
    ])
    return train_tf, eval_tf


def image_folders(data_dir: str, train_transform=None, eval_transform=None):
    """(train, held-out) torchvision ImageFolders of `data_dir/train` and `data_dir/val` (or `test`).

    Labels follow the class folders of train/, so a held-out split that lacks a class still agrees.
    """
    from torchvision.datasets import ImageFolder

    root = Path(data_dir).expanduser()
    train_dir = find_imagefolder(root, train=True)
    eval_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if train_dir is None or eval_dir is None:
        state = "does not exist" if not root.is_dir() else f"lacks {'train/' if train_dir is None else 'val/ or test/'}"
        raise FileNotFoundError(f"data dir {str(data_dir)!r} {state}; expected an ImageFolder root with "
                                f"train/<class>/<image> and val/<class>/<image> (or test/)")
    train = ImageFolder(str(train_dir), transform=train_transform)
    held_out = ImageFolder(str(eval_dir), transform=eval_transform)
    unknown = sorted(set(held_out.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"class folders {unknown} of {str(eval_dir)!r} are missing from {str(train_dir)!r}; "
                         f"both splits must use the same class folders")
    index = [train.class_to_idx[name] for name in held_out.classes]
    held_out.samples = [(path, index[target]) for path, target in held_out.samples]
    held_out.targets = [target for _, target in held_out.samples]
    held_out.classes, held_out.class_to_idx = train.classes, train.class_to_idx
    return train, held_out


class _SeededDraws(Dataset):
    """Draw k is image k % len(base), augmented with RNGs seeded by (seed, k).

    The same draw gives the same tensor whichever worker loads it and whether or not the run was
    resumed in between, so a resumed run matches an uninterrupted one; the caller's RNGs are untouched.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed = base, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, draw: int):
        seed = (self.seed * _MIX + draw) % 2**63
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)  # timm's crops and flips draw from the `random` module
                return self.base[draw % len(self.base)]
        finally:
            random.setstate(python_state)


class _EpochOrder(Sampler):
    """Draw numbers start..stop-1 of an endless stream of seeded epoch permutations.

    Position p is image perm_e[p % n] of epoch e = p // n, yielded as draw e * n + image (unique per epoch
    and image, so its augmentation differs from epoch to epoch).
    """

    def __init__(self, size: int, seed: int, start: int, stop: int) -> None:
        self.size, self.seed, self.start, self.stop = size, int(seed), start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        epoch, order = None, None
        for position in range(self.start, self.stop):
            if position // self.size != epoch:
                epoch = position // self.size
                generator = torch.Generator().manual_seed((self.seed * _MIX + epoch) % 2**63)
                order = torch.randperm(self.size, generator=generator).tolist()
            yield epoch * self.size + order[position % self.size]


# --------------------------------------------------------------------------------------------- training


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


def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> Dict[str, float]:
    """{"top1", "top5", "loss", "loss_std", "count"} of `model` in eval mode over a loader of preprocessed batches.

    The keys and their meaning are those of metrics.evaluate (the CIFAR recipes'), which scores a data
    set held on the device; here the held-out split streams through the model's own eval transform.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # loss, loss^2, top1, top5, count
    for images, targets in loader:
        images, targets = _to_device(images, targets, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = _logits(model(images))
        totals += batch_scores(logits, targets)
    model.train(was_training)
    return summarize_scores(totals, "the held-out split holds no images")


def build_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, momentum: float):
    """AdamW or SGD; biases, norm and LayerAct affine parameters (all 1-D) get no weight decay, as in timm."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {opt!r}; choose one of: {', '.join(OPTIMIZERS)}")


class WarmupCosine:
    """Learning-rate factor: linear warm-up from ~0 over `warmup` iterations, then cosine decay to 0 at `total`."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def finetune(model: nn.Module, train_set: Dataset, *, iterations: int, batch_size: int, opt: str, lr: float,
             weight_decay: float, momentum: float = 0.9, warmup_iters: int = 0, smoothing: float = 0.0,
             device: torch.device = torch.device("cpu"), amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, seed: int = 0, workers: int = 0, checkpoint: Optional[Path] = None,
             save_every: int = 200, resume: bool = False, settings: Optional[dict] = None, desc: str = "",
             stream: Optional[TextIO] = None) -> List[dict]:
    """Train `model` (already on `device`) for `iterations` steps; returns the loss history.

    With `checkpoint`, the full training state is saved there atomically every `save_every` steps, at
    the end, and when Ctrl-C stops the run (which then raises KeyboardInterrupt); `resume` continues from
    it, to the same weights as an uninterrupted run. `settings` is stored with it and must match on resume.
    """
    optimizer = build_optimizer(model, opt, lr, weight_decay, momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_iters, iterations))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    torch.manual_seed(seed)  # dropout and drop-path; data augmentation has its own seeds
    step, history = 0, []
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        if state.get("settings") != settings:
            raise ValueError(f"checkpoint {str(checkpoint)!r} was written by a run with other settings "
                             f"({_difference(state.get('settings'), settings)}); use them again or another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, history = state["iteration"], state["history"]

    def save() -> None:
        if checkpoint is not None:
            save_checkpoint({"iteration": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                             "rng": get_rng_state(), "history": history, "settings": settings}, checkpoint)

    if step >= iterations:
        return history
    loader = DataLoader(_SeededDraws(train_set, seed), batch_size=batch_size,
                        sampler=_EpochOrder(len(train_set), seed, step * batch_size, iterations * batch_size),
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(seed))  # keeps the global RNG out of it
    model.train()
    log_every = max(1, iterations // 100)
    running, running_count = 0.0, 0
    progress = Progress(iterations, desc=desc, stream=stream)
    with GracefulStop(device=device) as stop, progress:
        for images, targets in loader:
            images, targets = _to_device(images, targets, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(_logits(model(images)).float(), targets)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at iteration {step + 1}; lower --lr (now "
                                         f"{lr:g}) or turn off --amp")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            current_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            running += value
            running_count += 1
            if step % log_every == 0 or step == iterations:
                history.append({"iteration": step, "loss": running / running_count, "lr": current_lr})
                running, running_count = 0.0, 0
            progress.update(step, images=len(targets), loss=value, lr=current_lr)
            stopping = stop.should_stop(step)
            if step % save_every == 0 or step == iterations or stopping:
                save()
            if stopping:
                raise KeyboardInterrupt(f"stopped at iteration {step}; checkpoint saved to {checkpoint}")
    return history


def _difference(saved: Optional[dict], current: Optional[dict]) -> str:
    saved, current = saved or {}, current or {}
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now" for k in keys) or "unknown"


# -------------------------------------------------------------------------------------------------- run


ACT_CHOICES = ("la_silu", "la_hardsilu", "la_silu_affine", "la_hardsilu_affine", "auto")


def conversion_target(act: str):
    """(to, affine) for convert_activations: 'la_silu_affine' -> ('la_silu', True); 'auto' maps the
    hard-swish family to LA-HardSiLU and every other activation to LA-SiLU, each to its own smooth/hard kin."""
    name = act.strip().lower() if isinstance(act, str) else act
    if name not in ACT_CHOICES:
        raise ValueError(f"--act {act!r} is not a LayerAct conversion; choose one of: {', '.join(ACT_CHOICES)}")
    if name == "auto":
        from ..convert import default_activation_types

        return {t: "la_hardsilu" if "hard" in t.__name__.lower() else "la_silu"
                for t in default_activation_types()}, False
    affine = name.endswith("_affine")
    return (name[: -len("_affine")] if affine else name), affine


def run_finetune(config: FinetuneConfig, stream: Optional[TextIO] = None) -> dict:
    """One run as described in the module docstring; writes `out/results.json` after every stage and returns it.

    results.json: {"original", "converted", "finetuned"[, "baseline"]: {"top1", "top5", "loss", "loss_std", "count"},
    "settings", "classes", "new_head", "iterations", "conversion", "history", "seconds"}.
    """
    cfg = config
    stream = sys.stderr if stream is None else stream
    parse_model_name(cfg.model)
    target, affine = conversion_target(cfg.act)
    if cfg.functional not in ("report", "convert"):
        raise ValueError(f"--functional must be report or convert, got {cfg.functional!r}")
    if cfg.opt not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.opt!r}; choose one of: {', '.join(OPTIMIZERS)}")
    lr = OPTIMIZERS[cfg.opt][0] if cfg.lr is None else cfg.lr
    weight_decay = OPTIMIZERS[cfg.opt][1] if cfg.weight_decay is None else cfg.weight_decay
    for name in ("batch_size", "img_size", "epochs", "max_iter", "save_every"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.epochs is not None and cfg.max_iter is not None:
        raise ValueError("give either --epochs or --max-iter, not both")
    device = resolve_device(cfg.device)
    amp_dtype = _amp_dtype(device, cfg.amp)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    out = Path(cfg.out).expanduser()
    results_path = out / "results.json"
    settings = {k: v for k, v in asdict(cfg).items() if k not in _RUN_ONLY}
    settings.update(lr=lr, weight_decay=weight_decay)
    results: dict = {}
    if cfg.resume:
        if not results_path.exists():
            raise FileNotFoundError(f"--resume: {str(out)!r} holds no run to resume (no results.json); start "
                                    f"without --resume")
        results = json.loads(results_path.read_text())
        if results.get("settings") != settings:
            raise ValueError(f"{str(results_path)!r} was written by a run with other settings "
                             f"({_difference(results.get('settings'), settings)}); use them again or another --out")
    elif results_path.exists() or any(out.glob("checkpoint_*.pt")):
        raise ValueError(f"--out {str(out)!r} already holds a run; pass --resume to continue it, or choose another "
                         f"--out")

    # Data first: a wrong path should not wait for a model download.
    train_set, eval_set = image_folders(cfg.data_dir)
    torch.manual_seed(cfg.seed)  # a new head starts the same in the converted and the baseline run
    model = create_model(cfg.model, cfg.weights, **(cfg.model_kwargs or {}))
    train_set.transform, eval_set.transform = data_transforms(model, cfg.model, cfg.img_size, cfg.crop_pct,
                                                              cfg.min_scale)
    classes = len(train_set.classes)
    new_head = cfg.reset_head or classes != num_classes(model)
    if new_head:
        set_num_classes(model, classes)
    per_epoch = len(train_set) // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"the training split holds {len(train_set)} images, fewer than --batch-size {cfg.batch_size}")
    iterations = cfg.max_iter if cfg.max_iter is not None else (cfg.epochs or 1) * per_epoch
    warmup = round(0.05 * iterations) if cfg.warmup_iters is None else cfg.warmup_iters
    results.update(model=cfg.model, act=cfg.act, weights=cfg.weights or "pretrained", settings=settings,
                   classes=classes, new_head=new_head, iterations=iterations, batch_size=cfg.batch_size)
    results.setdefault("seconds", {})
    eval_loader = DataLoader(eval_set, batch_size=2 * cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                             pin_memory=device.type == "cuda")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def measure(key: str, net: nn.Module) -> None:
        if key not in results:
            start = time.perf_counter()
            results[key] = evaluate(net, eval_loader, device, amp_dtype, channels_last)
            results["seconds"][f"eval_{key}"] = round(time.perf_counter() - start, 2)
            write_json(results, results_path)
            print(f"{key}: top1 {results[key]['top1']:.2f}%", file=stream)

    measure("original", model)
    baseline = copy.deepcopy(model) if cfg.baseline else None
    from ..convert import convert_activations

    # One example forward records every call site (sizes affine parameters, finds functional activations).
    example = torch.stack([eval_set[i][0] for i in range(min(2, len(eval_set)))]).to(device)
    model.eval()  # the example forward then works for a batch of one and leaves BatchNorm alone
    model, report = convert_activations(model, to=target, affine=affine, example_input=example,
                                        functional=cfg.functional, return_report=True)
    results["conversion"] = {"swapped": len(report.swapped), "skipped": len(report.skipped),
                             "functional": [f"{c.fqn}: {c.function} ({c.status})" for c in report.functional]}
    print(str(report).splitlines()[0], file=stream)
    measure("converted", model)

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


def format_results(results: dict) -> str:
    """The printed table: one row per model state, top1 / top5 / loss and top1 change against the original."""
    rows = [("original", "pretrained, as loaded"), ("converted", f"{results.get('act')}, before fine-tuning"),
            ("finetuned", f"{results.get('act')}, fine-tuned"), ("baseline", "unconverted, fine-tuned")]
    reference = results.get("original", {}).get("top1")
    lines = [f"{'model':<10} {'state':<30} {'top1':>7} {'top5':>7} {'loss':>7} {'d top1':>7}"]
    for key, state in rows:
        if key not in results:
            continue
        m = results[key]
        delta = "" if reference is None else f"{m['top1'] - reference:+.2f}"
        lines.append(f"{key:<10} {state:<30} {m['top1']:>7.2f} {m['top5']:>7.2f} {m['loss']:>7.4f} {delta:>7}")
    if results.get("new_head"):
        lines.append(f"(new {results['classes']}-class head: original and converted are before any training)")
    return "\n".join(lines)
