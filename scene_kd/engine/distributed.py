"""Process-group set-up for `torchrun` (NCCL on GPU, gloo on CPU) and small collective helpers."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> bool:
    """Join the process group that torchrun describes in the environment; False when not launched
    by torchrun (WORLD_SIZE unset or 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over all processes (identity without a process group)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def sum_across_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum counters over all processes; processes may hold different keys (missing = 0)."""
    if not dist.is_initialized():
        return values
    key_lists: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(key_lists, sorted(values))
    keys = sorted(set().union(*key_lists))
    if not keys:
        return {}
    t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
