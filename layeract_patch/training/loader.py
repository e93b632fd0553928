"""Training batches drawn from a data set held on the device, reproducible from (seed, iteration) alone.

Every epoch is a fresh permutation and every batch a fresh crop/flip draw, both seeded by the
iteration number, so a resumed run sees exactly the batches an uninterrupted run would, without
saving any sampler state. Under DistributedDataParallel each rank takes its slice of the same global
batch, so K processes train on the same images (and augmentations) as one.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .augment import normalize, random_crop_flip

__all__ = ["TrainBatches"]

_MIX = 0x9E3779B97F4A7C15  # odd constant: spreads (seed, counter) pairs over the generator's seed space


def _derive(seed: int, stream: int, counter: int) -> int:
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
            generator = torch.Generator().manual_seed(_derive(self.seed, 1, epoch))
            self._order = torch.randperm(len(self.images), generator=generator).to(self.images.device)
            self._epoch = epoch
        return self._order

    def __call__(self, step: int) -> Tuple[Tensor, Tensor]:
        epoch, position = divmod(int(step), self.steps_per_epoch)
        order = self._permutation(epoch)
        index = order[position * self.batch_size:(position + 1) * self.batch_size]
        images = self.images[index]
        self._augment_rng.manual_seed(_derive(self.seed, 2, step))
        # Augment the global batch, then slice: the draws do not depend on the number of ranks.
        images = random_crop_flip(images, self.padding, self.flip, generator=self._augment_rng)
        share = slice(self.rank, None, self.world_size)
        inputs = normalize(images[share], self.mean, self.std, channels_last=self.channels_last)
        return inputs, self.labels[index][share]
