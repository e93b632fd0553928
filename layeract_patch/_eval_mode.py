"""`evaluating(model)`: a block that runs a model as inference does, and hands it back as it came.

Scoring, calibrating and probing a model all need eval mode (batch norm on its running statistics, no dropout)
and no autograd graph. `model.eval()` then `model.train(was_training)` would not hand it back as it came: that
sets every submodule to the root's flag, so a model fine-tuned with its batch norms frozen in eval mode would
come back with them training. Here each module gets its own flag back, also after an error or Ctrl-C.
"""
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["evaluating"]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no_grad inside the block; afterwards every module's own train/eval flag and the grad mode
    are as they were. Yields the model."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        with torch.no_grad():
            model.eval()
            yield model
    finally:
        for module, flag in flags:
            module.training = flag
