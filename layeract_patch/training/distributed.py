"""torchrun support: one process per device, DistributedDataParallel, rank 0 writes."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["resolve_device", "DistInfo", "init_distributed", "all_reduce_sum", "any_rank", "broadcast_buffers",
           "barrier", "cleanup_distributed"]


def resolve_device(name: str) -> torch.device:
    """A --device value (auto, cpu, cuda, cuda:N) as a torch.device; ValueError naming the fix when it cannot run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<index>") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asks for CUDA but no CUDA device is available; use --device cpu (or auto)")
    return device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK).

    A plain `python recipe.py` run (no WORLD_SIZE) is a world of one and starts no process group.
    NCCL on CUDA, gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when `flag` is set on any rank (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats drift apart: each rank sees its own shard)."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
