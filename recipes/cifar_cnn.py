"""Train the LayerAct paper's 15-convolution CNN (its Appendix Table 6) on CIFAR with the paper's schedule.

    python recipes/cifar_cnn.py --act la_silu --norm ln --data-dir data --out runs/cnn_la_silu_ln

Every option: python recipes/cifar_cnn.py --help. The training code lives in layeract_patch.training.
"""
import sys

from layeract_patch.training import cli


def get_args_parser(add_help: bool = True):
    return cli.get_args_parser("paper_cnn", add_help=add_help)


def main(args):
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(cli.run(model="paper_cnn"))
