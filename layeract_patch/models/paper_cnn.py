"""The LayerAct paper's CNN (its Appendix Table 6): five stages of 1x1, 3x3, 3x3 convs and a 2x2 max pool."""
from __future__ import annotations

from typing import Any, Dict

import torch
from timm.models import register_model
from torch import Tensor, nn

from ..registry import create_act_layer, get_act_layer
from .cifar_resnet import CIFAR_CFG, init_weights
from .norm import check_norm, create_norm

__all__ = ["PaperCNN", "paper_cnn", "layeract_cnn"]

default_cfgs: Dict[str, Dict[str, Any]] = {"layeract_cnn": dict(CIFAR_CFG, first_conv="stages.0.0.conv",
                                                                   classifier="fc")}


class ConvNormAct(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=norm == "none")
        self.norm = create_norm(norm, out_chs)
        self.act = create_act_layer(act, num_channels=out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class PaperCNN(nn.Module):
    """Stage k (width c = 16, 32, 64, 128, 256): conv1x1 c_in->c, conv3x3 c->c, conv3x3 c->2c, maxpool 2x2.

    For 32x32 inputs the stages leave 16x16x32, 8x8x64, 4x4x128, 2x2x256 and 1x1x512, then a linear
    classifier: 15 convolutions, each followed by the normalization and the activation.
    Arguments as CifarResNet's (act, norm, num_classes, in_chans).
    """

    def __init__(self, num_classes: int = 10, act: str = "la_silu", norm: str = "bn", in_chans: int = 3,
                 widths=(16, 32, 64, 128, 256)) -> None:
        super().__init__()
        get_act_layer(act)
        norm = check_norm(norm)
        self.act_name, self.norm_name = act, norm
        self.num_classes = num_classes
        stages, in_chs = [], in_chans
        for width in widths:
            stages.append(nn.Sequential(
                ConvNormAct(in_chs, width, 1, norm, act),
                ConvNormAct(width, width, 3, norm, act),
                ConvNormAct(width, 2 * width, 3, norm, act),
                nn.MaxPool2d(2, 2),
            ))
            in_chs = 2 * width
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.fc = nn.Linear(self.num_features, num_classes)
        self.pretrained_cfg = dict(default_cfgs["layeract_cnn"], num_classes=num_classes,
                                   input_size=(in_chans, 32, 32))
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        # Flatten rather than pool: at 32x32 input the map is 1x1 here, as the paper's classifier expects;
        # other sizes fail loudly in fc instead of silently averaging.
        x = torch.flatten(x, 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def paper_cnn(num_classes: int = 10, act: str = "la_silu", norm: str = "bn", in_chans: int = 3) -> PaperCNN:
    """The paper's 15-conv CNN for 32x32 inputs with activation `act` and normalization `norm`."""
    return PaperCNN(num_classes=num_classes, act=act, norm=norm, in_chans=in_chans)


@register_model
def layeract_cnn(pretrained: bool = False, **kwargs) -> PaperCNN:
    if pretrained:
        raise ValueError("layeract_cnn has no pretrained weights; train one with recipes/cifar_cnn.py")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return PaperCNN(**kwargs)
