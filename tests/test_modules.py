"""LASiLU / LAHardSiLU as modules: construction, affine, errors, and the tools users run them through."""
import io
import warnings

import pytest
import torch
from torch import nn

from layeract_patch import LAHardSiLU, LASiLU, create_act_layer, get_act_layer
from layeract_patch.functional import la_reference


@pytest.fixture(autouse=True)
def quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def small_net(act_cls=LASiLU):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act_cls(affine=True, num_channels=8),
                         nn.Conv2d(8, 8, 3, padding=1), LAHardSiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4), LASiLU())


def test_module_defaults_and_repr():
    m = LASiLU(inplace=True)
    assert m.alpha == 1e-5 and not m.affine and m.weight is None and list(m.state_dict()) == []
    assert "alpha=1e-05" in repr(m) and "affine=False" in repr(m)
    a = LAHardSiLU(alpha=1e-3, affine=True, num_channels=6)
    assert a.weight.shape == (6,) and a.bias.shape == (6,)
    assert torch.equal(a.weight, torch.ones(6)) and torch.equal(a.bias, torch.zeros(6))
    assert "affine=True" in repr(a) and "num_channels=6" in repr(a)


@pytest.mark.parametrize("cls,kind", [(LASiLU, "silu"), (LAHardSiLU, "hardsilu")])
def test_module_matches_reference_and_affine_is_per_channel(cls, kind):
    m = cls(affine=True, num_channels=5)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 2, 5))
        m.bias.copy_(torch.linspace(-1, 1, 5))
    for spatial in [(7,), (3, 3), (9, 11)]:  # one module serves any spatial size
        x = torch.randn(3, 5, *spatial)
        torch.testing.assert_close(m(x), la_reference(x, kind, 1e-5, m.weight, m.bias))


def test_affine_parameters_train():
    net = small_net()
    out = net(torch.randn(4, 3, 8, 8)).sum()
    out.backward()
    act = net[2]
    assert act.weight.grad is not None and act.weight.grad.abs().sum() > 0 and act.bias.grad.abs().sum() > 0


def test_module_errors():
    with pytest.raises(ValueError, match="num_channels"):
        LASiLU(affine=True)
    with pytest.raises(ValueError, match="alpha"):
        LAHardSiLU(alpha=-0.1)
    m = LASiLU(affine=True, num_channels=4)
    with pytest.raises(ValueError, match="num_channels=6"):
        m(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match="1-D"):
        LASiLU()(torch.randn(7))
    with pytest.raises(TypeError, match="floating-point"):
        LASiLU()(torch.ones(2, 3, dtype=torch.int32))


def test_registry_names():
    assert get_act_layer("la_silu") is LASiLU and get_act_layer("LA-HardSiLU") is LAHardSiLU
    act = create_act_layer("la_hardsilu_affine", num_channels=3, inplace=True)
    assert isinstance(act, LAHardSiLU) and act.affine and act.num_channels == 3
    assert isinstance(create_act_layer("relu", num_channels=3), nn.ReLU)
    with pytest.raises(ValueError, match="la_silu"):
        get_act_layer("gelu2")


def test_module_on_other_dtypes_and_device_kwargs():
    m = LASiLU(affine=True, num_channels=4, dtype=torch.float64)
    assert m.weight.dtype == torch.float64
    assert m(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


def test_jit_trace_in_eval():
    net = small_net().eval()
    x = torch.randn(2, 3, 8, 8)
    traced = torch.jit.trace(net, x)
    torch.testing.assert_close(traced(torch.randn(2, 3, 8, 8) * 0 + x), net(x))


def test_onnx_export_in_eval():
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    net = small_net().eval()
    x = torch.randn(2, 3, 8, 8)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"])
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    (out,) = ReferenceEvaluator(model).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), net(x), atol=1e-5, rtol=1e-4)


def test_torch_export():
    net = small_net().eval()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), net(x))


@pytest.mark.slow
def test_torch_compile_forward_and_backward():
    torch._dynamo.reset()
    net = small_net()
    compiled = torch.compile(net)
    x = torch.randn(4, 3, 8, 8)
    out_c = compiled(x)
    out_e = net(x)
    torch.testing.assert_close(out_c, out_e, atol=1e-4, rtol=1e-4)
    out_c.sum().backward()
    assert net[2].weight.grad is not None and torch.isfinite(net[2].weight.grad).all()
