"""Evaluate a trained model under the CIFAR-C corruptions (the LayerAct AAAI-2025 paper's robustness tables).

    .venv/bin/python recipes/eval_corruptions.py --checkpoint runs/r20_la_silu --data-dir data --out runs/r20_la_silu_c
    .venv/bin/python recipes/eval_corruptions.py --checkpoint runs/r20_silu/seed_0 --data-dir data \\
        --baseline runs/r20_relu_c/results.json --out runs/r20_silu_c        # adds CE and mCE against ReLU
    .venv/bin/python recipes/eval_corruptions.py --checkpoint runs/ft_resnet18 --data-dir DIR --corruptions fog snow \\
        --severities 3 5 --out runs/ft_resnet18_c

The corruptions are generated on the device from the test split of --data-dir, or read from the
official CIFAR-10-C / CIFAR-100-C files with --corruptions-dir. Prints the table; OUT/results.json holds
top-1 and loss per corruption and severity, the group means (Total / Noise / Blur / Digital / Weather /
Extra) and, with --baseline, CE and mCE. The logic lives in layeract_patch.studies.
"""
import sys
from pathlib import Path

from layeract_patch.studies import robustness_cli


def get_args_parser(add_help: bool = True):
    return robustness_cli.get_args_parser(add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Evaluate; returns the results dict (bad input raises ValueError / FileNotFoundError)."""
    return robustness_cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input, nothing written)."""
    return robustness_cli.run(argv, prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
