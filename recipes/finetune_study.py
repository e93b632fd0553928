"""Convert trained CIFAR models to LayerAct, plain and calibrated, fine-tune each for several budgets, tabulate.

    .venv/bin/python recipes/finetune_study.py --study runs/study_sources --data-dir data/cifar10 --out runs/finetune \\
        --table docs/results/finetune
    .venv/bin/python recipes/finetune_study.py --table-only --out runs/finetune --table docs/results/finetune

--study is a folder recipes/reproduce.py wrote (its --preset sources trains the ResNet-20s). Rerunning the same
command continues: finished runs are kept, an interrupted one resumes. The grid and the table are
layeract_patch/studies/finetune_study.py's, the flags finetune_study_cli.py's.
"""
import sys
from pathlib import Path

from layeract_patch.studies import finetune_study_cli


def get_args_parser(add_help: bool = True):
    return finetune_study_cli.get_args_parser(add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Run the grid and/or write the table; returns the exit status (bad input raises ValueError)."""
    return finetune_study_cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input), 130 (Ctrl-C)."""
    return finetune_study_cli.run(argv, prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
