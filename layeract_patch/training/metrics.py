"""Evaluation: top-1/top-5 accuracy (percent), mean loss and the spread of per-sample losses."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._eval_mode import evaluating
from .batches import normalize
from .distributed import DistInfo, all_reduce_sum

__all__ = ["evaluate", "batch_scores", "summarize_scores"]


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 1000, amp: bool = False, channels_last: bool = False,
             dist: DistInfo = DistInfo()) -> Dict[str, float]:
    """{"top1", "top5", "loss", "loss_std", "count"} of `model` (in eval mode) on uint8 `images` (no top5 for 5
    classes or fewer).

    `loss_std` is the population standard deviation of the per-sample cross-entropy (the paper's
    Table 5). Under DDP each rank scores every world_size-th image and the sums are all-reduced.
    """
    device = images.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    # float64 sums: a squared-loss sum over 10k samples loses digits in float32.
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    shard = torch.arange(dist.rank, len(images), dist.world_size, device=device)
    with evaluating(model):  # an error (or Ctrl-C) mid-evaluation hands the model back in the mode it came in
        for start in range(0, len(shard), batch_size):
            index = shard[start:start + batch_size]
            inputs = normalize(images[index], mean, std, channels_last=channels_last)
            target = labels[index]
            with autocast:
                logits = model(inputs)
            totals += batch_scores(logits, target)
    return summarize_scores(all_reduce_sum(totals, dist), "cannot evaluate on an empty set")


def batch_scores(logits: Tensor, target: Tensor) -> Tensor:
    """float64 [loss sum, squared-loss sum, top-1 hits, top-5 hits, count] of one batch, to add up over batches.

    With 5 classes or fewer every label is among the top 5: the top-5 hits are NaN, and the summary leaves
    top-5 out rather than report a 100% that measures nothing."""
    losses = F.cross_entropy(logits.float(), target, reduction="none").double()
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == target[:, None]
    top5 = hits.any(dim=1).sum().double() if logits.shape[1] > 5 else losses.new_tensor(math.nan)
    return torch.stack([losses.sum(), losses.square().sum(), hits[:, 0].sum().double(), top5,
                        losses.new_tensor(len(target))])


def summarize_scores(totals: Tensor, empty_message: str) -> Dict[str, float]:
    """{"top1", "top5" (percent; absent for 5 classes or fewer), "loss", "loss_std", "count"} from summed
    `batch_scores`."""
    loss_sum, loss_sq, top1, top5, count = totals.tolist()
    if count == 0:
        raise ValueError(empty_message)
    mean_loss = loss_sum / count
    scores = {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "loss": mean_loss,
              "loss_std": math.sqrt(max(loss_sq / count - mean_loss ** 2, 0.0)), "count": int(count)}
    if math.isnan(top5):
        del scores["top5"]
    return scores

