"""The LayerAct op as the tools around PyTorch see it: compile, export, second derivatives, torch.func."""
import re
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from layeract_patch import LAHardSiLU, LASiLU, la_reference, layer_act
from layeract_patch import functional
from layeract_patch._kernels import op as op_module

KINDS = functional.KINDS  # every LayerAct scale: silu, hardsilu, gelu, gelu_tanh


@pytest.fixture(autouse=True)
def quiet_fallback_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backend is unavailable.*")
        yield


def affine_params(channels, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    weight = (torch.rand(channels, generator=gen, dtype=dtype) + 0.5).requires_grad_()
    bias = torch.randn(channels, generator=gen, dtype=dtype).requires_grad_()
    return weight, bias


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), LASiLU(affine=True, num_channels=6), nn.Conv2d(6, 4, 3),
                         LAHardSiLU(), nn.Flatten(), nn.Linear(64, 3), LASiLU())


def reference_net(net):
    """The same network with every LayerAct replaced by the plain formula."""
    def forward(x):
        for layer in net:
            x = la_reference(x, layer.kind, layer.alpha, layer.weight, layer.bias) if hasattr(layer, "kind") else layer(x)
        return x
    return forward


# ---------------------------------------------------------------- second derivatives

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_gradgradcheck_float64(kind, affine):
    x = (torch.randn(3, 4, 3, 3, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    params = affine_params(4) if affine else ()
    fn = (lambda t, w, b: layer_act(t, kind, 1e-5, w, b)) if affine else (lambda t: layer_act(t, kind))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


def test_gradient_penalty_matches_the_formula():
    # WGAN-GP style: the gradient of a penalty on the input gradient, w.r.t. a convolution's weight
    net = conv_net()
    with torch.no_grad():
        net[1].bias.normal_()
    x = torch.randn(2, 3, 6, 6, requires_grad=True)

    def penalty_grad(forward):
        (g,) = torch.autograd.grad(forward(x).sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), (net[0].weight, net[1].weight))

    for got, expected in zip(penalty_grad(net), penalty_grad(reference_net(net))):
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_first_order_backward_still_uses_the_saved_statistics():
    # create_graph=False: the fused backward, whose result is not differentiable again
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    (g,) = torch.autograd.grad(layer_act(x, "silu").sum(), x)
    assert g.grad_fn is None
    (g_ref,) = torch.autograd.grad(la_reference(x, "silu").sum(), x)
    torch.testing.assert_close(g, g_ref, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------- torch.func

def test_per_sample_gradients_with_vmap_of_grad_equal_a_loop():
    net = conv_net()
    params = {name: p.detach() for name, p in net.named_parameters()}
    xs, ys = torch.randn(5, 3, 6, 6), torch.randint(0, 3, (5,))

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(net, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
    for i in range(5):
        net.zero_grad()
        nn.functional.cross_entropy(net(xs[i:i + 1]), ys[i:i + 1]).backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_jacrev_and_batched_grads_equal_the_formula(kind):
    x = torch.randn(2, 5, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(lambda t: la_reference(t, kind), x)
    torch.testing.assert_close(jacrev(lambda t: layer_act(t, kind))(x), expected)
    # autograd.grad(is_grads_batched=True) runs the op's backward on batched gradients
    xg = x.clone().requires_grad_()
    (rows,) = torch.autograd.grad(layer_act(xg, kind), xg, torch.eye(10, dtype=x.dtype).view(10, 2, 5),
                                  is_grads_batched=True)
    torch.testing.assert_close(rows.view(2, 5, 2, 5), expected)


def test_vmap_of_the_forward_normalizes_each_inner_sample():
    x = torch.randn(4, 3, 2, 5)
    torch.testing.assert_close(vmap(lambda t: layer_act(t, "silu"))(x), la_reference(x, "silu", start_dim=2))


# ---------------------------------------------------------------- compile and export see one op

def _layeract_nodes(graph):
    return [str(node.target) for node in graph.nodes if "layeract" in str(node.target)]


@pytest.mark.slow
def test_compile_keeps_the_fused_op_with_no_graph_break(monkeypatch):
    from layeract_patch._kernels import op

    fused_backward_calls = []
    kernel = op._backward_kernel
    monkeypatch.setattr(op, "_backward_kernel", lambda *a: fused_backward_calls.append(1) or kernel(*a))
    torch._dynamo.reset()
    net = conv_net()
    x = torch.randn(2, 3, 6, 6)
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert _layeract_nodes(explained.graphs[0].graph) == ["layeract.layer_act.default"] * 3

    compiled = torch.compile(net)
    out = compiled(x)
    torch.testing.assert_close(out, net(x), atol=1e-5, rtol=1e-4)
    out.square().sum().backward()
    assert len(fused_backward_calls) == 3  # the compiled backward runs the fused backward op, once per LayerAct
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    reference_net(net)(x).square().sum().backward()
    for got, p in zip(grads, net.parameters()):
        torch.testing.assert_close(got, p.grad, atol=1e-4, rtol=1e-4)


def test_export_sees_one_op_per_activation():
    net = conv_net().eval()
    x = torch.randn(2, 3, 6, 6)
    exported = torch.export.export(net, (x,))
    assert _layeract_nodes(exported.graph) == ["layeract.layer_act.default"] * 3
    torch.testing.assert_close(exported.module()(x), net(x))


def test_the_op_can_be_called_directly():
    x = torch.randn(2, 3, 4)
    out, mean, rstd = torch.ops.layeract.layer_act(x, None, None, "silu", 1e-5, 1)
    torch.testing.assert_close(out, la_reference(x, "silu"))
    assert mean.shape == rstd.shape == (2,) and mean.dtype == torch.float32


def test_vmap_rules_of_the_ops():
    x = torch.randn(4, 3, 2, 5)
    weights, biases = torch.rand(4, 2) + 0.5, torch.randn(4, 2)
    forward = torch.ops.layeract.layer_act
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "batching rule not implemented" fallback
        out = vmap(lambda t: forward(t, None, None, "silu", 1e-5, 1)[0])(x)
        torch.testing.assert_close(out, la_reference(x, "silu", start_dim=2))
        per_weight = vmap(lambda t, w, b: forward(t, w, b, "hardsilu", 1e-5, 1)[0])(x, weights, biases)
        for i in range(4):
            torch.testing.assert_close(per_weight[i], la_reference(x[i], "hardsilu", 1e-5, weights[i], biases[i]))
        # the backward op on a batch of gradients equals one call per gradient
        _, mean, rstd = forward(x[0], None, None, "silu", 1e-5, 1)
        grads = torch.randn(4, 3, 2, 5)
        backward = torch.ops.layeract.layer_act_backward
        batched = vmap(lambda g: backward(g, x[0], mean, rstd, None, None, "silu", 1)[0])(grads)
        for i in range(4):
            torch.testing.assert_close(batched[i], backward(grads[i], x[0], mean, rstd, None, None, "silu", 1)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_saved_for_backward_is_the_input_plus_two_numbers_per_sample_in_every_dtype(dtype, affine):
    x = torch.randn(6, 8, 10, 10, dtype=dtype, requires_grad=True)
    weight, bias = affine_params(8, dtype) if affine else (None, None)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer_act(x, "silu", 1e-5, weight, bias)
    stat_bytes = 8 if dtype == torch.float64 else 4
    params = 2 * 8 * x.element_size() if affine else 0
    assert sum(saved.values()) == x.numel() * x.element_size() + 2 * 6 * stat_bytes + params
    out.float().sum().backward()
    assert x.grad.dtype == dtype and x.grad.isfinite().all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's own, at its first forward-AD use
@pytest.mark.parametrize("kind", KINDS)
def test_forward_mode_ad_with_dual_tensors_matches_the_formula(kind):
    # torch.autograd.forward_ad (jvp without torch.func): before, "You must implement the jvp function"
    import torch.autograd.forward_ad as fwAD

    gen = torch.Generator().manual_seed(0)
    x, tangent = torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=gen), torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=gen)
    weight, bias = affine_params(4)
    with fwAD.dual_level():
        out = layer_act(fwAD.make_dual(x, tangent), kind, 1e-5, weight.detach(), bias.detach())
        primal, jvp = fwAD.unpack_dual(out)
    # the jvp is the Jacobian (from the reference formula, by reverse mode) applied to the tangent
    jacobian = torch.autograd.functional.jacobian(lambda v: la_reference(v, kind, 1e-5, weight.detach(), bias.detach()), x)
    expected = (jacobian.reshape(x.numel(), x.numel()) @ tangent.reshape(-1)).reshape(x.shape)
    torch.testing.assert_close(jvp, expected)
    torch.testing.assert_close(primal, la_reference(x, kind, 1e-5, weight.detach(), bias.detach()))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_builds_no_autograd_node_and_matches_training_mode(mode):
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    act = LASiLU(affine=True, num_channels=8)
    expected = act(x)
    with getattr(torch, mode)():
        out = act(x)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, expected.detach(), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(not op_module._ANY_LAYOUT, reason="this torch's custom_op takes no tags (flexible_layout)")
def test_compile_hands_the_op_the_layout_inductor_chose_without_conversions():
    """Inductor runs convolutions channels_last; the ops take that layout as it is, so no kernel is generated
    only to convert LayerAct's input or output (each one a pass over the activation, forward and backward)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), LASiLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.BatchNorm2d(16), LAHardSiLU(affine=True, num_channels=16), nn.Conv2d(16, 8, 3, padding=1))
    x = torch.randn(8, 3, 16, 16)
    compiled = torch.compile(net)

    def step():
        out = compiled(x)
        out.square().sum().backward()
        return out

    # the FX graph caches would hand back code compiled before, possibly by an older version of the op
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        out, codes = run_and_get_code(step)
    code = "\n".join(codes)
    assert "layeract.layer_act.default(" in code and "layeract.layer_act_backward.default(" in code
    kernels = set(re.findall(r"\bcpp_fused\w*", code))
    assert kernels and not [k for k in kernels if "layer_act" in k], sorted(kernels)
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    reference = reference_net(net)(x)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    reference.square().sum().backward()
    for got, p in zip(grads, net.parameters()):
        torch.testing.assert_close(got, p.grad, atol=1e-3, rtol=1e-3)
