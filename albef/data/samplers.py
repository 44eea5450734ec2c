"""An infinite, resumable, rank-sharded sampler."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class InfiniteSampler(Sampler):
    """Yields ``(epoch, index)`` forever: epoch e is a permutation seeded by (seed, e).

    The global stream is split round-robin across ranks, and ``start`` (a position in
    the global stream, = iterations done x global batch) resumes it exactly, so a
    restarted run sees the same samples in the same order with the same augmentations.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1, start: int = 0):
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def _perm(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start + self.rank
        epoch, perm = -1, []
        while True:
            e, i = divmod(pos, self.size)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield epoch, perm[i]
            pos += self.world_size
