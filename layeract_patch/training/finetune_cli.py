"""The fine-tuning recipe's command line (recipes/finetune.py): get_args_parser(), main(args), run(argv).

Flags become a `FinetuneConfig` one to one; the run is finetune.py's.
"""
from __future__ import annotations

import argparse
import ast
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Optional, Sequence

from .command import HelpFormatter, run_command
from .finetune import format_results, run_finetune
from .finetune_config import ACT_CHOICES, OPTIMIZERS, FinetuneConfig

__all__ = ["get_args_parser", "main", "run"]

DESCRIPTION = "Fine-tune a pretrained timm / torchvision model with LayerAct activations and report what the swap costs."
_DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig) if f.default is not MISSING}


class _KeyValues(argparse.Action):
    """KEY=VALUE pairs as a dict, values read as Python literals where they are one (1, 0.1, True), else strings."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string} takes KEY=VALUE pairs, got {item!r}")
            try:
                options[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                options[key] = value
        setattr(namespace, self.dest, options)


def get_args_parser(add_help: bool = True, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """recipes/finetune.py's flags, one per FinetuneConfig field; `prog` names the command in messages."""
    d = _DEFAULTS
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="timm/<name> or torchvision/<name>")
    parser.add_argument("--weights", default=d["weights"],
                        help="local state_dict / timm or torchvision checkpoint; default: the library's pretrained "
                             "weights (downloaded when not cached)")
    parser.add_argument("--model-kwargs", nargs="*", default=d["model_kwargs"], action=_KeyValues,
                        metavar="KEY=VALUE", help="options for the model's factory, e.g. act=silu drop_rate=0.1")
    parser.add_argument("--act", default=d["act"], choices=ACT_CHOICES,
                        help="LayerAct to swap in; auto: hard-swish -> la_hardsilu, every other activation -> la_silu")
    parser.add_argument("--data-dir", required=True, help="ImageFolder root with train/ and val/ (or test/)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=d["epochs"], help="passes over train/ (1 when neither is given)")
    budget.add_argument("--max-iter", type=int, default=d["max_iter"],
                        help="iterations of --batch-size images (0: measure the swap only, no training)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help="images per step")
    parser.add_argument("--img-size", type=int, default=d["img_size"], help="input side; default: the model's own")
    parser.add_argument("--crop-pct", type=float, default=d["crop_pct"],
                        help="eval centre-crop fraction; default: the model's own")
    parser.add_argument("--min-scale", type=float, default=d["min_scale"], help="smallest random-resized-crop area")
    parser.add_argument("--augment", choices=("imagenet", "cifar"), default=d["augment"],
                        help="imagenet: the model's own training transform (random resized crop, flip, timm's colour "
                             "jitter); cifar: pad-4 random crop and flip, as the CIFAR recipes train")
    parser.add_argument("--opt", choices=sorted(OPTIMIZERS), default=d["opt"], help="optimizer")
    parser.add_argument("--lr", type=float, default=d["lr"], help="default: 1e-4 for adamw, 1e-2 for sgd")
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                        help="default: 0.05 for adamw, 1e-4 for sgd")
    parser.add_argument("--momentum", type=float, default=d["momentum"], help="sgd only")
    parser.add_argument("--warmup-iters", type=int, default=d["warmup_iters"], help="default: 5%% of the budget")
    parser.add_argument("--smoothing", type=float, default=d["smoothing"], help="label smoothing")
    parser.add_argument("--reset-head", action="store_true", help="new classifier even when the class count fits")
    parser.add_argument("--functional", choices=("report", "convert"), default=d["functional"],
                        help="F.relu-style calls (googlenet, inception_v3): list them, or convert them with torch.fx")
    parser.add_argument("--baseline", action="store_true",
                        help="also fine-tune the unconverted model for the same budget")
    parser.add_argument("--calibrate", type=int, default=d["calibrate"], metavar="N",
                        help="fit the affine LayerAct to the replaced activations on N training images before "
                             "fine-tuning (needs an _affine --act, or auto); the plain swap is measured beside it")
    parser.add_argument("--calibrate-max-error", type=float, default=d["calibrate_max_error"], metavar="E",
                        help="with --calibrate: a site whose relative error stays above E (e.g. 0.1) keeps its "
                             "activation (listed as skipped)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="data order, augmentation, new head, dropout")
    parser.add_argument("--device", default=d["device"], help="auto, cpu, cuda or cuda:<index>")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d["amp"],
                        help="bf16 autocast (fp16 on GPUs without bf16); default: on for CUDA")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d["channels_last"],
                        help="default: on for CUDA")
    parser.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes")
    parser.add_argument("--save-every", type=int, default=d["save_every"], help="checkpoint interval (iterations)")
    parser.add_argument("--out", required=True, help="output folder: results.json and checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Library entry point: run, print the table, return the results dict (bad input raises ValueError)."""
    results = run_finetune(FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig)}))
    print(format_results(results))
    out = Path(args.out).expanduser()
    weights = sorted(str(path) for path in out.glob("checkpoint_*.pt"))
    print(f"results in {out / 'results.json'}" + (f", weights in {', '.join(weights)}" if weights else ""))
    return results


def run(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Command-line entry point: bad input -> one `error:` line and exit 2; Ctrl-C -> checkpoint and exit 130."""
    return run_command(get_args_parser(prog=prog), main, argv)
