"""Pretrained timm / torchvision models for fine-tuning: build by name, load weights files, swap the head,
and the model's own preprocessing.

`timm/<name>` or `torchvision/<name>`; weights from a local file (state_dict, timm or torchvision
training checkpoint, safetensors) or the library's download.
"""
from __future__ import annotations

import argparse
import importlib
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["LIBRARIES", "parse_model_name", "create_model", "load_weights", "classifier_name", "num_classes",
           "set_num_classes", "logits_of", "data_transforms", "input_size_kwarg"]

LIBRARIES = ("timm", "torchvision")


def parse_model_name(spec: str) -> Tuple[str, str]:
    """'timm/resnet18' -> ('timm', 'resnet18'); ValueError naming the expected form otherwise."""
    library, _, name = str(spec).partition("/")
    if library not in LIBRARIES or not name:
        raise ValueError(f"model {spec!r} must name its library: timm/<name> (e.g. timm/resnet18) or "
                         f"torchvision/<name> (e.g. torchvision/mobilenet_v3_small)")
    return library, name


def create_model(spec: str, weights: Optional[str] = None, **kwargs) -> nn.Module:
    """The model `spec` ('timm/<name>' or 'torchvision/<name>') with pretrained weights.

    `weights` is a local file (a state_dict, a timm checkpoint with 'state_dict' / 'state_dict_ema' /
    'model' keys, a torchvision checkpoint {'model': ...}, or .safetensors); its classifier may have
    any class count. Without it the library's own pretrained weights are used (downloaded when not
    cached); when that fails the error says to pass a local file. `kwargs` go to the library's factory
    (e.g. act="silu" for this package's timm-registered cifar_resnet20).
    """
    library, name = parse_model_name(spec)
    model = _build(library, name, weights is None, kwargs)
    if weights is not None:
        state_dict = load_weights(weights)
        head = classifier_name(model)
        head_weight = state_dict.get(f"{head}.weight")
        if head_weight is not None and head_weight.shape[0] != num_classes(model):
            set_num_classes(model, head_weight.shape[0])
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            found = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                     for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "mis-shaped"))
                     if keys]
            raise ValueError(f"weights {str(weights)!r} do not fit {spec}: {'; '.join(found)} keys; pass a checkpoint "
                             f"of this architecture")
        model.load_state_dict(state_dict)
    return model


def _build(library: str, name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    if library == "timm":
        import timm

        importlib.import_module("..models", __package__)  # registers this package's models (cifar_resnet20, ...)

        if not timm.is_model(name):
            close = timm.list_models(f"*{name}*")[:5]
            raise ValueError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
        if pretrained and not timm.is_model_pretrained(name):
            raise ValueError(f"timm has no pretrained weights for {name!r}; pass a local file with --weights PATH")
        return _download(lambda: timm.create_model(name, pretrained=pretrained, **kwargs), f"timm/{name}",
                         _weights_source(library, name) if pretrained else None)
    import torchvision

    if name not in torchvision.models.list_models(torchvision.models):
        close = [m for m in torchvision.models.list_models(torchvision.models) if name in m or m in name][:5]
        raise ValueError(f"unknown torchvision classification model {name!r}"
                         + (f"; similar: {', '.join(close)}" if close else ""))
    weights = "DEFAULT" if pretrained else None
    return _download(lambda: torchvision.models.get_model(name, weights=weights, **kwargs), f"torchvision/{name}",
                     _weights_source(library, name) if pretrained else None)


HUB_TIMEOUT = 3.0  # seconds to wait for the weights' server before saying it cannot be reached
OFFLINE_FIX = "pass a local state_dict or checkpoint with --weights PATH"


def _download(build, spec: str, source: Optional[Tuple[str, bool, bool]] = None) -> nn.Module:
    """build(), with one error naming the fix when the weights cannot be had. `source`: (URL the pretrained
    weights come from, whether they are in the local cache, whether the Hugging Face hub serves them)."""
    if source is not None:
        _check_reachable(spec, *source)
    try:
        return build()
    except TypeError as err:  # an option the model's factory does not take
        raise ValueError(f"{spec} does not take these options ({err})") from err
    except OSError as err:  # URLError, huggingface_hub's LocalEntryNotFoundError, a full disk
        raise ValueError(f"could not get the pretrained weights of {spec} ({type(err).__name__}: {err}); offline, "
                         f"{OFFLINE_FIX}") from err


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_reachable(spec: str, url: str, cached: bool, hub: bool) -> None:
    """ValueError at once, naming HF_HUB_OFFLINE=1 and --weights, when the weights would have to come over a
    network that does not answer: huggingface_hub retries for close to a minute before it gives up. With
    HF_HUB_OFFLINE=1 nothing is downloaded, for torchvision's weights either: they come from the local cache."""
    if _offline():
        if not cached:
            raise ValueError(f"HF_HUB_OFFLINE is set and the pretrained weights of {spec} are not in the local cache; "
                             f"{OFFLINE_FIX}, or download them once where a network is reachable")
        return
    if cached and not hub:  # torch.hub's cache is read without asking the server
        return
    host = urllib.parse.urlparse(url).hostname
    if host and not _reachable(host):
        use_cache = "set HF_HUB_OFFLINE=1 to use the copy in the local cache, or " if cached else ""
        raise ValueError(f"cannot reach {host} (no answer within {HUB_TIMEOUT:g} s) for the pretrained weights of "
                         f"{spec}; offline, {use_cache}{OFFLINE_FIX} (HF_HUB_OFFLINE=1 makes every download fail at "
                         f"once)")


def _reachable(host: str) -> bool:
    """Whether `host` answers on port 443 within HUB_TIMEOUT. Behind a proxy only a download can tell: True."""
    if urllib.request.getproxies().get("https"):
        return True
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT).close()
    except OSError:
        return False
    return True


def _weights_source(library: str, name: str) -> Optional[Tuple[str, bool, bool]]:
    """(URL, cached, from the Hugging Face hub) of the library's pretrained weights for `name`; None when it
    cannot be told (then the library's own download runs, and its own error is reported)."""
    try:
        if library == "torchvision":
            import torchvision

            url, hf_repo = torchvision.models.get_model_weights(name).DEFAULT.url, None
        else:
            import timm.models

            cfg = timm.models.get_pretrained_cfg(name)
            url, hf_repo = cfg.url, cfg.hf_hub_id
        if hf_repo:  # timm takes these from the hub (safetensors first)
            from huggingface_hub import constants, try_to_load_from_cache

            repo = hf_repo.split("@")[0]
            cached = any(isinstance(try_to_load_from_cache(repo, file), str)
                         for file in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
            return constants.ENDPOINT, cached, True
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
        return url, file.is_file(), False
    except Exception:  # a model or library version this look-up does not know: let the download speak
        return None


def load_weights(path: str) -> Dict[str, Tensor]:
    """The model state_dict inside a weights file, as create_model accepts it, with DDP/compile prefixes removed.

    timm's `load_state_dict` with what it lacks: the file is read weights-only (timm's training checkpoints
    need their argparse.Namespace allowed), and a file that cannot be read or holds no state_dict is one error
    saying what to pass instead. The prefixes go as timm removes them (`clean_state_dict`)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(file))
        else:
            # timm's training checkpoints carry their argparse.Namespace; nothing else outside plain data is unpickled.
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read weights file {str(path)!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); save the model's state_dict with "
                         f"torch.save(model.state_dict(), path)") from err
    # timm prefers the EMA weights of a training checkpoint (timm.models.load_checkpoint(use_ema=True)).
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not (isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values())):
        raise ValueError(f"weights file {str(path)!r} holds no state_dict (expected a dict of tensors, or a checkpoint "
                         f"with one under 'state_dict', 'state_dict_ema' or 'model')")
    from timm.models import clean_state_dict

    return clean_state_dict(checkpoint)


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the final nn.Linear: timm's pretrained_cfg['classifier'], else the last Linear."""
    named = getattr(model, "pretrained_cfg", {}).get("classifier")
    named = named[0] if isinstance(named, (tuple, list)) else named
    modules = dict(model.named_modules())
    if isinstance(modules.get(named), nn.Linear):
        return named
    linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier whose class count could be changed; "
                         f"fine-tune it on data with its own class count")
    return linears[-1]


def num_classes(model: nn.Module) -> int:
    return model.get_submodule(classifier_name(model)).out_features


def set_num_classes(model: nn.Module, count: int) -> nn.Module:
    """A new, randomly initialised classifier for `count` classes: timm's reset_classifier, else a new last Linear."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(count)
        return model
    name = classifier_name(model)
    old = model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = nn.Linear(old.in_features, count, bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    return model


def logits_of(output) -> Tensor:
    # torchvision's googlenet / inception_v3 return (logits, aux...) in training mode.
    return output[0] if isinstance(output, tuple) else output


AUGMENTS = ("imagenet", "cifar")


def data_transforms(model: nn.Module, spec: str, img_size: Optional[int] = None, crop_pct: Optional[float] = None,
                    min_scale: float = 0.08, augment: str = "imagenet"):
    """(train, eval) transforms from the model's own data config, at `img_size` when given.

    timm: resolve_data_config + create_transform. torchvision: the weights' transforms() for eval (its
    resize / crop sizes scaled to `img_size`), and random resized crop + flip with its mean, std and
    interpolation for training, as torchvision's reference recipe. augment="cifar" trains instead as the
    CIFAR recipes do: the image resized and centre-cropped as for eval, zero-padded by 4 pixels and randomly
    cropped back, randomly flipped, then normalized (no resized crops, no colour jitter: a model trained that
    way loses accuracy to ImageNet-style augmentation before it gains any).
    """
    from torchvision import transforms as T

    if augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTS)}")
    library, name = parse_model_name(spec)
    if library == "timm":
        from timm.data import create_transform, resolve_data_config

        overrides = {}
        if img_size is not None:
            overrides["input_size"] = (3, img_size, img_size)
        if crop_pct is not None:
            overrides["crop_pct"] = crop_pct
        config = resolve_data_config(overrides, model=model)
        eval_tf = create_transform(**config, is_training=False)
        if augment == "imagenet":
            return create_transform(**config, is_training=True, scale=(min_scale, 1.0)), eval_tf
        crop, mean, std = config["input_size"][-1], config["mean"], config["std"]
        resize, interpolation = round(crop / config["crop_pct"]), T.InterpolationMode(config["interpolation"])
    else:
        import torchvision
        from torchvision.transforms._presets import ImageClassification

        try:
            preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            crop, resize = preset.crop_size[0], preset.resize_size[0]
            mean, std, interpolation = preset.mean, preset.std, preset.interpolation
        except (ValueError, KeyError, AttributeError):  # a model without published weights: ImageNet's defaults
            crop, resize = 224, 256
            mean, std, interpolation = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), T.InterpolationMode.BILINEAR
        ratio = crop / resize if crop_pct is None else crop_pct
        crop = crop if img_size is None else img_size
        resize = round(crop / ratio)
        eval_tf = ImageClassification(crop_size=crop, resize_size=resize, mean=mean, std=std,
                                      interpolation=interpolation)
        if augment == "imagenet":
            return T.Compose([
                T.RandomResizedCrop(crop, scale=(min_scale, 1.0), interpolation=interpolation, antialias=True),
                T.RandomHorizontalFlip(),
                T.PILToTensor(),
                T.ConvertImageDtype(torch.float),
                T.Normalize(mean, std),
            ]), eval_tf
    train_tf = T.Compose([
        T.Resize(resize, interpolation=interpolation, antialias=True),
        T.CenterCrop(crop),
        T.RandomCrop(crop, padding=4),  # zero padding, before normalization: black borders, as the CIFAR recipes
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(mean, std),
    ])
    return train_tf, eval_tf


def input_size_kwarg(spec: str) -> str:
    """The factory keyword that sets a model's input side (vision transformers need it): timm and torchvision
    spell it differently."""
    return "img_size" if parse_model_name(spec)[0] == "timm" else "image_size"
