"""Train a CIFAR ResNet (20/32/44/56/110) with LayerAct (or any activation) on the paper's schedule.

    .venv/bin/python recipes/cifar_resnet.py --depth 44 --act la_silu --data-dir data --out runs/r44_la_silu
    torchrun --nproc_per_node=4 recipes/cifar_resnet.py --depth 56 --device cuda --amp --channels-last

Every option: .venv/bin/python recipes/cifar_resnet.py --help. The training code lives in layeract_patch.training.
"""
import sys
from pathlib import Path

from layeract_patch.training import cli


def get_args_parser(add_help: bool = True):
    return cli.get_args_parser("cifar_resnet", add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Train every seed; returns the results dict (bad input raises ValueError / FileNotFoundError)."""
    return cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input), 130 (Ctrl-C), 1 (diverged)."""
    return cli.run(argv, model="cifar_resnet", prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
