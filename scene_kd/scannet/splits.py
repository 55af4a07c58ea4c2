"""ScanNet split files (`scannetv2_{train,val,test}.txt`): one scene id a line."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from scene_kd.scannet.atomic import write_text_atomic


def read_split(path: str | os.PathLike) -> list[str]:
    """The scene ids listed in a split file, in file order (blank lines and CR ignored)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_split(path: str | os.PathLike, scene_ids: Iterable[str]) -> None:
    """Write one scene id a line."""
    write_text_atomic(path, "".join(f"{scene_id}\n" for scene_id in scene_ids))
