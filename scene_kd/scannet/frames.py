"""Frames of a scan behind one interface, whether the user has the `.sens` stream or ScanNet's
exported frames: `open_frame_source` picks whichever the scene directory holds."""

from __future__ import annotations

import os
from pathlib import Path

from scene_kd.scannet.exported import ExportedFrameSource, export_frames
from scene_kd.scannet.frame_types import FrameSource, RGBDFrame
from scene_kd.scannet.sens import SensFrameSource

EXPORTED_SUBDIR = "exported"


def find_exported_frames(scene_dir: str | os.PathLike) -> Path | None:
    """The exported-frames directory of a scene: `<scene_dir>/exported/` if it has a `pose/`
    directory, else `<scene_dir>` itself if it has one, else None."""
    scene_dir = Path(scene_dir)
    for candidate in (scene_dir / EXPORTED_SUBDIR, scene_dir):
        if (candidate / "pose").is_dir():
            return candidate
    return None


def open_frame_source(scene_dir: str | os.PathLike, scene_id: str) -> FrameSource:
    """Open the frames of one scan: `<scene_dir>/<scene_id>.sens` if present, else the exported
    layout under `<scene_dir>/exported/` or directly under `<scene_dir>`.

    Raises FileNotFoundError naming the directory when neither exists. The caller closes the
    source (`close()` or a `with` block).
    """
    scene_dir = Path(scene_dir)
    sens = scene_dir / f"{scene_id}.sens"
    if sens.exists():
        return SensFrameSource(sens)
    exported = find_exported_frames(scene_dir)
    if exported is not None:
        return ExportedFrameSource(exported)
    raise FileNotFoundError(
        f"{scene_dir}: no frames: neither {sens.name} nor an exported-frames layout "
        f"({EXPORTED_SUBDIR}/pose/ or pose/)"
    )


__all__ = [
    "EXPORTED_SUBDIR",
    "ExportedFrameSource",
    "FrameSource",
    "RGBDFrame",
    "SensFrameSource",
    "export_frames",
    "find_exported_frames",
    "open_frame_source",
]
