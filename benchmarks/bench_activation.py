"""LayerAct forward+backward cost beside nn.SiLU (and nn.Hardswish), measured in one process.

    python benchmarks/bench_activation.py                       # the issue's table, fp32 CPU
    python benchmarks/bench_activation.py --shapes 8x16x32x32 --budget 2 --kinds silu
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_activation.py --cpu-clock   # on a machine shared with others

For each shape and activation kind it prints the median time of one forward+backward of every
implementation as a multiple of the plain activation (nn.SiLU / nn.Hardswish), and the bytes that
autograd keeps for backward as a multiple of the input's bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timing import interleaved_medians, machine, pin_heap, rounds_for, saved_bytes

import layeract_patch
from layeract_patch import la_reference, layer_act, set_backend

DEFAULT_SHAPES = "128x16x32x32,128x32x16x16,128x64x8x8,32x256x56x56"
BASELINE = {"silu": ("nn.SiLU", nn.SiLU), "hardsilu": ("nn.Hardswish", nn.Hardswish)}
SCALE = {"silu": torch.sigmoid, "hardsilu": F.hardsigmoid}


def with_backend(name: str, kind: str) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        set_backend(name)
        return layer_act(x, kind)
    return run


def implementations(kind: str) -> Dict[str, Callable[[Tensor], Tensor]]:
    """name -> function of x; the first is the baseline the others are divided by."""
    base_name, base_cls = BASELINE[kind]
    scale = SCALE[kind]
    return {
        base_name: base_cls(),
        "GroupNorm(1) then x * scale": lambda x: x * scale(F.group_norm(x, 1)),
        "plain formula, autograd": lambda x: la_reference(x, kind),
        "LayerAct, 'torch' backend": with_backend("torch", kind),
        "LayerAct, 'cpu' kernel": with_backend("cpu", kind),
    }


def parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: write it like 128x16x32x32")
    return shape


def measure(kind: str, shape: Tuple[int, ...], budget: float, channels_last: bool,
            clock: Callable[[], float]) -> Dict[str, Tuple[float, float]]:
    """name -> (median seconds of forward+backward, saved-for-backward bytes / input bytes)."""
    x = torch.randn(shape)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    impls = implementations(kind)

    def step(fn: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            fn(x).backward(grad)
            x.grad = None
        return run

    cases = {name: step(fn) for name, fn in impls.items()}
    rounds = rounds_for(cases, budget)
    times = interleaved_medians(cases, rounds, warmup=1, clock=clock)
    saved = {name: saved_bytes(lambda: fn(x)) / (x.numel() * x.element_size()) for name, fn in impls.items()}
    set_backend("auto")
    return {name: (times[name], saved[name]) for name in impls}


def table(kind: str, shapes: List[Tuple[int, ...]], results: List[Dict[str, Tuple[float, float]]]) -> str:
    names = list(results[0])
    header = ["implementation"] + ["x".join(map(str, s)) for s in shapes] + ["saved for backward"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [name]
        for res in results:
            seconds, base = res[name][0], res[names[0]][0]
            cells.append(f"{seconds / base:.2f}x" + (f" ({seconds * 1e3:.2f} ms)" if name == names[0] else ""))
        cells.append(f"{results[0][name][1]:.2f}x input")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxCxHxW list (default: %(default)s)")
    parser.add_argument("--kinds", default="silu,hardsilu", help="silu, hardsilu or both (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=12.0, help="seconds of timing per shape and kind")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true", help="time channels_last inputs")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's heap trimming on (see timing.pin_heap for why it is off by default)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time by CPU time, blind to other jobs on the cores: the thread's with --threads 1, "
                             "else the process's (then set OMP_WAIT_POLICY=PASSIVE so idle threads do not spin)")
    try:
        args = parser.parse_args(argv)
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
        kinds = [k for k in args.kinds.split(",") if k]
        bad = [k for k in kinds if k not in BASELINE]
        if bad or not shapes or args.budget <= 0:
            raise argparse.ArgumentTypeError(f"kinds must be among {sorted(BASELINE)} (got {bad or kinds}), "
                                             f"shapes non-empty and budget > 0")
        if args.cpu_clock and args.threads != 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            raise argparse.ArgumentTypeError("--cpu-clock with several threads needs OMP_WAIT_POLICY=PASSIVE in the "
                                             "environment (or add --threads 1)")
    except argparse.ArgumentTypeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pinned = not args.default_heap and pin_heap()
    torch.manual_seed(0)
    clock, clock_name = time.perf_counter, "wall-clock"
    if args.cpu_clock:
        one = torch.get_num_threads() == 1
        clock, clock_name = (time.thread_time, "thread CPU") if one else (time.process_time, "process CPU")
    print(f"# LayerAct forward+backward, fp32 CPU{', channels_last' if args.channels_last else ''}: "
          f"median {clock_name} time as a multiple of the plain activation, measured interleaved in one process")
    print(f"# {machine()}; auto backend here: {layeract_patch.backend('cpu')!r}; "
          f"{'glibc heap kept (no trimming)' if pinned else 'default heap'}\n")
    for kind in kinds:
        results = [measure(kind, shape, args.budget, args.channels_last, clock) for shape in shapes]
        print(f"LA-{'SiLU' if kind == 'silu' else 'HardSiLU'} vs {BASELINE[kind][0]}\n")
        print(table(kind, shapes, results) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
