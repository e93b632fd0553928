"""The fine-tuning recipe's config: `FinetuneConfig` (every setting of a run), the optimizers and their defaults,
the LayerAct targets `--act` accepts, and `check_config` (every check, before anything is loaded or written).
The run itself is finetune.py's; the command line finetune_cli.py's.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .. import catalogue
from .checkpoint import flag
from .outdir import check_output_path
from .pretrained import AUGMENTS, parse_model_name

__all__ = ["FinetuneConfig", "check_config", "conversion_target", "ACT_CHOICES", "OPTIMIZERS", "RUN_ONLY"]

OPTIMIZERS = {"adamw": (1e-4, 0.05), "sgd": (1e-2, 1e-4)}  # name -> (default lr, default weight decay)
# Settings that do not change what is computed: not stored, free to differ on --resume (checkpoint.check_resume).
RUN_ONLY = ("out", "resume", "device", "workers", "save_every")

@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run depends on; the recipe's flags map one to one onto these fields.

    `epochs` or `max_iter` sets the budget (iterations of `batch_size` images; max_iter=0 measures the swap
    alone, without training); `calibrate` (N) fits the affine LayerAct to the replaced activations on N
    training images (eval transform) before fine-tuning, and the plain swap is measured beside it (sites whose
    error stays above `calibrate_max_error` keep their activation: `Calibration.max_error`); `lr` and
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
    augment: str = "imagenet"
    opt: str = "adamw"
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: float = 0.9
    warmup_iters: Optional[int] = None
    smoothing: float = 0.1
    reset_head: bool = False
    functional: str = "report"
    baseline: bool = False
    calibrate: Optional[int] = None
    calibrate_max_error: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    amp: Optional[bool] = None
    channels_last: Optional[bool] = None
    workers: int = min(4, os.cpu_count() or 1)
    save_every: int = 200
    resume: bool = False


ACT_CHOICES = catalogue.layer_act_spellings() + ("auto",)  # la_silu, ..., la_gelu_tanh_affine, auto


def conversion_target(act: str):
    """(to, affine) for convert_activations: 'la_silu_affine' -> ('la_silu', True); 'auto' maps the
    hard-swish family to LA-HardSiLU and every other activation to LA-SiLU, each to its own smooth/hard kin
    (affine only with --calibrate, which is why 'auto' returns affine=False here)."""
    name = act.strip().lower() if isinstance(act, str) else act
    if name not in ACT_CHOICES:
        raise ValueError(f"--act {act!r} is not a LayerAct conversion; choose one of: {', '.join(ACT_CHOICES)}")
    if name == "auto":
        return {t: catalogue.layer_act_for(catalogue.element_of(t)).name for t in catalogue.replaced_types()}, False
    record, affine = catalogue.parse_name(name)
    return record.name, affine


def check_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """ValueError naming the bad setting and its fix, before anything is loaded or written. Pure."""
    parse_model_name(cfg.model)
    conversion_target(cfg.act)
    if cfg.functional not in ("report", "convert"):
        raise ValueError(f"--functional must be report or convert, got {cfg.functional!r}")
    if cfg.opt not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.opt!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg.epochs is not None and cfg.max_iter is not None:
        raise ValueError("give either --epochs or --max-iter, not both")
    if cfg.calibrate is not None:
        if cfg.calibrate <= 0:
            raise ValueError(f"--calibrate takes the number of training images to calibrate on (e.g. 512), got "
                             f"{cfg.calibrate}")
        if not (conversion_target(cfg.act)[1] or cfg.act == "auto"):
            raise ValueError(f"--calibrate fits the weight and bias of an affine LayerAct, and --act {cfg.act} has "
                             f"none; use --act {cfg.act}_affine")
    if cfg.calibrate_max_error is not None:
        if cfg.calibrate is None:
            raise ValueError("--calibrate-max-error bounds what calibration keeps; give --calibrate N with it")
        if not (math.isfinite(cfg.calibrate_max_error) and cfg.calibrate_max_error > 0):  # as Calibration requires
            raise ValueError(f"--calibrate-max-error takes a relative error > 0 (e.g. 0.1), got {cfg.calibrate_max_error}")
    if cfg.max_iter == 0 and cfg.baseline:
        raise ValueError("--max-iter 0 measures the swap without training, so --baseline has nothing to compare; "
                         "drop one of them")
    if cfg.max_iter is not None and cfg.max_iter < 0:
        raise ValueError(f"--max-iter must be >= 0 (0: measure the swap without training), got {cfg.max_iter}")
    for key in ("batch_size", "img_size", "epochs", "save_every"):
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise ValueError(f"{flag(key)} must be positive, got {value}")
    for key in ("weight_decay", "momentum", "warmup_iters", "workers"):
        value = getattr(cfg, key)
        if value is not None and value < 0:
            raise ValueError(f"{flag(key)} must be >= 0, got {value}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.smoothing < 1.0:
        raise ValueError(f"--smoothing (label smoothing) must be in [0, 1), got {cfg.smoothing}")
    if not 0.0 < cfg.min_scale <= 1.0:
        raise ValueError(f"--min-scale must be in (0, 1], got {cfg.min_scale}")
    if cfg.augment not in AUGMENTS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTS)}, got {cfg.augment!r}")
    if cfg.crop_pct is not None and not 0.0 < cfg.crop_pct <= 1.0:
        raise ValueError(f"--crop-pct must be in (0, 1], got {cfg.crop_pct}")
    check_output_path(Path(cfg.out))
    return cfg
