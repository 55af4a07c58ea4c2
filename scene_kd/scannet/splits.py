"""ScanNet split files (`scannetv2_{train,val,test}.txt`): one scene id a line."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from scene_kd.atomic import write_text_atomic
from scene_kd.scannet.errors import read_utf8_text


def read_split(path: str | os.PathLike) -> list[str]:
    """The scene ids listed in a split file, in file order (blank lines and CR ignored)."""
    text = read_utf8_text(Path(path), "split file of scene ids")
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_split(path: str | os.PathLike, scene_ids: Iterable[str]) -> None:
    """Write one scene id a line."""
    write_text_atomic(path, "".join(f"{scene_id}\n" for scene_id in scene_ids))
