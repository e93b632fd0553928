"""Re-measure the LayerAct paper's tables: a grid of recipe runs (resumable) -> runs.csv -> report.md.

    .venv/bin/python recipes/reproduce.py --preset cpu --amp --data-dir data/cifar10 --out runs/cpu --jobs 2 --threads 1
    .venv/bin/python recipes/reproduce.py --preset paper --data-dir data --device cuda --amp --jobs 8 --out runs/paper
    .venv/bin/python recipes/reproduce.py --preset cpu --acts silu la_silu --seeds 0 1 2 3 4 --dry-run
    .venv/bin/python recipes/reproduce.py --report-only --out runs/cpu

Rerunning the same command continues a study: finished runs are kept, interrupted ones resume from their
checkpoints. The presets and their schedules: layeract_patch/studies/presets.py; the flags:
layeract_patch/studies/reproduce_cli.py.
"""
import sys
from pathlib import Path

from layeract_patch.studies import reproduce_cli


def get_args_parser(add_help: bool = True):
    return reproduce_cli.get_args_parser(add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Run (or plan, or report) the study; returns the exit status (bad input raises ValueError)."""
    return reproduce_cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, 1 (a run failed), 2 after one `error:` line (bad input), 130 (Ctrl-C)."""
    return reproduce_cli.run(argv, prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
