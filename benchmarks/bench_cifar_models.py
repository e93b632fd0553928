"""Training throughput of the CIFAR models against ResNet-20, measured in one process.

    python benchmarks/bench_cifar_models.py --threads 1 --cpu-clock         # images/s, bf16 autocast, batch 128
    python benchmarks/bench_cifar_models.py --models cifar_convnext:gelu cifar_convnext:la_gelu --precision fp32

Each step is forward, cross-entropy, backward and an SGD update on a fixed random batch of 32x32 images, as a
recipe's step (bf16: under torch.autocast("cpu", torch.bfloat16), the recipes' --amp). The steps are interleaved
and the measurement repeated (timing.repeated_ratios); each line gives the median images/s and the median ratio
to ResNet-20's step with the range over the repeats. --cpu-clock times by the thread's CPU time, blind to other
jobs on a shared core.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict

import timm
import torch

from timing import machine, pin_heap, repeated_ratios, rounds_for, sgd_step

import layeract_patch.models  # noqa: F401  (registers the CIFAR models with timm)

BASELINE = "cifar_resnet20:silu"
MODELS = (BASELINE, "cifar_convnext:gelu", "cifar_convnext:la_gelu", "cifar_mobilenetv3:hardsilu",
          "cifar_mobilenetv3:la_hardsilu")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def training_step(spec: str, images: torch.Tensor, labels: torch.Tensor, autocast_dtype) -> Callable[[], None]:
    name, _, act = spec.partition(":")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **({"act": act} if act else {})).train()
    return sgd_step(model, images, labels, autocast_dtype)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help=f"timm name:activation of each model; {BASELINE} is always measured as the reference")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="bf16", choices=tuple(PRECISIONS))
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timing in all")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the interleaved measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time by the thread's CPU time, blind to other jobs on the core (needs --threads 1)")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's heap trimming on (see timing.pin_heap for why it is off by default)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.budget <= 0 or args.repeats < 1:
        print(f"error: need batch >= 1, budget > 0 and repeats >= 1 (got batch={args.batch}, budget={args.budget}, "
              f"repeats={args.repeats})", file=sys.stderr)
        return 2
    if args.cpu_clock and args.threads != 1:
        print("error: --cpu-clock counts one thread's time: add --threads 1", file=sys.stderr)
        return 2
    unknown = [spec for spec in args.models if not timm.is_model(spec.partition(":")[0])]
    if unknown:
        print(f"error: unknown model {', '.join(unknown)}; give timm names, e.g. {' '.join(MODELS)}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pinned = not args.default_heap and pin_heap()
    torch.manual_seed(0)
    images, labels = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    steps: Dict[str, Callable[[], None]] = {spec: training_step(spec, images, labels, PRECISIONS[args.precision])
                                            for spec in dict.fromkeys([BASELINE, *args.models])}
    rounds = rounds_for(steps, args.budget / args.repeats, lo=3, hi=100)
    result = repeated_ratios(steps, BASELINE, rounds, args.repeats,
                             clock=time.thread_time if args.cpu_clock else time.perf_counter)
    print(f"# {machine()}; {'glibc heap kept (no trimming)' if pinned else 'default heap'}")
    autocast = " (CPU autocast)" if PRECISIONS[args.precision] else ""
    clock = " (thread CPU time)" if args.cpu_clock else ""
    print(f"# training step, batch {args.batch}, {args.precision}{autocast}: {args.repeats} repeats of {rounds} "
          f"interleaved rounds{clock}")
    for spec, (ratio, lo, hi, seconds) in result.items():
        print(f"{spec}: {args.batch / seconds:.0f} images/s, {ratio:.2f}x ResNet-20's step time "
              f"(range {lo:.2f}-{hi:.2f}), median {seconds * 1e3:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
