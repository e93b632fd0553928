"""What calibrated conversion buys, choice by choice, and what it costs in time: one trained CIFAR model.

    python benchmarks/bench_calibration.py --weights runs/r20_relu/seed_0/model.pt --act relu \\
        --to la_silu_affine --data-dir data/cifar10 --threads 1

Loads a model trained by recipes/cifar_resnet.py (`--act` is what it was trained with), then, each on a fresh
copy: the original, the plain swap (`to` without its affine, weight 1 / bias 0), and calibrated swaps that add
one choice at a time (the closed-form start alone, with the gain search, with 50 / 200 / 500 Adam steps per
site). For each: test top-1 and per-sample loss std on the whole test split (fp32), and the time of the
`convert_activations(..., calibrate=...)` call (median and range over --repeats): the thread's CPU time, which
with --threads 1 is all the work and ignores other jobs on the machine, and the wall time beside it. The
calibration images are drawn from the training split by --seed.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine  # noqa: E402

from layeract_patch import Calibration, convert_activations  # noqa: E402
from layeract_patch.training.batches import normalize  # noqa: E402
from layeract_patch.training.data import load_images  # noqa: E402
from layeract_patch.training.metrics import evaluate  # noqa: E402

# (label, Calibration options): each row adds one choice to the row before it
VARIANTS = (("closed form", dict(steps=0, search_gain=False)),
            ("+ gain search", dict(steps=0)),
            ("+ 50 Adam steps", dict(steps=50)),
            ("+ 200 Adam steps (default)", dict(steps=200)),
            ("+ 500 Adam steps", dict(steps=500)))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="a model.pt written by recipes/cifar_resnet.py")
    parser.add_argument("--model", default="cifar_resnet20", help="its timm name")
    parser.add_argument("--act", required=True, help="the activation it was trained with (relu, silu, hardsilu)")
    parser.add_argument("--to", default="la_silu_affine", help="the affine LayerAct to convert to")
    parser.add_argument("--data-dir", required=True, help="CIFAR-10: an ImageFolder root or a torchvision root")
    parser.add_argument("--samples", type=int, default=512, help="calibration images from the training split")
    parser.add_argument("--variants", nargs="+", type=int, default=None,
                        help=f"only these rows (0-{len(VARIANTS) - 1}); default all")
    parser.add_argument("--repeats", type=int, default=1, help="timed calibrations per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="which training images calibrate")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser


def main(args: argparse.Namespace) -> list:
    import timm

    import layeract_patch.models  # noqa: F401  (registers the CIFAR models with timm)

    torch.set_num_threads(args.threads)
    original = timm.create_model(args.model, act=args.act, num_classes=10)
    original.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    original.eval()
    mean, std = original.pretrained_cfg["mean"], original.pretrained_cfg["std"]
    train_images, _, _ = load_images(args.data_dir, train=True, download=False)
    test_images, test_labels, _ = load_images(args.data_dir, train=False, download=False)
    rows = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))[:args.samples]
    calibration = normalize(train_images[rows], mean, std)
    plain_to = args.to[: -len("_affine")] if args.to.endswith("_affine") else args.to

    def score(label: str, model, seconds=None, wall=None) -> dict:
        result = evaluate(model, test_images, test_labels, mean, std)
        row = {"variant": label, "top1": result["top1"], "loss_std": result["loss_std"], "loss": result["loss"]}
        if seconds:
            row.update(seconds_median=statistics.median(seconds), seconds_min=min(seconds), seconds_max=max(seconds),
                       wall_median=statistics.median(wall))
        timing = (f"  CPU {row['seconds_median']:5.1f} s ({row['seconds_min']:.1f}-{row['seconds_max']:.1f}),"
                  f" wall {row['wall_median']:5.1f} s" if seconds else "")
        print(f"{label:<28} top1 {row['top1']:6.2f}  loss std {row['loss_std']:.4f}{timing}", flush=True)
        return row

    print(f"{args.model} ({args.act}) -> {args.to}, {args.samples} calibration images, {args.threads} thread(s), "
          f"{len(test_images)} test images; {machine()}", flush=True)
    table = [score("original", original), score(f"plain swap ({plain_to})",
                                                  convert_activations(copy.deepcopy(original), to=plain_to))]
    chosen = range(len(VARIANTS)) if args.variants is None else args.variants
    for index in chosen:
        label, options = VARIANTS[index]
        seconds, wall = [], []
        for _ in range(args.repeats):
            model = copy.deepcopy(original)
            start, start_wall = time.thread_time(), time.perf_counter()
            model = convert_activations(model, to=args.to, calibrate=Calibration(calibration, **options))
            seconds.append(time.thread_time() - start)
            wall.append(time.perf_counter() - start_wall)
        table.append(score(label, model, seconds, wall))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": table}, indent=1))
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
