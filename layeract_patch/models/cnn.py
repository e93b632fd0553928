"""The LayerAct paper's CNN (its Appendix Table 6): five stages of 1x1, 3x3, 3x3 convs and a 2x2 max pool."""
from __future__ import annotations

from typing import Any, Dict

import torch
from timm.models import register_model
from torch import Tensor, nn

from ..registry import get_act_layer
from .cifar_resnet import CIFAR_CFG
from .layers import ClassifierMixin, ConvNormAct, build_cifar_model, check_init, check_norm, conv_bias, init_weights

__all__ = ["PaperCNN", "layeract_cnn"]

default_cfgs: Dict[str, Dict[str, Any]] = {"layeract_cnn": dict(CIFAR_CFG, first_conv="stages.0.0.conv",
                                                                   classifier="fc")}


class PaperCNN(ClassifierMixin, nn.Module):
    """Stage k (width c = 16, 32, 64, 128, 256): conv1x1 c_in->c, conv3x3 c->c, conv3x3 c->2c, maxpool 2x2.

    For 32x32 inputs the stages leave 16x16x32, 8x8x64, 4x4x128, 2x2x256 and 1x1x512, then a linear
    classifier: 15 convolutions, each followed by the normalization and the activation.
    Arguments as CifarResNet's (act, norm, num_classes, in_chans, init).
    """
    num_feature_levels = 5  # one per stage

    def __init__(self, num_classes: int = 10, act: str = "la_silu", norm: str = "bn", in_chans: int = 3,
                 widths=(16, 32, 64, 128, 256), init: str = "he") -> None:
        super().__init__()
        get_act_layer(act)
        norm, init = check_norm(norm), check_init(init)
        bias = conv_bias(norm, init)
        self.act_name, self.norm_name, self.init = act, norm, init
        self.num_classes = num_classes
        self.in_chans = in_chans
        stages, in_chs, self.feature_info = [], in_chans, []
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(
                ConvNormAct(in_chs, width, 1, norm=norm, act=act, bias=bias),
                ConvNormAct(width, width, 3, norm=norm, act=act, bias=bias),
                ConvNormAct(width, 2 * width, 3, norm=norm, act=act, bias=bias),
                nn.MaxPool2d(2, 2),
            ))
            in_chs = 2 * width
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.fc = nn.Linear(self.num_features, num_classes)
        self.pretrained_cfg = dict(default_cfgs["layeract_cnn"], num_classes=num_classes,
                                   input_size=(in_chans, 32, 32))
        init_weights(self, init)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        # Flatten rather than pool: at 32x32 input the map is 1x1 here, as the paper's classifier expects;
        # other sizes fail loudly in fc instead of silently averaging.
        x = torch.flatten(x, 1)
        return x if pre_logits else self.fc(x)


@register_model
def layeract_cnn(pretrained: bool = False, **kwargs) -> PaperCNN:
    """The paper's 15-conv CNN for 32x32 inputs; kwargs: num_classes, act, norm, in_chans, init and timm's own
    (features_only, ...). The same as `timm.create_model("layeract_cnn", ...)`."""
    return build_cifar_model(PaperCNN, "layeract_cnn", default_cfgs["layeract_cnn"], "recipes/cifar_cnn.py",
                             pretrained, **kwargs)
