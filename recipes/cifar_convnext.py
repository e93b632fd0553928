"""Train a small ConvNeXt (GELU, LayerNorm over channels by default) on CIFAR with the LayerAct paper's schedule.

    .venv/bin/python recipes/cifar_convnext.py --act la_gelu --data-dir data --out runs/convnext_la_gelu
    .venv/bin/python recipes/cifar_convnext.py --act gelu --max-iter 2500 --amp --data-dir data --out runs/cx_gelu

The model: layeract_patch/models/cifar_convnext.py (timm name cifar_convnext). Every option:
.venv/bin/python recipes/cifar_convnext.py --help. The training code lives in layeract_patch.training.
"""
import sys
from pathlib import Path

from layeract_patch.training import cli


def get_args_parser(add_help: bool = True):
    return cli.get_args_parser("cifar_convnext", add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Train every seed; returns the results dict (bad input raises ValueError / FileNotFoundError)."""
    return cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input), 130 (Ctrl-C), 1 (diverged)."""
    return cli.run(argv, model="cifar_convnext", prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
