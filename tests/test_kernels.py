"""The fast LayerAct paths agree with the plain formula, keep layouts, save little, and fall back cleanly."""
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import layeract_patch
from layeract_patch import LAGELU, LAHardSiLU, LASiLU, la_reference, layer_act, set_backend
from layeract_patch import _kernels
from layeract_patch._kernels import cpu_kernel, op, torch_ops
from layeract_patch._kernels.layout import dense_layout
from layeract_patch.functional import KINDS  # silu, hardsilu, gelu, gelu_tanh


def test_every_kind_has_a_fused_kernel():
    assert set(op.FUSED_KINDS) == set(KINDS)


@pytest.fixture
def cpu_backend(compiled, monkeypatch):
    """Force the C kernel, and make sure float32 work never slips through to the eager ops."""
    def eager(*args, **kwargs):
        if args[0].dtype == torch.float32:
            raise AssertionError("float32 input reached the eager ops instead of the C kernel")
        return original[kwargs.pop("_name")](*args, **kwargs)

    original = {"forward": torch_ops.forward, "backward": torch_ops.backward}
    monkeypatch.setattr(torch_ops, "forward", lambda *a, **k: eager(*a, _name="forward", **k))
    monkeypatch.setattr(torch_ops, "backward", lambda *a, **k: eager(*a, _name="backward", **k))
    set_backend("cpu")
    yield
    set_backend("auto")


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Forget which backends loaded (and warned), and restore that memory afterwards."""
    monkeypatch.setattr(_kernels, "_modules", {})
    monkeypatch.setattr(_kernels, "_chosen", {})
    monkeypatch.setattr(_kernels, "_forced", None)
    cpu_kernel.library.cache_clear()
    yield
    cpu_kernel.library.cache_clear()


def affine_params(channels, seed=1):
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(channels, generator=gen) * 0.5 + 1).requires_grad_()
    bias = (torch.randn(channels, generator=gen) * 0.5).requires_grad_()
    return weight, bias


def compare(x, kind, affine=False, start_dim=1, fn=None, atol=2e-5, rtol=1e-4):
    """Forward and all gradients of `fn` (default: layer_act) against la_reference in float32."""
    channels = x.shape[start_dim]
    weight, bias = affine_params(channels) if affine else (None, None)
    grad = torch.randn_like(x)
    x_fast, x_ref = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    out = (fn or layer_act)(x_fast, kind, 1e-5, weight, bias, start_dim)
    fast_grads = torch.autograd.grad(out, [x_fast] + ([weight, bias] if affine else []), grad)
    ref = la_reference(x_ref, kind, 1e-5, weight, bias, start_dim)
    ref_grads = torch.autograd.grad(ref, [x_ref] + ([weight, bias] if affine else []), grad)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    for fast, expected in zip(fast_grads, ref_grads):
        torch.testing.assert_close(fast, expected, atol=atol * expected.abs().max().item() + atol, rtol=rtol)
    return out, fast_grads


LAYOUTS = {
    "4d": lambda: torch.randn(3, 5, 6, 7) * 2 + 0.5,
    "4d_channels_last": lambda: (torch.randn(3, 5, 6, 7) * 2 + 0.5).contiguous(memory_format=torch.channels_last),
    "2d": lambda: torch.randn(4, 33),
    "3d": lambda: torch.randn(2, 4, 9),
    "5d": lambda: torch.randn(2, 3, 4, 5, 6),
    "5d_channels_last": lambda: torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d),
    "transposed": lambda: torch.randn(3, 6, 5, 4).transpose(1, 3),
    "batch_of_one": lambda: torch.randn(1, 6, 5, 4),
    "tiny_layer": lambda: torch.randn(5, 1),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_cpu_kernel_matches_formula(cpu_backend, layout, affine, kind):
    assert layeract_patch.backend("cpu") == "cpu"
    x = LAYOUTS[layout]()
    out, grads = compare(x, kind, affine)
    _, fmt = dense_layout(x, 1)
    if fmt is not None:
        assert out.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_cpu_kernel_per_token_rows(cpu_backend, affine, kind):
    compare(torch.randn(3, 7, 24) * 3 - 1, kind, affine, start_dim=-1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cpu_kernel_splits_large_samples_across_threads(cpu_backend, channels_last, affine, kind):
    # fewer samples than threads and 32768+ floats each: every sample is cut into chunks
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        x = torch.randn(2, 8, 64, 66) + 3
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        compare(x, kind, affine)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_kernel_constant_sample(cpu_backend, kind):
    x = torch.randn(3, 4, 8, 8)
    x[1] = 2.5  # zero variance: n = 0 and alpha keeps rstd finite
    compare(x, kind, affine=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_kernel_spreads_nan_and_inf_over_their_sample_like_the_formula(cpu_backend, kind, channels_last):
    x = torch.randn(3, 4, 5, 5)
    x[0, 1, 2, 3], x[2, 0, 0, 0] = float("nan"), float("inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = affine_params(4)
    x.requires_grad_(True)
    out = layer_act(x, kind, 1e-5, weight, bias)
    ref = la_reference(x, kind, 1e-5, weight, bias)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out[0].isnan().all() and out[2].isnan().all() and out[1].isfinite().all()
    dx, dweight, dbias = torch.autograd.grad(out, [x, weight, bias], torch.ones_like(out))
    assert dx[0].isnan().all() and dx[2].isnan().all() and dx[1].isfinite().all()
    assert dweight.isnan().all() and dbias.isnan().all()


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cpu_kernel_statistics_survive_a_large_mean(compiled, fmt):
    # mean^2 / variance = 1e6: float sums of x and x^2 would lose the variance entirely
    x = (torch.randn(3, 4, 8, 8, dtype=torch.float64) + 1e3).float().contiguous(memory_format=fmt)
    out, mean, rstd = cpu_kernel.forward(x, None, None, "silu", 1e-5, 1)
    exact = x.double().flatten(1)
    torch.testing.assert_close(mean.double(), exact.mean(1), rtol=0, atol=1e-4)
    torch.testing.assert_close(rstd.double(), (exact.var(1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.double(), la_reference(x.double(), "silu"), rtol=1e-5, atol=0.05)


def test_cpu_kernel_modules_and_repeat_calls(cpu_backend):
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    for module in (LASiLU(), LAHardSiLU(affine=True, num_channels=8)):
        params = list(module.parameters())
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.3)
        out = module(x)
        ref = la_reference(x, module.kind, module.alpha, module.weight, module.bias)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        for fast, expected in zip(torch.autograd.grad(out.square().sum(), [x] + params),
                                  torch.autograd.grad(ref.square().sum(), [x] + params)):
            torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(module(x), out, rtol=0, atol=0)


def test_other_dtypes_run_on_the_eager_ops(cpu_backend):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer_act(t, "silu"), (x,))
    half = torch.randn(2, 3, 4, 4).bfloat16()
    torch.testing.assert_close(layer_act(half, "silu"), la_reference(half, "silu"), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_saved_for_backward_is_input_plus_per_sample_stats(cpu_backend, affine):
    x = torch.randn(6, 8, 10, 10, requires_grad=True)
    weight, bias = affine_params(8) if affine else (None, None)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer_act(x, "silu", 1e-5, weight, bias)
    params = 2 * 8 * 4 if affine else 0
    assert sum(saved.values()) == x.numel() * 4 + 2 * 6 * 4 + params


def test_forced_backends_by_call_and_environment(compiled, fresh_dispatch, monkeypatch):
    x = torch.randn(2, 3, 4)
    set_backend("torch")
    assert layeract_patch.backend() == "torch"
    set_backend("cpu")
    assert layeract_patch.backend() == "cpu"
    set_backend("auto")
    assert layeract_patch.backend() == "cpu"
    monkeypatch.setenv("LAYERACT_BACKEND", "torch")
    assert layeract_patch.backend() == "torch"
    torch.testing.assert_close(layer_act(x, "silu"), la_reference(x, "silu"))
    monkeypatch.setenv("LAYERACT_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="backend"):
        layeract_patch.backend()


def test_the_backend_variable_is_read_each_call_with_or_without_os_environs_own_dict(compiled, fresh_dispatch,
                                                                                   monkeypatch):
    # select() reads the variable from os.environ's dict (os.environ.get costs microseconds a call); where that
    # dict is not there it falls back to os.environ.get. Either way a change takes effect at the next call.
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(_kernels, "_ENV_KEY", None)
        monkeypatch.setenv("LAYERACT_BACKEND", "torch")
        assert layeract_patch.backend() == "torch"
        monkeypatch.setenv("LAYERACT_BACKEND", "cpu")
        assert layeract_patch.backend() == "cpu"
        monkeypatch.delenv("LAYERACT_BACKEND")
        assert layeract_patch.backend() == "cpu"  # auto


def test_missing_compiler_falls_back_with_one_warning(fresh_dispatch, monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="'cpu' backend is unavailable.*C compiler"):
        out = layer_act(x, "silu")
    assert layeract_patch.backend() == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out.sum().backward()
        layer_act(x, "hardsilu")
    torch.testing.assert_close(out, la_reference(x, "silu"))


def test_build_is_cached_per_source_and_written_atomically(compiled, fresh_dispatch, monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    path = cpu_kernel.build()
    assert path.parent == tmp_path and path.suffix == ".so"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no temporary files left
    stamp = path.stat().st_mtime_ns
    assert cpu_kernel.build() == path and path.stat().st_mtime_ns == stamp


WIDE = "-mprefer-vector-width=512"


def test_the_build_prefers_512_bit_vectors_where_aten_runs_avx512(compiled, fresh_dispatch, monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):   # this machine's own build, as users get it
        assert WIDE in cpu_kernel.build_flags().split()
    paths = {}
    for capability in ("AVX512", "AVX2", "DEFAULT"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        cpu_kernel.library.cache_clear()
        wide = capability == "AVX512"
        assert (WIDE in cpu_kernel.optional_flags()[0]) == wide
        assert cpu_kernel.optional_flags()[-4:] == cpu_kernel._OPTIONAL_FLAGS   # the fallbacks stay as they were
        flags = cpu_kernel.build_flags()
        assert (WIDE in flags.split()) == wide and "-march=native" in flags.split(), flags
        paths[capability] = cpu_kernel.build()
    assert paths["AVX512"] != paths["AVX2"] == paths["DEFAULT"]   # the choice is part of the cache key


def test_a_compiler_refusing_the_width_flag_gets_the_plain_native_build(compiled, fresh_dispatch, monkeypatch,
                                                                        tmp_path):
    cc = tmp_path / "cc-without-width"
    cc.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = "{WIDE}" ] && exit 1; done\n'
                  f'exec {cpu_kernel.find_compiler()[0]} "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    flags = cpu_kernel.build_flags().split()
    assert WIDE not in flags and flags[-2:] == ["-march=native", "-fopenmp"]
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(cpu_kernel.forward(x, None, None, "silu", 1e-5, 1)[0], la_reference(x, "silu"))


def test_layeract_cflags_come_last_and_key_the_cache(compiled, fresh_dispatch, monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    plain = cpu_kernel.build()
    monkeypatch.setenv("LAYERACT_CFLAGS", "-mprefer-vector-width=256 -DLAYERACT_UNUSED=1")
    assert cpu_kernel.build() != plain
    assert cpu_kernel.build_flags().endswith("-mprefer-vector-width=256 -DLAYERACT_UNUSED=1")


def test_cpu_backend_declines_other_devices():
    assert not cpu_kernel.available(torch.device("meta"))


# ---------------------------------------------------------------- Triton, in its CPU interpreter
# Triton decides at import whether its functions are interpreted, so these tests run in a fresh
# process started with TRITON_INTERPRET=1 (test_triton_kernels_pass_in_a_subprocess).

def test_triton_kernels_pass_in_a_subprocess():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("already inside the interpreter run")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider",
                          "-k", "triton_in_interpreter"], env=env, capture_output=True, text=True, timeout=600)
    report = run.stdout[-3000:] + run.stderr[-2000:]
    if run.returncode == 0 and " passed" not in run.stdout:
        pytest.skip(f"the Triton interpreter tests were all skipped: {report}")
    assert run.returncode == 0, report


@pytest.fixture(scope="module")
def interpreted_triton():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of test_triton_kernels_pass_in_a_subprocess")
    from layeract_patch._kernels import triton_kernel
    assert triton_kernel.INTERPRETED and triton_kernel.available(torch.device("cpu"))
    try:
        triton_kernel.forward(torch.randn(1, 4), None, None, "silu", 1e-5, 1)
    except Exception as err:  # an interpreter that cannot run here is a skip, not a failure
        pytest.skip(f"the Triton interpreter cannot run here: {type(err).__name__}: {err}")
    return triton_kernel


def run_backend(module, x, kind, affine, start_dim=1):
    """Forward and backward through a backend module's functions, as the autograd Function calls them."""
    def fn(xx, kind_, alpha, weight, bias, sd):
        class Op(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t, w, b):
                out, mean, rstd = module.forward(t, w, b, kind_, alpha, sd)
                ctx.save_for_backward(t, mean, rstd, w, b)
                return out

            @staticmethod
            def backward(ctx, grad):
                t, mean, rstd, w, b = ctx.saved_tensors
                return module.backward(grad, t, mean, rstd, w, b, kind_, sd)
        return Op.apply(xx, weight, bias)
    return compare(x, kind, affine, start_dim % x.dim(), fn=fn)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_triton_in_interpreter_one_program_per_sample(interpreted_triton, affine, kind):
    channels_last = affine and kind == "hardsilu"  # the per-channel weight then varies along a tile row
    x = torch.randn(2, 3, 5, 7) + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, grads = run_backend(interpreted_triton, x, kind, affine)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    if kind == "hardsilu":
        run_backend(interpreted_triton, torch.randn(2, 3, 9), kind, affine, start_dim=-1)


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_triton_in_interpreter_chunked_samples(interpreted_triton, monkeypatch, affine):
    # tiny tile limits force the chunked kernels, and (planar affine) several tile rows per channel
    monkeypatch.setattr(interpreted_triton, "FUSED_MAX", 32)
    monkeypatch.setattr(interpreted_triton, "CHUNK_TILE", 32)
    monkeypatch.setattr(interpreted_triton, "MAX_K", 16)
    run_backend(interpreted_triton, torch.randn(1, 2, 6, 6) * 3, "silu", affine)
    run_backend(interpreted_triton, torch.randn(1, 2, 5, 6) * 3 - 1, "gelu", affine)
    if affine:
        x = torch.randn(1, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        run_backend(interpreted_triton, x, "hardsilu", affine)
        run_backend(interpreted_triton, x, "gelu_tanh", affine)


def test_triton_in_interpreter_bfloat16_keeps_dtype(interpreted_triton):
    x = torch.randn(2, 4, 6, 6).bfloat16()
    weight, bias = affine_params(4)
    out, mean, rstd = interpreted_triton.forward(x, weight.detach(), bias.detach(), "silu", 1e-5, 1)
    assert out.dtype == torch.bfloat16 and mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(out, la_reference(x, "silu", 1e-5, weight.detach(), bias.detach()),
                               atol=3e-2, rtol=2e-2)


def test_triton_in_interpreter_spreads_nan_over_its_sample(interpreted_triton):
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    for kind in KINDS:
        out, _, _ = interpreted_triton.forward(x, None, None, kind, 1e-5, 1)
        assert out[0].isnan().all() and out[1].isfinite().all()


def test_triton_backend_on_a_cpu_tensor_falls_back_with_a_warning(fresh_dispatch):
    from layeract_patch._kernels import triton_kernel
    if triton_kernel.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1: the Triton backend runs on CPU tensors")
    set_backend("triton")
    with pytest.warns(RuntimeWarning, match="'triton' backend is unavailable"):
        assert layeract_patch.backend("cpu") == "torch"


def test_triton_in_interpreter_through_the_op(interpreted_triton, fresh_dispatch):
    set_backend("triton")
    assert layeract_patch.backend("cpu") == "triton"
    for module in (LASiLU(affine=True, num_channels=3), LAHardSiLU(), LAGELU(),
                   LAGELU(affine=True, num_channels=3, approximate="tanh")):
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        out = module(x)
        ref = la_reference(x, module.kind, module.alpha, module.weight, module.bias)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(torch.autograd.grad(out.square().sum(), x)[0],
                                   torch.autograd.grad(ref.square().sum(), x)[0], atol=1e-4, rtol=1e-4)
        empty = torch.randn(0, 3, 4, 4, requires_grad=True)
        out = module(empty)
        out.sum().backward()
        assert out.shape == empty.shape and empty.grad.shape == empty.shape
    out, mean, rstd = torch.ops.layeract.layer_act(torch.randn(2, 5), None, None, "silu", 1e-5, 1)
    assert mean.shape == (2,)


# ---------------------------------------------------------------- what a demanding user breaks

@pytest.mark.parametrize("name", ["torch", "cpu"])
@pytest.mark.parametrize("cls", [LASiLU, LAHardSiLU, LAGELU])
def test_empty_batch_works_in_every_backend(name, cls, fresh_dispatch):
    set_backend(name)
    for module in (cls(), cls(affine=True, num_channels=3)):
        x = torch.randn(0, 3, 4, 4, requires_grad=True)
        out = module(x)
        assert out.shape == (0, 3, 4, 4)
        out.sum().backward()
        assert x.grad.shape == x.shape
        if module.affine:
            torch.testing.assert_close(module.weight.grad, torch.zeros(3))
    assert layeract_patch.backend() == name or name == "cpu"  # without a compiler "cpu" falls back


@pytest.mark.parametrize("name", ["torch", "cpu"])
@pytest.mark.parametrize("magnitude", [1e19, 1e25, 1e30, 5e37])
def test_huge_float32_inputs_give_finite_results(name, magnitude, fresh_dispatch):
    # the variance of such samples overflows float32; before, the output was x/2 and the gradient NaN
    set_backend(name)
    gen = torch.Generator().manual_seed(0)
    x = ((torch.rand(3, 4, 5, 5, generator=gen) * 2 - 1) * magnitude).requires_grad_()
    weight, bias = affine_params(4)
    out = layer_act(x, "silu", 1e-5, weight, bias)
    dx, dweight = torch.autograd.grad(out.sum(), (x, weight))
    assert out.isfinite().all() and dx.isfinite().all()
    if magnitude * x.numel() < 3e38:  # beyond, the weight gradient (a sum of x-sized terms) exceeds float32 itself
        assert dweight.isfinite().all()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ref = la_reference(x64, "silu", 1e-5, w64, b64)
    (dx64,) = torch.autograd.grad(ref.sum(), x64)
    torch.testing.assert_close(out.double() / magnitude, ref / magnitude, atol=1e-6, rtol=0)
    torch.testing.assert_close(dx.double(), dx64, atol=1e-5, rtol=1e-5)


def test_a_bad_backend_variable_is_one_clear_error(fresh_dispatch, monkeypatch):
    monkeypatch.setenv("LAYERACT_BACKEND", "garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a warning per call
        for _ in range(2):
            with pytest.raises(ValueError) as err:
                LASiLU()(torch.randn(2, 3))
            message = str(err.value)
            assert "LAYERACT_BACKEND='garbage'" in message
            assert all(name in message for name in _kernels.BACKENDS)


def test_a_corrupt_cached_kernel_is_rebuilt_once(compiled, fresh_dispatch, monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERACT_CACHE_DIR", str(tmp_path))
    path = cpu_kernel.build()
    path.write_bytes(path.read_bytes()[:100])  # a truncated copy, e.g. from a killed process
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernel is rebuilt and used
        assert layeract_patch.backend() == "cpu"
        x = torch.randn(2, 3, 4)
        torch.testing.assert_close(layer_act(x, "silu"), la_reference(x, "silu"))
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("name", ["torch", "cpu"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_sample_spanning_all_of_float32_stays_finite(name, kind, fresh_dispatch):
    # x - mean overflows float32 in the first rows; every backend runs them itself, with no fallback
    set_backend(name)
    x = torch.tensor([[3.0e38, -3.0e38, 1.0, 2.0], [3.4e38, -3.4e38, 3.4e38, -3.4e38], [1e19, -2e19, 3e19, 0.0]],
                     requires_grad=True)
    if name == "cpu":  # the op trusts the kernel's statistics: rstd positive and finite (~3e-39 at worst)
        _, mean, rstd = cpu_kernel.forward(x.detach(), None, None, kind, 1e-5, 1)
        assert mean.isfinite().all() and (rstd > 0).all() and rstd.isfinite().all()
    out = layer_act(x, kind, 1e-5, None, None)
    (dx,) = torch.autograd.grad(out.sum(), x)
    assert out.isfinite().all() and dx.isfinite().all()
    torch.testing.assert_close(out.double(), la_reference(x.detach().double(), kind), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_la_gelu_keeps_its_relative_accuracy_in_the_lower_tail(name, compiled, fresh_dispatch):
    # One sample whose normalized values sweep [-11, 11]: Phi(-11) ~ 2e-28, where 1 + erf(n / sqrt 2) would give 0
    # (or an absolute error of 1e-7). What is left is float32's conditioning of n itself (|d log Phi / dn| ~ |n|),
    # measured against the formula in float64.
    set_backend(name)
    bulk = torch.randn(100000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    x = (torch.cat([bulk, torch.linspace(-11, 11, 2001, dtype=torch.float64)]) * 3 + 1)[None]
    out = layer_act(x.float(), "gelu").double()
    var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
    n = (x - mean) / torch.sqrt(var + 1e-5)
    want = x * 0.5 * torch.special.erfc(-n / math.sqrt(2))
    relative = (out - want).abs() / want.abs()
    assert n.min() < -10.5 and want[n < -10].abs().max() < 1e-20  # the sweep reaches the far tail
    assert relative[n.abs() <= 4].max() < 1e-5
    assert relative.max() < 1e-4


def test_la_gelu_in_bfloat16_stays_within_one_step_of_the_exact_value(compiled):
    # bfloat16 GELU computes Phi to 2.5e-5 (normal_cdf with bf16 set) instead of 2e-7: every output must still be
    # within one bfloat16 step (at most 2^-7 relative) of the formula in float64, the lower tail included, and nearly
    # all equal to float32 arithmetic's result rounded to bfloat16 (99.95% here)
    bulk = torch.randn(100000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    x = (torch.cat([bulk, torch.linspace(-11, 11, 2001, dtype=torch.float64)]) * 3 + 1)[None].to(torch.bfloat16)
    out, mean, rstd = cpu_kernel.forward(x, None, None, "gelu", 1e-5, 1)
    exact = x.double()
    var, mu = torch.var_mean(exact, dim=1, keepdim=True, unbiased=False)
    n = (exact - mu) / torch.sqrt(var + 1e-5)
    want = exact * 0.5 * torch.special.erfc(-n / math.sqrt(2))
    assert n.min() < -10.5 and out.dtype == torch.bfloat16
    nonzero = want != 0
    relative = ((out.double() - want).abs() / want.abs())[nonzero]
    assert relative.max() <= 2.0 ** -7
    in_float32 = cpu_kernel.forward(x.float(), None, None, "gelu", 1e-5, 1)[0].to(torch.bfloat16)
    assert (out == in_float32).double().mean() > 0.99
    # built with -DLAYERACT_BF16_FULL_PHI (the benchmarks' comparison), bfloat16 runs float32's Phi: the same results,
    # forward and backward
    lib = cpu_kernel.library(("-DLAYERACT_BF16_FULL_PHI",))
    full, mean, rstd = cpu_kernel.forward(x, None, None, "gelu", 1e-5, 1, lib)
    assert torch.equal(full, in_float32)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    _, mean32, rstd32 = cpu_kernel.forward(x.float(), None, None, "gelu", 1e-5, 1)
    dx32 = cpu_kernel.backward(g.float(), x.float(), mean32, rstd32, None, None, "gelu", 1)[0]
    assert torch.equal(cpu_kernel.backward(g, x, mean, rstd, None, None, "gelu", 1, lib)[0], dx32.to(torch.bfloat16))


@pytest.mark.slow
def test_both_kernels_hold_the_fitted_normal_cdf_polynomial():
    # the C and Triton kernels' Q(t) are tools/fit_normal_cdf.py's output, digit for digit
    import importlib.util
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("fit_normal_cdf", root / "tools" / "fit_normal_cdf.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    coef, error = fit.fit()
    assert error < 1e-7 and fit.float32_error(coef) < 2.5e-7
    for source in (root / "layeract_patch/_kernels/layeract_cpu.c", root / "layeract_patch/_kernels/triton_kernel.py"):
        text = source.read_text()
        for c in coef:
            assert f"{abs(float(c)):.9e}" in text, (source.name, float(c))
    # and the C kernel's bfloat16 Q, of degree 5 (normal_cdf with bf16 set)
    coef, error = fit.fit(5)
    assert error < 2.5e-5 and fit.float32_error(coef) < 2.5e-5
    text = (root / "layeract_patch/_kernels/layeract_cpu.c").read_text()
    for c in coef:
        assert f"{abs(float(c)):.9e}" in text, float(c)
