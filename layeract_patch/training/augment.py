"""Batch augmentation on the training device (airbench style): whole uint8 batches, no per-image Python."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["random_crop_flip", "normalize"]


def random_crop_flip(images: Tensor, padding: int = 4, flip: bool = True,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Random crop of the original size from the zero-padded batch, then a random horizontal flip per image.

    The same as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip() applied to each image,
    done as one gather over the batch. `images` is [N, C, H, W] of any dtype (uint8 keeps it cheap).
    """
    n, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, n, 1), device=device, generator=generator)
        rows = (offsets[0] + torch.arange(h, device=device))[:, None, :, None]
        cols = (offsets[1] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if flip:
        mirrored = torch.rand(n, device=device, generator=generator) < 0.5
        images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    return images


def normalize(images: Tensor, mean: Union[Sequence[float], Tensor], std: Union[Sequence[float], Tensor],
              dtype: torch.dtype = torch.float32, channels_last: bool = False) -> Tensor:
    """uint8 [N, C, H, W] -> (x / 255 - mean) / std in `dtype`, mean/std per channel in [0, 1] units.

    Pass mean/std as tensors on the images' device in a training loop: building them from Python
    floats every step would be a blocking host-to-device copy on a GPU.
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    out = (images.float() / 255 - mean) / std
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(dtype)
