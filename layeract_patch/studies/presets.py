"""The study grids: one RunSpec per (model, depth, norm, activation, init, seed, data set) and its schedule.

Presets
    paper  the paper's full schedule and grids, for a GPU (see `paper`).
    cpu    a declared reduced schedule that fits a few hours on 2 CPU cores (see `cpu`).
    cpu_models  the mission's own models at the `cpu` schedule: the paper's CNN and ResNet-44 (see `cpu_models`).
    sources  trained ResNet-20s to convert and fine-tune (docs/results/finetune; see `sources`).
    gelu   the small CIFAR ConvNeXt with GELU, LA-GELU and affine LA-GELU at the `cpu` schedule (see `gelu`).
    timm_source  timm's MobileNetV3-Small trained with hard-swish, to convert and fine-tune (see `timm_source`).
    smoke  a tiny grid for tests and a first try (see `smoke`).
Selection: `select` filters a preset by activation, depth, norm and model, sets its seeds and may
shorten (or lengthen) the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..models.layers import check_init, check_norm
from ..catalogue import lookup
from ..registry import ACTIVATIONS, get_act_layer
from ..training.cifar_config import CIFAR_MODELS, default_lr, default_milestones

__all__ = ["Schedule", "RunSpec", "PRESETS", "paper", "cpu", "cpu_models", "sources", "gelu", "timm_source", "smoke",
           "grid", "select"]


@dataclass(frozen=True)
class Schedule:
    """SGD schedule of one run; lr and milestones None: the paper's (cifar_config.default_lr, default_milestones)."""
    max_iter: int
    batch_size: int = 128
    lr: Optional[float] = None
    milestones: Optional[Tuple[int, ...]] = None
    eval_every: int = 1000

    def lr_for(self, norm: str) -> float:
        return self.lr if self.lr is not None else default_lr(norm)

    def resolved_milestones(self) -> Tuple[int, ...]:
        return self.milestones if self.milestones is not None else default_milestones(self.max_iter)


@dataclass(frozen=True)
class RunSpec:
    """One training run: one seed of one configuration; its folder name says all of it."""
    model: str
    depth: Optional[int]
    norm: str
    act: str
    init: str
    seed: int
    dataset: str
    schedule: Schedule

    @property
    def name(self) -> str:
        return (f"{self.model}{self.depth or ''}_{self.norm}_{self.init}_{self.act}_{self.dataset}"
                f"_it{self.schedule.max_iter}_s{self.seed}")

    def recipe_args(self) -> List[str]:
        """The recipe flags for this run (without --data-dir, --out, --resume and the machine's flags)."""
        s = self.schedule
        args = [] if self.depth is None else ["--depth", str(self.depth)]
        args += ["--act", self.act, "--norm", self.norm, "--init", self.init]
        if self.dataset != "cifar10":
            args += ["--dataset", self.dataset]
        args += ["--seeds", str(self.seed), "--max-iter", str(s.max_iter),
                 "--milestones", *map(str, s.resolved_milestones()), "--lr", repr(s.lr_for(self.norm)),
                 "--eval-every", str(min(s.eval_every, s.max_iter)), "--batch-size", str(s.batch_size)]
        return args


def grid(model: str, depths: Sequence[Optional[int]], norm: str, acts: Iterable[str], init: str,
         seeds: Sequence[int], dataset: str, schedule: Schedule) -> List[RunSpec]:
    return [RunSpec(model, depth, norm, act, init, seed, dataset, schedule)
            for depth in depths for act in acts for seed in seeds]


FOUR = ("relu", "silu", "la_silu", "la_hardsilu")
TABLE2_NO_NORM = ("relu", "silu", "hardsilu", "la_silu", "la_hardsilu", "la_silu_affine", "la_hardsilu_affine")


def paper(seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> List[RunSpec]:
    """The paper's schedule: 64,000 iterations, batch 128, lr 0.1 (0.01 without norm) / 10 at 32k and 48k,
    5 seeds, validation every 1,000 iterations. 155 runs; for a GPU (`--jobs` several per GPU).

    Table 2  the 15-conv CNN on CIFAR-10: no norm x 7 activations, BN and LN x ReLU/SiLU/LA-SiLU/LA-HardSiLU.
    Table 3  ResNet-20, BN, CIFAR-10 and CIFAR-100, x ReLU/SiLU/LA-SiLU/LA-HardSiLU.
    Table 4  ResNet-44, BN, CIFAR-10, the same four (Table 5's loss std comes from the Table 3/4 runs).
    Appendix ResNet-32 and ResNet-44 without normalization, lr 0.01, SiLU vs LA-SiLU, with the authors' init
             ("torch"): with He init both diverge (issue 13). The CNN without norm keeps He init: with
             PyTorch's default init neither activation moves off chance there (issue 13's probe).
    """
    full = Schedule(max_iter=64000)
    runs = grid("layeract_cnn", [None], "none", TABLE2_NO_NORM, "he", seeds, "cifar10", full)
    for norm in ("bn", "ln"):
        runs += grid("layeract_cnn", [None], norm, FOUR, "he", seeds, "cifar10", full)
    for dataset in ("cifar10", "cifar100"):
        runs += grid("cifar_resnet", [20], "bn", FOUR, "he", seeds, dataset, full)
    runs += grid("cifar_resnet", [44], "bn", FOUR, "he", seeds, "cifar10", full)
    runs += grid("cifar_resnet", [32, 44], "none", ("silu", "la_silu"), "torch", seeds, "cifar10", full)
    return runs


def cpu(seeds: Sequence[int] = (0, 1, 2)) -> List[RunSpec]:
    """A declared reduced schedule for 2 CPU cores (`--jobs 2 --threads 1`), about 3.7 hours in all.

    ResNet-20, BN, He init x ReLU/SiLU/LA-SiLU/LA-HardSiLU x 3 seeds (12 runs), and ResNet-32 without
    normalization, the authors' init, lr 0.01 x SiLU/LA-SiLU x 3 seeds (6 runs); CIFAR-10.
    Schedule: 2,500 iterations of batch 128 (about 7 epochs of the 45,000 training images, 1/25.6 of the
    paper's 64,000), lr / 10 at 1,250 and 1,875, validation every 250 iterations.

    Budget, at the ~300 images/s one single-thread ResNet-20 job trains at here (two jobs side by side each
    keep that rate): a ResNet-32 step costs about (32-2)/(20-2) = 1.67 ResNet-20 steps, so the grid is
    12 x 2,500 x 128 + 6 x 2,500 x 128 x 1.67 = 3.84M + 3.2M = 7.0M ResNet-20 images -> 7.0M / (2 x 300/s)
    = 11,700 s = 3.3 h of training, plus validation (10 passes over 5,000 images per run, forward only,
    about a third of a training image each: 18 x 17k = 0.3M, ~8 min), the final test passes, and each run's
    start (decoding the 60,000 JPEGs: ~1.5 min measured here on a loaded machine, 18 runs / 2 jobs = ~14 min):
    ~3.7 h in all.
    """
    short = Schedule(max_iter=2500, eval_every=250)
    return (grid("cifar_resnet", [20], "bn", FOUR, "he", seeds, "cifar10", short)
            + grid("cifar_resnet", [32], "none", ("silu", "la_silu"), "torch", seeds, "cifar10", short))


def cpu_models(seeds: Sequence[int] = (0, 1, 2)) -> List[RunSpec]:
    """The `cpu` schedule for the two models the paper's Table 2 and appendix use, without normalization.

    The paper's 15-conv CNN, He init, lr 0.01 x SiLU / LA-SiLU / affine LA-SiLU (Table 2, where the affine form
    gives the paper's largest gain), and ResNet-44, the authors' init, lr 0.01 x SiLU / LA-SiLU (the appendix);
    3 seeds, CIFAR-10. One single-thread ResNet-44 run takes about twice a ResNet-20 run.
    """
    short = Schedule(max_iter=2500, eval_every=250)
    return (grid("layeract_cnn", [None], "none", ("silu", "la_silu", "la_silu_affine"), "he", seeds, "cifar10", short)
            + grid("cifar_resnet", [44], "none", ("silu", "la_silu"), "torch", seeds, "cifar10", short))


def sources(seeds: Sequence[int] = (0, 1, 2)) -> List[RunSpec]:
    """Trained models for calibrated conversion and fine-tuning (docs/results/finetune): ResNet-20, BN, He init,
    x SiLU / ReLU / Hardswish ("hardsilu"), the `cpu` schedule, seed by seed so each activation has a model early."""
    short = Schedule(max_iter=2500, eval_every=250)
    return [run for seed in seeds
            for run in grid("cifar_resnet", [20], "bn", ("silu", "relu", "hardsilu"), "he", [seed], "cifar10", short)]


def gelu(seeds: Sequence[int] = (0, 1, 2)) -> List[RunSpec]:
    """LA-GELU where GELU belongs: the small CIFAR ConvNeXt (models/cifar_convnext.py; its own LayerNorm over
    channels, He init) x GELU / LA-GELU / affine LA-GELU, the `cpu` schedule, 3 seeds, CIFAR-10 (9 runs).

    Budget: a ConvNeXt step trains ~300 images/s on one thread (bf16 autocast, thread CPU time on a loaded Intel
    Xeon; 1.5x a ResNet-20 step, LA-GELU's within 2% of GELU's), so a run is ~18 min of training plus its data
    loading (~1.5 min) and validation: 9 runs ~3 h with --jobs 1, ~1.5 h with --jobs 2 on two free cores.
    Expect ~58% test top-1 for GELU (one seed measured, same schedule, outside the recipe)."""
    short = Schedule(max_iter=2500, eval_every=250)
    return [run for seed in seeds
            for run in grid("cifar_convnext", [None], "lnc", ("gelu", "la_gelu", "la_gelu_affine"), "he", [seed],
                            "cifar10", short)]


def timm_source(seeds: Sequence[int] = (0, 1, 2)) -> List[RunSpec]:
    """An ImageNet architecture as timm builds it, trained here to be converted and fine-tuned like `sources`'
    ResNet-20s: timm's mobilenetv3_small_100 (models/timm_cifar.py; its own BatchNorm and init) with its
    hard-swish ("hardsilu"), the `sources` schedule (the `cpu` one), 3 seeds, CIFAR-10 (3 runs).

    At 32x32 the ImageNet strides leave 1x1 maps for its last stage, and 2,500 iterations of SGD take it to only
    ~35% test top-1 (one seed measured outside the recipe; `sources`' ResNet-20s reach ~77%): a weak but honest
    "as it comes" source. ~310 images/s on one thread (bf16, as measured for `gelu`): ~17 min of training a run."""
    short = Schedule(max_iter=2500, eval_every=250)
    return grid("cifar_mobilenetv3", [None], "bn", ("hardsilu",), "torch", seeds, "cifar10", short)


def smoke(seeds: Sequence[int] = (0, 1)) -> List[RunSpec]:
    """Tiny, for tests and a first try on any data: ResNet-8, BN, ReLU and LA-SiLU x 2 seeds, 12 iterations
    of batch 8 (lr / 10 at 6 and 9), validation every 6. Seconds per run on one thread."""
    tiny = Schedule(max_iter=12, batch_size=8, eval_every=6)
    return grid("cifar_resnet", [8], "bn", ("relu", "la_silu"), "he", seeds, "cifar10", tiny)


PRESETS: Dict[str, Callable[..., List[RunSpec]]] = {"paper": paper, "cpu": cpu, "cpu_models": cpu_models,
                                                    "sources": sources, "gelu": gelu, "timm_source": timm_source,
                                                    "smoke": smoke}


def select(preset: str, acts: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
           depths: Optional[Sequence[int]] = None, norms: Optional[Sequence[str]] = None,
           models: Optional[Sequence[str]] = None, max_iter: Optional[int] = None) -> List[RunSpec]:
    """The preset's runs, filtered by activation / depth / norm / model, with `seeds` instead of the preset's
    seeds and `max_iter` instead of its length (milestones then at 50% / 75%). ValueError on a bad choice."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    acts = [_act_name(a) for a in acts] if acts else None
    norms = [check_norm(n) for n in norms] if norms else None
    for model in models or ():
        if model not in CIFAR_MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(CIFAR_MODELS)}")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct, got {list(seeds)}")
    if max_iter is not None and max_iter <= 0:
        raise ValueError(f"--max-iter must be positive, got {max_iter}")
    runs = PRESETS[preset](seeds) if seeds is not None else PRESETS[preset]()
    all_runs = runs
    runs = [r for r in runs if (acts is None or r.act in acts) and (norms is None or r.norm in norms)
            and (depths is None or r.depth in depths) and (models is None or r.model in models)]
    if not runs:
        offered = sorted({f"{r.model}{r.depth or ''} {r.norm} {r.act}" for r in all_runs})
        raise ValueError(f"no run of preset {preset!r} matches the selection; it has: {'; '.join(offered)}")
    if max_iter is not None:
        runs = [replace(r, schedule=replace(r.schedule, max_iter=max_iter, milestones=None)) for r in runs]
    for run in runs:
        check_init(run.init)
    return runs


def _act_name(name: str) -> str:
    """The registry's name for an activation or its alias ("LA-SiLU" -> "la_silu"); ValueError on a bad one."""
    get_act_layer(name)
    key = name.strip().lower()
    return key if key in ACTIVATIONS else lookup(key).name
