"""The normalization choices of the paper's experiments: bn, ln (LayerNorm over C,H,W) or none."""
from __future__ import annotations

from torch import nn

__all__ = ["NORMS", "check_norm", "create_norm"]

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
