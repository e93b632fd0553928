import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from layeract_patch.modules import LAGELU, LAHardSiLU, LASiLU, LayerAct
from layeract_patch.monitor import ScaleMonitor, activation_scale, pearson_per_layer


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


class Branches(nn.Module):
    """Applies each activation to the same input, so every layer's sums are known from x alone."""

    def __init__(self, **acts):
        super().__init__()
        self.acts = nn.ModuleDict(acts)

    def forward(self, x):
        return [act(x) for act in self.acts.values()]


X = torch.tensor([[1.0, -1.0, 0.0, 2.0],
                  [-1.0, -1.0, -1.0, 3.0],
                  [-2.0, -2.0, 2.0, 2.0]])
R3 = math.sqrt(3.0)


def test_sums_of_a_hand_made_batch_are_exact():
    model = Branches(relu=nn.ReLU(), silu=nn.SiLU(), hardswish=nn.Hardswish(),
                     la_silu=LASiLU(alpha=1e-12), la_hardsilu=LAHardSiLU(alpha=1e-12),
                     la_hardsilu_affine=LAHardSiLU(alpha=1e-12, affine=True, num_channels=4))
    with torch.no_grad():
        model.acts["la_hardsilu_affine"].bias.copy_(torch.tensor([0.6, 0.6, 0.0, 0.0]))
    with ScaleMonitor(model) as monitor:
        model(X)
    expected = {
        "acts.relu": [3, 1, 2],
        "acts.silu": [1 + 0.5 + sigmoid(2), 3 * sigmoid(-1) + sigmoid(3), 2.0],
        "acts.hardswish": [2 / 3 + 1 / 3 + 1 / 2 + 5 / 6, 3 * (1 / 3) + 1, 2 * (1 / 6) + 2 * (5 / 6)],
        # row 1: mean 0.5, std sqrt(1.25); row 2: n = (-1/sqrt3 x3, sqrt3); row 3: n = +-1
        "acts.la_silu": [sum(sigmoid((v - 0.5) / math.sqrt(1.25)) for v in (1, -1, 0, 2)),
                         3 * sigmoid(-1 / R3) + sigmoid(R3), 2.0],
        # n sums to 0 per sample, so while every |n| <= 3 the hard scale sums to exactly H/2
        "acts.la_hardsilu": [2.0, 2.0, 2.0],
        # ... and a bias b adds sum(b)/6
        "acts.la_hardsilu_affine": [2.2, 2.2, 2.2],
    }
    assert list(monitor.sums) == list(expected)
    for layer, values in expected.items():
        torch.testing.assert_close(monitor.sums[layer], torch.tensor(values, dtype=torch.float64),
                                   rtol=0, atol=1e-6, msg=layer)


def test_hard_scale_clamps_an_outlier_beyond_three_sigma():
    # 15 zeros and a 16: mean 1, variance 15, n = -1/sqrt15 (x15) and sqrt15 > 3, whose scale clamps to 1.
    x = torch.zeros(1, 16)
    x[0, -1] = 16.0
    model = LAHardSiLU(alpha=1e-12)
    with ScaleMonitor(model) as monitor:
        model(x)
    assert list(monitor.sums) == ["LAHardSiLU"]
    assert monitor.sums["LAHardSiLU"].item() == pytest.approx(8.5 - math.sqrt(15) / 6, abs=1e-6)


def test_layer_act_is_normalized_over_its_own_start_dim():
    # Every token is a pair of distinct values, so per token n = +-1 and the sigmoid scale sums to 1.
    x = torch.tensor([[[-1.0, 1.0], [3.0, 5.0], [0.0, -4.0]],
                      [[2.0, 2.5], [-7.0, 1.0], [9.0, 8.0]]])
    per_token, per_sample = LASiLU(alpha=1e-12, start_dim=-1), LASiLU(alpha=1e-12)
    model = Branches(per_token=per_token, per_sample=per_sample)
    with ScaleMonitor(model) as monitor:
        model(x)
    torch.testing.assert_close(monitor.sums["acts.per_token"], torch.tensor([3.0, 3.0], dtype=torch.float64))
    assert not torch.allclose(monitor.sums["acts.per_sample"], torch.tensor([3.0, 3.0], dtype=torch.float64))


def _timm_acts():
    timm_acts = pytest.importorskip("timm.layers.activations")
    timm_me = pytest.importorskip("timm.layers.activations_me")
    return {"timm_swish": timm_acts.Swish(inplace=True), "timm_hardswish": timm_acts.HardSwish(),
            "timm_swish_me": timm_me.SwishMe(), "timm_hardswish_me": timm_me.HardSwishMe(),
            "timm_gelu": timm_acts.GELU(), "timm_gelu_tanh": timm_acts.GELUTanh()}


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 6, 6), (3, 8, 5)])
def test_scale_is_what_the_module_multiplies_its_input_by(shape):
    torch.manual_seed(0)
    c = shape[1]
    acts = {"relu_inplace": nn.ReLU(inplace=True), "silu": nn.SiLU(), "hardswish": nn.Hardswish(),
            "la_silu": LASiLU(), "la_hardsilu": LAHardSiLU(),
            "la_silu_affine": LASiLU(affine=True, num_channels=c),
            "la_hardsilu_affine": LAHardSiLU(affine=True, num_channels=c),
            "la_silu_last_dim": LASiLU(start_dim=-1), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"),
            "la_gelu": LAGELU(), "la_gelu_tanh_affine": LAGELU(affine=True, num_channels=c, approximate="tanh"),
            **_timm_acts()}
    for act in acts.values():
        if isinstance(act, LayerAct) and act.affine:
            with torch.no_grad():
                act.weight.uniform_(0.5, 2.0)
                act.bias.uniform_(-1.0, 1.0)
    x = 3 * torch.randn(shape) + 0.5
    for name, act in acts.items():
        with ScaleMonitor(act) as monitor:
            out = act(x.clone())  # the clone: in-place activations overwrite their input
        direct = activation_scale(act, x)
        torch.testing.assert_close(direct * x, out, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(monitor.sums[type(act).__name__], direct.flatten(1).double().sum(1), msg=name)


def test_a_module_called_several_times_is_one_layer_per_call_and_batches_accumulate():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.fc(self.relu(self.fc(self.relu(x)))))

    model = Reuse()
    with ScaleMonitor(model) as monitor:
        model(X)
        model(X[:2])
    assert list(monitor.sums) == ["relu", "relu#2", "relu#3"]
    assert all(v.shape == (5,) for v in monitor.sums.values())
    torch.testing.assert_close(monitor.sums["relu"], torch.tensor([3, 1, 2, 3, 1], dtype=torch.float64))
    monitor.reset()
    assert monitor.sums == {}


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_detach_leaves_no_hooks_even_after_an_error_and_records_nothing_afterwards():
    model = nn.Sequential(nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 4), LASiLU())
    with pytest.raises(RuntimeError, match="boom"):
        with ScaleMonitor(model) as monitor:
            assert _hook_count(model) == 3  # the forward-start hook on the root + one per activation
            model(X)
            raise RuntimeError("boom")
    assert _hook_count(model) == 0 and not monitor.attached
    before = {k: v.clone() for k, v in monitor.sums.items()}
    model(X)
    assert {k: v.shape for k, v in monitor.sums.items()} == {k: v.shape for k, v in before.items()}
    monitor.attach()
    with pytest.raises(RuntimeError, match="already attached"):
        monitor.attach()
    monitor.detach()
    assert _hook_count(model) == 0


def _swap_to_layer_act(model: nn.Module) -> int:
    """What a conversion does: every ReLU / Hardswish module replaced by a LayerAct module."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (nn.ReLU, nn.Hardswish)):
                setattr(parent, name, LAHardSiLU() if isinstance(child, nn.Hardswish) else LASiLU())
                swapped += 1
    return swapped


def test_on_a_converted_torchvision_resnet_with_shared_relus():
    model = torchvision.models.resnet18(num_classes=10).eval()
    assert _swap_to_layer_act(model) == 9  # the stem's ReLU and one per BasicBlock, each block calling it twice
    x = torch.randn(3, 3, 32, 32)
    with ScaleMonitor(model) as monitor, torch.no_grad():
        losses = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]), reduction="none")
    layers = list(monitor.sums)
    assert len(layers) == 17 and layers[:3] == ["relu", "layer1.0.relu", "layer1.0.relu#2"]
    assert all(v.shape == (3,) for v in monitor.sums.values())
    assert set(pearson_per_layer(losses, monitor.sums)) == set(layers)
    assert _hook_count(model) == 0


def test_on_a_resnet_converted_with_affine_call_sites():
    convert = pytest.importorskip("layeract_patch.convert")
    x = torch.randn(2, 3, 32, 32)
    model = convert.convert_activations(torchvision.models.resnet18(num_classes=10).eval(), to="la_silu",
                                        affine=True, example_input=x)
    hooks_before = _hook_count(model)  # the conversion's own call-site hooks stay
    with ScaleMonitor(model) as monitor, torch.no_grad():
        model(x)
    layers = list(monitor.sums)
    assert len(layers) == 17 and layers[1:3] == ["layer1.0.relu.sites.0", "layer1.0.relu.sites.1"]
    assert _hook_count(model) == hooks_before


def test_on_a_timm_model_gates_are_left_out():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", num_classes=4).eval()
    monitor = ScaleMonitor(model)
    kinds = {type(m).__name__ for m in monitor.watched.values()}
    assert kinds <= {"ReLU", "Hardswish"} and "Hardswish" in kinds
    _swap_to_layer_act(model)
    monitor = ScaleMonitor(model)
    assert {type(m).__name__ for m in monitor.watched.values()} == {"LASiLU", "LAHardSiLU"}
    with monitor, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(monitor.sums) == len(monitor.watched) and _hook_count(model) == 0
    assert all(v > 0 for v in monitor.spread().values())


def test_spread_is_the_std_of_the_sums_across_samples():
    model = nn.ReLU()
    with ScaleMonitor(model) as monitor:
        model(X)
    counts = torch.tensor([3.0, 1.0, 2.0])
    assert monitor.spread() == {"ReLU": pytest.approx(counts.std().item())}
    assert monitor.spread(relative=True) == {"ReLU": pytest.approx(counts.std().item() / 2.0)}


def test_pearson_per_layer_on_known_cases():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    r = pearson_per_layer(losses, {"up": torch.tensor([2.0, 4.0, 6.0, 8.0]), "down": torch.tensor([4.0, 3, 2, 1]),
                                   "none": torch.tensor([1.0, 0, 0, 1]), "const": torch.full((4,), 2.0),
                                   "rounding": torch.tensor([50.0, 50 + 1e-9, 50, 50 - 1e-9])})
    assert r["up"] == pytest.approx(1.0) and r["down"] == pytest.approx(-1.0) and r["none"] == pytest.approx(0.0)
    assert math.isnan(r["const"]) and math.isnan(r["rounding"])
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    b = a + b
    assert pearson_per_layer(a, {"l": b})["l"] == pytest.approx(np.corrcoef(a.numpy(), b.numpy())[0, 1], abs=1e-6)


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="3 scale sums but there are 4 losses"):
        pearson_per_layer(torch.ones(4), {"l": torch.ones(3)})
    with pytest.raises(ValueError, match="at least 2 samples"):
        pearson_per_layer(torch.ones(1), {"l": torch.ones(1)})
    with pytest.raises(ValueError, match="no activation the monitor can read"):
        ScaleMonitor(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid()))
    with pytest.raises(ValueError, match="filter_fn"):
        ScaleMonitor(nn.ReLU(), filter_fn=lambda module, name: False)
    with pytest.raises(TypeError, match="nn.Module"):
        ScaleMonitor(lambda x: x)
    with pytest.raises(TypeError, match="no activation scale is defined for ELU"):
        activation_scale(nn.ELU(), X)
