"""convert_activations on real torchvision/timm models and on small models built to corner it."""
import copy
import io
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import BatchNormAct2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from layeract_patch.convert import (CallSiteActs, ConversionReport, convert_activations, default_activation_types,
                                    gate_types)
from layeract_patch.functional import la_reference
from layeract_patch.modules import LAHardSiLU, LASiLU, LayerAct

TV = torchvision.models
MODELS = {
    "tv_resnet18": lambda: TV.resnet18(weights=None),
    "tv_resnet50": lambda: TV.resnet50(weights=None),
    "tv_mobilenet_v3_small": lambda: TV.mobilenet_v3_small(weights=None),
    "tv_efficientnet_b0": lambda: TV.efficientnet_b0(weights=None),
    "tv_regnet_y_400mf": lambda: TV.regnet_y_400mf(weights=None),
    "tv_googlenet": lambda: TV.googlenet(weights=None, aux_logits=False, init_weights=False),
    "tv_densenet121": lambda: TV.densenet121(weights=None),
    "timm_resnet18": lambda: timm.create_model("resnet18", pretrained=False),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "timm_mobilenetv3_small_100": lambda: timm.create_model("mobilenetv3_small_100", pretrained=False),
    "timm_ghostnet_100": lambda: timm.create_model("ghostnet_100", pretrained=False),
    "timm_regnety_002": lambda: timm.create_model("regnety_002", pretrained=False),
}
FUNCTIONAL_MODELS = ("tv_googlenet", "tv_densenet121")


@pytest.fixture(autouse=True)
def _quiet_backend_fallback():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backend is unavailable.*")
        yield


def _count(model, types):
    return sum(isinstance(m, types) for m in model.modules())


def _fx_relu_calls(model):
    """Independent count of functional ReLUs: a plain symbolic trace of an unconverted model."""
    graph = torch.fx.symbolic_trace(model).graph
    return sum(node.op == "call_function" and node.target in (F.relu, torch.relu) for node in graph.nodes)


def _gates(model):
    return [m for name, m in model.named_modules()
            if isinstance(m, gate_types()) or name.endswith(("scale_activation", ".gate"))]


@pytest.mark.parametrize("name", MODELS)
def test_real_model_converts_trains_and_loads_pretrained_weights(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    sources = {id(m) for m in model.modules() if isinstance(m, default_activation_types())}
    functional = _fx_relu_calls(model) if name in FUNCTIONAL_MODELS else 0
    gates = _gates(model)
    assert sources or functional

    converted, report = convert_activations(model, "la_silu", return_report=True,
                                            functional="convert" if functional else "report")

    assert _count(converted, default_activation_types()) == 0
    assert _count(converted, LASiLU) == len(sources) + functional
    assert len(report.swapped) >= len(sources) + functional
    after = list(converted.modules())
    assert all(any(g is m for m in after) for g in gates), "a gate was replaced"
    converted.load_state_dict(MODELS[name]().state_dict(), strict=True)  # an unconverted twin's weights

    out = converted(torch.randn(2, 3, 64, 64))
    out.float().logsumexp(1).mean().backward()
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in converted.parameters())


def test_affine_resnet50_gives_every_call_site_its_own_trained_parameters():
    torch.manual_seed(0)
    model = TV.resnet50(weights=None)
    blocks = [b for b in model.modules() if isinstance(b, TV.resnet.Bottleneck)]
    expected = [[b.conv1.out_channels, b.conv2.out_channels, b.conv3.out_channels] for b in blocks]
    model = convert_activations(model, affine=True, example_input=torch.randn(1, 3, 64, 64))

    assert [[s.num_channels for s in b.relu.sites] for b in blocks] == expected
    assert all(isinstance(b.relu, CallSiteActs) for b in blocks) and model.relu.num_channels == 64
    acts = [m for m in model.modules() if isinstance(m, LayerAct)]
    assert len(acts) == 1 + 3 * len(blocks)
    before = [a.weight.detach().clone() for a in acts]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in acts)
    assert all(a.bias.grad is not None and a.bias.grad.abs().sum() > 0 for a in acts)
    optimizer.step()
    assert all(not torch.equal(a.weight, w) for a, w in zip(acts, before))


class ThreeCalls(nn.Module):
    """Like torchvision's Bottleneck: one ReLU called three times, twice on the same channel count."""

    def __init__(self, c=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.conv3 = nn.Conv2d(c, c, 1), nn.Conv2d(c, 2 * c, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv3(self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))))))


def _expected_three_calls(model, x):
    sites = model.relu.sites
    act = [lambda y, s=s: la_reference(y, "silu", s.alpha, s.weight, s.bias) for s in sites]
    return act[2](model.conv3(act[1](model.conv2(act[0](model.bn1(model.conv1(x)))))))


def _distinct_site_parameters(model):
    with torch.no_grad():
        for i, site in enumerate(model.relu.sites):
            site.weight.copy_(torch.linspace(0.5, 2.0, site.num_channels) * (i + 1))
            site.bias.copy_(torch.linspace(-1.0, 1.0, site.num_channels) * (i - 1))


@pytest.mark.parametrize("mode", ["train", "eval", "no_grad"])
def test_each_call_site_always_uses_its_own_parameters(mode):
    torch.manual_seed(0)
    model = convert_activations(ThreeCalls(), affine=True, example_input=torch.randn(2, 3, 8, 8))
    assert [s.num_channels for s in model.relu.sites] == [4, 4, 8]
    _distinct_site_parameters(model)
    model.train(mode == "train")
    with torch.set_grad_enabled(mode != "no_grad"):
        for _ in range(3):
            x = torch.randn(2, 3, 8, 8)
            model.bn1.eval()  # same BatchNorm output for the model and the oracle
            torch.testing.assert_close(model(x), _expected_three_calls(model, x), atol=1e-5, rtol=1e-5)


def test_call_sites_survive_deepcopy_pickle_and_checkpointing():
    torch.manual_seed(0)
    model = convert_activations(ThreeCalls(), affine=True, example_input=torch.randn(2, 3, 8, 8)).eval()
    _distinct_site_parameters(model)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    expected = _expected_three_calls(model, x)
    clone = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (clone, loaded):
        torch.testing.assert_close(other(x), expected, atol=1e-5, rtol=1e-5)
        assert other.relu.sites[0].weight is not model.relu.sites[0].weight
    grad = torch.autograd.grad(model(x).sum(), x)[0]
    checkpointed = torch.autograd.grad(checkpoint(model, x, use_reentrant=False).sum(), x)[0]
    torch.testing.assert_close(checkpointed, grad)


def test_call_from_an_unrecorded_path_raises_instead_of_guessing():
    model = convert_activations(ThreeCalls(), affine=True, example_input=torch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError, match="example forward"):
        model.relu(torch.randn(2, 4, 8, 8))


class Stage(nn.Module):
    def __init__(self, cin, cout, act):
        super().__init__()
        self.conv, self.act = nn.Conv2d(cin, cout, 1), act

    def forward(self, x):
        return self.act(self.conv(x))


class TwoParents(nn.Module):
    """One activation instance under two parents, on different channel counts."""

    def __init__(self):
        super().__init__()
        shared = nn.SiLU()
        self.a, self.b = Stage(3, 4, shared), Stage(4, 6, shared)

    def forward(self, x):
        return self.b(self.a(x))


def test_instance_under_two_parents():
    plain = convert_activations(TwoParents())
    assert isinstance(plain.a.act, LASiLU) and plain.a.act is plain.b.act  # no parameters: sharing is harmless

    model = convert_activations(TwoParents(), affine=True, example_input=torch.randn(2, 3, 5, 5))
    assert model.a.act is model.b.act and [s.num_channels for s in model.a.act.sites] == [4, 6]
    assert model.b(torch.randn(2, 4, 5, 5)).shape == (2, 6, 5, 5)  # a caller on its own finds its site
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    assert all(s.weight.grad is not None for s in model.a.act.sites)
    assert sorted(k for k in model.state_dict() if ".act." in k) == sorted(
        f"{parent}.act.sites.{i}.{p}" for parent in "ab" for i in range(2) for p in ("weight", "bias"))

    with pytest.raises(ValueError, match=r"held in 2 places \(a\.act, b\.act\)"):
        convert_activations(TwoParents(), affine=True)


def test_affine_without_example_input_names_the_reused_modules_and_the_fix():
    model = TV.resnet18(weights=None)
    with pytest.raises(ValueError, match=r"(?s)layer1\.0\.relu.*called 2 times.*example_input="):
        convert_activations(model, affine=True)
    assert _count(model, LayerAct) == 0 and _count(model, nn.ReLU) == 9  # an error leaves the model as it was


def test_affine_without_example_input_where_the_structure_fixes_the_channels():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.SiLU())
    seq = convert_activations(seq, affine=True)
    assert (seq[2].num_channels, seq[4].num_channels) == (8, 5)
    norm_act = convert_activations(nn.Sequential(nn.Conv2d(3, 6, 1), BatchNormAct2d(6, act_layer=nn.SiLU)),
                                   affine=True)
    assert norm_act[1].act.num_channels == 6
    assert norm_act(torch.randn(2, 3, 4, 4)).shape == (2, 6, 4, 4)
    with pytest.raises(ValueError, match=r"(?s)a\.act.*held in 2 places"):
        convert_activations(TwoParents(), to="la_silu_affine")


@pytest.mark.parametrize("name", ["timm_resnet18", "timm_regnety_002", "tv_regnet_y_400mf"])
def test_affine_sizes_read_from_the_traced_graph_match_the_example_forward(name):
    """Without example_input, each site is sized from the module feeding it (through residual sums, pooling,
    timm's norm-act modules); the sizes must be the ones an example forward measures."""
    from_graph = convert_activations(MODELS[name](), affine=True)
    measured = convert_activations(MODELS[name](), affine=True, example_input=torch.randn(1, 3, 64, 64))
    sizes = [[m.num_channels for m in model.modules() if isinstance(m, LayerAct)] for model in (from_graph, measured)]
    assert sizes[0] == sizes[1] and len(sizes[0]) == _count(MODELS[name](), default_activation_types())


def test_filter_keeps_what_it_excludes_and_sees_unwrapped_names():
    model = TV.resnet18(weights=None)
    kept = [m for n, m in model.named_modules() if n.startswith("layer4") and isinstance(m, nn.ReLU)]
    seen = []

    def not_layer4(module, fqn):
        seen.append(fqn)
        return not fqn.startswith("layer4")

    wrapped = nn.DataParallel(model)
    result, report = convert_activations(wrapped, filter_fn=not_layer4, return_report=True)
    assert result is wrapped
    assert all(not n.startswith(("module.", "_orig_mod.")) for n in seen) and "layer1.0.relu" in seen
    assert all(model.get_submodule(n) is m for n, m in zip(["layer4.0.relu", "layer4.1.relu"], kept))
    assert _count(model, nn.ReLU) == 2 and _count(model, LASiLU) == 7
    assert {s.fqn for s in report.skipped if s.reason == "excluded by filter_fn"} == {"layer4.0.relu", "layer4.1.relu"}


def test_torch_compile_wrapper_names_are_unwrapped():
    model = ThreeCalls()
    compiled = torch.compile(model)
    seen = []
    result = convert_activations(compiled, filter_fn=lambda m, fqn: seen.append(fqn) or True)
    assert result is compiled and seen == ["relu"] and isinstance(model.relu, LASiLU)


def test_call_sites_under_torch_compile():
    torch.manual_seed(0)
    model = convert_activations(ThreeCalls(), affine=True, example_input=torch.randn(2, 3, 8, 8)).eval()
    _distinct_site_parameters(model)
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: no graph break at the dispatch
    for _ in range(2):
        torch.testing.assert_close(compiled(x), _expected_three_calls(model, x), atol=1e-5, rtol=1e-5)


def test_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(ThreeCalls())
        with pytest.raises(ValueError, match="convert model.module first"):
            convert_activations(ddp, affine=True, example_input=torch.randn(2, 3, 8, 8))
        _, report = convert_activations(ddp, return_report=True)
        assert [s.fqn for s in report.swapped] == ["relu"] and isinstance(ddp.module.relu, LASiLU)
    finally:
        dist.destroy_process_group()


def test_idempotent():
    model = convert_activations(TV.resnet18(weights=None))
    modules, state = list(model.modules()), model.state_dict()
    again, report = convert_activations(model, return_report=True)
    assert again is model and list(model.modules()) == modules and report.swapped == []
    assert model.state_dict().keys() == state.keys()
    assert {s.reason for s in report.skipped} == {"already LayerAct"}

    affine = convert_activations(ThreeCalls(), affine=True, example_input=torch.randn(2, 3, 8, 8))
    sites = list(affine.relu.sites)
    assert convert_activations(affine, affine=True, example_input=torch.randn(2, 3, 8, 8)) is affine
    assert list(affine.relu.sites) == sites
    affine(torch.randn(2, 3, 8, 8))


def test_keeps_hooks_mode_device_and_dtype():
    model = ThreeCalls().double().eval()
    calls = []
    handle = model.relu.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    pre = model.relu.register_forward_pre_hook(lambda m, i: calls.append("pre"))
    model = convert_activations(model, affine=True, example_input=torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert not model.relu.training and all(not s.training for s in model.relu.sites)
    assert all(s.weight.dtype == torch.float64 for s in model.relu.sites)
    calls.clear()
    model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert calls == ["pre", "CallSiteActs"] * 3
    handle.remove()
    pre.remove()
    calls.clear()
    model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert calls == []


def test_example_forward_leaves_batchnorm_statistics_alone():
    model = TV.resnet18(weights=None).train()
    state = copy.deepcopy(model.state_dict())
    convert_activations(model, example_input=torch.randn(2, 3, 64, 64))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_mapping_converts_exactly_its_types_and_never_gates():
    model = TV.mobilenet_v3_small(weights=None)
    hardswish, relu = _count(model, nn.Hardswish), _count(model, nn.ReLU)
    gates = [m for m in model.modules() if isinstance(m, nn.Hardsigmoid)]
    model, report = convert_activations(model, to={nn.Hardswish: "la_hardsilu", nn.ReLU: LASiLU}, return_report=True)
    assert (_count(model, LAHardSiLU), _count(model, LASiLU)) == (hardswish, relu)
    assert [m for m in model.modules() if isinstance(m, nn.Hardsigmoid)] == gates
    assert sum(s.reason == "gate, never converted" for s in report.skipped) == len(gates)

    only = convert_activations(TV.mobilenet_v3_small(weights=None), to={nn.Hardswish: "la_hardsilu"})
    assert _count(only, nn.ReLU) == relu and _count(only, LAHardSiLU) == hardswish


def test_root_activation_is_replaced_and_returned():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the root's own F.relu is not a functional call site
        assert isinstance(convert_activations(nn.ReLU()), LASiLU)
        assert isinstance(convert_activations(nn.Hardswish(), to="la_hardsilu"), LAHardSiLU)


def test_bad_arguments_fail_before_touching_the_model():
    model = ThreeCalls()
    for to, error, match in (("nope", ValueError, "la_silu, la_hardsilu"), ("relu", ValueError, "not one"),
                             (nn.GELU, ValueError, "not one"), ({nn.Sigmoid: "la_silu"}, ValueError, "gate"),
                             ({"relu": "la_silu"}, TypeError, "nn.Module classes"), ({}, ValueError, "nothing")):
        with pytest.raises(error, match=match):
            convert_activations(model, to=to)
    with pytest.raises(ValueError, match="alpha"):
        convert_activations(model, alpha=-1.0)
    with pytest.raises(ValueError, match="num_channels"):
        convert_activations(model, num_channels=4)
    with pytest.raises(ValueError, match="functional"):
        convert_activations(model, functional="bogus")
    with pytest.raises(TypeError, match="nn.Module"):
        convert_activations(lambda x: x)
    assert isinstance(model.relu, nn.ReLU)


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.gate = nn.Linear(4, 4), nn.GELU(), nn.Sigmoid()

    def forward(self, x):
        return self.gate(self.act(self.fc(x)))


def test_nothing_to_convert_is_loud_and_names_the_model():
    with pytest.raises(ValueError, match=r"GeluNet.*GELU x1 \(to='la_gelu' converts it\)"):
        convert_activations(GeluNet())
    with pytest.raises(ValueError, match="ThreeCalls.*filter_fn excluded all 1"):
        convert_activations(ThreeCalls(), filter_fn=lambda m, fqn: False)
    model, report = convert_activations(GeluNet(), to={nn.GELU: "la_silu"}, return_report=True)
    assert isinstance(model.act, LASiLU) and isinstance(model.gate, nn.Sigmoid)


class Functional(nn.Module):
    """Activations as function calls, like googlenet's BasicConv2d and densenet121's last F.relu."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1), nn.Conv2d(6, 5, 1)

    def forward(self, x):
        x = F.relu(self.conv1(x), inplace=True)
        x = torch.relu(self.conv2(x))
        return self.conv3(x).relu()


def test_functional_activations_are_reported_loudly():
    with pytest.raises(ValueError, match="Functional.*functional='convert'"):
        convert_activations(Functional())
    model = nn.Sequential(Functional(), nn.ReLU())
    for example in (None, torch.randn(2, 3, 4, 4)):  # found by tracing, or by the example forward
        with pytest.warns(UserWarning, match="3 functional activation"):
            _, report = convert_activations(nn.Sequential(Functional(), nn.ReLU()), example_input=example,
                                            return_report=True)
        assert [(c.fqn, c.function) for c in report.functional] == [
            ("0", "F.relu"), ("0", "torch.relu"), ("0", "Tensor.relu")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_activations(model, functional="ignore")


def test_functional_convert_rewrites_calls_into_layeract_modules():
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(2, 3, 4, 4)
    seen = []
    converted, report = convert_activations(model, functional="convert", return_report=True, affine=True,
                                            example_input=x, filter_fn=lambda m, n: seen.append((type(m), n)) or True)
    assert isinstance(converted, torch.fx.GraphModule) and type(converted).__name__.startswith("Functional")
    assert seen == [(nn.ReLU, "relu"), (nn.ReLU, "relu_1"), (nn.ReLU, "relu_2")]
    assert [converted.get_submodule(n).num_channels for _, n in seen] == [4, 6, 5]
    assert [c.status for c in report.functional] == ["now module relu", "now module relu_1", "now module relu_2"]
    assert any("GraphModule" in note for note in report.notes)
    torch.testing.assert_close(converted(x), la_reference(model.conv3(la_reference(
        model.conv2(la_reference(model.conv1(x)))))), atol=1e-5, rtol=1e-5)
    assert convert_activations(converted, functional="convert", affine=True, example_input=x) is converted


def test_functional_in_place_call_whose_input_is_reused_is_left_alone():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 3, 1), nn.ReLU()

        def forward(self, x):
            x = self.conv(x)
            y = F.relu(x, inplace=True)  # mutates x, which is read again below
            return self.act(y + x)

    model, report = convert_activations(Reuse(), functional="convert", return_report=True)
    assert report.functional[0].status.startswith("left as is: in place")
    assert _count(model, LASiLU) == 1


def test_report_is_readable():
    _, report = convert_activations(TV.mobilenet_v3_small(weights=None), return_report=True)
    assert isinstance(report, ConversionReport) and report.model == "MobileNetV3"
    text = str(report)
    assert text.startswith("convert_activations(MobileNetV3): ")
    assert "features.0.2: Hardswish -> LASiLU" in text and "scale_activation: Hardsigmoid (gate" in text
