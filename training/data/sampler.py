"""Per-resolution batch sampler (variable-resolution training, as in the seed's CLIP distillation).

Every batch holds items of ONE square resolution, drawn at random from `resolutions` (optionally weighted so
that batches carry similar pixel counts: ``batch_size * (base / r)^2``, as in variable batch samplers).
Items are ``(dataset_index, resolution)`` pairs. Under DDP every rank draws the same resolution for a step
(shared seed) and a disjoint slice of a shared permutation of the indices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler


class ResolutionBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite sampler of per-rank batches ``[(index, resolution), ...]``.

    batch_size is the GLOBAL batch at the smallest resolution; each rank gets ``batch_size // world``.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        resolutions: tuple[int, ...],
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        scale_batch: bool = False,
    ) -> None:
        if num_items <= 0 or batch_size < world:
            raise ValueError(f"need items > 0 and batch_size >= world ({batch_size} < {world})")
        self.n, self.batch, self.res = num_items, batch_size, tuple(resolutions)
        self.seed, self.rank, self.world, self.scale_batch = seed, rank, world, scale_batch

    def batch_for(self, res: int) -> int:
        """Global batch size at resolution `res` (pixel-count balanced when scale_batch)."""
        if not self.scale_batch:
            return self.batch
        b = int(self.batch * (min(self.res) / res) ** 2)
        return max(self.world, b - b % self.world)

    def __len__(self) -> int:
        return 2**62  # infinite; DataLoader asks for a length

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng(self.seed)
        perm, pos = rng.permutation(self.n), 0
        while True:
            res = int(rng.choice(self.res))
            b = self.batch_for(res)
            if pos + b > self.n:
                perm, pos = rng.permutation(self.n), 0
            idx = np.resize(perm[pos:], b) if b > self.n else perm[pos : pos + b]
            pos += b
            mine = idx[self.rank :: self.world]
            yield [(int(i), res) for i in mine]


def make_loader(
    ds: Dataset, batch: int, resolutions: tuple[int, ...], seed: int, rank: int, world: int, workers: int = 0
) -> Iterator:
    """Infinite iterator over collated per-resolution batches from `ds`."""
    sampler = ResolutionBatchSampler(len(ds), batch, resolutions, seed, rank, world)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    return iter(loader)
