"""Inputs that used to give a wrong result without a word: each now gives the right result or one clear error."""
import pytest
import torch

from layeract_patch import LAHardSiLU, LASiLU, set_backend
from layeract_patch.functional import la_hardsilu, la_silu


# ---- affine parameters on another device than the input ----

def test_affine_parameters_on_the_meta_device_are_refused_as_torch_refuses():
    x = torch.randn(2, 3, 4)
    weight, bias = torch.ones(3, device="meta"), torch.zeros(3, device="meta")
    with pytest.raises(RuntimeError, match="same device.*cpu.*meta.*affine weight"):
        la_silu(x, weight=weight, bias=bias)
    with pytest.raises(RuntimeError, match=r"same device.*\.to\('cpu'\)"):
        LAHardSiLU(affine=True, num_channels=3, device="meta")(x)
    module = LASiLU(affine=True, num_channels=3, device="meta").to_empty(device="cpu")
    module.reset_parameters()
    torch.testing.assert_close(module(x), la_silu(x))  # moved to the input's device, it runs: weight 1, bias 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_affine_parameters_on_cuda_with_a_cpu_input_are_refused():
    with pytest.raises(RuntimeError, match="same device"):
        LASiLU(affine=True, num_channels=3).cuda()(torch.randn(2, 3, 4))


# ---- alpha that is 0 in float32: NaN for a sample whose values are all equal ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0, 0.0, 1e-50, 2.0 ** -150])
def test_an_alpha_that_is_zero_in_float32_is_refused(dtype, alpha):
    x = torch.zeros(2, 3, 4, dtype=dtype)  # a dead (all-zero) map
    with pytest.raises(ValueError, match="alpha must be a finite number > 0, also in float32"):
        la_silu(x, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        LAHardSiLU(alpha=alpha)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_smallest_alpha_accepted_gives_finite_results_for_constant_samples(backend, dtype):
    set_backend(backend)
    try:
        x = torch.stack([torch.zeros(3, 4), torch.full((3, 4), 0.5)]).to(dtype).requires_grad_()
        for act in (la_silu, la_hardsilu):
            out = act(x, alpha=2.0 ** -149)  # the smallest float32 above 0
            (grad,) = torch.autograd.grad(out.sum(), x)
            assert out.isfinite().all() and grad.isfinite().all()
            torch.testing.assert_close(out, x.detach() * 0.5)  # n = 0 for a constant sample: scale 1/2
    finally:
        set_backend("auto")
