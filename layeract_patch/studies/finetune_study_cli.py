"""The command line of recipes/finetune_study.py: get_args_parser(), main(args), run(argv). The grid and the table
are finetune_study.py's.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..training.command import run_command
from .finetune_study import GridConfig, run_grid, write_table

__all__ = ["get_args_parser", "main", "run"]

DESCRIPTION = ("Convert trained CIFAR models to LayerAct, plain and calibrated, fine-tune each for several budgets, "
               "tabulate.")


def get_args_parser(add_help: bool = True, prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, add_help=add_help)
    parser.add_argument("--study", type=Path, default=None, help="study folder with runs/<name>/seed_<n>/model.pt")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 ImageFolder root (train/ and test/)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the fine-tuning runs")
    parser.add_argument("--table", type=Path, default=None, help="write table.md and cells.csv here")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from --out")
    parser.add_argument("--acts", nargs="+", default=None, help="only sources trained with these activations")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 1000], help="fine-tuning iterations")
    parser.add_argument("--calibrate", type=int, default=512, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--opt", default="adamw")
    parser.add_argument("--lr", type=float, default=None, help="default: the fine-tuning recipe's for --opt")
    parser.add_argument("--smoothing", type=float, default=0.0, help="label smoothing (the sources trained without)")
    parser.add_argument("--augment", choices=("cifar", "imagenet"), default="cifar",
                        help="fine-tuning augmentation (cifar: pad-4 crop and flip, as the sources were trained)")
    parser.add_argument("--workers", type=int, default=1)
    return parser


def main(args: argparse.Namespace) -> int:
    if not args.table_only:
        if args.study is None or args.data_dir is None:
            raise ValueError("give --study and --data-dir (or --table-only)")
        if any(b <= 0 for b in args.budgets):
            raise ValueError(f"--budgets must be positive, got {args.budgets}")
        finetune = dict(batch_size=args.batch_size, opt=args.opt, lr=args.lr, smoothing=args.smoothing,
                        augment=args.augment, workers=args.workers, img_size=32, crop_pct=1.0)
        run_grid(GridConfig(args.study, args.data_dir, args.out, args.budgets, args.calibrate, args.acts, finetune))
    if args.table is not None:
        print(f"table in {write_table(args.out, args.table)}")
    return 0




def run(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Command-line entry point: bad input -> one `error:` line and exit 2."""
    return run_command(get_args_parser(prog=prog), main, argv, on_interrupt="run the same command again to continue")
