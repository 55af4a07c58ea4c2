"""Batches in a seeded order that a resumed run can re-enter mid-epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from scene_kd.engine.seeding import loader_generator, seed_worker


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, split across processes, that can start mid-epoch.

    Epoch e visits `permutation(seed, e)[rank::world_size]` (padded to equal length); `start` skips
    the first indices of the current epoch so a resumed run sees the batches it would have seen.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if length < 1:
            raise ValueError("the dataset is empty")
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.per_rank = -(-length // world_size)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.length)
        padded = order.repeat(-(-self.per_rank * self.world_size // self.length))[: self.per_rank * self.world_size]
        return iter(padded[self.rank :: self.world_size][self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def batch_stream(dataset: Dataset, collate_fn: Callable, batch_size: int, num_workers: int, seed: int,
                 consumed: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> Iterator[Any]:
    """Endless batches of `dataset` (epoch after epoch, drop_last), starting after the first
    `consumed` batches of this process: batch i is the same whether or not the run was resumed."""
    sampler = ResumableSampler(len(dataset), seed, rank=rank, world_size=world_size)
    if sampler.per_rank < batch_size:  # drop_last would leave no batch at all: the loop would spin forever
        raise ValueError(
            f"{len(dataset)} training samples over {world_size} process(es) give {sampler.per_rank} per "
            f"process, fewer than the batch size {batch_size}: lower the batch size (data.batch_size) or use fewer "
            "processes"
        )
    return _batches(dataset, sampler, collate_fn, batch_size, num_workers, seed, consumed, rank, pin_memory)


def _batches(dataset: Dataset, sampler: ResumableSampler, collate_fn: Callable, batch_size: int, num_workers: int,
             seed: int, consumed: int, rank: int, pin_memory: bool) -> Iterator[Any]:
    batches_per_epoch = max(1, sampler.per_rank // batch_size)
    epoch, within = divmod(consumed, batches_per_epoch)
    while True:
        sampler.set_position(epoch, within * batch_size)
        if hasattr(dataset, "set_epoch"):  # new augmentations (and frames) each epoch
            dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                            collate_fn=collate_fn, drop_last=True, pin_memory=pin_memory,
                            worker_init_fn=seed_worker, generator=loader_generator(seed, epoch, within, rank))
        yield from loader
        epoch, within = epoch + 1, 0
