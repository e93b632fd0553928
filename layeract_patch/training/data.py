"""Whole image data sets as one uint8 tensor: torchvision CIFAR/MNIST roots or an ImageFolder with train/ and test/.

The ImageFolder rule, for every recipe: `train/<class>/<image>` is trained on and `test/<class>/<image>` is
tested on, with the same class folders. The CIFAR recipes hold their validation images out of train/
(--val-fraction), so a `val/` folder is never their test set; fine-tuning (folders.py) evaluates on `val/`
when there is one, else on `test/`, and records which.

Decoding happens once, up front; the training loop then indexes and augments whole batches on the
device (see batches.py: random_crop_flip), as airbench does, instead of running PIL transforms per image per epoch.

CIFAR roots are the official batches torchvision downloads. The format is a pickle, and unpickling a
file can run code, so each file's md5 is checked against torchvision's list before it is read: any
other file is refused, named. Other data goes in an ImageFolder.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .progress import Progress

__all__ = ["DATASETS", "DATASET_STATS", "load_images", "stratified_split", "find_imagefolder", "is_imagefolder",
           "data_source", "dataset_stats", "open_image", "check_mode"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LOAD_DELAY = 2.0  # seconds of decoding before progress is shown: small folders load without a word

# Per-channel mean/std of each training set, in [0, 1] units (the usual published values).
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
}
DATASETS = tuple(DATASET_STATS)

# name -> (folder inside the root, train files, test files, meta file, label key, class-names key)
_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}

Images = Tuple[Tensor, Tensor, List[str]]


def imagefolder_layout(splits: Sequence[str] = ("train", "test")) -> str:
    """The ImageFolder layout a recipe reads, in its help and its errors: `splits` are the folders it needs."""
    return "an ImageFolder root with " + " and ".join(f"{split}/<class>/<image>" for split in splits)


def load_images(data_dir, dataset: str = "cifar10", train: bool = True, download: bool = True,
                image_size: Optional[int] = None, splits: Sequence[str] = ("train", "test")) -> Images:
    """Load one split as (images uint8 [N, C, H, W], labels int64 [N], class names).

    `data_dir` is either an ImageFolder root (`train/<class>/*.jpg` and `test/<class>/*.jpg`; grayscale
    images give C=1) or a torchvision root for `dataset` (cifar10, cifar100, mnist), which is downloaded
    there when missing and `download` is set. `image_size` resizes every image to a square of that side
    (needed when an ImageFolder's images differ in size). `splits` names the folders the caller reads, for
    the messages (a recipe that only trains reads train/ only).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser()
    folder = find_imagefolder(root, train)
    if folder is None and is_imagefolder(root):
        # Never fall through to torchvision: it would download CIFAR into the user's folder and
        # then train or test on a data set other than theirs.
        if not train and (root / "val").is_dir():
            raise FileNotFoundError(f"data dir {str(root)!r} has val/ but no test/: the CIFAR recipes test on test/ "
                                    f"(their validation images are held out of train/, --val-fraction); rename val/ "
                                    f"to test/ if it holds the images to test on")
        missing = "train/" if train else "test/"
        raise FileNotFoundError(f"data dir {str(root)!r} looks like an ImageFolder root but has no {missing} with "
                                f"class folders; add {root / ('train' if train else 'test')}/<class>/<image>")
    if folder is not None:
        images, labels, classes = _load_imagefolder(root, folder, image_size)
    else:
        images, labels, classes = _load_torchvision(root, dataset, train, download, splits)
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            images = _resize(images, image_size)
    return images, labels, classes


def stratified_split(labels: Tensor, fraction: float, seed: int) -> Tuple[Tensor, Tensor]:
    """Indices (train, held_out) with `fraction` of every class held out, chosen by `seed`; both sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    held_out = []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        count = int(round(fraction * len(members)))
        held_out.append(members[torch.randperm(len(members), generator=generator)[:count]])
    held = torch.cat(held_out) if held_out else torch.empty(0, dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().flatten(), held.sort().values


def is_imagefolder(root) -> bool:
    """True when `root` holds a train/, test/ or val/ folder: it is meant as an ImageFolder root."""
    return any((Path(root) / name).is_dir() for name in ("train", "test", "val"))


def data_source(data_dir, dataset: str) -> str:
    """What the data is, as results record it: "imagefolder:<folder name>" or the torchvision data set's name."""
    root = Path(data_dir).expanduser()
    return f"imagefolder:{root.resolve().name}" if is_imagefolder(root) else dataset


def find_imagefolder(root: Path, train: bool) -> Optional[Path]:
    """The split folder of an ImageFolder root (train/ or test/), None if `root` has none with class folders."""
    split = Path(root) / ("train" if train else "test")
    return split if split.is_dir() and any(child.is_dir() for child in split.iterdir()) else None


def _load_imagefolder(root: Path, split: Path, image_size: Optional[int]) -> Images:
    # Class indices come from train/ (sorted, as torchvision's ImageFolder), so test/ labels agree with them
    # even when the test split lacks a class.
    train_split = find_imagefolder(root, train=True) or split
    classes = sorted(entry.name for entry in train_split.iterdir() if entry.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for entry in sorted(split.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name not in index:
            raise ValueError(f"class folder {str(entry)!r} has no counterpart in {str(train_split)!r}; "
                             f"train/ and test/ must hold the same class folders")
        paths = sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        files += paths
        labels += [index[entry.name]] * len(paths)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {str(split)!r}; expected "
                                f"{split}/<class>/<image>")
    decoded = []
    # Decoding 60,000 JPEGs takes half a minute: past LOAD_DELAY seconds, progress says so, with an ETA.
    with Progress(len(files), desc=f"loading {split}", delay=LOAD_DELAY) as progress:
        for number, path in enumerate(files, 1):
            decoded.append(_decode(path))
            progress.update(number, images=1)
    channels = 3 if any(img.shape[0] == 3 for img in decoded) else 1
    decoded = [img.expand(channels, -1, -1) if img.shape[0] != channels else img for img in decoded]
    if image_size is not None:
        decoded = [_resize(img[None], image_size)[0] for img in decoded]
    sizes = {tuple(img.shape[-2:]) for img in decoded}
    if len(sizes) > 1:
        first = decoded[0].shape[-2:]
        other = next(i for i, img in enumerate(decoded) if img.shape[-2:] != first)
        raise ValueError(f"images under {str(split)!r} differ in size: {files[0]} is {tuple(first)}, {files[other]} "
                         f"is {tuple(decoded[other].shape[-2:])}; resize them to one size first")
    return torch.stack(decoded), torch.tensor(labels, dtype=torch.long), classes


def _decode(path: Path) -> Tensor:
    array = np.array(open_image(path))
    return torch.from_numpy(array)[None] if array.ndim == 2 else torch.from_numpy(array).permute(2, 0, 1)


# PIL modes by what they become: 8-bit grey ("L") or 8-bit RGB; 16-bit grey is rescaled to 8 bits. Other modes
# (32-bit integer "I", float "F") have no range a loader could know, and are refused.
_GRAY_MODES = ("1", "L", "LA", "La")
_RGB_MODES = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def open_image(path) -> "Image.Image":
    """The image at `path` as an 8-bit PIL image, "L" for grey ones and "RGB" for the rest; ValueError naming
    the file when it cannot be decoded or its mode has no 8-bit equivalent. Shared by both image loaders."""
    # PIL rather than torchvision.io, whose image decoders are deprecated since torchvision 0.29.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if _sixteen_bit(image):  # convert("L") would clip every value above 255
                wide = np.asarray(image).astype(np.float32)
                return Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L")
            check_mode(image, path)
            return image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:  # PIL reports some broken PNGs as SyntaxError
        raise ValueError(f"cannot decode image {str(path)!r}: {err}") from err


def _sixteen_bit(image) -> bool:
    return image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")  # older Pillow: "I"


def check_mode(image, path) -> None:
    """ValueError naming `path` when the PIL `image` has pixels that cannot become 8-bit ones without guessing."""
    mode = image.mode
    if mode in _GRAY_MODES or mode in _RGB_MODES or _sixteen_bit(image):
        return
    kind = "floating-point" if mode.startswith("F") else "32-bit integer" if mode.startswith("I") else "unusual"
    raise ValueError(f"image {str(path)!r} has {kind} pixels (PIL mode {mode!r}), which cannot become 8-bit pixels "
                     f"without guessing their range; save it as an 8- or 16-bit PNG or JPEG")


def _resize(images: Tensor, size: int) -> Tensor:
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _load_torchvision(root: Path, dataset: str, train: bool, download: bool, splits: Sequence[str]) -> Images:
    present = _cifar_present(root, dataset, train) if dataset in _CIFAR_LAYOUT else _mnist_present(root)
    if not present:
        what = (f"{_CIFAR_LAYOUT[dataset][0]}/" if dataset in _CIFAR_LAYOUT else "MNIST/raw/")
        expected = f"expected {imagefolder_layout(splits)}, or a torchvision {dataset} root holding {what}"
        if not download:
            state = "does not exist" if not root.exists() else "holds no usable data"
            raise FileNotFoundError(f"data dir {str(root)!r} {state}; {expected}")
        _download(root, dataset, expected)
    if dataset in _CIFAR_LAYOUT:
        return _read_cifar(root, dataset, train)
    return _read_mnist(root, train)


def _download(root: Path, dataset: str, expected: str) -> None:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST}[dataset]
    made = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError on bad md5
        for folder in made:  # deepest first: a failed download leaves no empty data/ behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise FileNotFoundError(f"no {dataset} data in {str(root)!r} and downloading it failed "
                                f"({type(err).__name__}: {err}); without a network, copy the data there first "
                                f"({expected})") from err


def _cifar_present(root: Path, dataset: str, train: bool) -> bool:
    folder, train_files, test_files, meta, *_ = _CIFAR_LAYOUT[dataset]
    names = (train_files if train else test_files) + [meta]
    return all((root / folder / name).is_file() for name in names)


def _read_cifar(root: Path, dataset: str, train: bool) -> Images:
    folder, train_files, test_files, meta, label_key, names_key = _CIFAR_LAYOUT[dataset]
    names = (train_files if train else test_files) + [meta]
    for name in names:  # every file first: nothing is unpickled from a root that holds one planted file
        _check_official(root / folder / name, dataset)
    arrays, labels = [], []
    for name in names[:-1]:
        entry = _unpickle(root / folder / name)
        arrays.append(torch.as_tensor(entry["data"], dtype=torch.uint8))
        labels += list(entry[label_key])
    classes = list(_unpickle(root / folder / meta)[names_key])
    images = torch.cat(arrays).reshape(-1, 3, 32, 32)
    return images.contiguous(), torch.tensor(labels, dtype=torch.long), classes


def _check_official(path: Path, dataset: str) -> None:
    """ValueError naming `path` unless its md5 is the one torchvision lists for the official file."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    official = dict(cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]])
    if not check_integrity(str(path), official[path.name]):
        raise ValueError(f"CIFAR file {str(path)!r} is not the official {dataset} file (its md5 differs from "
                         f"torchvision's list); refused without unpickling it, as a pickle can run code: delete "
                         f"{str(path.parent)!r} to download it again, or give other data as an ImageFolder "
                         f"(train/<class>/, test/<class>/)")


def _unpickle(path: Path) -> dict:
    # Only files _check_official passed get here: the official batches, which hold plain data.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"cannot read CIFAR file {str(path)!r} ({err}); re-download or re-extract it") from err


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def _mnist_present(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / name).is_file() for name in _MNIST_FILES)


def _read_mnist(root: Path, train: bool) -> Images:
    import torchvision.datasets as tvd

    data = tvd.MNIST(str(root), train=train, download=False)
    return data.data.unsqueeze(1).contiguous(), data.targets.long(), list(data.classes)


def dataset_stats(dataset: str, images: Tensor) -> Tuple[Sequence[float], Sequence[float]]:
    """Mean/std in [0, 1] units: the published values of a torchvision `dataset` when they fit the images'
    channels, else (an ImageFolder's `data_source`, say) measured on `images`, the training split."""
    mean, std = DATASET_STATS.get(dataset, ((), ()))
    if len(mean) == images.shape[1]:
        return mean, std
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).float().div_(255)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-3).tolist())

