"""Rank/world size for sharding a slide list under ``torchrun`` (rank r takes slides r, r+W, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch.distributed as dist

from monai_distill.runs import refuse_multiprocess_without_config

__all__ = ["barrier", "dist_context", "shard"]

T = TypeVar("T")


def dist_context() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one.

    Raises:
        MultiProcessError: ``torchrun`` started several processes but nobody initialised ``torch.distributed``;
            each process would otherwise tile every slide (a ``RuntimeError``).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    refuse_multiprocess_without_config("this workflow")
    return 0, 1


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Items ``rank, rank + world_size, ...`` (round-robin keeps shards balanced when slides are sorted by size)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}.")
    return list(items[rank::world_size])


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
