"""CIFAR ResNets of He et al. 2016 (Sec. 4.2): depth 6n+2, option-A shortcuts, any activation of the registry."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from ..registry import create_act_layer, get_act_layer
from .layers import ClassifierMixin, ConvNormAct, build_cifar_model, check_init, check_norm, conv_bias, init_weights

__all__ = ["CifarResNet", "BasicBlock", "cifar_resnet", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
           "cifar_resnet56", "cifar_resnet110"]

CIFAR_CFG = dict(num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation="bilinear",
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), first_conv="stem.conv",
                 classifier="fc", url="", license="mit")
default_cfgs: Dict[str, Dict[str, Any]] = {f"cifar_resnet{d}": dict(CIFAR_CFG) for d in (20, 32, 44, 56, 110)}


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm, add the shortcut, then the activation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, norm: str = "bn", act: str = "la_silu",
                 bias: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, stride, norm, act, bias=bias)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, 1, norm, act, apply_act=False, bias=bias)
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
        init: "he" (Kaiming normal; convs without bias before a norm) or "torch" (PyTorch's default init and
            biased convs, as the LayerAct authors' code). See layeract_patch.models for which experiment uses which.
    """
    num_feature_levels = 4  # stem, stage 1, 2, 3

    def __init__(self, depth: int = 20, num_classes: int = 10, act: str = "la_silu", norm: str = "bn",
                 in_chans: int = 3, widths=(16, 32, 64), init: str = "he") -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth!r}")
        get_act_layer(act)  # fail on a bad name before building anything
        norm, init = check_norm(norm), check_init(init)
        bias = conv_bias(norm, init)
        blocks_per_stage = (depth - 2) // 6
        self.depth, self.act_name, self.norm_name, self.init = depth, act, norm, init
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = widths[-1]
        self.stem = ConvNormAct(in_chans, widths[0], 3, 1, norm, act, bias=bias)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="stem")]
        stages, in_chs, reduction = [], widths[0], 1
        for i, out_chs in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_chs, out_chs, stride, norm, act, bias=bias))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            reduction *= 2 if i > 0 else 1
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.pretrained_cfg = dict(CIFAR_CFG, num_classes=num_classes, input_size=(in_chans, 32, 32))
        init_weights(self, init)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.fc(x)


def cifar_resnet(depth: int = 20, pretrained: bool = False, **kwargs) -> CifarResNet:
    """A CIFAR ResNet of `depth` (6n+2); kwargs: num_classes, act, norm, in_chans, init and timm's own
    (features_only, out_indices, ...), as `timm.create_model(f"cifar_resnet{depth}", ...)`."""
    return build_cifar_model(CifarResNet, f"cifar_resnet{depth}", CIFAR_CFG, "recipes/cifar_resnet.py",
                             pretrained, depth=depth, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return cifar_resnet(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return cifar_resnet(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return cifar_resnet(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return cifar_resnet(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return cifar_resnet(110, pretrained, **kwargs)
