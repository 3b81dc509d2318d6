"""Samplers: iteration-based sampling for segmentation training, class-balanced sampling
for MiSLAS stage 2 (both resumable)."""
from __future__ import annotations

import random
from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import Sampler

__all__ = ["IterationSampler", "ClassAwareSampler"]


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


class ClassAwareSampler(Sampler):
    """Class-balanced sampling (MiSLAS stage 2, after Shen et al.'s ClassAwareSampler).

    The stream cycles through the classes in a random order (reshuffled after each pass)
    and takes ``per_class`` consecutive samples of each from that class's own cyclic list
    (reshuffled after each pass); classes without samples are skipped. An epoch has as many
    global batches as a plain epoch, ``ceil(N / global_batch)`` (the original ran one more),
    and rank ``r`` takes every ``world_size``-th index. The stream of epoch ``e`` depends only
    on ``(seed, e)``; ``set_start(n)`` skips this rank's first ``n`` indices (mid-epoch resume).
    Same interface as the random training sampler: ``set_epoch``, ``set_start``.
    """

    def __init__(self, labels: Sequence[int], global_batch: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, per_class: int = 4) -> None:
        if global_batch < 1 or per_class < 1:
            raise ValueError(f"global_batch and per_class must be >= 1, got {global_batch}, {per_class}")
        self.by_class: List[List[int]] = []
        for i, y in enumerate(labels):
            while len(self.by_class) <= int(y):
                self.by_class.append([])
            self.by_class[int(y)].append(i)
        if not any(self.by_class):
            raise ValueError("ClassAwareSampler needs at least one sample")
        self.rank, self.world, self.seed, self.per_class = rank, world_size, seed, per_class
        batches = -(-len(labels) // global_batch)
        self.num_samples = batches * global_batch // world_size  # per rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = int(epoch), 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"sampler start {start} outside 0..{self.num_samples}")
        self.start = start

    def __len__(self) -> int:
        return self.num_samples - self.start

    def global_indices(self) -> List[int]:
        """The whole epoch's stream (all ranks), ``num_samples * world_size`` indices."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        classes = [c for c, idx in enumerate(self.by_class) if idx]
        pools = {c: [] for c in classes}
        order: List[int] = []
        out: List[int] = []
        total = self.num_samples * self.world
        while len(out) < total:
            if not order:
                order = classes[:]
                rng.shuffle(order)
            c = order.pop()
            for _ in range(self.per_class):
                if not pools[c]:
                    pools[c] = self.by_class[c][:]
                    rng.shuffle(pools[c])
                out.append(pools[c].pop())
        return out[:total]

    def __iter__(self) -> Iterator[int]:
        mine = self.global_indices()[self.rank::self.world]
        return iter(mine[self.start:])
