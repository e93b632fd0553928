"""The CIFAR recipes' config: `CifarConfig` (every setting of a run), which settings are run-only or may be
extended on resume, the schedule defaults, and `resolve_config` (checks, then the defaults filled in). The run
itself is cifar.py's.

Defaults are the LayerAct paper's schedule: SGD (momentum 0.9, weight decay 1e-4), batch 128,
64,000 iterations, learning rate 0.1 (0.01 without normalization) divided by 10 at 32,000 and
48,000 (50% and 75% of the run), 10% of the training set held out (stratified) for validation, the
best-validation weights evaluated on the test set. The study grids and the scale-correlation study take
their schedule defaults from here too.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional, Tuple

from ..registry import get_act_layer
from .checkpoint import flag
from .outdir import check_output_path

__all__ = ["CifarConfig", "resolve_config", "default_lr", "default_milestones", "CIFAR_MODELS", "CIFAR_MODEL_SPECS",
           "CifarModel", "timm_model_name", "model_title", "RUN_ONLY", "TORCHVISION_ONLY", "EXTENDABLE", "INITS"]

@dataclass(frozen=True)
class CifarModel:
    """What the recipes, the config check and the study runner need to know of one CIFAR model."""
    recipe: str  # the recipe that trains it
    description: str  # the recipe's --help: "Train <description> with the LayerAct paper's schedule."
    title: str  # how a report names it; "{depth}" is filled in for a model with --depth
    has_depth: bool = False  # --depth (6n+2); its timm name is then <name><depth>, e.g. cifar_resnet20
    act: str = "la_silu"  # the recipe's default --act, --norm and --init
    norm: str = "bn"
    init: str = "he"
    norms: Optional[Tuple[str, ...]] = None  # the --norm values it takes (None: every one of models.NORMS)
    inits: Tuple[str, ...] = ("he", "torch")
    norm_why: str = ""  # what limits norms / inits, said when another is asked for
    init_why: str = ""
    init_titles: Tuple[Tuple[str, str], ...] = ()  # (init, how a report names it) where it differs from the paper's


# The CIFAR models, the one table: a name (CifarConfig.model, also the name of its builder in layeract_patch.models;
# timm-registered as it is, or with its depth for cifar_resnet) -> what it is and which recipe trains it.
# cli.py offers these names; the study runner runs these recipes.
CIFAR_MODEL_SPECS = {
    "cifar_resnet": CifarModel("recipes/cifar_resnet.py", "a CIFAR ResNet (He et al. 2016)", "ResNet-{depth}",
                               has_depth=True),
    "layeract_cnn": CifarModel("recipes/cifar_cnn.py", "the LayerAct paper's CNN", "the paper's 15-conv CNN"),
    "cifar_convnext": CifarModel("recipes/cifar_convnext.py", "a small ConvNeXt (Liu et al. 2022) for CIFAR",
                                 "CIFAR ConvNeXt", act="gelu", norm="lnc"),
    "cifar_mobilenetv3": CifarModel(
        "recipes/cifar_mobilenetv3.py", "timm's MobileNetV3-Small (mobilenetv3_small_100, the ImageNet architecture "
        "as timm builds it)", "MobileNetV3-Small (timm's ImageNet architecture)", act="hardsilu", init="torch",
        norms=("bn",), inits=("torch",), norm_why="the architecture's own BatchNorm, as timm builds it",
        init_why="timm's own initialisation of the architecture", init_titles=(("torch", "timm's init"),)),
}
CIFAR_MODELS = {name: spec.recipe for name, spec in CIFAR_MODEL_SPECS.items()}


def timm_model_name(model: str, depth: Optional[int] = None) -> str:
    """The timm name of a CIFAR model: cifar_resnet with its depth (cifar_resnet20), every other one as it is
    (a depth recorded for a model without one is ignored)."""
    if model not in CIFAR_MODEL_SPECS:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(CIFAR_MODEL_SPECS)}")
    return f"{model}{depth}" if CIFAR_MODEL_SPECS[model].has_depth else model


def model_title(model: str, depth: Optional[int] = None) -> str:
    """How a report names a model: "ResNet-20", "the paper's 15-conv CNN", ...; unknown names as they are."""
    spec = CIFAR_MODEL_SPECS.get(model)
    return model if spec is None else spec.title.format(depth=depth)


def default_lr(norm: str) -> float:
    """The paper's learning rate: 0.1, or 0.01 for a network without normalization."""
    return 0.01 if norm == "none" else 0.1


def default_milestones(max_iter: int) -> Tuple[int, int]:
    """The paper's step decay: the learning rate divided by 10 at 50% and 75% of the run."""
    return max_iter // 2, max_iter * 3 // 4


# Settings that do not change what is computed: not stored, free to differ on --resume. The corruption
# evaluation happens after training, so a finished run may be resumed just to add it.
RUN_ONLY = ("out", "resume", "device", "seeds", "download", "eval_batch_size", "compile", "eval_corruptions",
            "corruptions", "corruption_severities")
# Settings that choose torchvision's data: an ImageFolder run never used them, and its results.json leaves them out.
TORCHVISION_ONLY = ("dataset", "download")
# Settings a resumed run may raise: applied, and recorded in the results ("extensions").
EXTENDABLE = ("max_iter",)
INITS = ("he", "torch")


@dataclass(frozen=True)
class CifarConfig:
    """Everything a CIFAR run depends on; the recipes' flags map one to one onto these fields."""
    model: str = "cifar_resnet"  # or any other name of CIFAR_MODEL_SPECS
    depth: Optional[int] = 20  # cifar_resnet's only; resolve_config sets it to None for the others
    act: str = "la_silu"
    norm: str = "bn"
    init: str = "he"
    dataset: str = "cifar10"
    data_dir: str = "data"
    download: bool = True
    max_iter: int = 64000
    milestones: Optional[Tuple[int, ...]] = None  # None: default_milestones(max_iter)
    lr: Optional[float] = None  # None: default_lr(norm)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    val_fraction: float = 0.1
    eval_every: int = 1000
    log_every: Optional[int] = None  # None: 100, and for runs under 2,500 iterations max_iter // 25 (25+ points a curve)
    eval_batch_size: int = 1000
    seeds: Tuple[int, ...] = (0,)
    device: str = "auto"
    out: Optional[str] = None  # None: runs/<model>_<act>_<norm>
    resume: bool = False
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    eval_corruptions: bool = False  # after training: CIFAR-C accuracy of each seed's tested weights
    corruptions: Optional[Tuple[str, ...]] = None  # None: all 19
    corruption_severities: Tuple[int, ...] = (1, 2, 3, 4, 5)

    @property
    def model_name(self) -> str:
        return timm_model_name(self.model, self.depth)

    def settings(self) -> dict:
        """What a checkpoint stores and the resume rule compares (JSON-friendly: tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in RUN_ONLY}

    @classmethod
    def from_namespace(cls, args) -> "CifarConfig":
        """The config of parsed recipe flags (the namespace is left as it is)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["download"] = not getattr(args, "no_download", False)
        for key in ("milestones", "seeds", "corruptions", "corruption_severities"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("out") is not None:
            values["out"] = str(values["out"])
        values["data_dir"] = str(values["data_dir"])
        return cls(**values)


def resolve_config(cfg: CifarConfig) -> CifarConfig:
    """ValueError naming the bad setting and its fix; else a copy with lr, milestones, log_every and out filled in.
    Pure."""
    from ..models.layers import check_norm

    if cfg.model not in CIFAR_MODEL_SPECS:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of: {', '.join(CIFAR_MODEL_SPECS)}")
    spec = CIFAR_MODEL_SPECS[cfg.model]
    get_act_layer(cfg.act)
    norm = check_norm(cfg.norm)
    if spec.has_depth and (cfg.depth is None or cfg.depth < 8 or (cfg.depth - 2) % 6):
        raise ValueError(f"--depth must be 6n+2 (20, 32, 44, 56, 110), got {cfg.depth}")
    if not spec.has_depth:
        cfg = replace(cfg, depth=None)  # recorded as None, so results.json names the model as timm does
    if cfg.init not in INITS:
        raise ValueError(f"--init must be one of {', '.join(INITS)}, got {cfg.init!r}")
    for key, value, allowed, why in (("norm", norm, spec.norms, spec.norm_why),
                                     ("init", cfg.init, spec.inits, spec.init_why)):
        if allowed is not None and value not in allowed:
            raise ValueError(f"--{key} {value}: {cfg.model} takes --{key} {' or '.join(allowed)} only ({why})")
    if cfg.log_every is None:  # a short run's loss curve gets 25 points or more, not two
        cfg = replace(cfg, log_every=min(100, max(1, cfg.max_iter // 25)))
    for key in ("max_iter", "batch_size", "eval_every", "log_every", "eval_batch_size"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"{flag(key)} must be positive, got {getattr(cfg, key)}")
    for key in ("momentum", "weight_decay"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{flag(key)} must be >= 0, got {getattr(cfg, key)}")
    lr = default_lr(norm) if cfg.lr is None else cfg.lr
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    if len(set(cfg.seeds)) != len(cfg.seeds) or not cfg.seeds:
        raise ValueError(f"--seeds must be distinct (each gets its own seed_<n>/ folder), got {list(cfg.seeds)}")
    milestones = cfg.milestones or default_milestones(cfg.max_iter)
    if list(milestones) != sorted(milestones) or min(milestones) <= 0:
        raise ValueError(f"--milestones must be increasing positive iterations, got {list(milestones)}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.eval_corruptions:
        from ..corruptions import CORRUPTIONS, SEVERITIES

        unknown = [name for name in cfg.corruptions or () if name not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"--corruptions: unknown corruption {', '.join(unknown)}; valid names: "
                             f"{', '.join(CORRUPTIONS)}")
        if not cfg.corruption_severities or not set(cfg.corruption_severities) <= set(SEVERITIES):
            raise ValueError(f"--corruption-severities must be among {' '.join(map(str, SEVERITIES))}, got "
                             f"{' '.join(map(str, cfg.corruption_severities))}")
    elif cfg.corruptions is not None or tuple(cfg.corruption_severities) != (1, 2, 3, 4, 5):
        raise ValueError("--corruptions and --corruption-severities choose what --eval-corruptions evaluates; "
                         "add --eval-corruptions")
    out = cfg.out if cfg.out is not None else str(Path("runs") / f"{cfg.model_name}_{cfg.act}_{norm}")
    check_output_path(Path(out))
    # An absolute --data-dir: the same folder named from another working directory is the same setting.
    data_dir = os.path.abspath(os.path.expanduser(cfg.data_dir))
    return replace(cfg, norm=norm, lr=lr, milestones=tuple(milestones), out=out, data_dir=data_dir)
