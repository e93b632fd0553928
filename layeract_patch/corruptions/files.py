"""The official CIFAR-10-C / CIFAR-100-C arrays (Hendrycks & Dietterich): one `<corruption>.npy` per
corruption holding the 10,000 test images at severity 1, then 2, ... 5 (uint8, N x 32 x 32 x 3), and
one `labels.npy` for all of them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from .names import SEVERITIES, check_name_and_severity


def cifar_c_paths(directory, name: str) -> Tuple[Path, Path]:
    """The two files a (corruption, directory) needs; FileNotFoundError naming any that is missing."""
    folder = Path(directory)
    paths = (folder / f"{name}.npy", folder / "labels.npy")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-C files missing: {', '.join(missing)}. --corruptions-dir must be a CIFAR-10-C or "
            f"CIFAR-100-C folder (https://github.com/hendrycks/robustness: <corruption>.npy and labels.npy), "
            f"or leave it out to generate the corruptions on the device.")
    return paths


def check_labels(directory, num_classes: Optional[int] = None) -> None:
    """ValueError naming `labels.npy` unless it holds one whole, non-negative class index per image (and, given
    `num_classes`, each below it): checked before an evaluation starts, not found half-way through it."""
    import numpy as np

    path = Path(directory) / "labels.npy"
    labels = np.load(path, mmap_mode="r")
    problem = None
    if labels.ndim != 1:
        problem = f"a {labels.ndim}-D array of shape {labels.shape}, not one label per image"
    elif not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        problem = f"{labels.dtype} values, not class indices"
    elif np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.floor(labels)):
        problem = f"labels that are not whole numbers (e.g. {labels[labels != np.floor(labels)][0]})"
    elif len(labels) and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        problem = (f"labels from {labels.min()} to {labels.max()}, outside the model's classes 0.."
                   f"{'' if num_classes is None else num_classes - 1}")
    if problem:
        raise ValueError(f"{path} holds {problem}; it must be the labels.npy of CIFAR-10-C / CIFAR-100-C "
                         f"(integer class indices, one per image)")


def load_cifar_c(directory, name: str, severity: int) -> Tuple[Tensor, Tensor]:
    """(images uint8 (N, 3, H, W), labels int64 (N,)) of one corruption at one severity from the
    official .npy files. numpy is imported here only: nothing else in the package needs it."""
    import numpy as np

    check_name_and_severity(name, severity)
    image_path, label_path = cifar_c_paths(directory, name)
    check_labels(directory)
    images = np.load(image_path, mmap_mode="r")  # 150 MB each: read only the severity's slice
    labels = np.load(label_path, mmap_mode="r")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) % len(SEVERITIES):
        raise ValueError(f"{image_path} holds a {images.dtype} array of shape {images.shape}; expected uint8 "
                         f"(5 * N, H, W, 3): N images at each of the 5 severities, in severity order")
    if len(labels) != len(images):
        raise ValueError(f"{label_path} has {len(labels)} labels for the {len(images)} images of {image_path}")
    per = len(images) // len(SEVERITIES)
    part = slice((severity - 1) * per, severity * per)
    nhwc = torch.from_numpy(np.array(images[part]))  # a copy: the memory map is read-only
    return nhwc.permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.asarray(labels[part]).astype(np.int64))
