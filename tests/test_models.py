"""The paper's models: CIFAR ResNets (He et al. 2016) and the paper's 15-conv CNN, with every activation/norm."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from layeract_patch import LayerAct
from layeract_patch.models import BasicBlock, CifarResNet, PaperCNN, cifar_resnet, paper_cnn
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
    with pytest.raises(ValueError, match="unknown activation 'gelu'.*la_silu"):
        cifar_resnet(20, act="gelu")
    with pytest.raises(ValueError, match="unknown norm 'gn'.*bn, ln, none"):
        paper_cnn(norm="gn")


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
    for model in (cifar_resnet(8, act=act), paper_cnn(act=act, norm="ln")):
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


def test_paper_cnn_table6_shapes():
    model = paper_cnn(num_classes=10)
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
    assert paper_cnn(in_chans=1)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


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
