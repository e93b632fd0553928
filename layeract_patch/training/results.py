"""results.json, CSV histories, the multi-seed summary in the paper's format (best / mean (std)), loss curves."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from .checkpoint import atomic_write

__all__ = ["write_text", "write_json", "write_csv", "summarize", "format_summary", "pyplot", "plot_losses",
           "HIGHER_IS_BETTER"]

# For "best": accuracies are maximised, losses (and their spread) minimised.
HIGHER_IS_BETTER = {"top1": True, "top5": True, "loss": False, "loss_std": False}


def write_text(path, text: str) -> None:
    """`text` to `path`, atomically (readers see the old or the new file)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(data: dict, path) -> None:
    write_text(Path(path), json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(rows: Iterable[dict], path, columns: Sequence[str] = ()) -> None:
    """Rows of dicts as CSV; the columns are `columns` then any other keys in first-seen order."""
    rows = list(rows)
    names: List[str] = list(columns)
    for row in rows:
        names += [key for key in row if key not in names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(path), buffer.getvalue())


def summarize(runs: Sequence[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """{metric: {"best", "mean", "std", "n"}} over runs (std with n-1; 0 for a single run)."""
    summary = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        values = [run[metric] for run in runs if metric in run]
        if not values:
            continue
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[metric] = {"best": max(values) if higher else min(values), "mean": mean, "std": math.sqrt(var),
                           "n": len(values)}
    return summary


def format_summary(summary: Dict[str, Dict[str, float]], title: str = "test") -> str:
    """One line per metric: `top1  91.25 / 91.02 (0.18)  best / mean (std) over 3 seeds`."""
    lines = []
    for metric, stats in summary.items():
        lines.append(f"{title} {metric:<8} {stats['best']:8.4f} / {stats['mean']:8.4f} ({stats['std']:.4f})  "
                     f"best / mean (std) over {stats['n']} seed{'s' if stats['n'] != 1 else ''}")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot drawing to files (no display needed), or None when matplotlib is not installed: it is
    not a dependency, and every figure of the package is drawn only where it is there."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_losses(runs: Sequence[dict], path, title: str = "") -> Optional[Path]:
    """The paper's Figs. 3-4: training loss (solid) and validation loss (dashed) against iteration, one
    colour per seed, when matplotlib is installed (it is not a dependency).

    `runs` are per-seed results with "seed", "train_log" ([{iteration, train_loss}]) and "history"
    ([{iteration, val_loss}]). Returns the PNG path, or None when matplotlib is missing.
    """
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        train = [(row["iteration"], row["train_loss"]) for row in run.get("train_log", [])]
        val = [(row["iteration"], row["val_loss"]) for row in run.get("history", []) if row.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color=colour, label=f"seed {run['seed']} train")
        if val:
            ax.plot(*zip(*val), color=colour, linestyle="--", marker=".", label=f"seed {run['seed']} val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
