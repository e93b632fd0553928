"""LayerAct forward+backward cost beside nn.SiLU (and nn.Hardswish, nn.GELU), measured in one process.

    python benchmarks/bench_activation.py                       # issue 12's figures: fp32 and bf16, 1 and 2 threads
    python benchmarks/bench_activation.py --shapes 8x16x32x32 --budget 2 --kinds silu --dtypes fp32 --threads 1
    python benchmarks/bench_activation.py --compare --dtypes fp32 --threads 1   # also the eager and plain-formula paths
    python benchmarks/bench_activation.py --kernels-alone --kinds hardsilu --dtypes fp32   # also without autograd
    python benchmarks/bench_activation.py --kernels-alone --kernel-flags=-mprefer-vector-width=256   # two builds
    python benchmarks/bench_activation.py --kinds gelu,gelu_tanh      # issue 25: LA-GELU beside nn.GELU
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_activation.py --cpu-clock --threads 1   # on a shared machine

For each activation kind, dtype, thread count and shape it prints one line: the time of one
forward+backward of LayerAct's fused 'cpu' kernel as a multiple of the plain activation's
(nn.SiLU / nn.Hardswish / nn.GELU on the same tensor), the median over --repeats repetitions of an
interleaved measurement and the range of those repetitions, and the verdict against the target
(at most 1.3x at the four shapes: issue 12's in fp32, issue 25's for LA-GELU in fp32 and bf16). It
then prints the bytes autograd keeps for backward as a multiple of the input's bytes, per dtype.

--kernels-alone adds a line per case for the kernels called directly, without autograd and without
LayerAct's Python layers: the 'cpu' backend's forward and backward against aten's element-wise
forward and backward ops. Its distance from the main line is what the Python autograd path costs.
--kernel-flags adds, in the same interleaved measurement, the kernels built with those compiler flags
appended (a build of its own, cached apart), so two builds are compared in one process.
For LA-GELU the line also gives the kernels against aten's pair with oneDNN switched off: aten's GELU
forward then runs ATen's own vectorised erf instead of oneDNN's JIT-compiled GELU (a polynomial fitted
for absolute error, so it cannot keep the lower tail's relative accuracy that LA-GELU's Phi keeps).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from functools import partial
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timing import machine, pin_heap, repeated_ratios, rounds_for, saved_bytes

import layeract_patch
from layeract_patch import la_reference, layer_act, set_backend
from layeract_patch._kernels import cpu_kernel
from layeract_patch.functional import DEFAULT_ALPHA, SCALES

DEFAULT_SHAPES = "128x16x32x32,128x32x16x16,128x64x8x8,16x256x56x56"
TARGET_SHAPES = {(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8), (16, 256, 56, 56)}
# fwd+bwd at most 1.3x the element-wise activation: issue 12 in fp32 (stretch 1.2x), issue 25 (LA-GELU) fp32 and bf16
TARGET = {"silu": {"fp32": 1.3}, "hardsilu": {"fp32": 1.3}, "gelu": {"fp32": 1.3, "bf16": 1.3},
          "gelu_tanh": {"fp32": 1.3, "bf16": 1.3}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BASELINE = {"silu": ("nn.SiLU", nn.SiLU), "hardsilu": ("nn.Hardswish", nn.Hardswish), "gelu": ("nn.GELU", nn.GELU),
            "gelu_tanh": ("nn.GELU(tanh)", partial(nn.GELU, approximate="tanh"))}
LABEL = {"silu": "LA-SiLU", "hardsilu": "LA-HardSiLU", "gelu": "LA-GELU", "gelu_tanh": "LA-GELU(tanh)"}
SCALE = {kind: SCALES[kind].value for kind in BASELINE}
FUSED = "LayerAct, 'cpu' kernel"
ATEN_PAIR = {"silu": (torch.ops.aten.silu, torch.ops.aten.silu_backward),
             "hardsilu": (torch.ops.aten.hardswish, torch.ops.aten.hardswish_backward),
             "gelu": (torch.ops.aten.gelu, torch.ops.aten.gelu_backward),
             "gelu_tanh": (partial(torch.ops.aten.gelu, approximate="tanh"),
                           partial(torch.ops.aten.gelu_backward, approximate="tanh"))}


def with_backend(name: str, kind: str) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        set_backend(name)
        return layer_act(x, kind)
    return run


def implementations(kind: str, compare: bool) -> Dict[str, Callable[[Tensor], Tensor]]:
    """name -> function of x; the first is the baseline the others are divided by."""
    base_name, base_cls = BASELINE[kind]
    impls = {base_name: base_cls(), FUSED: with_backend("cpu", kind)}
    if compare:
        scale = SCALE[kind]
        impls.update({
            "GroupNorm(1) then x * scale": lambda x: x * scale(F.group_norm(x, 1)),
            "plain formula, autograd": lambda x: la_reference(x, kind),
            "LayerAct, 'torch' backend": with_backend("torch", kind),
        })
    return impls


def parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: write it like 128x16x32x32")
    return shape


def make_input(shape: Tuple[int, ...], dtype: torch.dtype, channels_last: bool) -> Tensor:
    x = torch.randn(shape).to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def measure(kind: str, x: Tensor, budget: float, repeats: int, compare: bool,
            clock: Callable[[], float]) -> Dict[str, Tuple[float, float, float, float]]:
    """name -> (median ratio to the baseline, lowest, highest, median seconds) of forward+backward."""
    grad = torch.randn_like(x)
    impls = implementations(kind, compare)

    def step(fn: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            fn(x).backward(grad)
            x.grad = None
        return run

    cases = {name: step(fn) for name, fn in impls.items()}
    rounds = rounds_for(cases, budget / repeats, lo=5, hi=200)
    result = repeated_ratios(cases, next(iter(impls)), rounds, repeats, clock=clock)
    set_backend("auto")
    return result


def kernels_alone(kind: str, x: Tensor, budget: float, repeats: int, clock: Callable[[], float],
                  other_flags: Tuple[str, ...] = ()) -> Dict[str, Tuple[float, float, float, float]]:
    """'fused' (and with other_flags, 'other': the kernels built with those flags appended; for gelu,
    'aten_own': aten's pair with oneDNN off) -> (median ratio, lowest, highest, median seconds): the 'cpu'
    backend's forward+backward over aten's element-wise forward+backward ops, each called directly (no autograd,
    no LayerAct checks); 'aten' -> its own line."""
    xd, grad = x.detach(), torch.randn_like(x)
    forward, backward = ATEN_PAIR[kind]

    def aten() -> None:
        forward(xd)
        backward(grad, xd)

    def fused(lib=None) -> None:
        _, mean, rstd = cpu_kernel.forward(xd, None, None, kind, DEFAULT_ALPHA, 1, lib)
        cpu_kernel.backward(grad, xd, mean, rstd, None, None, kind, 1, lib)

    def aten_own() -> None:
        kept = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            aten()
        finally:
            torch.backends.mkldnn.enabled = kept

    cases = {"aten": aten, "fused": fused}
    if kind == "gelu":
        cases["aten_own"] = aten_own
    if other_flags:
        other = cpu_kernel.library(other_flags)
        cases["other"] = lambda: fused(other)
    rounds = rounds_for(cases, budget / repeats, lo=5, hi=200)
    return repeated_ratios(cases, "aten", rounds, repeats, clock=clock)


def _op_name(op) -> str:
    """aten gelu, or gelu(approximate='tanh') for a partial of it."""
    if isinstance(op, partial):
        return f"{op.func.__name__}({', '.join(f'{k}={v!r}' for k, v in op.keywords.items())})"
    return op.__name__


def saved_line(kind: str, dtype_name: str, shape: Tuple[int, ...]) -> str:
    x = make_input(shape, DTYPES[dtype_name], False)
    set_backend("cpu")
    try:
        kept = saved_bytes(lambda: layer_act(x, kind)) / (x.numel() * x.element_size())
    finally:
        set_backend("auto")
    return f"{dtype_name} {LABEL[kind]} saved for backward at {'x'.join(map(str, shape))}: {kept:.4f}x the input"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxCxHxW list (default: %(default)s)")
    parser.add_argument("--kinds", default="silu,hardsilu",
                        help=f"comma-separated, among {', '.join(BASELINE)} (default: %(default)s)")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"among {sorted(DTYPES)} (default: %(default)s)")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of timing per line")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the interleaved measurement")
    parser.add_argument("--compare", action="store_true",
                        help="also time GroupNorm(1), the plain formula and the eager 'torch' backend")
    parser.add_argument("--kernels-alone", action="store_true",
                        help="also time the kernels without autograd: the 'cpu' backend's forward and backward "
                             "against aten's element-wise ops")
    parser.add_argument("--kernel-flags", default="", metavar="FLAGS",
                        help="with --kernels-alone: also time the kernels built with these compiler flags appended "
                             "(e.g. --kernel-flags=-mprefer-vector-width=256), in the same interleaved measurement")
    parser.add_argument("--channels-last", action="store_true", help="time channels_last inputs")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's heap trimming on (see timing.pin_heap for why it is off by default)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time by CPU time, blind to other jobs on the cores: the thread's with one thread, "
                             "else the process's (then set OMP_WAIT_POLICY=PASSIVE so idle threads do not spin)")
    try:
        args = parser.parse_args(argv)
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
        kinds = [k for k in args.kinds.split(",") if k]
        dtypes = [d for d in args.dtypes.split(",") if d]
        threads = [int(t) for t in args.threads.split(",") if t]
        bad = [k for k in kinds if k not in BASELINE] + [d for d in dtypes if d not in DTYPES]
        if bad or not shapes or not kinds or not dtypes or args.budget <= 0 or args.repeats < 1:
            raise argparse.ArgumentTypeError(f"kinds must be among {sorted(BASELINE)} and dtypes among {sorted(DTYPES)} "
                                             f"(got {bad or kinds + dtypes}), shapes non-empty, budget > 0, repeats >= 1")
        if not threads or min(threads) < 1:
            raise argparse.ArgumentTypeError(f"--threads takes positive counts, e.g. 1,2 (got {args.threads!r})")
        if args.kernel_flags and not args.kernels_alone:
            raise argparse.ArgumentTypeError("--kernel-flags adds a build to the --kernels-alone lines: add "
                                             "--kernels-alone")
        if args.cpu_clock and max(threads) > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            raise argparse.ArgumentTypeError("--cpu-clock with several threads needs OMP_WAIT_POLICY=PASSIVE in the "
                                             "environment (or --threads 1)")
    except (argparse.ArgumentTypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pinned = not args.default_heap and pin_heap()
    torch.manual_seed(0)
    print(f"# LayerAct forward+backward{', channels_last' if args.channels_last else ''}: time as a multiple of the "
          f"plain activation, median (range) of {args.repeats} repeats of an interleaved measurement in one process")
    print(f"# {machine()}; auto backend here: {layeract_patch.backend('cpu')!r}; "
          f"{'glibc heap kept (no trimming)' if pinned else 'default heap'}")
    other_flags = tuple(shlex.split(args.kernel_flags))
    if other_flags:
        print(f"# --kernel-flags build: C kernel {cpu_kernel.build_flags(other_flags)}")
    for count in threads:
        torch.set_num_threads(count)
        clock = time.perf_counter
        if args.cpu_clock:
            clock = time.thread_time if count == 1 else time.process_time
        for dtype_name in dtypes:
            for kind in kinds:
                for shape in shapes:
                    x = make_input(shape, DTYPES[dtype_name], args.channels_last)
                    result = measure(kind, x, args.budget, args.repeats, args.compare, clock)
                    base_name = BASELINE[kind][0]
                    for name, (ratio, lo, hi, seconds) in result.items():
                        if name == base_name:
                            continue
                        target = TARGET[kind].get(dtype_name) if name == FUSED and shape in TARGET_SHAPES else None
                        verdict = f"; target <= {target}x: {'met' if ratio <= target else 'NOT met'}" if target else ""
                        who = LABEL[kind] if name == FUSED else f"{LABEL[kind]} ({name})"
                        print(f"{dtype_name} {count} thread{'s' if count > 1 else ''} {who} {'x'.join(map(str, shape))}: "
                              f"{ratio:.3f}x {base_name} (range {lo:.3f}-{hi:.3f}; {base_name} "
                              f"{result[base_name][3] * 1e3:.2f} ms){verdict}", flush=True)
                    if args.kernels_alone:
                        alone = kernels_alone(kind, x, args.budget, args.repeats, clock, other_flags)
                        ratio, lo, hi, _ = alone["fused"]
                        aten_name = "+".join(_op_name(op) for op in ATEN_PAIR[kind])
                        also = ""
                        if other_flags:
                            o_ratio, o_lo, o_hi, _ = alone["other"]
                            also = (f"; built with {' '.join(other_flags)} added: {o_ratio:.3f}x aten "
                                    f"(range {o_lo:.3f}-{o_hi:.3f})")
                        if "aten_own" in alone:
                            a_ratio, a_lo, a_hi, _ = alone["aten_own"]
                            also += (f"; aten with oneDNN off: {a_ratio:.3f}x aten (range {a_lo:.3f}-{a_hi:.3f}), "
                                     f"so the kernels are {ratio / a_ratio:.3f}x aten's own erf GELU pair")
                        print(f"{dtype_name} {count} thread{'s' if count > 1 else ''} {LABEL[kind]} "
                              f"{'x'.join(map(str, shape))}, kernels alone (no autograd): {ratio:.3f}x aten "
                              f"{aten_name} (range {lo:.3f}-{hi:.3f}; aten {alone['aten'][3] * 1e3:.3f} ms){also}",
                              flush=True)
    for dtype_name in dtypes:
        for kind in kinds:
            print(saved_line(kind, dtype_name, shapes[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
