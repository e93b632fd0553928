"""Loss curves as in the paper's Figs. 3-4, when matplotlib is installed (it is not a dependency)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

__all__ = ["plot_losses"]


def plot_losses(runs: Sequence[dict], path, title: str = "") -> Optional[Path]:
    """Training loss (solid) and validation loss (dashed) against iteration, one colour per seed.

    `runs` are per-seed results with "seed", "train_log" ([{iteration, train_loss}]) and "history"
    ([{iteration, val_loss}]). Returns the PNG path, or None when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
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
