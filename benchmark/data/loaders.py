"""Samplers and DataLoaders: epoch-seeded shuffling for training, duplicate-free sharding for evaluation."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from benchmark.data.preprocessing import PreprocessedDataset


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` pairs: a permutation seeded by (seed, epoch), sharded over ranks.

    Every rank gets the same number of samples (the permutation is cut to a multiple of the world
    size), so DDP ranks stay in step. The epoch travels with each index so that the dataset can seed
    random crops from it, also inside persistent workers.
    """

    def __init__(self, length: int, rank: int, world_size: int, seed: int) -> None:
        if length < world_size:
            raise ValueError(f"{length} training samples cannot be shared by {world_size} processes")
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        order = order[: len(self) * self.world_size]
        return iter((int(i), self.epoch) for i in order[self.rank :: self.world_size])


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every sample on exactly one rank, no padding."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and python in each worker from torch's per-worker seed."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: PreprocessedDataset | Dataset,
    sampler: Sampler,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose workers' base seed comes from a generator of its own: starting an epoch or an
    evaluation then draws nothing from the global generator, so the dropout masks of training do not
    depend on how often it is evaluated, nor on other runs that share its stream (lockstep heads).
    Crops are seeded per sample (:func:`~benchmark.data.preprocessing.sample_rng`), never by workers."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(0),
    )
