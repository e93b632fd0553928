"""The command line shared by the CIFAR recipes: get_args_parser(), main(args), run(argv).

Defaults are the LayerAct paper's schedule: SGD (momentum 0.9, weight decay 1e-4), batch 128,
64,000 iterations, learning rate 0.1 (0.01 without normalization) divided by 10 at 32,000 and
48,000, 10% of the training set held out (stratified) for validation, the best-validation
weights evaluated on the test set.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..registry import ACTIVATIONS, get_act_layer
from .data import dataset_stats, load_images
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed, resolve_device
from .loop import DeviceData, check_resumable, train_seed
from .plots import plot_losses
from .results import format_summary, summarize, write_csv, write_json

__all__ = ["get_args_parser", "main", "run", "prepare", "Plan", "MODEL_CHOICES"]

MODEL_CHOICES = ("cifar_resnet", "paper_cnn")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    # Show defaults, except None/False ones whose help text already says what happens.
    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def get_args_parser(model: str = "cifar_resnet", add_help: bool = True) -> argparse.ArgumentParser:
    """The recipes' flags; `model` picks the architecture (cifar_resnet adds --depth)."""
    if model not in MODEL_CHOICES:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_CHOICES)}")
    what = "a CIFAR ResNet (He et al. 2016)" if model == "cifar_resnet" else "the LayerAct paper's CNN"
    parser = argparse.ArgumentParser(description=f"Train {what} with the LayerAct paper's schedule.",
                                     add_help=add_help, formatter_class=_HelpFormatter)
    parser.set_defaults(model=model)
    if model == "cifar_resnet":
        parser.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110")
    else:
        parser.set_defaults(depth=None)
    parser.add_argument("--act", default="la_silu", help=f"activation: {', '.join(ACTIVATIONS)}")
    parser.add_argument("--norm", default="bn", help="bn, ln (LayerNorm over C,H,W) or none")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"),
                        help="which torchvision data set (and mean/std) when --data-dir is not an ImageFolder")
    parser.add_argument("--data-dir", default="data", type=Path,
                        help="torchvision CIFAR root (downloaded there when missing), or an ImageFolder root "
                             "with train/<class>/ and test/<class>/")
    parser.add_argument("--no-download", action="store_true", help="never download; fail when the data is missing")
    parser.add_argument("--max-iter", type=int, default=64000, help="training iterations (optimizer steps)")
    parser.add_argument("--milestones", type=int, nargs="+", default=None,
                        help="iterations where the learning rate is divided by 10 (default: 50%% and 75%% of "
                             "--max-iter, i.e. 32000 48000)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1, or 0.01 with --norm none)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, split over torchrun processes")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of each class held out for validation (0: test the last weights)")
    parser.add_argument("--eval-every", type=int, default=1000, help="validate and checkpoint every N iterations")
    parser.add_argument("--log-every", type=int, default=100, help="record the training loss every N iterations")
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="several seeds run one after another")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None, help="output directory (default runs/<model>_<act>_<norm>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    return parser


@dataclass
class Plan:
    """Everything validated and loaded, ready to train."""
    args: argparse.Namespace
    model_name: str
    model_fn: Callable[[], nn.Module]
    data: DeviceData
    device: torch.device
    dist: DistInfo


def prepare(args: argparse.Namespace) -> Plan:
    """Check the arguments, load the data onto the device; ValueError / FileNotFoundError on bad input."""
    from ..models import cifar_resnet, paper_cnn
    from ..models.layers import check_norm

    get_act_layer(args.act)
    args.norm = check_norm(args.norm)
    if args.model == "cifar_resnet" and (args.depth < 8 or (args.depth - 2) % 6):
        raise ValueError(f"--depth must be 6n+2 (20, 32, 44, 56, 110), got {args.depth}")
    for flag in ("max_iter", "batch_size", "eval_every", "log_every", "eval_batch_size"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.lr is None:
        args.lr = 0.01 if args.norm == "none" else 0.1
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct (each gets its own seed_<n>/ folder), got {args.seeds}")
    if args.milestones is None:
        args.milestones = [args.max_iter // 2, args.max_iter * 3 // 4]
    if list(args.milestones) != sorted(args.milestones) or min(args.milestones) <= 0:
        raise ValueError(f"--milestones must be increasing positive iterations, got {args.milestones}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    model_name = f"cifar_resnet{args.depth}" if args.model == "cifar_resnet" else "layeract_cnn"
    if args.out is None:
        args.out = Path("runs") / f"{model_name}_{args.act}_{args.norm}"
    args.out = Path(args.out)

    device = resolve_device(args.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    check_resumable(args, args.seeds)

    # Under torchrun rank 0 loads first, so only it downloads a missing data set.
    download = not args.no_download
    if not dist.is_main:
        barrier(dist)
    train_images, train_labels, classes = load_images(args.data_dir, args.dataset, train=True, download=download)
    test_images, test_labels, _ = load_images(args.data_dir, args.dataset, train=False, download=download)
    if dist.is_main:
        barrier(dist)
    mean, std = dataset_stats(args.dataset, train_images)
    data = DeviceData(train_images.to(device), train_labels.to(device), test_images.to(device),
                      test_labels.to(device), classes, mean, std)
    builder = cifar_resnet if args.model == "cifar_resnet" else paper_cnn
    options = dict(num_classes=len(classes), act=args.act, norm=args.norm, in_chans=train_images.shape[1])
    if args.model == "cifar_resnet":
        options["depth"] = args.depth
    return Plan(args, model_name, partial(builder, **options), data, device, dist)


def train(plan: Plan) -> Dict:
    """Run every seed, then write the summary (results.json, history.csv, loss_curves.png) to --out."""
    args, dist = plan.args, plan.dist
    runs = [train_seed(args, seed, plan.data, plan.model_fn, plan.device, dist, plan.model_name)
            for seed in args.seeds]
    summary = {"test": summarize([run["test"] for run in runs])}
    if all(run["val"] for run in runs):
        summary["val"] = summarize([run["val"] for run in runs])
    results = {
        "model": plan.model_name, "act": args.act, "norm": args.norm, "dataset": args.dataset,
        "iterations": args.max_iter, "seeds": list(args.seeds),
        "test": {metric: stats["mean"] for metric, stats in summary["test"].items()},
        "summary": summary,
        "runs": [{key: run[key] for key in ("seed", "iterations", "best_iteration", "val", "test", "params",
                                            "train_seconds", "seconds_per_iter")} for run in runs],
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    if dist.is_main:
        write_json(results, args.out / "results.json")
        write_csv(({"seed": run["seed"], **row} for run in runs for row in run["history"]),
                  args.out / "history.csv", ("seed", "iteration"))
        plot = plot_losses(runs, args.out / "loss_curves.png",
                           title=f"{plan.model_name} {args.act} {args.norm} ({args.dataset})")
        print(f"{plan.model_name} act={args.act} norm={args.norm} on {args.dataset}, {args.max_iter} iterations")
        print(format_summary(summary["test"]))
        print(f"results in {args.out / 'results.json'}" + (f", loss curves in {plot}" if plot else ""))
    return results


def main(args: argparse.Namespace) -> Dict:
    """Library entry point: validate, train all seeds, return the results dict (errors raise)."""
    plan = prepare(args)
    try:
        return train(plan)
    finally:
        cleanup_distributed()


def run(argv: Optional[Sequence[str]] = None, model: str = "cifar_resnet") -> int:
    """Command-line entry point: bad input -> one `error:` line and exit 2; Ctrl-C -> checkpoint and exit 130."""
    parser = get_args_parser(model)
    args = parser.parse_args(argv)
    try:
        plan = prepare(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        cleanup_distributed()
        return 2
    try:
        train(plan)
    except KeyboardInterrupt as stop:
        detail = f" ({stop})" if str(stop) else ""
        print(f"{parser.prog}: interrupted{detail}; continue with the same command plus --resume", file=sys.stderr)
        return 130
    except FloatingPointError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    finally:
        cleanup_distributed()
    return 0
