"""Evaluation: top-1/top-5 accuracy (percent), mean loss and the spread of per-sample losses."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import normalize
from .distributed import DistInfo, all_reduce_sum

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 1000, amp: bool = False, channels_last: bool = False,
             dist: DistInfo = DistInfo()) -> Dict[str, float]:
    """{"top1", "top5", "loss", "loss_std", "count"} of `model` (in eval mode) on uint8 `images`.

    `loss_std` is the population standard deviation of the per-sample cross-entropy (the paper's
    Table 5). Under DDP each rank scores every world_size-th image and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    device = images.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    # float64 sums: a squared-loss sum over 10k samples loses digits in float32.
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    shard = torch.arange(dist.rank, len(images), dist.world_size, device=device)
    for start in range(0, len(shard), batch_size):
        index = shard[start:start + batch_size]
        inputs = normalize(images[index], mean, std, channels_last=channels_last)
        target = labels[index]
        with autocast:
            logits = model(inputs)
        losses = F.cross_entropy(logits.float(), target, reduction="none").double()
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = topk == target[:, None]
        totals += torch.stack([losses.sum(), losses.square().sum(), hits[:, 0].sum().double(),
                               hits.any(dim=1).sum().double(), torch.tensor(len(index), device=device).double()])
    model.train(was_training)
    loss_sum, loss_sq, top1, top5, count = all_reduce_sum(totals, dist).tolist()
    if count == 0:
        raise ValueError("cannot evaluate on an empty set")
    mean_loss = loss_sum / count
    return {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "loss": mean_loss,
            "loss_std": math.sqrt(max(loss_sq / count - mean_loss ** 2, 0.0)), "count": int(count)}

