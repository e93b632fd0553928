"""Convert trained CIFAR models to LayerAct, plain and calibrated, fine-tune each for several budgets, tabulate.

    .venv/bin/python recipes/finetune_study.py --study runs/study_sources --data-dir data/cifar10 --out runs/finetune \\
        --table docs/results/finetune
    .venv/bin/python recipes/finetune_study.py --table-only --out runs/finetune --table docs/results/finetune

--study is a folder recipes/reproduce.py wrote (its --preset sources trains the ResNet-20s). Rerunning the same
command continues: finished runs are kept, an interrupted one resumes. The grid and the table are
layeract_patch/studies/finetune_study.py's.
"""
import argparse
import sys
from pathlib import Path

from layeract_patch.studies.finetune_study import GridConfig, run_grid, write_table
from layeract_patch.training.command import run_command


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(run_command(get_args_parser(), main, on_interrupt="run the same command again to continue"))
