"""The LayerAct paper's published numbers (as quoted in issue 13), for the report's "paper" columns.

Accuracy: test top-1 (%) as (best, mean) over the paper's runs (5 seeds; the no-normalization appendix
reports only the mean, over 30 seeds). Table 5: the standard deviation of the per-sample test loss,
as the paper's two numbers (best, mean). Keys: (model, depth or None, norm, dataset).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ["ACCURACY", "LOSS_STD", "SOURCES", "PAPER_SCHEDULE", "paper_accuracy", "paper_loss_std", "act_label"]

Key = Tuple[str, Optional[int], str, str]
Pair = Tuple[Optional[float], float]

ACCURACY: Dict[Key, Dict[str, Pair]] = {
    ("layeract_cnn", None, "none", "cifar10"): {
        "relu": (87.08, 86.98), "silu": (87.85, 87.65), "hardsilu": (87.48, 87.35), "la_silu": (88.04, 87.82),
        "la_hardsilu": (88.26, 87.92), "la_silu_affine": (88.62, 88.35), "la_hardsilu_affine": (88.16, 87.89)},
    ("layeract_cnn", None, "bn", "cifar10"): {
        "relu": (89.72, 89.21), "silu": (90.69, 90.23), "la_silu": (90.65, 90.26), "la_hardsilu": (90.95, 90.08)},
    ("layeract_cnn", None, "ln", "cifar10"): {"relu": (83.9, 83.28), "silu": (88.07, 87.71)},
    ("cifar_resnet", 20, "bn", "cifar10"): {
        "relu": (91.68, 91.41), "silu": (91.92, 91.52), "la_silu": (91.97, 91.75), "la_hardsilu": (91.74, 91.47)},
    ("cifar_resnet", 20, "bn", "cifar100"): {
        "relu": (66.25, 65.98), "silu": (66.68, 66.09), "la_silu": (66.65, 66.42), "la_hardsilu": (66.64, 66.30)},
    ("cifar_resnet", 44, "bn", "cifar10"): {
        "relu": (92.59, 92.38), "silu": (92.31, 91.94), "la_silu": (93.00, 92.67), "la_hardsilu": (91.93, 91.68)},
    ("cifar_resnet", 32, "none", "cifar10"): {"silu": (None, 46.51), "la_silu": (None, 89.12)},
    ("cifar_resnet", 44, "none", "cifar10"): {"silu": (None, 15.25), "la_silu": (None, 88.77)},
}

LOSS_STD: Dict[Key, Dict[str, Pair]] = {
    ("cifar_resnet", 20, "bn", "cifar10"): {
        "relu": (1.51, 1.53), "silu": (1.57, 1.61), "la_silu": (1.33, 1.39), "la_hardsilu": (1.38, 1.42)},
    ("cifar_resnet", 44, "bn", "cifar10"): {
        "relu": (1.54, 1.64), "silu": (1.59, 1.67), "la_silu": (1.45, 1.48), "la_hardsilu": (1.61, 1.64)},
}

SOURCES: Dict[Key, str] = {
    ("layeract_cnn", None, "none", "cifar10"): "Table 2, no normalization (5 runs)",
    ("layeract_cnn", None, "bn", "cifar10"): "Table 2, batch norm (5 runs)",
    ("layeract_cnn", None, "ln", "cifar10"): "Table 2, layer norm (5 runs)",
    ("cifar_resnet", 20, "bn", "cifar10"): "Table 3 and Table 5 (5 runs)",
    ("cifar_resnet", 20, "bn", "cifar100"): "Table 3, CIFAR-100 (5 runs)",
    ("cifar_resnet", 44, "bn", "cifar10"): "Table 4 and Table 5 (5 runs)",
    ("cifar_resnet", 32, "none", "cifar10"): "appendix, no normalization, lr 0.01 (mean of 30 runs)",
    ("cifar_resnet", 44, "none", "cifar10"): "appendix, no normalization, lr 0.01 (mean of 30 runs)",
}

# The schedule every number above was measured with.
PAPER_SCHEDULE = dict(iterations=64000, milestones=(32000, 48000), batch_size=128, lr="0.1 (0.01 without norm)")


def paper_accuracy(key: Key, act: str) -> Optional[Pair]:
    return ACCURACY.get(key, {}).get(act)


def paper_loss_std(key: Key, act: str) -> Optional[Pair]:
    return LOSS_STD.get(key, {}).get(act)


_NAMES = {"relu": "ReLU", "silu": "SiLU", "hardsilu": "HardSiLU", "gelu": "GELU", "gelu_tanh": "GELU(tanh)"}


def act_label(name: str) -> str:
    """la_silu_affine -> "Affine LA-SiLU", the paper's spelling."""
    affine = name.endswith("_affine")
    base = name[: -len("_affine")] if affine else name
    label = ("LA-" + _NAMES.get(base[3:], base[3:])) if base.startswith("la_") else _NAMES.get(base, base)
    return ("Affine " if affine else "") + label
