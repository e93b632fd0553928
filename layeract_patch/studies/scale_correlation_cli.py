"""The command line of recipes/scale_correlation.py: get_args_parser(), main(args), run(argv).

Flags become a `CorrelationConfig` (checked before anything is read or written); the study is
scale_correlation.py's.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import List, Optional, Sequence

from ..training.command import HelpFormatter, run_command
from ..training.data import imagefolder_layout
from .scale_correlation import COLORS, CorrelationConfig, check_config, load_study_data, run_correlation_study

__all__ = ["get_args_parser", "main", "run"]

DESCRIPTION = "The paper's balance study (Sec. 4.1, Fig. 2): per-sample loss vs activation-scale sum in MLPs."


def get_args_parser(add_help: bool = True, prog: Optional[str] = None) -> argparse.ArgumentParser:
    defaults = CorrelationConfig(data_dir="")
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, add_help=add_help,
                                formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True,
                   help=f"a torchvision MNIST root, or {imagefolder_layout(('train',))} (only train/ is read)")
    p.add_argument("--download", action="store_true", help="download MNIST into --data-dir when it is not there")
    p.add_argument("--color", choices=COLORS, default=defaults.color,
                   help="RGB images: convert to grayscale, or flatten all three channels")
    p.add_argument("--widths", type=int, nargs="+", default=list(defaults.widths), help="units per hidden layer")
    p.add_argument("--acts", nargs="+", default=list(defaults.acts),
                   help="activation names (see layeract_patch.registry)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    p.add_argument("--depth", type=int, default=defaults.depth, help="hidden layers")
    p.add_argument("--max-iter", type=int, default=defaults.max_iter)
    p.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="iterations where the lr is divided by 10 (default: 50%% and 75%% of --max-iter)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--eval-samples", type=int, default=None,
                   help="measure correlations on this many training images (a fixed subset) instead of all")
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=defaults.out, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a study already in --out")
    return p


def main(args: argparse.Namespace) -> List[dict]:
    """Library entry point: validate, load, run the study, return its rows (bad input raises ValueError)."""
    names = {f.name for f in fields(CorrelationConfig)}
    cfg = check_config(CorrelationConfig(**{k: v for k, v in vars(args).items() if k in names}))
    return run_correlation_study(cfg, load_study_data(cfg))


def run(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Command-line entry point: bad input -> one `error:` line and exit 2, before anything is written."""
    return run_command(get_args_parser(prog=prog), main, argv, on_interrupt="the rows of the finished runs are in --out")
