"""What the recipes share: on-device data, the one training loop (spine), checkpoints, progress, results.

    spine.py       the loop: Run, LoopConfig, fit (batches -> step -> evaluate -> checkpoint/stop/resume)
    checkpoint.py  the checkpoint format (atomic writes) and the resume rule
    outdir.py      the lock on an output folder, stale temp files
    batches.py     CIFAR batches drawn and augmented on the device
    data.py        whole data sets as uint8 tensors (torchvision roots, ImageFolders)
    metrics.py     top-1/top-5/loss/loss-std evaluation
    robustness.py  a model under the CIFAR-C corruptions: per severity, group means, mCE
    results.py     results.json, CSVs, the multi-seed summary, loss curves
    cifar_config.py  the CIFAR recipes' typed config, its checks and the paper's defaults
    cifar.py, cli.py      the CIFAR run (data on the device, one run per seed) and its flags
    finetune.py, pretrained.py   fine-tuning a timm / torchvision model after conversion

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
