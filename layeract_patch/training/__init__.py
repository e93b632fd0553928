"""What the recipes share: on-device data, the training loop, checkpoints, progress, results.

The submodules import only torch; `main`, `get_args_parser` and `run` (the CIFAR recipes' CLI) load
the models, and with them timm, on first use.
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_images, stratified_split
from .progress import Progress

__all__ = ["save_checkpoint", "load_checkpoint", "Progress", "load_images", "stratified_split",
           "get_args_parser", "main", "run"]


def __getattr__(name):
    if name in ("get_args_parser", "main", "run"):
        from . import cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
