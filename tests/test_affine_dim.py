"""affine_dim=-1: the affine LayerAct acts along the last dim (the features of (N, L, D) tokens or an (N, H, W, C)
map) while the layer stays start_dim's; the converter picks it for activations fed by a Linear."""
import pytest
import torch
from torch import nn

from layeract_patch import LAGELU, LASiLU, convert_activations
from layeract_patch.functional import la_reference, layer_act

KINDS = ["silu", "hardsilu", "gelu", "gelu_tanh"]
# (shape, start_dim): tokens, a channels-last map, a layer that starts later, one token, one feature
CASES = [((3, 7, 5), 1), ((2, 4, 3, 6), 1), ((2, 3, 4, 6), 2), ((3, 1, 5), 1), ((3, 7, 1), 1)]


def reference_by_hand(x, kind, weight, bias, start_dim):
    """The formula written out: the layer's statistics, then the affine broadcast along the last dim."""
    dims = tuple(range(start_dim, x.dim()))
    mean = x.mean(dims, keepdim=True)
    n = (x - mean) / (x.var(dims, unbiased=False, keepdim=True) + 1e-5).sqrt()
    z = n * weight + bias
    scale = {"silu": torch.sigmoid(z), "hardsilu": (z / 6 + 0.5).clamp(0, 1),
             "gelu": 0.5 * (1 + torch.erf(z / 2 ** 0.5)),
             "gelu_tanh": 0.5 * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z ** 3)))}[kind]
    return x * scale


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,start_dim", CASES)
def test_matches_the_formula_and_the_reference_in_every_dtype(kind, shape, start_dim):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.3
    weight, bias = torch.randn(shape[-1], generator=gen, dtype=torch.float64), torch.randn(shape[-1], generator=gen,
                                                                                           dtype=torch.float64)
    expected = reference_by_hand(x, kind, weight, bias, start_dim)
    torch.testing.assert_close(la_reference(x, kind, 1e-5, weight, bias, start_dim, affine_dim=-1), expected)
    for dtype, tol in ((torch.float64, {}), (torch.float32, dict(rtol=1e-5, atol=1e-5)),
                       (torch.bfloat16, dict(rtol=2e-2, atol=2e-2))):
        out = layer_act(x.to(dtype), kind, 1e-5, weight.float(), bias.float(), start_dim, affine_dim=-1)
        assert out.dtype == dtype and out.shape == x.shape
        torch.testing.assert_close(out.double(), expected, **tol)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_and_gradgradcheck_in_float64(kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b: layer_act(x, kind, 1e-5, w, b, 1, affine_dim=-1)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_a_module_serves_any_sequence_length_and_says_so():
    act = LAGELU(affine=True, num_channels=16, affine_dim=-1)
    assert "affine_dim=-1" in repr(act)
    for tokens in (5, 9):
        x = torch.randn(2, tokens, 16, requires_grad=True)
        act(x).sum().backward()
        assert x.grad.isfinite().all()
    assert act.weight.grad.shape == (16,)
    with pytest.raises(ValueError, match="has 8 on dim -1; build it with num_channels=8"):
        act(torch.randn(2, 5, 8))


def test_bad_affine_dim_is_one_clear_error():
    with pytest.raises(ValueError, match=r"affine_dim=2.*start_dim \(affine_dim=None, the default\) or the last dim"):
        LASiLU(affine=True, num_channels=4, affine_dim=2)
    with pytest.raises(ValueError, match=r"affine_dim=2 for a 4-D input with start_dim=1"):
        layer_act(torch.randn(2, 3, 4, 5), "silu", 1e-5, torch.ones(4), torch.zeros(4), 1, affine_dim=2)
    with pytest.raises(ValueError, match="5 channels on dim 3: build the module with num_channels=5"):
        layer_act(torch.randn(2, 3, 4, 5), "silu", 1e-5, torch.ones(4), torch.zeros(4), 1, affine_dim=-1)


class ChannelsLastBlock(nn.Module):
    """torchvision's ConvNeXt block shape: depthwise conv, to (N, H, W, C), LayerNorm, Linear, GELU, Linear, back."""

    def __init__(self, dim=8):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), ChannelsLastBlock(),
                         ChannelsLastBlock()).eval()


def test_convert_puts_the_affine_of_a_linear_fed_activation_on_its_features():
    images = torch.randn(4, 3, 6, 6)
    both = {nn.ReLU: "la_silu_affine", nn.GELU: "la_gelu_affine"}
    converted, report = convert_activations(model(), to=both, example_input=images, return_report=True)
    act = converted[3].act
    assert (act.num_channels, act.start_dim, act.affine_dim) == (32, 1, -1)
    assert "LAGELU(32, features last)" in str(report)
    assert converted[2].affine_dim is None and converted[2].num_channels == 8  # after a BatchNorm: dim 1, as before
    # one module serves another image size, as a per-channel affine should
    converted(torch.randn(2, 3, 10, 10)).sum().backward()
    # asked for the layer's first dim, the affine is per row of the (N, H, W, C) map instead: sized by H
    rows = convert_activations(model(), to="la_gelu_affine", affine_dim=1, example_input=images)[3].act
    assert (rows.num_channels, rows.affine_dim) == (6, 1)


def test_calibration_fits_features_last_sites_and_changes_nothing_else():
    original = model()
    with torch.no_grad():
        original[3].fc1.bias.add_(0.5)  # a nonzero mean per feature, so the fit has something to find
    data = torch.randn(64, 3, 6, 6)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    converted, report = convert_activations(original, to="la_gelu_affine", calibrate=data, return_report=True)
    sites = {r.fqn: r for r in report.calibration}
    for name in ("3.act", "4.act"):
        assert sites[name].calibrated_error < 0.2 * sites[name].plain_error, sites[name]
    assert converted[3].act.affine_dim == -1
    after = converted.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(converted(data), model_like(before)(data), rtol=0.05, atol=0.05)


def model_like(state):
    m = model()
    m.load_state_dict(state)
    return m
