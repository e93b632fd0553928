"""CIFAR ResNets of He et al. 2016 (Sec. 4.2): depth 6n+2, option-A shortcuts, any activation of the registry."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from ..registry import create_act_layer, get_act_layer
from .layers import ClassifierMixin, ConvNormAct, check_norm, timm_model_kwargs

__all__ = ["CifarResNet", "BasicBlock", "cifar_resnet", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
           "cifar_resnet56", "cifar_resnet110"]

CIFAR_CFG = dict(num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation="bilinear",
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), first_conv="stem.conv",
                 classifier="fc", url="", license="mit")
default_cfgs: Dict[str, Dict[str, Any]] = {f"cifar_resnet{d}": dict(CIFAR_CFG) for d in (20, 32, 44, 56, 110)}


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm, add the shortcut, then the activation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, norm: str = "bn", act: str = "la_silu") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, stride, norm, act)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, 1, norm, act, apply_act=False)
        self.act = create_act_layer(act, num_channels=out_chs)
        self.stride = stride
        self.pad_chs = out_chs - in_chs

    def shortcut(self, x: Tensor) -> Tensor:
        # Option A: no parameters; subsample and zero-pad the new channels (half on each side, as in the paper's code).
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_chs:
            x = F.pad(x, (0, 0, 0, 0, self.pad_chs // 2, self.pad_chs - self.pad_chs // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(ClassifierMixin, nn.Module):
    """3x3 conv 16 -> three stages of n blocks (16, 32, 64 channels) -> global average pool -> linear.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs.
        act: an activation name of layeract_patch.registry (relu, silu, hardsilu, la_silu, la_hardsilu,
            la_silu_affine, la_hardsilu_affine); every site gets its own instance sized to its channels.
        norm: "bn", "ln" (LayerNorm over C, H, W) or "none".
        in_chans: input channels (1 for grayscale).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, act: str = "la_silu", norm: str = "bn",
                 in_chans: int = 3, widths=(16, 32, 64)) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth!r}")
        get_act_layer(act)  # fail on a bad name before building anything
        norm = check_norm(norm)
        blocks_per_stage = (depth - 2) // 6
        self.depth, self.act_name, self.norm_name = depth, act, norm
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.stem = ConvNormAct(in_chans, widths[0], 3, 1, norm, act)
        stages, in_chs = [], widths[0]
        for i, out_chs in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_chs, out_chs, stride, norm, act))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.pretrained_cfg = dict(CIFAR_CFG, num_classes=num_classes, input_size=(in_chans, 32, 32))
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.fc(x)



def init_weights(model: nn.Module) -> None:
    """He (Kaiming normal, fan-in) for convs and linears, zero biases; norms start as identity."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(depth: int = 20, num_classes: int = 10, act: str = "la_silu", norm: str = "bn",
                 in_chans: int = 3) -> CifarResNet:
    """A CIFAR ResNet of `depth` (6n+2) with activation `act` and normalization `norm`."""
    return CifarResNet(depth=depth, num_classes=num_classes, act=act, norm=norm, in_chans=in_chans)


def _create(depth: int, pretrained: bool = False, **kwargs) -> CifarResNet:
    return CifarResNet(depth=depth, **timm_model_kwargs(f"cifar_resnet{depth}", pretrained, kwargs,
                                                        "recipes/cifar_resnet.py"))


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create(110, pretrained, **kwargs)
