"""One CIFAR ResNet training step with LayerAct beside the same step with SiLU, measured in one process.

    python benchmarks/bench_resnet_step.py                     # ResNet-20, batch 128, CPU
    python benchmarks/bench_resnet_step.py --depth 20 --batch 32 --budget 5

Each step is forward, cross-entropy, backward and an SGD update on a fixed random batch. The models
share their initial weights; the steps are interleaved and the medians compared.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from timing import interleaved_medians, machine, pin_heap, rounds_for

from layeract_patch import set_backend
from layeract_patch.models import cifar_resnet

# (label, activation name, LayerAct backend or None)
STEPS = (
    ("SiLU", "silu", None),
    ("LA-SiLU, 'cpu' kernel", "la_silu", "cpu"),
    ("Hardswish", "hardsilu", None),
    ("LA-HardSiLU, 'cpu' kernel", "la_hardsilu", "cpu"),
)
EAGER_STEP = ("LA-SiLU, 'torch' backend", "la_silu", "torch")


def training_step(act: str, backend, depth: int, images: torch.Tensor, labels: torch.Tensor,
                  channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = cifar_resnet(depth=depth, num_classes=10, act=act, norm="bn").train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        if backend is not None:
            set_backend(backend)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20, help="6n+2 (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timing in all")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--eager", action="store_true", help="also time LA-SiLU on the eager 'torch' backend")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's heap trimming on (see timing.pin_heap for why it is off by default)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time by the thread's CPU time, blind to other jobs on the core (needs --threads 1)")
    args = parser.parse_args(argv)
    if (args.depth - 2) % 6 or args.depth < 8 or args.batch < 1 or args.budget <= 0:
        print(f"error: need depth = 6n+2 >= 8, batch >= 1 and budget > 0 (got depth={args.depth}, "
              f"batch={args.batch}, budget={args.budget})", file=sys.stderr)
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
    steps: Dict[str, Callable[[], None]] = {
        label: training_step(act, backend, args.depth, images, labels, args.channels_last)
        for label, act, backend in STEPS + ((EAGER_STEP,) if args.eager else ())}
    rounds = rounds_for(steps, args.budget, lo=5, hi=100)
    clock = time.thread_time if args.cpu_clock else time.perf_counter
    times = interleaved_medians(steps, rounds, warmup=1, clock=clock)
    set_backend("auto")
    print(f"# CIFAR ResNet-{args.depth} training step, batch {args.batch}, fp32 CPU"
          f"{', channels_last' if args.channels_last else ''}: medians of {rounds} interleaved rounds"
          f"{' (thread CPU time)' if args.cpu_clock else ''}")
    print(f"# {machine()}; {'glibc heap kept (no trimming)' if pinned else 'default heap'}\n")
    print("| step | median | vs SiLU | vs Hardswish |\n|---|---|---|---|")
    for label in steps:
        print(f"| {label} | {times[label] * 1e3:.1f} ms | {times[label] / times['SiLU']:.3f}x | "
              f"{times[label] / times['Hardswish']:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
