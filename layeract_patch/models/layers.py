"""What the CIFAR models share: the norm choice (bn, ln = LayerNorm over C,H,W, none), conv-norm-act, the timm head API."""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import create_act_layer

__all__ = ["NORMS", "check_norm", "create_norm", "ConvNormAct", "ClassifierMixin", "timm_model_kwargs"]

NORMS = ("bn", "ln", "none")


def check_norm(norm: str) -> str:
    key = norm.strip().lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    return key


def create_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d, 'LayerNorm over (C, H, W)', or Identity.

    "ln" is GroupNorm with one group: the same per-sample statistics as nn.LayerNorm([C, H, W]) but with a
    per-channel affine (instead of one per element), so the layer does not depend on the spatial size
    and the model takes any input resolution.
    """
    norm = check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class ConvNormAct(nn.Module):
    """conv -> norm -> activation; the conv has a bias only without a norm, the activation is optional."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, norm: str = "bn",
                 act: str = "la_silu", apply_act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=norm == "none")
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


def timm_model_kwargs(name: str, pretrained: bool, kwargs: dict, recipe: str) -> dict:
    """The architecture's own kwargs from a timm factory call; no pretrained weights exist for these models."""
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; train one with {recipe} and load its model.pt")
    # timm's factory passes its own bookkeeping options; the architecture takes none of them.
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
