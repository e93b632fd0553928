"""The paper's balance study (Sec. 4.1, Fig. 2): per-sample loss vs activation-scale sum in MLPs.

    .venv/bin/python recipes/scale_correlation.py --data-dir data/mnist --download --out runs/balance
    .venv/bin/python recipes/scale_correlation.py --data-dir DIR --widths 20 40 100 \\
        --acts relu silu la_silu la_hardsilu --seeds 0 1 --max-iter 2000 --eval-samples 10000 --out runs/balance_dir

DIR is an ImageFolder root whose train/<class>/ folders are read (RGB is made grayscale unless --color rgb).

Writes OUT/correlations.csv (OUT: --out; act, width, seed, layer, iteration, pearson, scale-sum spread, ...),
OUT/summary.md (the printed table) and, when matplotlib is installed, OUT/correlations.png.
An existing study in OUT is only replaced with --overwrite. The flags are
layeract_patch.studies.scale_correlation_cli's; the study is layeract_patch.studies.scale_correlation's.
"""
import sys
from pathlib import Path

from layeract_patch.studies import scale_correlation_cli


def get_args_parser(add_help: bool = True):
    return scale_correlation_cli.get_args_parser(add_help=add_help, prog=Path(__file__).name)


def main(args):
    """Validate, load, run the study; returns its rows (bad input raises ValueError)."""
    return scale_correlation_cli.main(args)


def run(argv=None) -> int:
    """The command line: exit 0, or 2 after one `error:` line (bad input, nothing written), 130 (Ctrl-C)."""
    return scale_correlation_cli.run(argv, prog=Path(__file__).name)


if __name__ == "__main__":
    sys.exit(run())
