"""Where the files of a ScanNet download live.

A ScanNet root holds `scans/<scene>/` (annotated scans), `scans_test/<scene>/` (test scans, no
annotations), `scannetv2-labels.combined.tsv` and `scannetv2_{train,val,test}.txt`. A root that
has neither `scans/` nor `scans_test/` may hold the scene directories directly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from scene_kd.scannet.frames import EXPORTED_SUBDIR

SCENE_SUBDIRS = ("scans", "scans_test")
LABEL_TSV_NAME = "scannetv2-labels.combined.tsv"
SCENE_ID_PATTERN = re.compile(r"scene\d{4}_\d{2}")


def split_file_name(split: str) -> str:
    """`scannetv2_<split>.txt`, e.g. for "train"."""
    return f"scannetv2_{split}.txt"


@dataclass(frozen=True)
class ScenePaths:
    """Every file of one scan directory (the files need not exist).

    is_test: the scan lives under `scans_test/` (no labels, segments or aggregation expected).
    exported_frames: the default directory for ScanNet's exported-frames layout
    (`open_frame_source` also accepts that layout directly in `scene_dir`).
    """

    scene_id: str
    scene_dir: Path
    sens: Path
    mesh: Path
    labels: Path
    segs: Path
    aggregation: Path
    scene_txt: Path
    exported_frames: Path
    is_test: bool


def scene_paths(root: str | os.PathLike, scene_id: str, subdir: str | None = None) -> ScenePaths:
    """The paths of scan `scene_id` under ScanNet root `root`.

    subdir: "scans", "scans_test", or "" for a scene directly under `root`; by default the first
    of `scans/`, `scans_test/`, `root/` that holds the scene directory, else `scans/`.
    """
    root = Path(root)
    if subdir is None:
        candidates = [root / s / scene_id for s in SCENE_SUBDIRS] + [root / scene_id]
        scene_dir = next((c for c in candidates if c.is_dir()), candidates[0])
    else:
        scene_dir = root / subdir / scene_id
    d, s = scene_dir, scene_id
    return ScenePaths(
        scene_id=s,
        scene_dir=d,
        sens=d / f"{s}.sens",
        mesh=d / f"{s}_vh_clean_2.ply",
        labels=d / f"{s}_vh_clean_2.labels.ply",
        segs=d / f"{s}_vh_clean_2.0.010000.segs.json",
        aggregation=d / f"{s}.aggregation.json",
        scene_txt=d / f"{s}.txt",
        exported_frames=d / EXPORTED_SUBDIR,
        is_test=scene_dir.parent.name == "scans_test",
    )


def list_scenes(root: str | os.PathLike) -> list[str]:
    """Sorted ids of the scans under `root`: every directory in `scans/` and `scans_test/`, or,
    where neither exists, every directory of `root` named like `sceneXXXX_XX`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ScanNet root is not a directory")
    subdirs = [root / s for s in SCENE_SUBDIRS if (root / s).is_dir()]
    if subdirs:
        return sorted(
            e.name for d in subdirs for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")
        )
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and SCENE_ID_PATTERN.fullmatch(e.name))
