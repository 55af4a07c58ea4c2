"""Write files so that a reader never sees a half-written one.

Every writer in `scene_kd.scannet` writes to a temporary name in the destination directory and
renames it into place with `os.replace` (atomic on POSIX), so an interrupted write leaves either
the old file or nothing, never a truncated file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_sibling(path: Path) -> Path:
    """A temporary name next to `path` (same directory, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it onto `path` on success.

    On an exception the temporary file is removed and the exception propagates.
    `mode` must be a write mode ("wb", "w", "w+b", ...); `kwargs` go to `open`.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open needs a write mode, got {mode!r}")
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` through a temporary file and `os.replace` (newlines kept as given)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
