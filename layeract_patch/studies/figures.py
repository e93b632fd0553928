"""The study's figures, when matplotlib is installed (it is not a dependency): None otherwise.

Early training loss per activation, mean and min-max band over seeds (the paper's Figs. 3-4), and test
accuracy by activation (every seed, and the mean with its 95% interval).
"""
from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..training.results import pyplot
from .paper_numbers import act_label

__all__ = ["plot_early_loss", "plot_accuracy", "accuracy_interval", "training_losses"]


def training_losses(out: Path, row: Dict) -> Dict[int, float]:
    """iteration -> training loss of one run, from its seed's train_log.csv (else history.csv)."""
    seed_dir = Path(out) / row["run_dir"] / f"seed_{row['seed']}"
    for name in ("train_log.csv", "history.csv"):
        path = seed_dir / name
        if path.is_file():
            with open(path, newline="") as f:
                return {int(r["iteration"]): float(r["train_loss"]) for r in csv.DictReader(f)
                        if r.get("train_loss") not in ("", None)}
    return {}


def plot_early_loss(group, out: Path) -> Optional[Path]:
    """Training loss up to the first learning-rate drop, per activation: mean over seeds and min-max band."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, act in enumerate(group.acts):
        curves = [training_losses(out, r) for r in group.rows if r["act"] == act]
        first_drop = min(int(str(r["milestones"]).split()[0]) for r in group.rows)
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        early = [s for s in steps if s <= first_drop]
        steps = early if len(early) >= 2 else steps  # a curve needs two points; short runs log rarely
        if not steps:
            continue
        values: List[List[float]] = [[c[s] for c in curves] for s in steps]
        ax.plot(steps, [sum(v) / len(v) for v in values], color=f"C{i}", marker="." if len(steps) < 30 else None,
                label=_label(act, len(curves)))
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=f"C{i}", alpha=0.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (mean, min-max over seeds)")
    ax.set_title(textwrap.fill(group.title, 90), fontsize=8)  # long titles wrap instead of leaving the figure
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, Path(out) / "figures" / f"{group.slug}_loss.png")


def accuracy_interval(stats) -> Tuple[float, float]:
    """The 95% interval of a mean accuracy as drawn: within 0-100%, the only possible values (with two seeds
    the t-interval is wide enough to leave them); the mean alone when there is no interval (one seed)."""
    low, high = stats.ci if stats.ci else (stats.mean, stats.mean)
    return max(low, 0.0), min(high, 100.0)


def plot_accuracy(group, out: Path) -> Optional[Path]:
    """Test top-1 per activation: each seed a dot, the mean with its 95% confidence interval (clipped to 0-100%)."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (act, stats) in enumerate(group.acts.items()):
        seeds = [r["test_top1"] for r in group.rows if r["act"] == act]
        ax.scatter([i] * len(seeds), seeds, color=f"C{i}", alpha=0.6, s=14, label="each seed" if i == 0 else None)
        low, high = accuracy_interval(stats)
        ax.errorbar([i + 0.15], [stats.mean], yerr=[[stats.mean - low], [high - stats.mean]], fmt="o",
                    color=f"C{i}", capsize=4, label="mean, 95% CI of the mean (within 0-100%)" if i == 0 else None)
    ax.set_xticks(range(len(group.acts)))
    ax.set_xticklabels([_label(a, stats.n) for a, stats in group.acts.items()], fontsize=8)
    ax.legend(fontsize=7)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(textwrap.fill(group.title, 90), fontsize=8)  # long titles wrap instead of leaving the figure
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, Path(out) / "figures" / f"{group.slug}_top1.png")


def _label(act: str, n: Optional[int] = None) -> str:
    return act_label(act) + (f" (n={n})" if n else "")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
