"""The LayerAct math: exact gradients, agreement with the plain formula, dtypes, layouts, errors."""
import math
import warnings

import pytest
import torch

from layeract_patch import set_backend
from layeract_patch.functional import KINDS, la_gelu, la_hardsilu, la_reference, la_silu, layer_act

assert set(KINDS) == {"silu", "hardsilu", "gelu", "gelu_tanh"}  # a new kind gets its line in plain_formula


def plain_scale(n, kind):
    """Each scale as its activation's own definition: SiLU, hard-swish and GELU (both forms) divided by y."""
    if kind == "silu":
        return torch.sigmoid(n)
    if kind == "hardsilu":
        return torch.clamp(n / 6 + 0.5, 0, 1)
    if kind == "gelu":
        return 0.5 * (1 + torch.erf(n / math.sqrt(2)))
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (n + 0.044715 * n ** 3)))


def plain_formula(x, kind, alpha=1e-5, weight=None, bias=None, start_dim=1):
    """The issue's formula, written independently of the package, in float64."""
    x = x.double()
    dims = tuple(range(start_dim, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, unbiased=False)
    n = (x - mean) / torch.sqrt(var + alpha)
    if weight is not None:
        shape = (-1,) + (1,) * (x.dim() - start_dim - 1)
        n = weight.double().view(shape) * n + bias.double().view(shape)
    return x * plain_scale(n, kind)


@pytest.fixture(autouse=True)
def quiet_fallback_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def affine_params(channels, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    weight = (torch.rand(channels, generator=g, dtype=dtype) + 0.5).requires_grad_()
    bias = torch.randn(channels, generator=g, dtype=dtype).requires_grad_()
    return weight, bias


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape,start_dim", [((3, 4), 1), ((2, 3, 5), 1), ((2, 3, 4, 4), 1), ((2, 2, 2, 3, 3), 1),
                                             ((2, 5, 6), -1)])
def test_gradcheck_float64(kind, affine, shape, start_dim):
    x = (torch.randn(*shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    channels = shape[start_dim]
    weight, bias = affine_params(channels) if affine else (None, None)
    assert torch.autograd.gradcheck(lambda *a: layer_act(*a[:1], kind, 1e-5, *a[1:], start_dim), (x, weight, bias))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer_size", [4, 7, 12, 20])
@pytest.mark.parametrize("scale,offset", [(1e-2, 0.0), (1.0, 5.0), (30.0, -100.0)])
def test_gradcheck_tiny_layers_and_scales(kind, layer_size, scale, offset):
    # Samples with very different scales and offsets in one batch; a wrong variance derivative shows most here.
    x = torch.randn(3, layer_size, dtype=torch.float64)
    x = (x * torch.tensor([[scale], [1.0], [scale * 10]], dtype=torch.float64) + offset).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer_act(t, kind), (x,))


@pytest.mark.parametrize("kind", KINDS)
def test_reference_path_gradcheck(kind):
    x = (torch.randn(2, 3, 3, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    weight, bias = affine_params(3)
    assert torch.autograd.gradcheck(lambda *a: la_reference(a[0], kind, 1e-5, a[1], a[2]), (x, weight, bias))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape,start_dim", [((16, 40), 1), ((8, 6, 9), 1), ((8, 16, 12, 12), 1), ((4, 4, 3, 5, 5), 1),
                                             ((4, 7, 32), -1), ((4, 7, 32), 2)])
def test_float32_matches_float64_formula(kind, affine, shape, start_dim):
    x = torch.randn(*shape) * 4 + 2
    weight, bias = affine_params(shape[start_dim], torch.float32) if affine else (None, None)
    expected = plain_formula(x, kind, 1e-5, weight, bias, start_dim % len(shape))
    for fn in (layer_act, la_reference):
        out = fn(x, kind, 1e-5, weight, bias, start_dim)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_the_formula_in_float32(kind):
    x = (torch.randn(6, 8, 5, 5) * 2).requires_grad_()
    weight, bias = affine_params(8, torch.float32)
    grad = torch.randn(6, 8, 5, 5)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    expected = torch.autograd.grad(plain_formula(x64, kind, 1e-5, w64, b64), (x64, w64, b64), grad.double())
    got = torch.autograd.grad(layer_act(x, kind, 1e-5, weight, bias), (x, weight, bias), grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, atol=2e-4, rtol=1e-4)


def test_per_token_layout_normalizes_each_row_separately():
    x = torch.randn(3, 5, 16)
    rows = x.reshape(15, 16)
    torch.testing.assert_close(la_silu(x, start_dim=-1), la_silu(rows).view(3, 5, 16))


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_same_values_and_format(kind):
    x = torch.randn(4, 8, 6, 6)
    weight, bias = affine_params(8, torch.float32)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_c = x.clone().requires_grad_()
    out_cl = layer_act(x_cl, kind, 1e-5, weight, bias)
    out_c = layer_act(x_c, kind, 1e-5, weight, bias)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out_c)
    grad = torch.randn(4, 8, 6, 6)
    out_cl.backward(grad.contiguous(memory_format=torch.channels_last))
    out_c.backward(grad)
    torch.testing.assert_close(x_cl.grad, x_c.grad, atol=1e-5, rtol=1e-5)


def test_non_contiguous_input():
    x = torch.randn(8, 6, 10).transpose(1, 2)
    torch.testing.assert_close(la_silu(x).double(), plain_formula(x, "silu"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_large_activations_stay_finite(dtype, kind):
    # Values of a few hundred: the variance (~1e5) would overflow float16 if computed in it.
    x = (torch.randn(4, 8, 6, 6) * 300 + 50).to(dtype).requires_grad_()
    weight, bias = affine_params(8, dtype)
    out = layer_act(x, kind, 1e-5, weight, bias)
    out.sum().backward()
    assert out.dtype == dtype and x.grad.dtype == dtype and weight.grad.dtype == dtype
    for t in (out, x.grad, weight.grad, bias.grad):
        assert torch.isfinite(t).all()
    expected = plain_formula(x.detach().float(), kind, 1e-5, weight.detach(), bias.detach())
    torch.testing.assert_close(out.double(), expected, atol=2.0, rtol=2e-2)


def test_cpu_autocast_bfloat16():
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(2, 3, 10, 10) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        out = la_silu(y)
    assert y.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(conv.weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    x = torch.randn(2, 3, 10, 10, device="cuda") * 100
    with torch.autocast("cuda", dtype=dtype):
        out = la_silu(conv(x))
    assert out.dtype == dtype
    out.float().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_constant_sample_and_batch_of_one(kind):
    x = torch.cat([torch.full((1, 3, 4, 4), 2.5), torch.randn(1, 3, 4, 4)]).requires_grad_()
    out = layer_act(x, kind)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out[0], torch.full((3, 4, 4), 2.5 * 0.5))  # n = 0 -> scale 1/2
    one = torch.randn(1, 5).requires_grad_()
    layer_act(one, kind).sum().backward()
    assert torch.isfinite(one.grad).all()


def test_saved_for_backward_is_input_plus_per_sample_stats():
    x = torch.randn(16, 8, 12, 12, requires_grad=True)
    weight, bias = affine_params(8, torch.float32)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = la_silu(x, weight=weight, bias=bias)
    total = sum(t.numel() * t.element_size() for t in saved)
    per_sample_and_params = 16 * 4 * 4 + 2 * 8 * 4  # a few float32 numbers per sample, plus the parameters
    assert total <= x.numel() * x.element_size() + per_sample_and_params
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        la_reference(x, "silu", 1e-5, weight, bias)
    assert sum(t.numel() * t.element_size() for t in saved) > 2 * x.numel() * x.element_size()  # the plain composition
    out.sum().backward()


@pytest.mark.parametrize("bad,err,match", [
    (torch.randn(5), ValueError, "1-D"),
    (torch.arange(12).view(3, 4), TypeError, "floating-point"),
])
def test_bad_input_errors(bad, err, match):
    with pytest.raises(err, match=match):
        la_silu(bad)


def test_bad_arguments():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="alpha"):
        la_silu(x, alpha=-1.0)
    with pytest.raises(ValueError, match="num_channels=3"):
        la_silu(x, weight=torch.ones(4), bias=torch.zeros(4))
    with pytest.raises(ValueError, match="start_dim"):
        la_silu(x, start_dim=0)
    with pytest.raises(ValueError, match="kind"):
        layer_act(x, "mish")
    with pytest.raises(ValueError, match="approximate='erf'.*'none' or 'tanh'"):
        la_gelu(x, approximate="erf")


def test_gelu_scales_are_the_normal_cdf_and_its_tanh_form():
    # the element activation is y * s(y): s(y) = GELU(y) / y, exactly as torch computes GELU
    from layeract_patch.functional import SCALES, scale_derivative

    y = torch.linspace(-9, 9, 1001, dtype=torch.float64)
    y = y[y != 0]
    for kind, approximate in (("gelu", "none"), ("gelu_tanh", "tanh")):
        torch.testing.assert_close(SCALES[kind].value(y) * y, torch.nn.functional.gelu(y, approximate=approximate))
        z = y.clone().requires_grad_()
        (slope,) = torch.autograd.grad(SCALES[kind].value(z).sum(), z)
        torch.testing.assert_close(scale_derivative(y, SCALES[kind].value(y), kind), slope)
    # float32 extremes (z^2 and z^3 overflow) give finite scales and slopes
    far = torch.tensor([-3e38, -1e20, -30.0, 30.0, 1e20, 3e38])
    for kind in ("gelu", "gelu_tanh"):
        s = SCALES[kind].value(far)
        assert s.isfinite().all() and scale_derivative(far, s, kind).isfinite().all()
    # Phi stays accurate in relative terms in the lower tail, where 1 + erf(.) would cancel to 0
    tail = torch.tensor([-8.0], dtype=torch.float64)
    torch.testing.assert_close(SCALES["gelu"].value(tail), torch.tensor([6.22096057427178e-16], dtype=torch.float64))


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh"])
def test_gelu_second_derivative_of_the_scale_is_exact(kind):
    # double backward differentiates ds/dz again: it must be Phi'' (-z phi(z)) for the erf form
    from layeract_patch.functional import SCALES, scale_derivative

    z = torch.linspace(-6, 6, 97, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: scale_derivative(t, SCALES[kind].value(t), kind), (z,))
    if kind == "gelu":
        (second,) = torch.autograd.grad(scale_derivative(z, SCALES[kind].value(z), kind).sum(), z)
        density = torch.exp(-z.detach() ** 2 / 2) / math.sqrt(2 * math.pi)
        torch.testing.assert_close(second, -z.detach() * density)


def test_hardsilu_scale_saturates():
    x = torch.tensor([[-1000.0, 0.0, 1000.0]])
    torch.testing.assert_close(la_hardsilu(x, alpha=1e-12), plain_formula(x, "hardsilu", 1e-12).float())


def test_forced_torch_backend_matches():
    x = torch.randn(4, 6, 5)
    set_backend("torch")
    try:
        out = la_silu(x)
    finally:
        set_backend("auto")
    torch.testing.assert_close(out.double(), plain_formula(x, "silu"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        set_backend("cuda-magic")


def test_a_new_variant_is_one_scale_entry_and_a_module_naming_it(monkeypatch):
    # A made-up LA-ArcTan: s(z) = 1/2 + atan(z)/pi. The fused kernels have no case for it: it runs on the eager ops.
    from layeract_patch import functional
    from layeract_patch.modules import LayerAct

    def value(z):
        return 0.5 + torch.atan(z) / math.pi

    def slope(z, s):
        return 1 / (math.pi * (1 + z * z))

    monkeypatch.setitem(functional.SCALES, "arctan", functional.Scale(value, slope))

    class LAArcTan(LayerAct):
        kind = "arctan"

    module = LAArcTan(affine=True, num_channels=4, dtype=torch.float64)
    with torch.no_grad():
        module.bias.normal_()
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 2).requires_grad_()
    n = (x - x.mean((1, 2), keepdim=True)) / torch.sqrt(x.var((1, 2), unbiased=False, keepdim=True) + 1e-5)
    expected = x * value(n * module.weight.view(-1, 1) + module.bias.view(-1, 1))
    torch.testing.assert_close(module(x), expected)
    assert torch.autograd.gradcheck(lambda t, w, b: layer_act(t, "arctan", 1e-5, w, b), (x, module.weight, module.bias))
    assert torch.autograd.gradgradcheck(lambda t: layer_act(t, "arctan"), (x,))
    x32 = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(layer_act(x32, "arctan"), la_reference(x32, "arctan"))
    assert "arctan" in functional.layer_act_kinds() and "relu" not in functional.layer_act_kinds()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [1e17, 1e20, 3e38])
def test_the_reference_is_finite_for_large_constant_samples(dtype, value):
    """A constant sample of huge values (a saturated map) gives a = 0 * ... = 0, not 0 * inf = NaN, in the plain
    formula too (which jit.trace, ONNX export, torch.func and create_graph backward run)."""
    if value > torch.finfo(dtype).max:
        pytest.skip("not representable")
    x = torch.full((2, 3, 4), value, dtype=dtype, requires_grad=True)
    out = la_reference(x, "silu")
    assert torch.isfinite(out).all()
    assert torch.equal(out, x.detach() / 2)  # n = 0 for a constant sample: a = y * s(0)
    if value < 1e30:  # near float32's limit the exact slope itself (y * rstd) overflows in the backward's products
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all()
