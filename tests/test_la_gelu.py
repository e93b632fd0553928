"""LA-GELU (issue 25): the module and its two forms, the op under compile and torch.func, conversion of GELU
models (torch, timm, both forms; QuickGELU refused), "the layer" of transformer tensors, and a few real models."""
import math
import warnings

import pytest
import timm
import timm.layers.activations as timm_acts
import torch
import torchvision
from torch import nn
from torch.func import functional_call, grad, vmap

from layeract_patch import (LAGELU, LASiLU, catalogue, convert_activations, create_act_layer, get_act_layer,
                            la_gelu, la_reference)
from layeract_patch.convert import default_activation_types, gate_types
from layeract_patch.modules import LayerAct


@pytest.fixture(autouse=True)
def quiet_backend_fallback():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backend is unavailable.*")
        yield


def phi(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def tanh_phi(z):
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


# ---------------------------------------------------------------- the module

def test_module_forms_repr_and_errors():
    plain, tanh = LAGELU(), LAGELU(approximate="tanh", inplace=True, start_dim=-1)
    assert (plain.kind, plain.approximate, tanh.kind, tanh.approximate) == ("gelu", "none", "gelu_tanh", "tanh")
    assert "approximate" not in repr(plain) and "approximate='tanh'" in repr(tanh) and "start_dim=-1" in repr(tanh)
    affine = LAGELU(affine=True, num_channels=6, alpha=1e-3)
    assert affine.weight.shape == affine.bias.shape == (6,) and list(affine.state_dict()) == ["weight", "bias"]
    with pytest.raises(ValueError, match=r"approximate='erf'.*'none', 'tanh'"):
        LAGELU(approximate="erf")
    with pytest.raises(TypeError, match=r"first argument is alpha.*LAGELU\(approximate='tanh'\)"):
        LAGELU("tanh")
    with pytest.raises(ValueError, match="num_channels"):
        LAGELU(affine=True)


@pytest.mark.parametrize("approximate,scale", [("none", phi), ("tanh", tanh_phi)])
def test_module_is_x_times_the_gelu_scale_of_the_normalized_input(approximate, scale):
    # written out independently in float64: n over all non-batch dims, the affine along dim 1
    m = LAGELU(affine=True, num_channels=4, approximate=approximate, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
        m.bias.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 3 + 1
    var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, unbiased=False)
    n = (x - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(m(x), x * scale(n * m.weight.view(4, 1, 1) + m.bias.view(4, 1, 1)))
    x32 = x.float()
    torch.testing.assert_close(m.float()(x32), x32 * scale(n.float() * m.weight.view(4, 1, 1) + m.bias.view(4, 1, 1)),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(la_gelu(x32, approximate=approximate), x32 * scale(n.float()), atol=1e-5, rtol=1e-5)


def test_names_build_each_form():
    assert get_act_layer("la_gelu") is LAGELU and get_act_layer("LA-GELU") is LAGELU
    for name, approximate, affine in [("la_gelu_tanh", "tanh", False), ("la_gelu_affine", "none", True),
                                      ("la_gelu_tanh_affine", "tanh", True)]:
        act = create_act_layer(name, num_channels=5, inplace=True)
        assert isinstance(act, LAGELU) and act.approximate == approximate and act.affine == affine
    # the element GELUs by name: nn.GELU takes no inplace, and gets none
    assert create_act_layer("gelu", inplace=True).approximate == "none"
    assert create_act_layer("gelu_tanh").approximate == "tanh"


# ---------------------------------------------------------------- the op: double backward, torch.func, compile

@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gradcheck_and_gradgradcheck_of_the_module_in_float64(approximate):
    m = LAGELU(affine=True, num_channels=3, approximate=approximate, dtype=torch.float64)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    x = (torch.randn(2, 3, 4, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    params = (m.weight, m.bias)
    assert torch.autograd.gradcheck(lambda t, w, b: functional_call(m, {"weight": w, "bias": b}, (t,)), (x, *params))
    assert torch.autograd.gradgradcheck(lambda t, w, b: functional_call(m, {"weight": w, "bias": b}, (t,)),
                                        (x, *params))


def mlp_net(approximate="none", start_dim=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), LAGELU(approximate=approximate, start_dim=start_dim), nn.Linear(16, 6),
                         LAGELU(affine=True, num_channels=6 if start_dim == -1 else 5, approximate=approximate,
                                start_dim=start_dim),
                         nn.Linear(6, 2))


def reference(net, x):
    for layer in net:
        x = la_reference(x, layer.kind, layer.alpha, layer.weight, layer.bias, layer.start_dim) \
            if isinstance(layer, LayerAct) else layer(x)
    return x


@pytest.mark.parametrize("start_dim", [1, -1])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gradient_penalty_and_per_sample_gradients_match_the_formula(approximate, start_dim):
    net = mlp_net(approximate, start_dim)
    with torch.no_grad():
        net[3].bias.normal_()
    x = torch.randn(3, 5, 6, requires_grad=True)  # (N, L, D) tokens

    def penalty(forward):
        (g,) = torch.autograd.grad(forward(x).sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), (net[0].weight, net[3].weight))

    for got, want in zip(penalty(net), penalty(lambda t: reference(net, t))):
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)

    params = {k: v.detach() for k, v in net.named_parameters()}
    loss = lambda p, t: functional_call(net, p, (t.unsqueeze(0),)).pow(2).sum()  # noqa: E731
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x.detach())
    for i in range(3):
        net.zero_grad()
        reference(net, x.detach()[i:i + 1]).pow(2).sum().backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_compile_keeps_one_fused_node_per_activation(approximate):
    torch._dynamo.reset()
    net = mlp_net(approximate, start_dim=-1)
    x = torch.randn(4, 5, 6)
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    nodes = [str(n.target) for n in explained.graphs[0].graph.nodes if "layeract" in str(n.target)]
    assert nodes == ["layeract.layer_act.default"] * 2
    out = torch.compile(net)(x)
    torch.testing.assert_close(out, reference(net, x), atol=1e-5, rtol=1e-4)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    reference(net, x).square().sum().backward()
    for got, p in zip(grads, net.parameters()):
        torch.testing.assert_close(got, p.grad, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- "the layer" of a transformer's (N, L, D) tensor

def test_the_layer_of_a_token_tensor_is_all_tokens_by_default_and_one_token_with_start_dim_minus_one():
    x = torch.randn(2, 7, 16) * 2 + 1
    # default: each sample's L x D values form one layer, as its flattened (N, L * D) view
    torch.testing.assert_close(LAGELU()(x), LAGELU()(x.reshape(2, 7 * 16)).view(2, 7, 16))
    # start_dim=-1: every token is its own layer, as the (N * L, D) rows
    torch.testing.assert_close(LAGELU(start_dim=-1)(x), LAGELU()(x.reshape(14, 16)).view(2, 7, 16))
    # and the two differ: a token's scale depends on the other tokens only by default
    other = x.clone()
    other[:, 1:] *= 5
    assert not torch.allclose(LAGELU()(other)[:, 0], LAGELU()(x)[:, 0])
    torch.testing.assert_close(LAGELU(start_dim=-1)(other)[:, 0], LAGELU(start_dim=-1)(x)[:, 0])


def test_convert_takes_start_dim_for_the_whole_model_and_sizes_affine_along_it():
    vit = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,  # noqa: E731
                                    num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    tokens = vit().patch_embed.num_patches + 1  # L = 4 patches + the class token
    per_token = convert_activations(vit(), to="la_gelu", start_dim=-1)
    acts = [m for m in per_token.modules() if isinstance(m, LAGELU)]
    assert len(acts) == 2 and all(a.start_dim == -1 for a in acts)
    # the affine acts per feature (D = 768 hidden units): along start_dim -1, and along the last dim by default,
    # since the MLP's input comes from a Linear (features last); per token (L) only when asked for
    features = convert_activations(vit(), to="la_gelu_affine", start_dim=-1, example_input=images)
    assert features.blocks[0].mlp.act.num_channels == 768 and features.blocks[0].mlp.act.affine_dim is None
    default = convert_activations(vit(), to="la_gelu_affine", example_input=images)
    act = default.blocks[0].mlp.act
    assert (act.num_channels, act.start_dim, act.affine_dim) == (768, 1, -1)
    token_wise = convert_activations(vit(), to="la_gelu_affine", affine_dim=1, example_input=images)
    assert token_wise.blocks[0].mlp.act.num_channels == tokens
    for model in (per_token, features, default, token_wise):
        out = model(images)
        out.sum().backward()
        assert out.isfinite().all()


# ---------------------------------------------------------------- conversion

class Mixed(nn.Module):
    """Every GELU there is, one QuickGELU, a ReLU, and a gate."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.acts = nn.ModuleList([nn.GELU(), nn.GELU(approximate="tanh"), timm_acts.GELU(), timm_acts.GELUTanh()])
        self.quick, self.relu, self.gate = timm_acts.QuickGELU(), nn.ReLU(), nn.Sigmoid()

    def forward(self, x):
        x = self.fc(x)
        for act in self.acts:
            x = act(x)
        return self.gate(self.relu(self.quick(x)))


def test_la_gelu_converts_every_gelu_to_its_own_form_and_nothing_else():
    model, report = convert_activations(Mixed(), to="la_gelu", return_report=True)
    assert [(type(m), m.approximate) for m in model.acts] == [(LAGELU, "none"), (LAGELU, "tanh"),
                                                              (LAGELU, "none"), (LAGELU, "tanh")]
    assert type(model.quick) is timm_acts.QuickGELU and type(model.relu) is nn.ReLU and type(model.gate) is nn.Sigmoid
    reasons = {s.fqn: s.reason for s in report.skipped}
    assert "to='la_silu' converts it" in reasons["relu"] and reasons["gate"] == "gate, never converted"
    assert "neither LA-GELU form" in reasons["quick"]
    x = torch.randn(3, 8)
    out = model(x)
    expected = model.fc(x)
    for approximate in ("none", "tanh", "none", "tanh"):
        expected = la_gelu(expected, approximate=approximate)
    torch.testing.assert_close(out, torch.sigmoid(torch.relu(model.quick(expected))))
    again, report = convert_activations(model, to="la_gelu", return_report=True)  # idempotent
    assert again is model and not report.swapped


def test_a_given_form_is_applied_to_every_gelu():
    forced = convert_activations(Mixed(), to="la_gelu_tanh")
    assert all(m.approximate == "tanh" for m in forced.acts)
    forced = convert_activations(Mixed(), to="la_gelu", approximate="none")
    assert all(m.approximate == "none" for m in forced.acts)
    mapped = convert_activations(Mixed(), to={nn.GELU: "la_gelu", timm_acts.GELUTanh: "la_gelu_affine"},
                                 example_input=torch.randn(2, 8))
    assert [m.approximate for m in mapped.acts[:2]] == ["none", "tanh"] and type(mapped.acts[2]) is timm_acts.GELU
    assert mapped.acts[3].affine and mapped.acts[3].approximate == "tanh"


def test_default_types_of_each_target_come_from_its_family():
    gelu_types = set(default_activation_types("la_gelu"))
    assert gelu_types == {nn.GELU, timm_acts.GELU, timm_acts.GELUTanh} == set(default_activation_types(LAGELU))
    assert nn.GELU not in default_activation_types() and nn.ReLU in default_activation_types("la_hardsilu")
    # the catalogue says which source classes LA-GELU replaces (what calibration and fine-tuning's auto read)
    assert catalogue.converted_families(LAGELU) == ("gelu",)
    assert {catalogue.layer_act_for(catalogue.element_of(m)).name for m in Mixed().acts} == {"la_gelu", "la_gelu_tanh"}
    assert catalogue.element_of(nn.GELU(approximate="tanh")).name == "gelu_tanh"


def test_quick_gelu_is_refused_with_the_mappings_that_fit():
    quick = nn.Sequential(nn.Linear(4, 4), timm_acts.QuickGELU())
    with pytest.raises(ValueError, match=r"Sequential; it has QuickGELU x1 \(y \* sigmoid\(1.702 y\) is neither "
                                         r"LA-GELU form.*timm\.layers\.activations\.QuickGELU: 'la_silu_affine'"):
        convert_activations(quick, to="la_gelu")
    mapped = convert_activations(quick, to={timm_acts.QuickGELU: "la_gelu"})
    assert type(mapped[1]) is LAGELU and mapped[1].approximate == "none"


def test_other_families_point_to_their_own_layer_act():
    relu_net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match=r"ReLU x1 \(to='la_silu' converts it\)"):
        convert_activations(relu_net, to="la_gelu")
    with pytest.raises(ValueError, match=r"has GELU x1 \(to='la_gelu' converts it\)"):
        convert_activations(nn.Sequential(nn.Linear(4, 4), nn.GELU()), to="la_silu")
    with pytest.raises(ValueError, match=r"GELUTanh x1 \(to='la_gelu_tanh' converts it\)"):
        convert_activations(nn.Sequential(nn.Linear(4, 4), timm_acts.GELUTanh()), to="la_hardsilu")
    assert type(convert_activations(relu_net, to={nn.ReLU: "la_gelu"})[1]) is LAGELU  # a mapping may cross families


class FunctionalGELU(nn.Module):
    """GELU as function calls, both forms, as some hand-written blocks and older transformer code do."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.nn.functional.gelu(self.fc1(x))
        x = torch.nn.functional.gelu(self.fc2(x), approximate="tanh")
        return self.fc3(x)


def test_functional_gelu_calls_are_found_and_converted_each_to_its_own_form():
    torch.manual_seed(0)
    model, x = FunctionalGELU(), torch.randn(4, 6)
    with pytest.raises(ValueError, match="FunctionalGELU.*functional='convert'"):
        convert_activations(FunctionalGELU(), to="la_gelu")
    # found in the forward's code (each call), or by the example forward (one line, with its count)
    for example, found in ((None, ["found in its forward's code, not converted"] * 2),
                           (torch.randn(4, 6), ["found, not converted (2 calls per forward)"])):
        with pytest.warns(UserWarning, match=r"functional activation call.*F\.gelu"):
            _, report = convert_activations(nn.Sequential(FunctionalGELU(), nn.GELU()), to="la_gelu",
                                            example_input=example, return_report=True)
        assert [(c.fqn, c.function, c.status) for c in report.functional] == [("0", "F.gelu", f) for f in found]
    converted, report = convert_activations(model, to="la_gelu", functional="convert", return_report=True)
    acts = [m for m in converted.modules() if isinstance(m, LAGELU)]
    assert [a.approximate for a in acts] == ["none", "tanh"]
    assert [c.status for c in report.functional] == ["now module gelu", "now module gelu_1"]
    want = model.fc3(la_gelu(model.fc2(la_gelu(model.fc1(x), start_dim=1)), approximate="tanh", start_dim=1))
    torch.testing.assert_close(converted(x), want)


# ---------------------------------------------------------------- real GELU models

def _family_mapping():
    """Each element activation to its family's LayerAct (GELU -> LA-GELU, SiLU/ReLU -> LA-SiLU, ...)."""
    return {t: catalogue.layer_act_for(catalogue.element_of(t)).name for t in catalogue.replaced_types()}


ZOO = {  # small ones at small sizes; the whole list at full size: benchmarks/convert_zoo.py
    "timm convnext_atto": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=5), 64),
    "torchvision convnext_tiny": (lambda: torchvision.models.convnext_tiny(weights=None, num_classes=5), 32),
    "timm vit_tiny_patch16_224": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                                            num_classes=5), 32),
    "timm maxvit_tiny_tf_224": (lambda: timm.create_model("maxvit_tiny_tf_224", pretrained=False, img_size=64,
                                                          num_classes=5), 64),
}


@pytest.mark.parametrize("name", ZOO)
def test_real_gelu_models_convert_keep_their_gates_and_train(name):
    build, size = ZOO[name]
    original = build()
    gelus = [(n, catalogue.element_of(m).scale) for n, m in original.named_modules()
             if catalogue.element_of(m) is not None and catalogue.element_of(m).family == "gelu"]
    gates = [n for n, m in original.named_modules() if isinstance(m, gate_types())]
    model = build()
    model.load_state_dict(original.state_dict())
    model, report = convert_activations(model, to=_family_mapping(), return_report=True)
    modules = dict(model.named_modules())
    assert gelus and all(type(modules[n]) is LAGELU and modules[n].kind == scale for n, scale in gelus)
    assert all(type(modules[n]) is type(dict(original.named_modules())[n]) for n in gates)  # gates untouched
    assert not any(catalogue.element_of(m) is not None for m in model.modules())  # nothing left behind
    assert set(model.state_dict()) == set(original.state_dict())
    x = torch.randn(2, 3, size, size)
    out = model(x)
    out.logsumexp(1).sum().backward()
    assert out.isfinite().all() and all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    if name.startswith("timm maxvit"):
        assert gates and any(isinstance(m, LASiLU) for m in model.modules())  # its SE's SiLU -> LA-SiLU


def test_the_zoo_script_prints_a_row_per_model_and_fails_on_any_failure(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "convert_zoo.py"
    spec = importlib.util.spec_from_file_location("convert_zoo", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--models", "vit_tiny_patch16_224", "no_such_model", "--batch", "1"]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0].startswith("| vit_tiny_patch16_224 | 224 | GELU 12 | LAGELU 12 | 12 | - | 0 kept | yes | yes |")
    assert rows[1].startswith("| no_such_model | | FAILED: RuntimeError: Unknown model")
    assert "1 of 2 models converted" in out and "failed: no_such_model" in out


def test_the_activation_benchmark_times_la_gelu_beside_nn_gelu(capsys, monkeypatch):
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # the script imports its sibling timing.py
    import bench_activation

    assert bench_activation.main(["--shapes", "2x4x6x6", "--budget", "0.02", "--threads", "1", "--repeats", "1",
                                  "--dtypes", "fp32,bf16", "--kinds", "gelu,gelu_tanh", "--kernels-alone",
                                  "--default-heap"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("LA-GELU 2x4x6x6: " in line and "x nn.GELU (range " in line for line in lines) == 2
    assert sum("LA-GELU(tanh) 2x4x6x6: " in line and "x nn.GELU(tanh) (range " in line for line in lines) == 2
    assert sum("x aten gelu(approximate='tanh')+gelu_backward(approximate='tanh') (range " in line
               for line in lines) == 2
    assert sum("saved for backward" in line for line in lines) == 4
    # the erf form is also set against aten's own erf GELU (oneDNN off), and the switch is put back afterwards
    own = [line for line in lines if "aten with oneDNN off: " in line]
    assert len(own) == 2 and all("LA-GELU 2x4x6x6, kernels alone" in line for line in own)
    assert all("x aten's own erf GELU pair" in line for line in own) and torch.backends.mkldnn.enabled
