"""Distributed helpers that are no-ops without a process group (world size 1 is the normal case)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_dist() and get_world_size() > 1:
        dist.barrier()


@torch.no_grad()
def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` [B, ...] from every rank along dim 0 -> [world*B, ...] (no grad).

    Every rank must pass the same shape (training loaders drop the last partial batch).
    """
    ws = get_world_size()
    if ws == 1:
        return t
    out = [torch.empty_like(t) for _ in range(ws)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` as rank ``src`` has it, on every rank (in place)."""
    if get_world_size() > 1:
        dist.broadcast(t, src=src)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj):
    ws = get_world_size()
    if ws == 1:
        return [obj]
    out = [None] * ws
    dist.all_gather_object(out, obj)
    return out
