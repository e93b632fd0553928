"""Train timm's MobileNetV3-Small (mobilenetv3_small_100, the ImageNet architecture untouched) on CIFAR with the
LayerAct paper's schedule; --act replaces its hard-swish (default hardsilu: the architecture as timm builds it).

    .venv/bin/python recipes/cifar_mobilenetv3.py --act hardsilu --data-dir data --out runs/mnv3_hardsilu
    .venv/bin/python recipes/cifar_mobilenetv3.py --act la_hardsilu --max-iter 2500 --amp --data-dir data --out runs/m

Norm is its own BatchNorm only (--norm bn) and init timm's own (--init torch). The model:
layeract_patch/models/timm_cifar.py (timm name cifar_mobilenetv3). Every option:
.venv/bin/python recipes/cifar_mobilenetv3.py --help. The training code lives in layeract_patch.training.
"""
import sys
from pathlib import Path

from layeract_patch.training import cli


def get_args_parser(add_help: bool = True):
    return cli.get_args_parser("cifar_mobilenetv3", add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Train every seed; returns the results dict (bad input raises ValueError / FileNotFoundError)."""
    return cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input), 130 (Ctrl-C), 1 (diverged)."""
    return cli.run(argv, model="cifar_mobilenetv3", prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
