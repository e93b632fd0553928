"""DDP / DataParallel / torch.compile wrappers: the converter sees the model inside and names it without them."""
from __future__ import annotations

from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


def is_wrapper(module: nn.Module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(module, "_orig_mod")


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers: the same forward, without their machinery."""
    while is_wrapper(module):
        module = module._orig_mod if hasattr(module, "_orig_mod") else module.module
    return module


def strip_wrappers(fqn: str) -> str:
    """The name as in the unwrapped model: DDP/DataParallel's `module.`, torch.compile's `_orig_mod.` removed."""
    while fqn.startswith(_WRAPPER_PREFIXES):
        fqn = fqn.split(".", 1)[1]
    return fqn
