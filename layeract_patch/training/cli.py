"""The command line shared by the CIFAR recipes: get_args_parser(), main(args), run(argv).

Flags become a `CifarConfig` (the namespace is never changed); the training is cifar.py's.
"""
from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..registry import ACTIVATIONS
from .cifar import prepare, train
from .cifar_config import CIFAR_MODEL_SPECS, CIFAR_MODELS, INITS, CifarConfig, resolve_config
from .distributed import cleanup_distributed
from .outdir import claim_output
from .command import HelpFormatter, run_command
from .data import imagefolder_layout

__all__ = ["get_args_parser", "main", "run", "config_from_args", "MODEL_CHOICES"]

MODEL_CHOICES = tuple(CIFAR_MODELS)


def get_args_parser(model: str = "cifar_resnet", add_help: bool = True,
                    prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The recipes' flags; `model` picks the architecture (cifar_resnet adds --depth) and the defaults of --act,
    --norm and --init (cifar_config.CIFAR_MODEL_SPECS); `prog` names the command in messages (default: the running
    script's name)."""
    if model not in MODEL_CHOICES:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_CHOICES)}")
    spec = CIFAR_MODEL_SPECS[model]
    parser = argparse.ArgumentParser(prog=prog, description=f"Train {spec.description} with the LayerAct paper's "
                                     f"schedule.", add_help=add_help, formatter_class=HelpFormatter)
    parser.set_defaults(model=model)
    if spec.has_depth:
        parser.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110")
    else:
        parser.set_defaults(depth=None)
    parser.add_argument("--act", default=spec.act, help=f"activation: {', '.join(ACTIVATIONS)}")
    norms = ("bn, ln (LayerNorm over C,H,W), lnc (LayerNorm over the channels of each pixel, ConvNeXt's) or none"
             if spec.norms is None else f"{' or '.join(spec.norms)} only: {spec.norm_why}")
    parser.add_argument("--norm", default=spec.norm, help=norms)
    inits = ("weight initialisation: he (Kaiming) or torch (PyTorch's defaults, as the paper's authors' code)"
             if spec.inits == INITS else f"weight initialisation: {' or '.join(spec.inits)} only, {spec.init_why}")
    parser.add_argument("--init", default=spec.init, choices=INITS, help=inits)
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"),
                        help="which torchvision data set (and mean/std) when --data-dir is not an ImageFolder")
    parser.add_argument("--data-dir", default="data", type=Path,
                        help=f"torchvision CIFAR root (downloaded there when missing), or {imagefolder_layout()} "
                             f"(normalised with its training split's mean/std; validation images are held out of "
                             f"train/, so a val/ folder is not read)")
    parser.add_argument("--no-download", action="store_true", help="never download; fail when the data is missing")
    parser.add_argument("--max-iter", type=int, default=64000,
                        help="training iterations (optimizer steps); with --resume a larger value extends the run")
    parser.add_argument("--milestones", type=int, nargs="+", default=None,
                        help="iterations where the learning rate is divided by 10 (default: 50%% and 75%% of "
                             "--max-iter, i.e. 32000 48000; a resumed run keeps the ones it started with)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1, or 0.01 with --norm none)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, split over torchrun processes")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of each class held out for validation (0: test the last weights)")
    parser.add_argument("--eval-every", type=int, default=1000, help="validate and checkpoint every N iterations")
    parser.add_argument("--log-every", type=int, default=None,
                        help="record the training loss every N iterations (default 100; max-iter / 25 for runs "
                             "under 2500 iterations, so their loss curves get 25 points)")
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="several seeds run one after another")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None, help="output directory (default runs/<model>_<act>_<norm>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (its checkpoints must exist)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--eval-corruptions", action="store_true",
                        help="after training, evaluate each seed's tested weights on the CIFAR-C corruptions "
                             "generated from the test set: seed_<n>/corruptions.json, group means in results.json")
    parser.add_argument("--corruptions", nargs="+", default=None,
                        help="with --eval-corruptions: which corruptions (default all 19)")
    parser.add_argument("--corruption-severities", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="with --eval-corruptions: which severities")
    return parser


def config_from_args(args: argparse.Namespace) -> CifarConfig:
    """Parsed flags -> a validated, resolved config (ValueError naming the flag otherwise)."""
    return resolve_config(CifarConfig.from_namespace(args))


def _claim(cfg: CifarConfig):
    # Only the main process writes (and so locks); under torchrun the other ranks write nothing.
    return claim_output(Path(cfg.out)) if int(os.environ.get("RANK", "0")) == 0 else nullcontext()


def main(args: argparse.Namespace) -> Dict:
    """Library entry point: validate, train all seeds, return the results dict (errors raise)."""
    cfg = config_from_args(args)
    try:
        with _claim(cfg):
            return train(prepare(cfg, explicit_milestones=args.milestones is not None,
                                 explicit_log_every=args.log_every is not None))
    finally:
        cleanup_distributed()


def run(argv: Optional[Sequence[str]] = None, model: str = "cifar_resnet", prog: Optional[str] = None) -> int:
    """Command-line entry point (training/command.py): bad input -> one `error:` line and exit 2 before any
    training (nothing written to --out); Ctrl-C -> checkpoint and exit 130; a diverged run -> exit 1."""
    return run_command(get_args_parser(model, prog=prog), main, argv)
