"""Deterministic, shardable batch streams: the batch at a step is a pure function of
(seed, step, rank), so a resumed run draws exactly the batches it would have drawn.

Each epoch of a domain is a seeded permutation of its train split; the global batch (``data.batch_size``)
is cut from it and rank ``r`` of ``W`` takes the ``r``-th contiguous 1/W of that global batch, so
W workers with batch B/W see together exactly what one worker with batch B sees.
"""

from __future__ import annotations

import torch

from cdlm_dist.data.domains import Split


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [0, 1] in torch's default dtype (float32 unless a float64 check sets it)."""
    return images.to(torch.get_default_dtype()).div_(255.0)


class BatchStream:
    """Infinite batches of one split, drawn without replacement within each epoch."""

    def __init__(self, split: Split, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if len(split) < global_batch:
            raise ValueError(f"a split of {len(split)} images cannot fill a global batch of "
                             f"{global_batch}; lower data.batch_size")
        self.split = split
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.batches_per_epoch = len(split) // global_batch
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.batches_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.split), generator=g)
            self._perm_epoch = epoch
        start = k * self.global_batch + self.rank * self.local_batch
        return self._perm[start:start + self.local_batch]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in [0, 1] of torch's default float dtype, labels int64) of this rank at ``step``."""
        idx = self.indices(step)
        return to_unit(self.split.images[idx]), self.split.labels[idx]


class MultiDomainStream:
    """One :class:`BatchStream` per domain; a step yields a list of (x, y), one per domain."""

    def __init__(self, splits: list[Split], global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.streams = [BatchStream(s, global_batch, seed + 7919 * k, rank, world_size)
                        for k, s in enumerate(splits)]

    def batch(self, step: int, device: torch.device | str = "cpu"
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                for x, y in (s.batch(step) for s in self.streams)]


def iterate_split(split: Split, batch_size: int, rank: int = 0, world_size: int = 1):
    """Evaluation order: rank ``r`` takes every ``W``-th batch; yields (x float [0,1], y)."""
    for b, start in enumerate(range(0, len(split), batch_size)):
        if b % world_size == rank:
            sl = slice(start, start + batch_size)
            yield to_unit(split.images[sl]), split.labels[sl]
