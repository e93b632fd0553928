"""Image folders for fine-tuning, streamed through per-image transforms, with draws a resumed run repeats.

Unlike the CIFAR recipes, which keep the whole set as one uint8 tensor on the device, a fine-tuning
set at the model's resolution rarely fits in memory, and random resized crops need the full-size image.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator, List

import torch
from torch.utils.data import Dataset, Sampler

from .batches import derive_seed
from .data import check_mode, find_imagefolder, open_image
from .progress import Progress

__all__ = ["image_folders", "check_images", "SeededDraws", "EpochOrder"]


def image_folders(data_dir: str, train_transform=None, eval_transform=None):
    """(train, held-out) torchvision ImageFolders of `data_dir/train` and `data_dir/val` (or `test`).

    Labels follow the class folders of train/, so a held-out split that lacks a class still agrees.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(data_dir).expanduser()
    train_dir = find_imagefolder(root, train=True)
    eval_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if train_dir is None or eval_dir is None:
        state = "does not exist" if not root.is_dir() else f"lacks {'train/' if train_dir is None else 'val/ or test/'}"
        raise FileNotFoundError(f"data dir {str(data_dir)!r} {state}; expected an ImageFolder root with "
                                f"train/<class>/<image> and val/<class>/<image> (or test/)")
    for split in (train_dir, eval_dir):  # before torchvision walks them: it follows every link, loops included
        for folder in sorted(entry for entry in split.iterdir() if entry.is_dir()):
            _class_files(folder, IMG_EXTENSIONS)
    train = ImageFolder(str(train_dir), transform=train_transform, loader=_load_rgb)
    held_out = ImageFolder(str(eval_dir), transform=eval_transform, loader=_load_rgb)
    unknown = sorted(set(held_out.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"class folders {unknown} of {str(eval_dir)!r} are missing from {str(train_dir)!r}; "
                         f"both splits must use the same class folders")
    index = [train.class_to_idx[name] for name in held_out.classes]
    held_out.samples = [(path, index[target]) for path, target in held_out.samples]
    held_out.targets = [target for _, target in held_out.samples]
    held_out.classes, held_out.class_to_idx = train.classes, train.class_to_idx
    return train, held_out


def _load_rgb(path: str):
    """ImageFolder's loader: what the CIFAR recipes' loader decodes (16-bit grey rescaled, float pixels refused)."""
    return open_image(path).convert("RGB")


def _class_files(folder: Path, extensions) -> List[str]:
    """The images under one class folder; FileNotFoundError naming it when it has none. Directory links are
    followed, as torchvision does, but one that points back to a folder above it is refused: it would read the
    same images again and again."""
    files = []
    for current, dirs, names in os.walk(folder, followlinks=True):
        here = os.path.realpath(current)
        for name in dirs:
            target = os.path.realpath(os.path.join(current, name))
            if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                raise ValueError(f"{os.path.join(current, name)!r} is a link to {target!r}, a folder above it: "
                                 f"following it would read the same images again and again; remove the link")
        files += [os.path.join(current, n) for n in names if n.lower().endswith(tuple(extensions))]
    if not files:
        raise FileNotFoundError(f"class folder {str(folder)!r} holds no images ({', '.join(extensions)}); add images "
                                f"to it or remove the folder")
    return sorted(files)


class SeededDraws(Dataset):
    """Draw k is image k % len(base), augmented with RNGs seeded by (seed, k).

    The same draw gives the same tensor whichever worker loads it and whether or not the run was
    resumed in between, so a resumed run matches an uninterrupted one; the caller's RNGs are untouched.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed = base, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, draw: int):
        seed = derive_seed(self.seed, 0, draw)
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)  # timm's crops and flips draw from the `random` module
                return self.base[draw % len(self.base)]
        finally:
            random.setstate(python_state)


class EpochOrder(Sampler):
    """Draw numbers start..stop-1 of an endless stream of seeded epoch permutations.

    Position p is image perm_e[p % n] of epoch e = p // n, yielded as draw e * n + image (unique per epoch
    and image, so its augmentation differs from epoch to epoch).
    """

    def __init__(self, size: int, seed: int, start: int, stop: int) -> None:
        self.size, self.seed, self.start, self.stop = size, int(seed), start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        epoch, order = None, None
        for position in range(self.start, self.stop):
            if position // self.size != epoch:
                epoch = position // self.size
                generator = torch.Generator().manual_seed(derive_seed(self.seed, 0, epoch))
                order = torch.randperm(self.size, generator=generator).tolist()
            yield epoch * self.size + order[position % self.size]


def check_images(*datasets) -> None:
    """ValueError naming the first image PIL cannot decode (a truncated or broken file), before training starts.

    JPEGs are decoded at 1/8 scale (PIL's draft mode): the whole file is still read, so truncation shows,
    at a fraction of the cost of a full decode.
    """
    from PIL import Image

    from . import data  # LOAD_DELAY read at call time, so a test can lower it

    paths = [path for dataset in datasets for path, _ in dataset.samples]
    with Progress(len(paths), desc="checking images", delay=data.LOAD_DELAY) as progress:
        for number, path in enumerate(paths, 1):
            progress.update(number, images=1)
            try:
                with Image.open(path) as image:
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
            except (OSError, SyntaxError, ValueError) as err:  # PIL reports some broken PNGs as SyntaxError
                raise ValueError(f"cannot decode image {str(path)!r} ({err}); remove or replace the file") from None
            check_mode(image, path)  # float or 32-bit pixels: refused now, not mid-training
