"""The paper's balance study (Sec. 4.1, Fig. 2): does a sample's activation-scale sum follow its loss?

MLPs of `depth` hidden layers (`width` units each, each followed by the activation, then a linear
classifier) are trained on flattened images with the paper's MNIST schedule. At every epoch, and at
the start and the end, the whole training set (or a fixed `eval_samples` subset of it) is passed
through the model with a `ScaleMonitor` attached, and per activation layer the Pearson correlation
between each sample's loss and its activation-scale sum is recorded, with the spread of those sums.
Training is the shared loop (`training.spine.fit`), the measurement its per-epoch `on_eval`.

The recipe `recipes/scale_correlation.py` is the command line; this module is everything it runs.
"""
from __future__ import annotations

import math
import statistics
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._eval_mode import evaluating
from ..monitor import ScaleMonitor, pearson_per_layer
from ..registry import create_act_layer, get_act_layer
from ..training import results
from ..training.data import imagefolder_layout, load_images
from ..training.distributed import resolve_device
from ..training.cifar_config import default_milestones
from ..training.command import install_hint
from ..training.outdir import check_output_path, claim_output
from ..training.spine import LoopConfig, Run, fit

__all__ = ["CorrelationConfig", "StudyData", "check_config", "load_study_data", "make_mlp", "train_and_measure",
           "run_correlation_study", "summarize_correlations", "format_correlation_table", "write_csv",
           "plot_correlations", "undefined_panels",
           "CSV_COLUMNS"]

OUTPUTS = ("correlations.csv", "summary.md", "correlations.png")
CSV_COLUMNS = ("act", "width", "seed", "layer", "iteration", "epoch", "pearson",
               "sum_mean", "sum_std", "sum_cv", "loss", "accuracy")
COLORS = ("gray", "rgb")
_EVAL_CHUNK = 8192


@dataclass
class CorrelationConfig:
    """The paper's MNIST setting by default: 6,400 iterations of batch 128, SGD with momentum 0.9,
    weight decay 1e-4, learning rate 0.01 divided by 10 at 3,200 and 4,800 (`milestones=None` puts
    them at 50% and 75% of `max_iter`, so a shortened run keeps the schedule's shape)."""

    data_dir: str
    out: str = "runs/scale_correlation"
    widths: Sequence[int] = (20, 40, 100)
    acts: Sequence[str] = ("relu", "silu", "la_silu", "la_hardsilu")
    seeds: Sequence[int] = (0, 1, 2)
    max_iter: int = 6400
    milestones: Optional[Sequence[int]] = None
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    depth: int = 4
    eval_samples: Optional[int] = None
    color: str = "gray"
    device: str = "auto"
    download: bool = False
    dataset: str = "mnist"
    overwrite: bool = False


@dataclass
class StudyData:
    """Flattened training images (uint8 [N, D], on the device) with what is needed to feed them."""

    pixels: Tensor
    labels: Tensor
    num_classes: int
    mean: float
    std: float
    description: str
    eval_index: Tensor

    def inputs(self, index: Tensor) -> Tensor:
        return (self.pixels[index].float().div_(255) - self.mean) / self.std


def check_config(cfg: CorrelationConfig) -> CorrelationConfig:
    """ValueError naming the bad setting and the fix; else a copy with device and milestones resolved."""
    for act in cfg.acts:
        get_act_layer(act)  # unknown names: ValueError listing the valid ones
    if not cfg.acts or not cfg.widths or not cfg.seeds:
        raise ValueError("give at least one activation (--acts), width (--widths) and seed (--seeds)")
    if any(int(w) < 1 for w in cfg.widths):
        raise ValueError(f"--widths must be positive unit counts, got {list(cfg.widths)}")
    if cfg.max_iter < 1 or cfg.batch_size < 1 or cfg.depth < 1:
        raise ValueError(f"--max-iter, --batch-size and the depth must be >= 1, got "
                         f"{cfg.max_iter}, {cfg.batch_size}, {cfg.depth}")
    if cfg.eval_samples is not None and cfg.eval_samples < 2:
        raise ValueError(f"--eval-samples must be >= 2 (a correlation needs two samples), got {cfg.eval_samples}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if cfg.momentum < 0 or cfg.weight_decay < 0:
        raise ValueError(f"momentum and weight decay must be >= 0, got {cfg.momentum} and {cfg.weight_decay}")
    if cfg.color not in COLORS:
        raise ValueError(f"unknown color mode {cfg.color!r}; choose one of {COLORS}")
    if not Path(cfg.data_dir).expanduser().is_dir() and not cfg.download:
        raise ValueError(f"data dir {cfg.data_dir!r} does not exist: point --data-dir at "
                         f"{imagefolder_layout(('train',))} or a torchvision MNIST root, or add --download to fetch "
                         f"MNIST there")
    out = check_output_path(Path(cfg.out))
    earlier = [name for name in OUTPUTS if (out / name).exists()]
    if earlier and not cfg.overwrite:
        raise ValueError(f"--out {str(out)!r} already holds a study ({', '.join(earlier)}); pass --overwrite to "
                         f"replace it, or choose another --out")
    milestones = cfg.milestones
    if milestones is None:
        milestones = tuple(max(1, m) for m in default_milestones(cfg.max_iter))
    milestones = tuple(sorted(int(m) for m in milestones))
    if any(m < 1 for m in milestones):
        raise ValueError(f"--milestones must be iterations >= 1, got {list(milestones)}")
    return replace(cfg, milestones=milestones, device=str(resolve_device(cfg.device)))


def load_study_data(cfg: CorrelationConfig) -> StudyData:
    """The training split as flat uint8 rows on cfg.device; RGB becomes grayscale unless cfg.color == "rgb"."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    images, labels, classes = load_images(cfg.data_dir, cfg.dataset, train=True, download=cfg.download,
                                          splits=("train",))
    n, c, h, w = images.shape
    if c == 3 and cfg.color == "gray":
        images = rgb_to_grayscale(images)
        how = "RGB converted to grayscale (ITU-R 601 luma)"
    else:
        how = "grayscale" if c == 1 else "RGB, flattened"
    if n < cfg.batch_size:
        raise ValueError(f"the training set has {n} images, fewer than one batch of {cfg.batch_size}; "
                         f"lower --batch-size or add data")
    pixels = images.reshape(n, -1)
    # One mean/std over all pixels of this training set: the MLP sees every pixel as one feature scale.
    unit = pixels.float().div_(255)
    mean, std = unit.mean().item(), unit.std().clamp_min(1e-3).item()
    del unit
    eval_count = n if cfg.eval_samples is None else min(cfg.eval_samples, n)
    # The same subset for every model, so their correlations are over the same samples.
    eval_index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:eval_count].sort().values
    description = (f"{cfg.data_dir}: {n} training images, {how}, {h}x{w} -> {pixels.shape[1]} features, "
                   f"{len(classes)} classes; correlations over {eval_count} training images")
    device = torch.device(cfg.device)
    return StudyData(pixels.to(device), labels.to(device), len(classes), mean, std, description,
                     eval_index.to(device))


def make_mlp(in_features: int, width: int, act: str, num_classes: int, depth: int = 4) -> nn.Sequential:
    """`depth` hidden layers of `width` units, each followed by the activation `act` (named act1..actN)."""
    layers = OrderedDict()
    for i in range(1, depth + 1):
        layers[f"fc{i}"] = nn.Linear(in_features if i == 1 else width, width)
        layers[f"act{i}"] = create_act_layer(act)
    layers["head"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def _measure(model: nn.Module, data: StudyData) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    losses, correct = [], []
    with evaluating(model), ScaleMonitor(model) as monitor:
        for index in data.eval_index.split(_EVAL_CHUNK):
            logits = model(data.inputs(index))
            losses.append(F.cross_entropy(logits, data.labels[index], reduction="none"))
            correct.append(logits.argmax(1) == data.labels[index])
    return torch.cat(losses), torch.cat(correct), monitor.sums


def _rows(act: str, width: int, seed: int, iteration: int, epoch: float, model: nn.Module,
          data: StudyData) -> List[dict]:
    losses, correct, sums = _measure(model, data)
    pearson = pearson_per_layer(losses, sums)
    loss, accuracy = losses.mean().item(), correct.float().mean().item()
    rows = []
    for layer, values in sums.items():
        mean, std = values.mean().item(), values.std().item()
        rows.append({"act": act, "width": width, "seed": seed, "layer": layer, "iteration": iteration,
                     "epoch": round(epoch, 3), "pearson": pearson[layer], "sum_mean": mean, "sum_std": std,
                     "sum_cv": std / mean if mean else math.nan, "loss": loss, "accuracy": accuracy})
    return rows


def train_and_measure(data: StudyData, act: str, width: int, seed: int,
                      cfg: CorrelationConfig) -> List[dict]:
    """Train one MLP with the configured schedule; one row per activation layer per measurement."""
    torch.manual_seed(seed)
    device = data.pixels.device
    model = make_mlp(data.pixels.shape[1], width, act, data.num_classes, cfg.depth).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), gamma=0.1)
    n = data.pixels.shape[0]
    per_epoch = n // cfg.batch_size  # the last partial batch is dropped: every step sees batch_size samples
    order, epoch_order = torch.Generator().manual_seed(seed), {}

    def batches(step: int):
        epoch, position = divmod(step, per_epoch)
        if epoch not in epoch_order:  # steps come in order: one permutation per epoch from the seed's stream
            epoch_order.clear()
            epoch_order[epoch] = torch.randperm(n, generator=order).to(device)
        index = epoch_order[epoch][position * cfg.batch_size:(position + 1) * cfg.batch_size]
        return data.inputs(index), data.labels[index]

    rows = _rows(act, width, seed, 0, 0.0, model, data)

    def on_eval(run: Run) -> None:  # every epoch and at the end
        rows.extend(_rows(act, width, seed, run.step, run.step / per_epoch, model, data))

    loop = LoopConfig(cfg.max_iter, log_every=per_epoch, eval_every=per_epoch, desc=f"{act} width {width} seed {seed}")
    fit(Run(model, optimizer, schedule), batches, loop, on_eval=on_eval)
    return rows


def write_csv(rows: Sequence[dict], path) -> Path:
    """All rows to `path` (CSV_COLUMNS first), written to a temp file and moved into place."""
    results.write_csv(rows, path, columns=CSV_COLUMNS)
    return Path(path)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def summarize_correlations(rows: Sequence[dict]) -> List[dict]:
    """Per (act, width), over seeds and layers: how far the correlations are from zero during training
    (after the initial measurement), the signed correlation at the end, how much the scale sums differ
    between samples (std / mean), the share of measurements where the sums were constant (r undefined),
    and the final accuracy on the measured training images."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["act"], row["width"])].append(row)
    summary = []
    for (act, width), group in groups.items():
        last = max(r["iteration"] for r in group)
        trained = [r for r in group if r["iteration"] > 0] or group
        final = [r for r in group if r["iteration"] == last]
        abs_r = [abs(r["pearson"]) for r in trained]
        summary.append({
            "act": act, "width": width, "seeds": len({r["seed"] for r in group}),
            "mean_abs_r": _nanmean(abs_r),
            "max_abs_r": max((v for v in abs_r if not math.isnan(v)), default=math.nan),
            "final_r": _nanmean([r["pearson"] for r in final]),
            "sum_cv": _nanmean([r["sum_cv"] for r in trained]),
            "undefined": sum(math.isnan(v) for v in abs_r) / len(abs_r),
            "final_accuracy": _nanmean(list({r["seed"]: r["accuracy"] for r in final}.values())),
        })
    return summary


def format_correlation_table(summary: Sequence[dict]) -> str:
    """A markdown table of `summarize_correlations` output."""
    head = ("| act | width | seeds | mean abs r | max abs r | final r | scale-sum std/mean | r undefined "
            "| final train acc |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for s in summary:
        lines.append(f"| {s['act']} | {s['width']} | {s['seeds']} | {s['mean_abs_r']:.3f} | {s['max_abs_r']:.3f} "
                     f"| {s['final_r']:+.3f} | {s['sum_cv']:.4f} | {s['undefined']:.0%} "
                     f"| {s['final_accuracy']:.3f} |")
    return "\n".join(lines + ["", UNDEFINED_NOTE])


# Why a correlation can be missing: it is the most balanced outcome, not a failure.
UNDEFINED_NOTE = ("r undefined: the share of measurements (layers x times x seeds) in which every sample's scale sum "
                  "was the same, so that no correlation exists: perfect balance. LA-HardSiLU's sum is exactly width/2 "
                  "for every sample while no unit reaches its clamp (the normalized values sum to 0).")


def undefined_panels(rows: Sequence[dict]) -> List[Tuple[str, str]]:
    """(act, layer) pairs whose correlation is undefined at every measurement: their panel has no line to draw."""
    found = defaultdict(list)
    for r in rows:
        found[(r["act"], r["layer"])].append(r["pearson"])
    return [key for key, values in found.items() if all(math.isnan(v) for v in values)]


def plot_correlations(rows: Sequence[dict], path) -> Optional[Path]:
    """Fig. 2-like: correlation over training, one panel per (act, layer), one line per (width, seed).
    Returns None, writing nothing, when matplotlib is not installed (it is not a dependency)."""
    plt = results.pyplot()
    if plt is None:
        return None
    acts = list(dict.fromkeys(r["act"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    widths = sorted({r["width"] for r in rows})
    lines = defaultdict(list)
    for r in rows:
        lines[(r["act"], r["layer"], r["width"], r["seed"])].append((r["epoch"], r["pearson"]))
    fig, axes = plt.subplots(len(acts), len(layers), figsize=(3 * len(layers), 2.4 * len(acts)),
                             sharex=True, sharey=True, squeeze=False)
    colors = plt.get_cmap("viridis")
    first_seed = min(r["seed"] for r in rows)
    for (act, layer, width, seed), points in lines.items():
        ax = axes[acts.index(act)][layers.index(layer)]
        color = colors(widths.index(width) / max(len(widths) - 1, 1))
        ax.plot(*zip(*sorted(points)), color=color, lw=1, alpha=0.8,
                label=f"width {width}" if seed == first_seed else None)
    for act, layer in undefined_panels(rows):
        ax = axes[acts.index(act)][layers.index(layer)]
        ax.text(0.5, 0.5, "r undefined throughout:\nevery sample's scale sum\nwas the same (perfect balance)",
                ha="center", va="center", fontsize=7, transform=ax.transAxes)
    for i, act in enumerate(acts):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            ax.axhline(0.0, color="black", lw=0.5)
            ax.set_ylim(-1, 1)
            ax.set_title(f"{act}, {layer}", fontsize=9)
            if j == 0:
                ax.set_ylabel("Pearson r (loss, scale sum)", fontsize=8)
            if i == len(acts) - 1:
                ax.set_xlabel("epoch", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_correlation_study(cfg: CorrelationConfig, data: StudyData,
                          log: Callable[[str], None] = print) -> List[dict]:
    """Every (act, width, seed) in turn; DIR/correlations.csv rewritten after each run, then the summary
    table (printed and DIR/summary.md) and the plot (DIR/correlations.png, when matplotlib is there)."""
    with claim_output(Path(cfg.out)) as out:
        return _run_correlation_study(cfg, data, out, log)


def _run_correlation_study(cfg: CorrelationConfig, data: StudyData, out: Path,
                           log: Callable[[str], None]) -> List[dict]:
    log(f"data: {data.description}")
    rows: List[dict] = []
    for act in cfg.acts:
        for width in cfg.widths:
            for seed in cfg.seeds:
                rows += train_and_measure(data, act, int(width), int(seed), cfg)
                write_csv(rows, out / "correlations.csv")
    table = format_correlation_table(summarize_correlations(rows))
    schedule = (f"{cfg.max_iter} iterations, batch {cfg.batch_size}, SGD lr {cfg.lr} momentum {cfg.momentum} "
                f"wd {cfg.weight_decay}, lr /10 at {list(cfg.milestones)}; MLP of {cfg.depth} hidden layers")
    text = f"data: {data.description}\nschedule: {schedule}\n\n{table}\n"
    results.write_text(out / "summary.md", text)
    log(f"\n{text}")
    plot = plot_correlations(rows, out / "correlations.png")
    log(f"wrote {out / 'correlations.csv'}, {out / 'summary.md'}"
        + (f", {plot}" if plot else f" (no plot: {install_hint('matplotlib')})"))
    return rows
