"""What the CIFAR models share: the norm and init choices, conv-norm-act, the timm head API and timm builder."""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import create_act_layer

__all__ = ["NORMS", "INITS", "check_norm", "check_init", "create_norm", "conv_bias", "init_weights", "ConvNormAct",
           "ClassifierMixin", "build_cifar_model", "ChannelLayerNorm"]

# "ln": per-sample LayerNorm over (C, H, W) (the paper's Table 2); "lnc": LayerNorm over the channels of each
# pixel (ConvNeXt's); see create_norm.
NORMS = ("bn", "ln", "none", "lnc")
# "he": Kaiming normal (He et al. 2015), what CIFAR ResNet code usually does.
# "torch": PyTorch's own reset_parameters and biased convs everywhere, as in the LayerAct authors' code
#          (their models/architectures/ResNet_small.py builds plain nn.Conv2d layers and never re-initialises).
INITS = ("he", "torch")


def check_norm(norm: str) -> str:
    key = norm.strip().lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    return key


def check_init(init: str) -> str:
    key = init.strip().lower() if isinstance(init, str) else init
    if key not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of: {', '.join(INITS)} (he = Kaiming normal, "
                         f"torch = PyTorch's default as in the LayerAct authors' code)")
    return key


def conv_bias(norm: str, init: str) -> bool:
    """He-init models drop the bias a following norm would cancel; the authors' code ("torch") always has one."""
    return norm == "none" or init == "torch"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) tensor: ConvNeXt's norm (timm's LayerNorm2d),
    eps 1e-6 as ConvNeXt's; a per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def create_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d, 'LayerNorm over (C, H, W)', 'LayerNorm over C at each pixel', or Identity.

    "ln" is GroupNorm with one group: the same per-sample statistics as nn.LayerNorm([C, H, W]) but with a
    per-channel affine (instead of one per element), so the layer does not depend on the spatial size
    and the model takes any input resolution.
    "lnc" is ChannelLayerNorm: statistics per sample and pixel over the C channels, as ConvNeXt's LayerNorm.
    """
    norm = check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    if norm == "lnc":
        return ChannelLayerNorm(channels)
    return nn.Identity()


def init_weights(model: nn.Module, init: str = "he") -> None:
    """"he": Kaiming normal (fan-in) for convs and linears, zero biases, norms as identity.
    "torch": leave every layer as its constructor's reset_parameters() made it."""
    if check_init(init) == "torch":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvNormAct(nn.Module):
    """conv -> norm -> activation; the activation is optional."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, norm: str = "bn",
                 act: str = "la_silu", apply_act: bool = True, bias: Optional[bool] = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=norm == "none" if bias is None else bias)
        self.norm = create_norm(norm, out_chs)
        self.act = create_act_layer(act, num_channels=out_chs) if apply_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class ClassifierMixin:
    """timm's model API over `forward_features` / `forward_head` and a linear `fc` on `num_features`."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def build_cifar_model(model_cls: Type[nn.Module], variant: str, default_cfg: Dict[str, Any], recipe: str,
                      pretrained: bool = False, **kwargs) -> nn.Module:
    """The model through timm's build_model_with_cfg: its kwargs (features_only, out_indices, num_classes,
    in_chans, pretrained_cfg_overlay, ...) behave as for timm's own models. No pretrained weights exist."""
    from timm.models import build_model_with_cfg

    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; train one with {recipe} and load its model.pt")
    if not kwargs.get("pretrained_cfg"):
        kwargs["pretrained_cfg"] = dict(default_cfg)  # also for depths timm has no registered name for (8, 26, ...)
    # Every stage is one module of `stages`: the feature wrapper flattens that Sequential to reach them.
    return build_model_with_cfg(model_cls, variant, pretrained=False,
                                feature_cfg=dict(flatten_sequential=True,
                                                 out_indices=tuple(range(model_cls.num_feature_levels))),
                                **kwargs)
