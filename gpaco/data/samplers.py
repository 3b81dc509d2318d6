"""Iteration-based sampling for segmentation training (resumable at any iteration)."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch.utils.data import Sampler

__all__ = ["IterationSampler"]


class IterationSampler(Sampler):
    """Per-process sample keys ``(index, aug_seed)`` for iterations ``start_iter .. max_iters-1``.

    Epoch ``e`` is a permutation of the dataset seeded by ``(seed, e)``, cut into global
    batches (the incomplete last one dropped); process ``rank`` takes its slice of each.
    Iteration ``it`` therefore sees the same images with the same augmentation seeds
    however the run was interrupted and resumed, and whatever the number of workers.
    """

    def __init__(self, num_samples: int, per_rank_batch: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_iter: int = 0, max_iters: int):
        self.n, self.b, self.rank, self.world = num_samples, per_rank_batch, rank, world_size
        self.seed, self.start, self.stop = seed, start_iter, max_iters
        self.per_epoch = num_samples // (per_rank_batch * world_size)
        if self.per_epoch < 1:
            raise ValueError(f"the train split has {num_samples} images, fewer than one global batch "
                             f"({per_rank_batch * world_size})")

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.b

    def __iter__(self) -> Iterator[Tuple[int, Tuple[int, ...]]]:
        epoch, perm = -1, None
        gb = self.b * self.world
        for it in range(self.start, self.stop):
            e, pos = divmod(it, self.per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + e))
            mine = perm[pos * gb + self.rank * self.b: pos * gb + (self.rank + 1) * self.b]
            for j, idx in enumerate(mine.tolist()):
                yield idx, (self.seed, it, self.rank, j)
