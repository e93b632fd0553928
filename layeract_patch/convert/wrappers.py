"""DDP / DataParallel / torch.compile wrappers: the converter sees the model inside and names it without them.
TorchScript modules it cannot see into: they are refused."""
from __future__ import annotations

import torch
from torch import nn


def is_wrapper(module: nn.Module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(module, "_orig_mod")


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers: the same forward, without their machinery."""
    while is_wrapper(module):
        module = module._orig_mod if hasattr(module, "_orig_mod") else module.module
    return module


def strip_wrappers(fqn: str, root: nn.Module) -> str:
    """The name, in `root`, of a module as in the unwrapped model: the `module.` of DDP/DataParallel and the
    `_orig_mod.` of torch.compile removed where `root` really is such a wrapper (a child the user named `module`
    keeps its name); a wrapper itself is named "" like the root."""
    prefix = ""
    while is_wrapper(root):
        name = "_orig_mod" if hasattr(root, "_orig_mod") else "module"
        prefix, root = f"{prefix}{name}.", getattr(root, name)
    if prefix.startswith(fqn + ".") or fqn == "":
        return ""
    return fqn[len(prefix):] if fqn.startswith(prefix) else fqn


def refuse_scripted(model: nn.Module) -> None:
    """ValueError naming the first TorchScript module (torch.jit.script / trace) in `model`: its forward is compiled
    code, where no activation can be swapped or found."""
    for fqn, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"{strip_wrappers(fqn, model)!r} of {type(model).__name__}" if fqn else type(model).__name__
            raise ValueError(f"convert_activations: {where} is a TorchScript module (torch.jit.script / trace), whose "
                             f"compiled code cannot be converted; convert the eager model before scripting or tracing it")
