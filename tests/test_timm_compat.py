"""LayerAct inside timm: as a class (nothing to register) and by name (register_timm_activations)."""
import warnings

import pytest
import timm
import torch
from timm.layers import create_act, get_act_fn, get_act_layer
from torch import nn

from layeract_patch.functional import la_reference
from layeract_patch.modules import LAGELU, LAHardSiLU, LASiLU
from layeract_patch.timm_compat import register_timm_activations, unregister_timm_activations


@pytest.fixture
def timm_tables():
    """timm's name tables as they were before the test, restored after it whatever happens."""
    tables = (create_act._ACT_LAYER_DEFAULT, create_act._ACT_FN_DEFAULT, create_act._ACT_LAYER_ME,
              create_act._ACT_FN_ME)
    unregister_timm_activations()  # start from timm's own tables, whatever ran before in this process
    saved = [dict(t) for t in tables]
    yield saved
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)


def _train_step(model):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backend is unavailable.*")
        out = model(torch.randn(2, 3, 64, 64))
        out.logsumexp(1).mean().backward()
    assert torch.isfinite(out).all() and all(p.grad is not None for p in model.parameters())


def test_create_model_with_the_class():
    model = timm.create_model("resnet18", pretrained=False, act_layer=LASiLU)
    reference = timm.create_model("resnet18", pretrained=False)
    assert sum(isinstance(m, LASiLU) for m in model.modules()) == sum(isinstance(m, nn.ReLU) for m in reference.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    model.load_state_dict(reference.state_dict(), strict=True)
    _train_step(model)


def test_names_need_registering_and_then_work(timm_tables):
    with pytest.raises(KeyError):
        timm.create_model("resnet18", pretrained=False, act_layer="la_silu")
    assert register_timm_activations() == ("la_silu", "la_hardsilu", "la_gelu", "la_gelu_tanh")

    model = timm.create_model("resnet18", pretrained=False, act_layer="la_silu")
    relus = sum(isinstance(m, nn.ReLU) for m in timm.create_model("resnet18", pretrained=False).modules())
    assert sum(isinstance(m, LASiLU) for m in model.modules()) == relus > 0
    _train_step(model)
    effnet = timm.create_model("efficientnet_b0", pretrained=False, act_layer="la_hardsilu")
    assert isinstance(effnet.bn1.act, LAHardSiLU)
    assert isinstance(effnet.blocks[1][0].se.gate, nn.Sigmoid)  # the gate keeps its own name, "sigmoid"

    x = torch.randn(2, 5)
    torch.testing.assert_close(get_act_fn("la_silu")(x, inplace=True), la_reference(x, "silu"))
    torch.testing.assert_close(get_act_fn("la_hardsilu")(x), la_reference(x, "hardsilu"))
    torch.testing.assert_close(get_act_fn("la_gelu")(x), la_reference(x, "gelu"))
    torch.testing.assert_close(get_act_fn("la_gelu_tanh")(x), la_reference(x, "gelu_tanh"))


def test_gelu_names_build_timms_gelu_models(timm_tables):
    # timm's "gelu" / "gelu_tanh" -> "la_gelu" / "la_gelu_tanh": the form is kept, the gates are not touched
    register_timm_activations()
    model = timm.create_model("convnext_atto", pretrained=False, act_layer="la_gelu_tanh")
    acts = [m for m in model.modules() if isinstance(m, LAGELU)]
    gelus = sum(type(m).__name__ == "GELU" for m in timm.create_model("convnext_atto", pretrained=False).modules())
    assert len(acts) == gelus > 0 and all(m.approximate == "tanh" and m.kind == "gelu_tanh" for m in acts)
    _train_step(model)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, act_layer="la_gelu", img_size=32, depth=2)
    assert isinstance(vit.blocks[0].mlp.act, LAGELU) and vit.blocks[0].mlp.act.approximate == "none"
    assert get_act_layer("la_gelu") is LAGELU and get_act_layer("la_gelu_tanh").keywords == {"approximate": "tanh"}


def test_registering_changes_no_existing_name_and_is_idempotent(timm_tables):
    layers_before, fns_before = timm_tables[0], timm_tables[1]
    register_timm_activations()
    register_timm_activations()
    assert {k: v for k, v in create_act._ACT_LAYER_DEFAULT.items() if k in layers_before} == layers_before
    assert {k: v for k, v in create_act._ACT_FN_DEFAULT.items() if k in fns_before} == fns_before
    assert set(create_act._ACT_LAYER_DEFAULT) - set(layers_before) == {"la_silu", "la_hardsilu", "la_gelu",
                                                                        "la_gelu_tanh"}
    assert get_act_layer("relu") is nn.ReLU and get_act_layer("la_silu") is LASiLU

    unregister_timm_activations()
    assert create_act._ACT_LAYER_DEFAULT == layers_before and create_act._ACT_FN_DEFAULT == fns_before


def test_a_name_timm_already_uses_is_not_overridden(timm_tables):
    create_act._ACT_LAYER_DEFAULT["la_hardsilu"] = nn.Hardswish
    with pytest.raises(RuntimeError, match="already defines.*'la_hardsilu'"):
        register_timm_activations()
    assert "la_silu" not in create_act._ACT_LAYER_DEFAULT  # all or nothing
    unregister_timm_activations()
    assert create_act._ACT_LAYER_DEFAULT["la_hardsilu"] is nn.Hardswish  # not ours: left in place


def test_get_act_layer_passes_classes_and_partials_through_like_timms():
    from functools import partial

    from layeract_patch import create_act_layer
    from layeract_patch import get_act_layer as our_get_act_layer

    affine = partial(LASiLU, affine=True)

    class MyAct(nn.Module):
        def forward(self, x):
            return x

    for layer in (LASiLU, LAHardSiLU, affine, MyAct, nn.GELU):
        assert our_get_act_layer(layer) is layer and get_act_layer(layer) is layer  # ours and timm's agree
    assert our_get_act_layer(None) is None
    assert our_get_act_layer("LA-SiLU") is LASiLU and our_get_act_layer("swish") is nn.SiLU
    act = create_act_layer(affine, num_channels=5)
    assert isinstance(act, LASiLU) and act.affine and act.num_channels == 5
    assert isinstance(create_act_layer(nn.Hardswish, inplace=True), nn.Hardswish)
    with pytest.raises(TypeError, match="name, class or callable"):
        our_get_act_layer(3)
    with pytest.raises(ValueError, match="no affine variant"):
        our_get_act_layer("relu_affine")
    # a timm model built from our factory's output
    model = timm.create_model("resnet18", pretrained=False, act_layer=our_get_act_layer(LAHardSiLU))
    assert any(isinstance(m, LAHardSiLU) for m in model.modules())
