"""The paper's models: CIFAR ResNets (He et al. 2016) and the paper's 15-conv CNN, with every activation/norm."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from layeract_patch import LayerAct
from layeract_patch.models import BasicBlock, CifarResNet, PaperCNN, cifar_resnet, layeract_cnn
from layeract_patch.registry import ACTIVATIONS


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("depth", [8, 20, 32])
def test_resnet_depth_counts_layers(depth):
    model = cifar_resnet(depth)
    assert count(model, nn.Conv2d) + count(model, nn.Linear) == depth  # option A adds no shortcut convs
    assert count(model, LayerAct) == 1 + 2 * (depth - 2) // 2  # stem + two per block


def test_resnet20_size_and_shapes():
    model = cifar_resnet(20, num_classes=100, act="silu")
    assert sum(p.numel() for p in model.parameters()) == 269722 + 64 * 90 + 90  # the paper's 0.27M, 100 classes
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 64, 8, 8)
    assert model(x).shape == (2, 100)


@pytest.mark.parametrize("depth", [21, 6, 0, 19])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(depth)


def test_unknown_act_and_norm():
    with pytest.raises(ValueError, match="unknown activation 'mish'.*la_silu.*la_gelu"):
        cifar_resnet(20, act="mish")
    with pytest.raises(ValueError, match="unknown norm 'gn'.*bn, ln, none"):
        layeract_cnn(norm="gn")


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    short = block.shortcut(x)
    assert short.shape == (2, 32, 4, 4)
    assert torch.equal(short[:, 8:24], x[:, :, ::2, ::2])
    assert short[:, :8].abs().sum() == 0 and short[:, 24:].abs().sum() == 0
    assert torch.equal(BasicBlock(16, 16).shortcut(x), x)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_every_activation_trains_in_both_models(act):
    x = torch.randn(2, 3, 32, 32)
    for model in (cifar_resnet(8, act=act), layeract_cnn(act=act, norm="ln")):
        model(x).logsumexp(1).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if act.endswith("_affine"):
        # Each site has its own parameters sized to its channels (no sharing between calls).
        sizes = [m.num_channels for m in cifar_resnet(8, act=act).modules() if isinstance(m, LayerAct)]
        assert sizes == [16, 16, 16, 32, 32, 64, 64]


def test_norm_options():
    bn, ln, none = (cifar_resnet(8, norm=n) for n in ("bn", "ln", "none"))
    assert count(bn, nn.BatchNorm2d) == 7 and count(ln, nn.GroupNorm) == 7
    assert count(none, nn.BatchNorm2d) + count(none, nn.GroupNorm) == 0
    assert all(m.bias is not None for m in none.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is None for m in bn.modules() if isinstance(m, nn.Conv2d))
    # "ln" normalises each sample over (C, H, W), exactly as nn.LayerNorm([C, H, W]) at initialisation.
    norm = ln.stem.norm
    x = torch.randn(3, 16, 5, 7) * 4 + 2
    torch.testing.assert_close(norm(x), F.layer_norm(x, x.shape[1:], eps=norm.eps))


def test_he_initialisation():
    model = cifar_resnet(20)
    conv = model.stages[2][1].conv1.conv  # 64 -> 64, 3x3: fan_in 576
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_layeract_cnn_table6_shapes():
    model = layeract_cnn(num_classes=10)
    assert count(model, nn.Conv2d) == 15 and count(model, nn.MaxPool2d) == 5
    kernels = [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert kernels == [(1, 1), (3, 3), (3, 3)] * 5
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    for stage in model.stages:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    assert model.fc.in_features == 512


def test_grayscale_input_and_new_head():
    model = cifar_resnet(8, in_chans=1, num_classes=3)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    model.reset_classifier(5)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5) and model.get_classifier().out_features == 5
    assert layeract_cnn(in_chans=1)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_registered_with_timm():
    names = set(timm.list_models("cifar_resnet*")) | set(timm.list_models("layeract_cnn"))
    assert {"cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
            "layeract_cnn"} <= names
    model = timm.create_model("cifar_resnet20", act="silu", num_classes=100)
    assert isinstance(model, CifarResNet) and model.depth == 20 and model.fc.out_features == 100
    assert count(model, nn.SiLU) == 19
    assert isinstance(timm.create_model("layeract_cnn", norm="none"), PaperCNN)
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 32, 32)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_resnet56", pretrained=True)


def test_one_name_for_the_paper_cnn():
    import layeract_patch.models as models
    assert "paper_cnn" not in models.__all__  # one builder: the timm-registered layeract_cnn
    assert not hasattr(models, "paper_cnn")
    model = layeract_cnn(num_classes=4, act="silu", norm="ln", in_chans=1, init="torch")
    assert isinstance(model, PaperCNN) and model.fc.out_features == 4 and model.init == "torch"


@pytest.mark.parametrize("name, channels, reductions", [
    ("cifar_resnet20", [16, 16, 32, 64], [1, 1, 2, 4]),
    ("layeract_cnn", [32, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
])
def test_features_only_through_timm(name, channels, reductions):
    model = timm.create_model(name, features_only=True, act="la_silu", norm="ln")
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == reductions
    outputs = model(torch.randn(2, 3, 32, 32))
    assert [o.shape[1] for o in outputs] == channels
    assert [32 // o.shape[-1] for o in outputs] == reductions
    last = timm.create_model(name, features_only=True, out_indices=(-1,))(torch.randn(1, 3, 32, 32))
    assert len(last) == 1 and last[0].shape[1] == channels[-1]


def test_timm_kwargs_behave_as_for_timm_models():
    model = timm.create_model("cifar_resnet32", num_classes=7, in_chans=1, pretrained_cfg_overlay=dict(crop_pct=0.9))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7) and model.depth == 32
    assert model.pretrained_cfg["crop_pct"] == 0.9 and model.pretrained_cfg["architecture"] == "cifar_resnet32"
    # the plain builder is the same path: any 6n+2 depth, timm's kwargs included
    assert cifar_resnet(8, features_only=True, out_indices=(3,))(torch.randn(1, 3, 32, 32))[0].shape == (1, 64, 8, 8)


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("build", [lambda **kw: cifar_resnet(20, **kw), lambda **kw: layeract_cnn(**kw),
                                   lambda **kw: timm.create_model("cifar_resnet20", **kw)])
def test_torch_init_is_pytorchs_default_with_biased_convs(build):
    model = build(init="torch", norm="bn")
    for conv in convs(model):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        bound = 1 / fan_in ** 0.5  # kaiming_uniform_(a=sqrt(5)) as nn.Conv2d.reset_parameters
        assert conv.bias is not None and conv.bias.abs().max() <= bound and conv.bias.abs().sum() > 0
        assert conv.weight.abs().max() <= bound
        if conv.weight.numel() >= 4000:
            assert conv.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    linear = model.fc
    assert linear.weight.abs().max() <= 1 / linear.in_features ** 0.5 and linear.bias.abs().sum() > 0


def test_he_init_unchanged_by_the_choice():
    torch.manual_seed(0)
    default = cifar_resnet(20)
    torch.manual_seed(0)
    he = cifar_resnet(20, init="he")
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), he.state_dict().values()))
    assert all(conv.bias is None for conv in convs(he)) and default.init == "he"
    assert all(conv.bias is not None and conv.bias.abs().sum() == 0 for conv in convs(cifar_resnet(8, norm="none")))


def test_bad_init_is_one_clear_error():
    for build in (lambda: cifar_resnet(20, init="kaiming"), lambda: timm.create_model("layeract_cnn", init="kaiming")):
        with pytest.raises(ValueError, match="unknown init 'kaiming'; choose one of: he, torch"):
            build()


def test_resnet44_without_norm_trains_finite_with_the_authors_init():
    # The paper's no-norm setting (lr 0.01, momentum 0.9): the authors' init keeps SGD finite.
    torch.manual_seed(0)
    model = cifar_resnet(44, act="la_silu", norm="none", init="torch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and all(torch.isfinite(p).all() for p in model.parameters())
    # It starts near chance (ln 10 = 2.30): the outputs are small. He init's unnormalized 44-layer stack starts
    # with a loss around 24 on this batch, and on CIFAR-10 at this rate it reaches NaN within a few steps.
    assert losses[0] < 3


def test_lnc_is_layernorm_over_the_channels_of_each_pixel_in_every_model():
    x = torch.randn(2, 3, 32, 32)
    for model in (cifar_resnet(8, norm="lnc"), layeract_cnn(norm="lnc")):
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        assert norms and not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.modules())
        model(x).sum().backward()
    stem = cifar_resnet(8, norm="lnc", init="he").stem
    y = stem.norm(stem.conv(x))
    assert torch.allclose(y.mean(1), torch.zeros_like(y.mean(1)), atol=1e-5)  # each pixel over its 16 channels
    assert torch.allclose(y.var(1, unbiased=False), torch.ones_like(y.mean(1)), atol=1e-3)
