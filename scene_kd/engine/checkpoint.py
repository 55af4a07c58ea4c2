"""Checkpoints written atomically (temporary name, then rename), and found again for resuming."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

LAST = "last.pth"
BEST = "best.pth"
_STEP_FILE = re.compile(r"step_(\d+)\.pth$")


def save_checkpoint(directory: str | os.PathLike, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write `payload` as `step_{step:08d}.pth` and `last.pth` (each atomically) and keep only the
    `keep` newest step files. A kill at any moment leaves the previous checkpoints intact."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step_{step:08d}.pth"
    tmp = directory / f".{target.name}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, target)
    tmp_last = directory / f".{LAST}.tmp"
    torch.save(payload, tmp_last)
    os.replace(tmp_last, directory / LAST)
    steps = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name)))
    for _, old in steps[:-keep] if keep > 0 else steps:
        old.unlink(missing_ok=True)
    return target


def save_best_checkpoint(directory: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` as `best.pth`, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{BEST}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, directory / BEST)
    return directory / BEST


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    path = Path(directory) / LAST
    return path if path.is_file() else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint, with an error naming the file when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from err
