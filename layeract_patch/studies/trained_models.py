"""Trained models back from disk, for evaluations after training (the corruption recipe).

    trained = load_trained("runs/r20_la_silu")           # a CIFAR run, its seed_<n>/ or a model.pt in it
    trained = load_trained("runs/ft_resnet18")           # a fine-tuning run (recipes/finetune.py)
    images, labels = trained.test_images("data")         # uint8 (N, 3, H, W), as the model was tested

A CIFAR run is rebuilt from the "architecture" its results.json records (runs written before it was
recorded: from checkpoint.pt's settings) and loaded with seed_<n>/model.pt, the tested
best-validation weights; images are normalised with the training split's mean/std it records.
A fine-tuning run is rebuilt without downloading anything: the bare architecture, its head resized to
the run's classes, converted to LayerAct as the run did (not for checkpoint_baseline.pt), then loaded
with the checkpoint's weights; images go through the model's own eval resize and crop, kept as uint8
so that the corruptions see the pixels the model sees.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["TrainedModel", "load_trained"]

FINETUNE_CHECKPOINTS = ("checkpoint_finetuned.pt", "checkpoint_baseline.pt")


@dataclass
class TrainedModel:
    """A trained network in eval mode (on the CPU) with what it needs to be tested as it was."""
    model: nn.Module
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    num_classes: int
    classes: Optional[List[str]]  # the class names, where the run recorded them (fine-tuning records a count)
    description: dict  # what results.json records about the model
    load_images: Callable[[str], Tuple[Tensor, Tensor, List[str]]] = field(repr=False)
    image_size: Optional[Tuple[int, int]] = None  # what it was trained on, when known

    def test_images(self, data_dir) -> Tuple[Tensor, Tensor]:
        """The test split of `data_dir` as uint8 (N, 3, H, W) and labels; ValueError when it does not fit
        the model (other classes, another image size, not RGB), before any evaluation."""
        images, labels, classes = self.load_images(str(data_dir))
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"--data-dir {str(data_dir)!r} holds {images.shape[1]}-channel images; the corruptions "
                             f"are defined on RGB images")
        if len(classes) != self.num_classes or (self.classes is not None and list(classes) != self.classes):
            trained = f" ({_few(self.classes)})" if self.classes else ""
            raise ValueError(f"--data-dir {str(data_dir)!r} has {len(classes)} classes ({_few(classes)}); the model "
                             f"was trained on {self.num_classes}{trained}: give the data it was trained on")
        size = tuple(images.shape[-2:])
        if self.image_size is not None and size != tuple(self.image_size):
            raise ValueError(f"--data-dir {str(data_dir)!r} holds {size[0]}x{size[1]} images; the model was trained "
                             f"on {self.image_size[0]}x{self.image_size[1]}: give its own test images")
        x = images[:2].float().div(255).sub(torch.tensor(self.mean).view(1, 3, 1, 1))
        try:
            with torch.no_grad():
                self.model(x.div(torch.tensor(self.std).view(1, 3, 1, 1)))
        except (RuntimeError, ValueError, AssertionError) as err:
            raise ValueError(f"the model does not take the {size[0]}x{size[1]} images of --data-dir "
                             f"{str(data_dir)!r} ({str(err).splitlines()[0]}); give its own test images") from None
        return images, labels


def _few(names: List[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def load_trained(path) -> TrainedModel:
    """The model of a CIFAR run directory (one seed, or its seed_<n>/ folder, or a model.pt in one) or of a
    fine-tuning run directory (or its checkpoint_finetuned.pt / checkpoint_baseline.pt); FileNotFoundError /
    ValueError naming the path and what it should be otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        from ..training.cifar_config import CIFAR_MODELS

        recipes = ", ".join(Path(recipe).name for recipe in CIFAR_MODELS.values())
        raise FileNotFoundError(f"--checkpoint {str(path)!r} does not exist; give a run folder of recipes/{recipes} "
                                f"or finetune.py")
    if path.is_file() and path.name in FINETUNE_CHECKPOINTS:
        return _load_finetuned(path.parent, path)
    if path.is_dir() and (path / FINETUNE_CHECKPOINTS[0]).is_file():
        return _load_finetuned(path, path / FINETUNE_CHECKPOINTS[0])
    if path.is_file():
        weights = path
    elif (path / "model.pt").is_file():
        weights = path / "model.pt"
    else:
        seeds = sorted(path.glob("seed_*/model.pt"))
        if not seeds:
            raise FileNotFoundError(f"--checkpoint {str(path)!r} holds no trained model (seed_<n>/model.pt or "
                                    f"checkpoint_finetuned.pt); give a finished run's folder")
        if len(seeds) > 1:
            raise ValueError(f"--checkpoint {str(path)!r} holds {len(seeds)} seeds "
                             f"({', '.join(seed.parent.name for seed in seeds)}); give one of its seed_<n>/ folders")
        weights = seeds[0]
    return _load_cifar(weights)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(path)!r} ({type(err).__name__}: {err}); is the run finished?") from None


def _load_cifar(weights: Path) -> TrainedModel:
    from ..training.cifar import build_model
    from ..training.checkpoint import load_checkpoint
    from ..training.data import DATASETS, load_images

    seed_results = weights.parent / "results.json"
    if not seed_results.is_file():
        raise FileNotFoundError(f"{str(weights)!r} has no results.json beside it; give a seed_<n>/ folder or "
                                f"model.pt of a finished CIFAR run")
    results = _read_json(seed_results)
    arch, classes, normalization = results.get("architecture"), results.get("classes"), results.get("normalization")
    state = load_checkpoint(weights)
    if "optimizer" in state:
        raise ValueError(f"{str(weights)!r} is a training checkpoint (the state of the last iteration); give the "
                         f"tested best-validation weights, {str(weights.parent / 'model.pt')!r}, or its folder")
    if arch is None:  # a run written before results.json recorded these: its checkpoint and run summary have them
        settings = load_checkpoint(weights.parent / "checkpoint.pt")["settings"]
        classes = settings["data"]["classes"]
        first_conv = next(v for v in state.values() if v.dim() == 4)
        arch = {key: settings.get(key) for key in ("model", "depth", "act", "norm", "init")}
        arch.update(num_classes=len(classes), in_chans=first_conv.shape[1], image_size=None)
        normalization = _read_json(weights.parent.parent / "results.json")["normalization"]
    model = build_model(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{str(weights)!r} does not fit the {arch['model']} its results.json describes "
                         f"({str(err).splitlines()[0]})") from None
    source = results.get("dataset", "cifar10")
    dataset = source if source in DATASETS else ("cifar100" if arch["num_classes"] == 100 else "cifar10")
    description = {"kind": "cifar", "checkpoint": str(weights), "model": results.get("model"), "act": arch["act"],
                   "norm": arch["norm"], "init": arch.get("init"), "seed": results.get("seed"),
                   "trained_on": source}
    image_size = tuple(arch["image_size"]) if arch.get("image_size") else None

    def test_split(data_dir: str):
        return load_images(data_dir, dataset, train=False, download=False)

    return TrainedModel(model.eval(), tuple(normalization["mean"]), tuple(normalization["std"]), len(classes),
                        list(classes), description, test_split, image_size)


def _load_finetuned(run_dir: Path, checkpoint: Path) -> TrainedModel:
    from ..training.checkpoint import load_checkpoint
    from ..training.finetune_config import conversion_target
    from ..training.folders import image_folders
    # _build: the bare architecture; create_model would fetch pretrained weights only to overwrite them.
    from ..training.pretrained import _build, data_transforms, num_classes, parse_model_name, set_num_classes

    results = _read_json(run_dir / "results.json") if (run_dir / "results.json").is_file() else {}
    settings = results.get("settings")
    if not isinstance(settings, dict) or not isinstance(results.get("classes"), int):
        raise FileNotFoundError(f"{str(run_dir)!r} has no results.json of a fine-tuning run beside {checkpoint.name}; "
                                f"give the folder recipes/finetune.py wrote")
    spec = results["model"]
    model = _build(*parse_model_name(spec), False, dict(settings.get("model_kwargs") or {}))
    if num_classes(model) != results["classes"]:
        set_num_classes(model, results["classes"])
    to_uint8, mean, std = _uint8_eval_transform(
        data_transforms(model, spec, settings.get("img_size"), settings.get("crop_pct"))[1])
    converted = checkpoint.name == FINETUNE_CHECKPOINTS[0]  # the baseline was fine-tuned unconverted
    if converted:
        from ..convert import convert_activations
        from PIL import Image

        side = to_uint8(Image.new("RGB", (512, 512))).shape[-1]
        target, affine = conversion_target(settings["act"])
        model = convert_activations(model.eval(), to=target, affine=affine, example_input=torch.zeros(2, 3, side, side),
                                    functional=settings.get("functional", "report"))
    state = load_checkpoint(checkpoint)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{str(checkpoint)!r} does not fit {spec} as its results.json describes it "
                         f"({str(err).splitlines()[0]})") from None

    def load_images(data_dir: str):
        _, held_out = image_folders(data_dir, eval_transform=to_uint8)
        if len(held_out) == 0:
            raise FileNotFoundError(f"no images under the val/ or test/ folder of --data-dir {data_dir!r}")
        images = torch.stack([image for image, _ in held_out])
        return images, torch.tensor(held_out.targets, dtype=torch.long), list(held_out.classes)

    description = {"kind": "finetune", "checkpoint": str(checkpoint), "model": spec,
                   "act": settings["act"] if converted else "original", "weights": results.get("weights"),
                   "seed": settings.get("seed")}
    return TrainedModel(model.eval(), mean, std, results["classes"], None, description, load_images)


def _uint8_eval_transform(eval_transform):
    """(the eval transform's resize and crop, ending in a uint8 tensor; its mean; its std)."""
    from torchvision import transforms as T

    if hasattr(eval_transform, "crop_size"):  # torchvision's ImageClassification preset
        geometry = [T.Resize(eval_transform.resize_size, interpolation=eval_transform.interpolation, antialias=True),
                    T.CenterCrop(eval_transform.crop_size)]
        mean, std = eval_transform.mean, eval_transform.std
    else:  # timm's eval transform: Compose([resize, crop, (Maybe)ToTensor, Normalize])
        steps = list(eval_transform.transforms)
        cut = next(i for i, step in enumerate(steps) if type(step).__name__.endswith("ToTensor"))
        normalize = next(step for step in steps if isinstance(step, T.Normalize))
        geometry, mean, std = steps[:cut], normalize.mean, normalize.std
    return T.Compose([*geometry, T.PILToTensor()]), tuple(map(float, mean)), tuple(map(float, std))
