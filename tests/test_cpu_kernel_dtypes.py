"""The fused CPU kernel in bfloat16 and float16, and with inputs so large that float32 sums overflow.

Half-precision results are compared with the formula evaluated in float64 on the same (rounded)
inputs, with tolerances of a few units in the last place of the half-precision output.
"""
import math
from functools import partial

import pytest
import torch

from layeract_patch import LAGELU, LAHardSiLU, LASiLU, la_reference, layer_act, set_backend
from layeract_patch._kernels import cpu_kernel, torch_ops
from layeract_patch.functional import KINDS  # silu, hardsilu, gelu, gelu_tanh

HALF = (torch.bfloat16, torch.float16)
# relative tolerance: a few units of the output's last place (bfloat16 has 8 bits, float16 11)
RTOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.fixture
def c_only(compiled, monkeypatch):
    """Force the 'cpu' backend and fail any call that would reach the eager ops: the C kernel must do it all."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a {args[0].dtype} call reached the eager 'torch' ops instead of the C kernel")

    monkeypatch.setattr(torch_ops, "forward", refuse)
    monkeypatch.setattr(torch_ops, "backward", refuse)
    set_backend("cpu")
    yield
    set_backend("auto")


def params(channels, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(channels, generator=gen) * 0.5 + 1).to(dtype).requires_grad_()
    bias = (torch.randn(channels, generator=gen) * 0.5).to(dtype).requires_grad_()
    return weight, bias


def exact(x, grad, kind, weight=None, bias=None, start_dim=1):
    """The formula's output and gradients in float64, from the same (already rounded) inputs."""
    x64 = x.detach().double().requires_grad_()
    wanted = [x64]
    w64 = b64 = None
    if weight is not None:
        w64, b64 = weight.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
        wanted += [w64, b64]
    out = la_reference(x64, kind, 1e-5, w64, b64, start_dim)
    return out, torch.autograd.grad(out, wanted, grad.double())


def assert_close_scaled(actual, expected, rtol):
    """|actual - expected| <= rtol * (|expected| + a small share of the tensor's scale)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * 0.05 * scale + 1e-30)


def check(x, kind, affine=False, param_dtype=torch.float32, start_dim=1):
    channels = x.shape[start_dim]
    weight, bias = params(channels, param_dtype) if affine else (None, None)
    grad = torch.randn(x.shape, dtype=torch.float32).to(x.dtype)
    xg = x.detach().clone().requires_grad_()
    out = layer_act(xg, kind, 1e-5, weight, bias, start_dim)
    grads = torch.autograd.grad(out, [xg] + ([weight, bias] if affine else []), grad)
    ref, ref_grads = exact(x, grad, kind, weight, bias, start_dim)
    assert out.dtype == x.dtype and grads[0].dtype == x.dtype
    rtol = RTOL.get(x.dtype, 1e-4)
    assert_close_scaled(out, ref, rtol)
    assert_close_scaled(grads[0], ref_grads[0], rtol)
    for got, want in zip(grads[1:], ref_grads[1:]):
        assert got.dtype == param_dtype
        # the parameter gradients are float32 sums of exactly converted values: tighter than the output
        assert_close_scaled(got, want, RTOL.get(param_dtype, 2e-3))
    return out, grads


SHAPES = {
    "4d": (3, 5, 6, 7),
    "maps_1x1": (4, 9, 1, 1),
    "odd_vector_width": (2, 3, 17, 19),   # 969 values per sample: no multiple of 8 or 16
    "two_tiles": (2, 3, 25, 30),          # more values per sample than one conversion tile
    "3d": (2, 4, 9),
    "2d": (5, 33),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_runs_in_c_and_matches_float64(c_only, dtype, shape, channels_last, affine, kind):
    x = (torch.randn(SHAPES[shape]) * 2 + 0.5).to(dtype)
    if channels_last:
        if x.dim() != 4:
            pytest.skip("channels_last needs a 4-D tensor")
        x = x.contiguous(memory_format=torch.channels_last)
    out, grads = check(x, kind, affine)
    if channels_last and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_per_token_rows_and_parameters_in_the_input_dtype(c_only, dtype):
    x = (torch.randn(3, 7, 40) * 3 - 1).to(dtype)
    check(x, "silu", affine=True, param_dtype=dtype, start_dim=-1)
    check(x.transpose(1, 2), "hardsilu", affine=True, param_dtype=dtype)   # strided: a contiguous copy


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_constant_sample(c_only, dtype, kind):
    x = torch.randn(3, 4, 8, 8).to(dtype)
    x[1] = 2.5   # zero variance: n = 0, alpha keeps rstd finite
    out, grads = check(x, kind, affine=True)
    assert out.isfinite().all() and all(g.isfinite().all() for g in grads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_large_samples_split_across_threads(c_only, dtype, channels_last):
    # fewer samples than threads and 32768+ values each: samples are cut into chunks
    torch.set_num_threads(3)
    x = (torch.randn(2, 8, 64, 66) + 3).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for kind in KINDS:
        check(x, kind, affine=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", (torch.float32,) + HALF, ids=["fp32", "bf16", "fp16"])
def test_samples_larger_than_l1_match_float64(c_only, dtype, channels_last):
    # 81920 values a sample (160 KiB in half precision) exceed any L1 data cache, and there are more samples
    # than threads: each sample's statistics and outputs in turn, not cut into chunks
    torch.set_num_threads(2)
    x = (torch.randn(4, 20, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    check(x, "silu", affine=True)
    # HardSiLU's output only: among 327680 values some z lands within rounding of the kinks at +-3, where
    # float32 and float64 may pick different sides of a jump in the gradient (the backward is not new here)
    weight, bias = params(x.shape[1])
    out = layer_act(x, "hardsilu", 1e-5, weight, bias)
    ref = la_reference(x.double(), "hardsilu", 1e-5, weight.detach().double(), bias.detach().double())
    assert_close_scaled(out.detach(), ref, RTOL.get(dtype, 1e-4))


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_nan_spreads_over_its_sample(c_only, dtype):
    x = torch.randn(3, 4, 5, 5).to(dtype)
    x[0, 1, 2, 3] = float("nan")
    weight, bias = params(4)
    x.requires_grad_(True)
    out = layer_act(x, "silu", 1e-5, weight, bias)
    assert out[0].isnan().all() and out[1:].isfinite().all()
    dx, dweight, _ = torch.autograd.grad(out, [x, weight, bias], torch.ones_like(out))
    assert dx[0].isnan().all() and dx[1:].isfinite().all() and dweight.isnan().all()


MODULES = {"silu": LASiLU, "hardsilu": LAHardSiLU, "gelu": LAGELU, "gelu_tanh": partial(LAGELU, approximate="tanh")}


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_training_step_stays_fused(c_only, kind):
    # CPU autocast hands LayerAct bfloat16 activations while the module's affine stays float32
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    act = MODULES[kind](affine=True, num_channels=8)
    assert act.kind == kind
    with torch.no_grad():
        act.weight.add_(torch.randn(8) * 0.3)
        act.bias.add_(torch.randn(8) * 0.3)
    images = torch.randn(4, 3, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = conv(images)
        out = act(hidden)
    assert hidden.dtype == out.dtype == torch.bfloat16 and act.weight.dtype == torch.float32
    grad = torch.randn_like(out)
    dhidden, dweight, dbias = torch.autograd.grad(out, [hidden, act.weight, act.bias], grad)
    assert dhidden.dtype == torch.bfloat16 and dweight.dtype == dbias.dtype == torch.float32
    ref, (rx, rw, rb) = exact(hidden, grad, kind, act.weight, act.bias)
    assert_close_scaled(out, ref, RTOL[torch.bfloat16])
    assert_close_scaled(dhidden, rx, RTOL[torch.bfloat16])
    assert_close_scaled(dweight, rw, 2e-3)
    assert_close_scaled(dbias, rb, 2e-3)


@pytest.mark.parametrize("magnitude", [1e19, 1e30])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_huge_inputs_give_finite_outputs_and_gradients(c_only, dtype, kind, magnitude):
    # (1e19)^2 overflows float32: sums of squares must not be taken in float there
    torch.manual_seed(0)
    x = (torch.randn(3, 4, 8, 8, dtype=torch.float64) * magnitude).to(dtype)
    x[1] += magnitude * 5  # a mean far from zero too
    out, grads = check(x, kind, affine=True)
    assert out.isfinite().all() and all(g.isfinite().all() for g in grads)
    # the result is scale-free: LayerAct of c x is c times LayerAct of x (c a power of two, so that x / c is exact
    # in every dtype: a rounding of its own would move n by a bfloat16 step, which GELU's slope makes visible)
    c = 2.0 ** round(math.log2(magnitude))
    small = layer_act((x.double() / c).to(dtype), kind, 1e-5, *params(4))
    assert_close_scaled(out.double() / c, small.double(), RTOL.get(dtype, 1e-4))


def test_float32_statistics_of_huge_inputs_match_float64(compiled):
    x = torch.randn(2, 3, 16, 16) * 3e37
    x[0, 0, 0, 0] = -3e38   # float32 x - x[0] would overflow: this block is summed in double
    _, mean, rstd = cpu_kernel.forward(x, None, None, "silu", 1e-5, 1)
    flat = x.double().flatten(1)
    torch.testing.assert_close(mean.double(), flat.mean(1), rtol=1e-5, atol=0)
    torch.testing.assert_close(rstd.double(), (flat.var(1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=0)


SPECIALS = [0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e5, 6.1e-5, 6.0e-8, 2.9e-8, 3e-8, 1e-40, 3.4e38,
            float("inf"), float("-inf"), 1.00390625, 1.01171875, 1.0009765625, 1.0029296875]


@pytest.mark.parametrize("portable", [False, True], ids=["native", "portable"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_conversions_round_like_torch(compiled, tmp_path, monkeypatch, dtype, portable):
    """The kernel's float <-> half conversions agree bit for bit with torch's (round to nearest even), subnormals
    included: the native build's (F16C for float16) and the portable bit manipulation other machines get."""
    if portable:
        monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    lib = cpu_kernel.library(("-DLAYERACT_PORTABLE",) if portable else ())
    code = cpu_kernel.DTYPE_CODE[dtype]
    gen = torch.Generator().manual_seed(0)
    values = torch.cat([torch.tensor(SPECIALS), -torch.tensor(SPECIALS),
                        torch.randn(4000, generator=gen) * torch.logspace(-30, 30, 4000),
                        torch.randn(1001, generator=gen) * 1e-6])
    halves = torch.empty(values.numel(), dtype=dtype)
    lib.layeract_from_float(values.data_ptr(), halves.data_ptr(), values.numel(), code)
    expected = values.to(dtype)
    assert torch.equal(halves.view(torch.int16), expected.view(torch.int16))
    nan = torch.tensor([float("nan")] * 20)
    nan_halves = torch.empty(20, dtype=dtype)
    lib.layeract_from_float(nan.data_ptr(), nan_halves.data_ptr(), 20, code)
    assert nan_halves.isnan().all()
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)   # all 65536 patterns
    back = torch.empty(every.numel(), dtype=torch.float32)
    lib.layeract_to_float(every.data_ptr(), back.data_ptr(), every.numel(), code)
    torch.testing.assert_close(back, every.float(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("capability", ["AVX512", "AVX2"], ids=["512-bit", "compiler-default"])
def test_both_vector_widths_match_float64(c_only, tmp_path, monkeypatch, capability):
    """The build that prefers 512-bit vectors (where ATen runs AVX-512) and the compiler's own choice (256 bits on
    Intel's AVX-512 cores) both agree with the formula: every kind, dtype and layout, at lengths that are no multiple
    of 8 or 16 (the vector loops' tails), and on a sample cut into chunks across threads."""
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpu_kernel.library.cache_clear()
    try:
        assert ("-mprefer-vector-width=512" in cpu_kernel.build_flags().split()) == (capability == "AVX512")
        for dtype in (torch.float32,) + HALF:
            for shape in ((2, 3, 17, 19), (5, 33), (2, 48, 5, 5)):
                x = (torch.randn(shape) * 2 + 0.5).to(dtype)
                for layout in ((x, x.contiguous(memory_format=torch.channels_last)) if x.dim() == 4 else (x,)):
                    for kind in KINDS:
                        for affine in (False, True):
                            check(layout, kind, affine)
        torch.set_num_threads(3)
        check((torch.randn(2, 8, 64, 66) + 3).to(torch.bfloat16), "silu", affine=True)
    finally:
        cpu_kernel.library.cache_clear()   # later tests load this machine's own build again


def _run_benchmark(script: str, *args: str, timeout: int = 300) -> str:
    """stdout of `python benchmarks/<script> args...` on one thread, from the repository root; it must succeed."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=root, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_benchmarks_print_one_line_per_figure(compiled):
    """The benchmark scripts run end to end (tiny sizes) and print each figure with its median and range."""
    stdout = _run_benchmark("bench_activation.py", "--shapes", "4x4x8x8", "--budget", "0.05", "--threads", "1",
                            "--dtypes", "fp32,bf16", "--repeats", "3")
    figures = [line for line in stdout.splitlines() if "(range " in line]
    assert len(figures) == 4 and all("1 thread" in line for line in figures), stdout
    assert sum("saved for backward" in line for line in stdout.splitlines()) == 4
    stdout = _run_benchmark("bench_activation.py", "--shapes", "4x4x8x8", "--budget", "0.05", "--threads", "1",
                            "--dtypes", "fp32", "--kinds", "hardsilu", "--kernels-alone",
                            "--kernel-flags=-mprefer-vector-width=256")
    alone = [line for line in stdout.splitlines() if "kernels alone (no autograd)" in line]
    assert len(alone) == 1 and "x aten hardswish+hardswish_backward (range " in alone[0], stdout
    assert "; built with -mprefer-vector-width=256 added: " in alone[0], stdout
    header = stdout.splitlines()[1]   # the CPU, torch and the kernel's compiler flags, then the second build's
    assert "torch " in header and " C kernel " in header and " -O3 " in header, stdout
    assert stdout.splitlines()[2].startswith("# --kernel-flags build: C kernel ") and stdout.splitlines()[2].endswith(
        " -mprefer-vector-width=256"), stdout
    stdout = _run_benchmark("bench_resnet_step.py", "--depth", "8", "--batch", "4", "--budget", "0.1",
                            "--precision", "bf16", "--threads", "1")
    assert "bf16 step LA-SiLU, 'cpu' kernel:" in stdout and "target <= 1.2x" in stdout, stdout
    assert "bf16 step LA-HardSiLU, 'cpu' kernel: " in stdout and "x Hardswish (range " in stdout, stdout


@pytest.mark.slow
def test_the_compile_benchmark_runs_for_either_kind(compiled):
    """bench_compile_step.py end to end at a tiny size (under bf16 autocast): graph facts, then one line per case
    with its range."""
    stdout = _run_benchmark("bench_compile_step.py", "--kind", "hardsilu", "--depth", "8", "--batch", "4",
                            "--budget", "0.1", "--repeats", "2", "--threads", "1", "--precision", "bf16", timeout=600)
    assert "C kernel " in stdout.splitlines()[0] and "batch 4, bf16 (CPU autocast), 1 thread(s)" in stdout, stdout
    assert "compiled LA-HardSiLU ResNet-8: 0 graph break(s), 7 layeract op node(s)" in stdout, stdout
    lines = [line for line in stdout.splitlines() if line.startswith("  ")]
    assert [" ".join(line.split()[:2]) for line in lines] == ["Hardswish, compiled", "LA-HardSiLU, compiled",
                                                             "LA-HardSiLU, eager"], stdout
    assert "ratio to the compiled Hardswish step" in stdout
    assert all("x (" in line and "target" not in line for line in lines)  # the 1.15x target is LA-SiLU's alone
