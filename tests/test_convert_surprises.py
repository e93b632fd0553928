"""convert_activations where it used to surprise a user: weight parametrizations, TorchScript, user hooks during
the example forward, a child named `module`, and the mapping suggested for timm's activations."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from layeract_patch import LASiLU, ScaleMonitor, convert_activations


def test_an_activation_inside_a_weight_parametrization_is_never_converted():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    parametrize.register_parametrization(lin, "weight", nn.ReLU())  # a constraint: the weight stays >= 0
    model, report = convert_activations(nn.Sequential(lin, nn.SiLU()), return_report=True)
    assert isinstance(model[1], LASiLU) and type(lin.parametrizations.weight[0]) is nn.ReLU
    assert (lin.weight >= 0).all()
    assert [(s.fqn, s.type, s.reason) for s in report.skipped] == [
        ("0.parametrizations.weight.0", "ReLU", "acts on a weight (a parametrization), never converted")]


@pytest.mark.parametrize("where", ["root", "child"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_model_or_child_is_refused_naming_the_fix(where, how):
    inner = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        compiled = torch.jit.script(inner) if how == "script" else torch.jit.trace(inner, torch.randn(1, 2))
    model = compiled if where == "root" else nn.Sequential(nn.Linear(2, 2), compiled, nn.SiLU())
    with pytest.raises(ValueError, match="TorchScript.*convert the eager model before scripting") as err:
        convert_activations(model)
    assert ("'1' of Sequential" in str(err.value)) == (where == "child")
    if where == "child":
        assert type(model[2]) is nn.SiLU  # nothing was changed


def test_the_example_forward_runs_none_of_the_users_hooks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))  # lazy: torch's own hook
    seen = []
    handle = model[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model[1].register_forward_pre_hook(lambda module, args: seen.append("pre"))
    with ScaleMonitor(model) as monitor:
        convert_activations(model, affine=True, example_input=torch.randn(2, 3, 6, 6))
        assert seen == [] and monitor.sums == {}
        model(torch.randn(1, 3, 6, 6))  # the hooks are still there, and moved to the new module
    assert seen == [torch.Size([1, 4, 4, 4]), "pre"] and list(monitor.sums) == ["1"]
    handle.remove()  # the user's handle still works
    model(torch.randn(1, 3, 6, 6))
    assert seen[2:] == ["pre"]


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = nn.Sequential(nn.Linear(2, 2), nn.ReLU())  # the user's own name, no wrapper

    def forward(self, x):
        return self.module(x)


def test_a_child_named_module_keeps_its_name_without_a_wrapper():
    names = []
    convert_activations(Holder(), filter_fn=lambda module, fqn: names.append(fqn) or True)
    assert names == ["module.1"]
    names.clear()
    _, report = convert_activations(nn.DataParallel(Holder()), filter_fn=lambda m, fqn: names.append(fqn) or True,
                                    return_report=True)
    assert names == ["module.1"] and [s.fqn for s in report.swapped] == ["module.1"]  # DataParallel's own is gone


def test_the_mapping_suggested_for_timms_activations_converts_them():
    import timm

    model = timm.create_model("convnext_atto", act_layer="prelu")  # timm's own PReLU, no LayerAct family's
    with pytest.raises(ValueError, match=r"to=\{timm\.layers\.activations\.PReLU: 'la_silu'\}"):
        convert_activations(model, to={nn.ReLU: "la_silu"})
    import timm.layers.activations

    converted, report = convert_activations(model, to={timm.layers.activations.PReLU: "la_silu"},
                                            return_report=True)
    assert len(report.swapped) == 12
