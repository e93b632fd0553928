"""Training batches drawn from a data set held on the device, reproducible from (seed, iteration) alone.

Augmentation runs on the training device as airbench does: whole uint8 batches, one gather for the
random crops, one `where` for the flips, no per-image Python.

Every epoch is a fresh permutation and every batch a fresh crop/flip draw, both seeded by the
iteration number, so a resumed run sees exactly the batches an uninterrupted run would, without
saving any sampler state. Under DistributedDataParallel each rank takes its slice of the same global
batch, so K processes train on the same images (and augmentations) as one.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["TrainBatches", "random_crop_flip", "normalize", "derive_seed"]

_MIX = 0x9E3779B97F4A7C15  # odd constant: spreads (seed, counter) pairs over the generator's seed space


def derive_seed(seed: int, stream: int, counter: int) -> int:
    """A generator seed for draw `counter` of stream `stream` of a run seeded `seed` (every recipe's draws)."""
    return (seed * _MIX + stream * 0x632BE59BD9B4E019 + counter) % (2 ** 63)


class TrainBatches:
    """`batches(step) -> (inputs, labels)` for iteration `step` (0-based), this rank's share.

    Args:
        images: uint8 [N, C, H, W] on the training device; labels: int64 [N] there too.
        batch_size: the global batch (split over `world_size` ranks); the last partial batch of an
            epoch is dropped so every step has the same size.
        mean, std: per-channel normalization in [0, 1] units.
        padding: random-crop padding (0 disables the crop); flip: random horizontal flips.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 seed: int, rank: int = 0, world_size: int = 1, padding: int = 4, flip: bool = True,
                 channels_last: bool = False) -> None:
        if batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} must be divisible by the number of processes ({world_size})")
        if batch_size > len(images):
            raise ValueError(f"--batch-size {batch_size} is larger than the training set ({len(images)} images)")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=images.device)
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.padding, self.flip, self.channels_last = padding, flip, channels_last
        self.steps_per_epoch = len(images) // batch_size
        self._epoch, self._order = None, None
        self._augment_rng = torch.Generator(device=images.device)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, 1, epoch))
            self._order = torch.randperm(len(self.images), generator=generator).to(self.images.device)
            self._epoch = epoch
        return self._order

    def __call__(self, step: int) -> Tuple[Tensor, Tensor]:
        epoch, position = divmod(int(step), self.steps_per_epoch)
        order = self._permutation(epoch)
        index = order[position * self.batch_size:(position + 1) * self.batch_size]
        images = self.images[index]
        self._augment_rng.manual_seed(derive_seed(self.seed, 2, step))
        # Augment the global batch, then slice: the draws do not depend on the number of ranks.
        images = random_crop_flip(images, self.padding, self.flip, generator=self._augment_rng)
        share = slice(self.rank, None, self.world_size)
        inputs = normalize(images[share], self.mean, self.std, channels_last=self.channels_last)
        return inputs, self.labels[index][share]


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
