"""Seeds: one global seeding at the start of a job (weight initialisation), and explicit generators for
everything random inside the loop, derived from (seed, step, micro-step, rank) so that a resumed run
draws exactly what the uninterrupted run would have drawn, without touching global state."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators once, at the start of a job."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, micro_step: int = 0, rank: int = 0) -> torch.Generator:
    """A CPU torch.Generator that depends on (seed, step, micro_step, rank) alone: what an objective
    draws with it (pair sampling, attention-key selection) is the same after a resume."""
    mixed = np.random.SeedSequence([seed, step, micro_step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))


def loader_generator(seed: int, epoch: int, start: int, rank: int) -> torch.Generator:
    """The DataLoader's generator (it draws the worker seeds) for an epoch started at batch `start`."""
    mixed = np.random.SeedSequence([seed, epoch, start, rank, 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: NumPy and Python in the worker follow torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
