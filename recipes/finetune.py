"""Fine-tune a pretrained timm / torchvision model with LayerAct activations and report what the swap costs.

    .venv/bin/python recipes/finetune.py --model timm/resnet18 --act la_silu --data-dir DIR --epochs 1 --out runs/ft
    .venv/bin/python recipes/finetune.py --model torchvision/mobilenet_v3_small --weights mnv3.pth --data-dir DIR \\
        --max-iter 500 --img-size 128 --baseline --out runs/ft_tv

DIR is an ImageFolder root with train/<class>/ and val/<class>/ (or test/). Prints the top-1 / top-5 /
loss of the original model, the converted one before fine-tuning and after it (and of the unconverted
model fine-tuned for the same budget with --baseline); the same figures go to OUT/results.json.
The flags are layeract_patch.training.finetune_cli's; the run is layeract_patch.training.finetune's.
"""
import sys
from pathlib import Path

from layeract_patch.training import finetune_cli


def get_args_parser(add_help: bool = True):
    return finetune_cli.get_args_parser(add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Run, print the table, return the results dict (bad input raises ValueError / FileNotFoundError)."""
    return finetune_cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input), 130 (Ctrl-C)."""
    return finetune_cli.run(argv, prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
