"""convert_activations where a demanding user breaks it: threads, in-place side effects, non-activation sources,
converting twice with another target, and a plain swap that must not trace (issues 10 and 11)."""
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from layeract_patch import CallSiteActs, LAHardSiLU, LASiLU, LayerAct, convert_activations


@pytest.fixture(autouse=True)
def _quiet_backend_fallback():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backend is unavailable.*")
        yield


def test_affine_resnet_runs_from_several_threads_at_once():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    model = convert_activations(model, affine=True, example_input=torch.randn(1, 3, 32, 32))
    with torch.no_grad():  # distinct parameters per site, so a site mix-up changes the output
        for act in (m for m in model.modules() if isinstance(m, LayerAct)):
            act.weight.uniform_(0.5, 2.0)
            act.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    start = threading.Barrier(4)
    outputs, errors = [], []

    def serve():
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(10):
                    outputs.append(model(x))
        except Exception as err:  # collected: an exception in a thread would otherwise pass unnoticed
            errors.append(err)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(outputs) == 40
    for out in outputs:
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


class SideEffect(nn.Module):
    """Calls its in-place activation for the side effect alone; a LayerAct (never in place) would do nothing."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)
        self.head, self.out = nn.Conv2d(4, 2, 1), nn.SiLU()

    def forward(self, x):
        y = self.conv(x)
        unused = self.act(y)  # noqa: F841 (the point of the test: the result is never read)
        return self.out(self.head(y))


def test_in_place_activation_called_for_its_side_effect_is_refused():
    x = torch.randn(2, 3, 5, 5)
    # an example forward, a trace (affine sizing), or, for a plain swap, reading the forward's source
    for kwargs in (dict(example_input=x), dict(example_input=x, affine=True), dict(affine=True), {}):
        model = SideEffect()
        with pytest.raises(ValueError, match=r"(?s)act \(ReLU\(inplace=True\)\).*side effect.*y = self\.act\(y\)"):
            convert_activations(model, **kwargs)
        assert isinstance(model.act, nn.ReLU)  # refused before anything changed
    model, report = convert_activations(SideEffect(), example_input=x, return_report=True,
                                        filter_fn=lambda module, fqn: fqn != "act")  # the fix the message names
    assert isinstance(model.act, nn.ReLU) and [s.fqn for s in report.swapped] == ["out"]


class BareCall(nn.Module):
    """The issue's reproducer: `y = self.conv(x); self.act(y); return y`."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        self.act(y)
        return y


def test_a_bare_in_place_call_is_refused_without_example_input_or_trace():
    model = BareCall()
    with pytest.raises(ValueError, match=r"(?s)act \(ReLU\(inplace=True\)\).*y = self\.act\(y\)"):
        convert_activations(model)
    assert isinstance(model.act, nn.ReLU)
    for build in (lambda: torchvision.models.resnet18(num_classes=10), lambda: torchvision.models.mobilenet_v3_small(),
                  lambda: torchvision.models.densenet121()):  # in-place activations whose results are used
        convert_activations(build(), functional="ignore")  # (densenet's last F.relu would only warn)


def test_in_place_activations_whose_results_are_used_convert_quietly():
    model = torchvision.models.resnet18(num_classes=10).eval()  # nn.ReLU(inplace=True), each result assigned
    model = convert_activations(model, example_input=torch.randn(1, 3, 32, 32))
    assert sum(isinstance(m, LASiLU) for m in model.modules()) == 9

    class Returned(nn.Module):  # the root returns the activation's result directly
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)

        def forward(self, x):
            return [self.act(self.conv(x))]

    assert isinstance(convert_activations(Returned(), example_input=torch.randn(1, 3, 4, 4)).act, LASiLU)


@pytest.mark.parametrize("source", [nn.Conv2d, nn.Module, nn.Sequential, CallSiteActs])
def test_non_activation_source_types_are_refused(source):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    with pytest.raises(ValueError, match=rf"{source.__name__} is not an activation.*ReLU, SiLU, .*Hardswish.*GELU.*LayerAct"):
        convert_activations(model, to={source: "la_silu"})
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU]


def test_converting_again_with_another_target_says_so_and_keeps_the_model():
    model = convert_activations(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
    for kwargs, wanted, fix in ((dict(to="la_hardsilu"), "LAHardSiLU", "to={LASiLU: LAHardSiLU}"),
                                (dict(affine=True), "LASiLU(affine)", "to={LASiLU: LASiLU}, affine=True")):
        with pytest.warns(UserWarning, match="not re-targeted") as caught:
            again, report = convert_activations(model, return_report=True, **kwargs)
        assert fix in str(caught[0].message)
        assert again is model and type(model[2]) is LASiLU and not model[2].affine
        assert [s.reason for s in report.skipped] == [f"already LASiLU, not re-targeted to {wanted}"]

    # Re-targeting is explicit: a mapping that names the LayerAct class (non-affine modules lose nothing).
    model = convert_activations(model, to={LASiLU: "la_hardsilu"}, affine=True, example_input=torch.randn(2, 3, 4, 4))
    assert type(model[2]) is LAHardSiLU and model[2].affine and model[2].num_channels == 4
    with torch.no_grad():
        model[2].weight.fill_(3.0)
    with pytest.warns(UserWarning, match="not re-targeted"):
        _, report = convert_activations(model, to={LAHardSiLU: "la_silu"}, return_report=True)
    assert "drop its trained weight and bias" in report.skipped[0].reason
    assert type(model[2]) is LAHardSiLU and torch.all(model[2].weight == 3.0)  # trained parameters kept

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converting twice the same way stays quiet
        convert_activations(model, to="la_hardsilu", affine=True, example_input=torch.randn(2, 3, 4, 4))


def _count_traces(monkeypatch):
    traces = []
    original = torch.fx.Tracer.trace
    monkeypatch.setattr(torch.fx.Tracer, "trace", lambda self, *a, **k: traces.append(1) or original(self, *a, **k))
    return traces


class Helper(nn.Module):
    """A functional ReLU inside a helper function and a global function alias: a code reader's blind spots."""

    def __init__(self):
        super().__init__()
        self.conv, self.block = nn.Conv2d(3, 4, 1), nn.Sequential(nn.Identity())
        self.block.relu = nn.Identity()

    def act(self, x):
        return F.relu(x)

    def forward(self, x):
        return self.block.relu(self.act(self.conv(x)))  # self.block.relu is a module, not Tensor.relu


class Silu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 4, 1), nn.ReLU()

    def forward(self, x):
        return torch.nn.functional.silu(self.relu(self.conv(x)))


def test_a_plain_swap_finds_functional_calls_without_tracing(monkeypatch):
    traces = _count_traces(monkeypatch)
    convert_activations(torchvision.models.resnet18(weights=None))
    with pytest.warns(UserWarning, match=r"1 functional activation call\(s\).*F\.silu x1"):
        _, report = convert_activations(Silu(), return_report=True)
    assert [(c.fqn, c.function) for c in report.functional] == [("", "F.silu")]
    assert traces == []
    # Only the error path traces, to see what reading the code cannot (a helper function's F.relu).
    with pytest.raises(ValueError, match=r"Helper.*F\.relu x1.*functional='convert'"):
        convert_activations(Helper())
    assert len(traces) == 1
