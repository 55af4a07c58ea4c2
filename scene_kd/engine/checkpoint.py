"""Checkpoints written atomically (temporary name, then rename), and found again for resuming.

A write that fails (a full disk) removes its temporary file and raises an OSError that says so and
names the directory with its free space. A resume starts from `last.pth`; when that is missing or
unreadable, from the newest intact `step_*.pth`, with a notice saying which and why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scene_kd.atomic import atomic_path

LAST = "last.pth"
BEST = "best.pth"
_STEP_FILE = re.compile(r"step_(\d+)\.pth$")
# What torch's zip writer raises when a write fails: "PytorchStreamWriter failed writing file ...: file
# write failed", or, when the failure surfaces as it closes the archive, "... unexpected pos 704 vs 598".
_WRITER_FAILURES = ("PytorchStreamWriter", "file write failed", "unexpected pos", "inline_container")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# A writer failure with less free space than this (measured before the partial file is removed) is a full disk.
DISK_FULL_MARGIN = 64 * 2**20


def free_space(directory: Path) -> tuple[int, int] | None:
    """(free bytes for this user, total bytes) of the file system holding `directory`; None if unknown."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    return usage.free, usage.total


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _write_failure(err: BaseException, target: Path, tmp: Path) -> OSError | None:
    """The OSError to raise for a failed `torch.save(…, tmp)` (measured while the partial file is still
    there), or None when `err` is not a write failure."""
    writer_failure = isinstance(err, RuntimeError) and any(s in str(err) for s in _WRITER_FAILURES)
    if not (isinstance(err, OSError) or writer_failure):
        return None
    space = free_space(target.parent)
    if isinstance(err, OSError):
        disk_full = err.errno in _DISK_FULL_ERRNOS
    else:
        disk_full = space is not None and space[0] < DISK_FULL_MARGIN
    written = tmp.stat().st_size if tmp.is_file() else 0
    free = f"{_size(space[0])} free of {_size(space[1])}; " if space else ""
    where = f"checkpoint {target.name} not written in {target.parent} ({free}{_size(written)} written, removed)"
    resume = "then rerun with train.resume=true to continue from the last intact checkpoint"
    if disk_full:
        message = f"disk full: {where}; free space there or choose another train.out_dir, {resume}"
    else:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        message = f"{where}: {cause}; check that file system, {resume}"
    failure = OSError(message)
    failure.errno = errno.ENOSPC if disk_full else getattr(err, "errno", None)
    return failure


def _save(payload: dict[str, Any], target: Path) -> None:
    """`torch.save(payload, target)` through a temporary file, removed when the write fails."""
    with atomic_path(target) as tmp:
        try:
            torch.save(payload, tmp)
        except (OSError, RuntimeError) as err:
            failure = _write_failure(err, target, tmp)
            if failure is None:
                raise
            raise failure from err


def _step_files(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the `step_*.pth` files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def save_checkpoint(directory: str | os.PathLike, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write `payload` as `step_{step:08d}.pth` and `last.pth` (each atomically) and keep only the
    `keep` newest step files. A kill at any moment leaves the previous checkpoints intact; a full disk
    raises an OSError saying so (no partial file stays). When the step file is written but `last.pth`
    is not, the older `last.pth` is removed, so that a resume starts from the new step file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step_{step:08d}.pth"
    _save(payload, target)
    try:
        _save(payload, directory / LAST)
    except OSError:
        with contextlib.suppress(OSError):
            (directory / LAST).unlink(missing_ok=True)
        raise
    steps = _step_files(directory)
    for _, old in steps[keep:] if keep > 0 else steps:
        old.unlink(missing_ok=True)
    return target


def save_best_checkpoint(directory: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` as `best.pth`, atomically (a full disk raises an OSError saying so)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save(payload, directory / BEST)
    return directory / BEST


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint a resume of `directory` starts from if it is intact: `last.pth`, else the newest
    `step_*.pth`; None when there is neither (see `load_latest_checkpoint`)."""
    directory = Path(directory)
    if (directory / LAST).is_file():
        return directory / LAST
    steps = _step_files(directory)
    return steps[0][1] if steps else None


@dataclass
class Resumable:
    """A checkpoint to resume from: its path, its contents, and why it is not `last.pth` (None when it is)."""

    path: Path
    state: dict[str, Any]
    notice: str | None = None


def load_latest_checkpoint(directory: str | os.PathLike,
                           map_location: str | torch.device = "cpu") -> Resumable | None:
    """The newest intact checkpoint of `directory`: `last.pth`, else the `step_*.pth` files newest
    first; None when there is no checkpoint at all. When checkpoints are there but none can be read,
    a ValueError names each with its problem (the run is not silently started over)."""
    directory = Path(directory)
    candidates = [directory / LAST] + [path for _, path in _step_files(directory)]
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        try:
            state = load_checkpoint(path, map_location=map_location)
        except ValueError as err:
            problems.append(f"{path.name} is unreadable ({_reason(err)})")
            continue
        notice = f"{'; '.join(problems)}: resuming from {path} instead" if problems else None
        return Resumable(path, state, notice)
    if len(candidates) == 1:
        return None
    raise ValueError(f"{directory}: no intact checkpoint to resume from ({'; '.join(problems)}); delete these "
                     "checkpoints to start over, or choose another train.out_dir")


def _reason(err: BaseException) -> str:
    cause = err.__cause__ or err
    return (str(cause).split(". ")[0] or type(cause).__name__)[:160]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint, with an error naming the file when it is missing, truncated or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint, truncated or corrupt? ({_reason(err)})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state
