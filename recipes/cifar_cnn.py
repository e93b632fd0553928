"""Train the LayerAct paper's 15-convolution CNN (its Appendix Table 6) on CIFAR with the paper's schedule.

    .venv/bin/python recipes/cifar_cnn.py --act la_silu --norm ln --data-dir data --out runs/cnn_la_silu_ln

Every option: .venv/bin/python recipes/cifar_cnn.py --help. The training code lives in layeract_patch.training.
"""
import sys
from pathlib import Path

from layeract_patch.training import cli


def get_args_parser(add_help: bool = True):
    return cli.get_args_parser("layeract_cnn", add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Train every seed; returns the results dict (bad input raises ValueError / FileNotFoundError)."""
    return cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input), 130 (Ctrl-C), 1 (diverged)."""
    return cli.run(argv, model="layeract_cnn", prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
