"""LayerAct's Triton kernels beside SiLU (Hardswish, GELU) on a GPU: agreement, time ratios and achieved bandwidth.

    python benchmarks/bench_cuda.py                                    # bf16, CIFAR and ImageNet shapes
    python benchmarks/bench_cuda.py --dtype float32 --shapes 64x256x56x56
    TRITON_INTERPRET=1 python benchmarks/bench_cuda.py --device cpu --shapes 2x4x8x8 --rounds 2   # dry run

First every path (plain, affine, channels_last; every kind: SiLU, HardSiLU, GELU and its tanh form) is
checked against the float64
formula on two samples of each shape. Then, per shape and kind, one forward+backward is timed:
  kernels   the kernels alone, captured in a CUDA graph (F.silu + silu_backward vs LayerAct's
            forward + backward), as a ratio, with achieved GB/s counting the bytes a fused
            kernel must move: read x, write y; read x and dy, write dx;
  autograd  nn.SiLU vs LASiLU through autograd as a user calls them, Python overhead included.
Small tensors stay in the GPU's L2 cache between iterations, so their GB/s can exceed HBM's.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timing import interleaved_medians

from layeract_patch import LAGELU, LAHardSiLU, LASiLU, la_reference
from layeract_patch._kernels import triton_kernel
from layeract_patch.functional import KINDS

DEFAULT_SHAPES = "128x16x32x32,128x32x16x16,128x64x8x8,64x256x56x56,64x64x112x112"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
BASE_OPS = {"silu": (F.silu, torch.ops.aten.silu_backward), "hardsilu": (F.hardswish, torch.ops.aten.hardswish_backward),
            "gelu": (F.gelu, torch.ops.aten.gelu_backward),
            "gelu_tanh": (partial(F.gelu, approximate="tanh"),
                          partial(torch.ops.aten.gelu_backward, approximate="tanh"))}
MODULES = {"silu": (nn.SiLU, LASiLU), "hardsilu": (nn.Hardswish, LAHardSiLU), "gelu": (nn.GELU, LAGELU),
           "gelu_tanh": (partial(nn.GELU, approximate="tanh"), partial(LAGELU, approximate="tanh"))}


def check_agreement(shape: Tuple[int, ...], device: torch.device) -> float:
    """Largest error of the Triton kernels (float32) against the float64 formula, relative to each output's scale."""
    worst = 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for kind in KINDS:
        for affine, channels_last in ((False, False), (True, False), (True, True)):
            x = (torch.randn((min(shape[0], 2),) + shape[1:], generator=gen) * 2 + 0.3).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            c = shape[1]
            w = (torch.randn(c, generator=gen) * 0.5 + 1).to(device) if affine else None
            b = (torch.randn(c, generator=gen) * 0.5).to(device) if affine else None
            grad = torch.randn(x.shape, generator=gen).to(device)
            out, mean, rstd = triton_kernel.forward(x, w, b, kind, 1e-5, 1)
            dx, dw, db = triton_kernel.backward(grad, x, mean, rstd, w, b, kind, 1)
            params = [p.double().requires_grad_() for p in (w, b)] if affine else [None, None]
            x64 = x.double().requires_grad_()
            ref = la_reference(x64, kind, 1e-5, params[0], params[1])
            want = torch.autograd.grad(ref, [x64] + (params if affine else []), grad.double())
            pairs = [(out, ref), (dx, want[0])] + ([(dw, want[1]), (db, want[2])] if affine else [])
            for got, expected in pairs:
                scale = expected.abs().max().item() or 1.0
                worst = max(worst, (got.double() - expected).abs().max().item() / scale)
            if channels_last and not (out.is_contiguous(memory_format=torch.channels_last)
                                      and dx.is_contiguous(memory_format=torch.channels_last)):
                raise AssertionError(f"channels_last was lost at {shape}")
    return worst


def replayer(fn: Callable[[], object], device: torch.device, iters: int) -> Callable[[], object]:
    """`iters` calls of fn as one callable: a CUDA graph replay on GPU (no launch overhead), plain calls on CPU."""
    for _ in range(3):  # compiles the Triton kernels before capture
        fn()
    if device.type != "cuda":
        return lambda: [fn() for _ in range(iters)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    return graph.replay


def time_shape(shape: Tuple[int, ...], kind: str, dtype: torch.dtype, device: torch.device, rounds: int,
               iters: int) -> Dict[str, float]:
    x = torch.randn(shape, device=device, dtype=dtype)
    grad = torch.randn_like(x)
    base_fwd, base_bwd = BASE_OPS[kind]

    def base_kernels() -> None:
        base_fwd(x)
        base_bwd(grad, x)

    def la_kernels() -> None:
        out, mean, rstd = triton_kernel.forward(x, None, None, kind, 1e-5, 1)
        triton_kernel.backward(grad, x, mean, rstd, None, None, kind, 1)

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    kernels = interleaved_medians({"base": replayer(base_kernels, device, iters),
                                   "layeract": replayer(la_kernels, device, iters)}, rounds, warmup=1, sync=sync)
    xg = x.detach().requires_grad_()
    base_module, la_module = (cls() for cls in MODULES[kind])

    def autograd_step(module: nn.Module) -> Callable[[], None]:
        def run() -> None:
            module(xg).backward(grad)
            xg.grad = None
        return run

    autograd = interleaved_medians({"base": autograd_step(base_module), "layeract": autograd_step(la_module)},
                                   rounds, warmup=2, sync=sync)
    moved = 5 * x.numel() * x.element_size()
    base_s, la_s = kernels["base"] / iters, kernels["layeract"] / iters
    return {"base_us": base_s * 1e6, "la_us": la_s * 1e6, "ratio": la_s / base_s, "la_gbs": moved / la_s / 1e9,
            "base_gbs": moved / base_s / 1e9, "autograd_ratio": autograd["layeract"] / autograd["base"]}


def parse_shape(text: str) -> Tuple[int, ...]:
    shape = tuple(int(p) for p in text.lower().split("x") if p.isdigit())
    if len(shape) != 4 or "x".join(map(str, shape)) != text.lower() or min(shape) <= 0:
        raise ValueError(f"bad shape {text!r}: write it like 128x16x32x32")
    return shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxCxHxW (default: %(default)s)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--kinds", default="silu,hardsilu", help=f"timed kinds, among {', '.join(KINDS)} "
                                                                  f"(default: %(default)s; all are checked)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run with TRITON_INTERPRET=1")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--iters", type=int, default=10, help="forward+backward pairs per timed replay")
    parser.add_argument("--fused-max", type=int, default=triton_kernel.FUSED_MAX,
                        help="largest padded sample one program holds (default: %(default)s); try 8192 or 32768")
    parser.add_argument("--chunk-tile", type=int, default=triton_kernel.CHUNK_TILE,
                        help="padded elements per program for larger samples (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
        device = torch.device(args.device)
        if not triton_kernel.available(device):
            raise ValueError(f"the Triton kernels cannot run on {device} here (need a CUDA GPU, or "
                             f"--device cpu with TRITON_INTERPRET=1 set)")
        if not args.kinds or any(kind not in BASE_OPS for kind in args.kinds.split(",")):
            raise ValueError(f"--kinds takes a comma-separated list among {', '.join(BASE_OPS)}, got {args.kinds!r}")
        if args.rounds < 1 or args.iters < 1:
            raise ValueError("--rounds and --iters must be >= 1")
        for flag, value in (("--fused-max", args.fused_max), ("--chunk-tile", args.chunk_tile)):
            if value < 16 or value & (value - 1):
                raise ValueError(f"{flag} must be a power of two >= 16, got {value}")
        triton_kernel.FUSED_MAX, triton_kernel.CHUNK_TILE = args.fused_max, args.chunk_tile
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter: a dry run)"
    print(f"# LayerAct Triton kernels vs SiLU/Hardswish/GELU on {name}, torch {torch.__version__}, "
          f"FUSED_MAX={args.fused_max}, CHUNK_TILE={args.chunk_tile}\n")
    failed = False
    print("| shape | agreement with float64 formula (float32, max error / scale) |\n|---|---|")
    for shape in shapes:
        error = check_agreement(shape, device)
        failed |= error > 1e-4
        print(f"| {'x'.join(map(str, shape))} | {error:.1e}{'  FAIL' if error > 1e-4 else ''} |", flush=True)
    print(f"\nforward+backward, {args.dtype}; kernels: medians of {args.rounds} graph replays of {args.iters} "
          f"iterations\n")
    print("| shape | kind | base kernels | LayerAct kernels | ratio | LayerAct GB/s | base GB/s | autograd ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        for kind in args.kinds.split(","):
            r = time_shape(shape, kind, DTYPES[args.dtype], device, args.rounds, args.iters)
            print(f"| {'x'.join(map(str, shape))} | {kind} | {r['base_us']:.1f} us | {r['la_us']:.1f} us | "
                  f"{r['ratio']:.2f}x | {r['la_gbs']:.0f} | {r['base_gbs']:.0f} | {r['autograd_ratio']:.2f}x |",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
