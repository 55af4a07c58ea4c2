"""Write files and directories so that a reader never sees a half-written one.

Every writer in scene_kd (scans, processed scenes, configs, metrics, checkpoints, predictions,
benchmark results) writes under a temporary name in the destination directory and renames it into
place with `os.replace` (atomic on POSIX), so an interrupted write leaves either the old file or
nothing, never a truncated file under the final name. A write that raises (a full disk, a failing
encoder) removes its temporary file or directory before the exception propagates; only a killed
process leaves one behind, under a hidden name starting with ".".

- `atomic_path(path)`: a temporary path for writers that take a file name (`torch.save`,
  `np.save`, open3d); it keeps `path`'s suffix, so writers that choose the format from it still do.
- `atomic_open(path, mode)`: a file object; `write_bytes_atomic` / `write_text_atomic` on top.
- `atomic_directory(path)`: a whole directory, filled and then renamed into place.
- `StagedPath`: the same rename-or-remove for a writer whose life is not one `with` block.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class AlreadyWritten(FileExistsError):
    """`atomic_directory(path, replace=False)` found `path` written (by another process) first."""


def temporary_sibling(path: Path, keep_suffix: bool = False) -> Path:
    """A hidden temporary name next to `path` (same directory, so the final rename is atomic):
    `.<name>.tmp-<pid>`, or with keep_suffix `.<stem>.tmp-<pid><suffix>`."""
    if keep_suffix:
        return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StagedPath:
    """A temporary sibling `tmp` of `path`: `commit()` renames it onto `path`, `discard()` removes it.

    For writers that open in one method and finish in another (`SensWriter`); inside one block use
    `atomic_path`. As a context manager it yields `tmp`, commits on success and discards on an
    exception (also when the commit itself fails).
    """

    def __init__(self, path: str | os.PathLike, keep_suffix: bool = False) -> None:
        self.path = Path(path)
        self.tmp = temporary_sibling(self.path, keep_suffix)

    def commit(self) -> None:
        """Rename the temporary file onto `path`, replacing what was there."""
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Remove the temporary file (or directory), if any."""
        _remove(self.tmp)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write to; it is renamed onto `path` when the block
    completes and removed when the block (or the rename) raises.

    The temporary name ends with `path`'s suffix: `np.save` adds ".npy" to names without it and
    open3d picks the format from it. Example: `with atomic_path(target) as tmp: torch.save(obj, tmp)`.
    """
    with StagedPath(path, keep_suffix=True) as tmp:
        yield tmp


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; it is closed and renamed onto `path` on
    success, removed on an exception (which propagates).

    `mode` must be a write mode ("wb", "w", "w+b", ...); `kwargs` go to `open`.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open needs a write mode, got {mode!r}")
    with StagedPath(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` through a temporary file and `os.replace` (newlines kept as given)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


@contextmanager
def atomic_directory(
    path: str | os.PathLike, *, tmp: str | os.PathLike | None = None, replace: bool = True
) -> Iterator[Path]:
    """Create an empty temporary directory next to `path`, yield it, and rename it onto `path` when
    the block completes; on an exception it is removed with all it holds.

    tmp: the temporary directory's path (default `.<name>.tmp-<pid>` beside `path`); one left there
    by an earlier run is removed first. replace=True: an existing `path` is deleted, then replaced
    (a reader may find no `path` between the two); replace=False: `path` is never overwritten, and a
    `path` that already holds a directory raises `AlreadyWritten` (the temporary one is removed).
    """
    path = Path(path)
    tmp = temporary_sibling(path) if tmp is None else Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError as err:
            if not replace and path.is_dir():
                raise AlreadyWritten(f"{path}: already written") from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
