"""One CIFAR ResNet training step with LayerAct beside the same step with SiLU, measured in one process.

    python benchmarks/bench_resnet_step.py                     # ResNet-20, batch 128, CPU, fp32 and bf16 autocast
    python benchmarks/bench_resnet_step.py --precision bf16 --budget 20 --repeats 3
    python benchmarks/bench_resnet_step.py --depth 20 --batch 32 --budget 5 --precision fp32

Each step is forward, cross-entropy, backward and an SGD update on a fixed random batch; with
`bf16` the forward runs under CPU autocast (torch.autocast("cpu", torch.bfloat16)), as mixed
precision training on CPU does: convolutions run in bfloat16 and LayerAct sees bfloat16 tensors.
The models share their initial weights; the steps are interleaved, and the whole measurement is
repeated; each line gives the median ratio over the repeats and its range (lowest-highest): to the
SiLU step, and for LA-HardSiLU to the Hardswish step.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict

import torch

from timing import machine, pin_heap, repeated_ratios, rounds_for, sgd_step

from layeract_patch import set_backend
from layeract_patch.models import cifar_resnet

# (label, activation name, LayerAct backend or None)
STEPS = (
    ("SiLU", "silu", None),
    ("LA-SiLU, 'cpu' kernel", "la_silu", "cpu"),
    ("Hardswish", "hardsilu", None),
    ("LA-HardSiLU, 'cpu' kernel", "la_hardsilu", "cpu"),
)
HARD_LAYERACT = STEPS[3][0]  # measured against the Hardswish step, the others against SiLU's
EAGER_STEP = ("LA-SiLU, 'torch' backend", "la_silu", "torch")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
TARGET = {"fp32": None, "bf16": 1.2}  # issue 12: LA-SiLU's bf16 autocast step at most 1.2x SiLU's


def training_step(act: str, backend, depth: int, images: torch.Tensor, labels: torch.Tensor,
                  channels_last: bool, autocast_dtype) -> Callable[[], None]:
    torch.manual_seed(0)
    model = cifar_resnet(depth=depth, num_classes=10, act=act, norm="bn").train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return sgd_step(model, images, labels, autocast_dtype,
                    before=None if backend is None else (lambda: set_backend(backend)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20, help="6n+2 (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="fp32,bf16",
                        help="fp32 and/or bf16 (CPU autocast), comma-separated (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timing per precision")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the interleaved measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--eager", action="store_true", help="also time LA-SiLU on the eager 'torch' backend")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's heap trimming on (see timing.pin_heap for why it is off by default)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time by the thread's CPU time, blind to other jobs on the core (needs --threads 1)")
    args = parser.parse_args(argv)
    precisions = [p for p in args.precision.split(",") if p]
    if (args.depth - 2) % 6 or args.depth < 8 or args.batch < 1 or args.budget <= 0 or args.repeats < 1:
        print(f"error: need depth = 6n+2 >= 8, batch >= 1, budget > 0 and repeats >= 1 (got depth={args.depth}, "
              f"batch={args.batch}, budget={args.budget}, repeats={args.repeats})", file=sys.stderr)
        return 2
    if not precisions or any(p not in PRECISIONS for p in precisions):
        print(f"error: --precision takes {sorted(PRECISIONS)}, comma-separated (got {args.precision!r})",
              file=sys.stderr)
        return 2
    if args.cpu_clock and args.threads != 1:
        print("error: --cpu-clock counts one thread's time: add --threads 1", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pinned = not args.default_heap and pin_heap()
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch,))
    clock = time.thread_time if args.cpu_clock else time.perf_counter
    print(f"# {machine()}; {'glibc heap kept (no trimming)' if pinned else 'default heap'}")
    for precision in precisions:
        steps: Dict[str, Callable[[], None]] = {
            label: training_step(act, backend, args.depth, images, labels, args.channels_last, PRECISIONS[precision])
            for label, act, backend in STEPS + ((EAGER_STEP,) if args.eager else ())}
        rounds = rounds_for(steps, args.budget / args.repeats, lo=3, hi=100)
        # LA-HardSiLU is judged against the Hardswish step (issue 26), within each repetition
        result = repeated_ratios(steps, "SiLU", rounds, args.repeats, clock=clock,
                                 against={HARD_LAYERACT: "Hardswish"})
        set_backend("auto")
        print(f"\n# CIFAR ResNet-{args.depth} training step, batch {args.batch}, {precision}"
              f"{' (CPU autocast)' if PRECISIONS[precision] else ''}{', channels_last' if args.channels_last else ''}: "
              f"{args.repeats} repeats of {rounds} interleaved rounds{' (thread CPU time)' if args.cpu_clock else ''}")
        for label, (ratio, lo, hi, seconds) in result.items():
            versus = "Hardswish" if label == HARD_LAYERACT else "SiLU"
            target = TARGET[precision] if label.startswith("LA-SiLU, 'cpu'") else None
            verdict = f"; target <= {target}x: {'met' if ratio <= target else 'NOT met'}" if target else ""
            print(f"{precision} step {label}: {ratio:.3f}x {versus} (range {lo:.3f}-{hi:.3f}), "
                  f"median {seconds * 1e3:.1f} ms{verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
