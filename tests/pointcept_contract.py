"""Pointcept's contract for reading a processed output, written from its source
(pointcept/datasets/scannet.py and defaults.py: `get_data_list`, `get_data`), and a tiny raw ScanNet
scan to process: the oracle of test_pointcept_layout.py and the data side of test_check_pointcept.py."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np

from scene_kd.scannet.annotations import write_scene_txt
from scene_kd.scannet.frames import RGBDFrame
from scene_kd.scannet.layout import scene_paths
from scene_kd.scannet.mesh import Mesh, write_labels_ply, write_mesh_ply
from scene_kd.scannet.sens import write_sens

K = np.array([[8.0, 0, 3.5, 0], [0, 8.0, 2.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
VALID_ASSETS = ["coord", "color", "normal", "segment20", "instance"]  # Pointcept's ScanNetDataset


# ------------------------------------------------------------------ the oracle: Pointcept's reading code


def pointcept_data_list(data_root: str, split: str, lr_file: str | None = None) -> list[str]:
    """ScanNetDataset.get_data_list (with DefaultDataset's for a split name)."""
    lr = np.loadtxt(lr_file, dtype=str) if lr_file is not None else None
    if lr is None:
        if os.path.isfile(os.path.join(data_root, split)):
            with open(os.path.join(data_root, split)) as f:
                return [os.path.join(data_root, data) for data in json.load(f)]
        return glob.glob(os.path.join(data_root, split, "*"))
    return [os.path.join(data_root, "train", name) for name in lr]


def pointcept_get_data(data_path: str, la: dict | None = None, ignore_index: int = -1) -> dict:
    """ScanNetDataset.get_data without the cache: the arrays, `segment` masked by the la_file."""
    data_dict = {a[:-4]: np.load(os.path.join(data_path, a)) for a in os.listdir(data_path)
                 if a.endswith(".npy") and a[:-4] in VALID_ASSETS}
    data_dict["segment"] = data_dict.pop("segment20").reshape([-1]).astype(np.int32)
    if la:
        sampled_index = la[os.path.basename(data_path)]
        mask = np.ones_like(data_dict["segment"], dtype=bool)
        mask[sampled_index] = False
        data_dict["segment"][mask] = ignore_index
        data_dict["sampled_index"] = sampled_index
    return data_dict


# ------------------------------------------------------------------ a tiny raw ScanNet


def write_scan(root: Path, scene_id: str, seed: int, test: bool = False) -> None:
    """An 8 x 8 vertex grid with varied nyu40 labels (some outside the 20 classes) and 3 frames."""
    rng = np.random.default_rng(seed)
    paths = scene_paths(root, scene_id, subdir="scans_test" if test else "scans")
    paths.scene_dir.mkdir(parents=True)
    x, y = np.meshgrid(np.arange(8, dtype=np.float32), np.arange(8, dtype=np.float32))
    vertices = np.stack([x.ravel(), y.ravel(), 0.05 * x.ravel() * y.ravel()], axis=1) * 0.1
    faces = [[a, a + 1, a + 8] for a in range(56) if a % 8 < 7] + [[a + 1, a + 9, a + 8] for a in range(56) if a % 8 < 7]
    mesh = Mesh(vertices, rng.integers(0, 256, size=(64, 3), dtype=np.uint8), np.array(faces))
    write_mesh_ply(paths.mesh, mesh)
    if not test:
        write_labels_ply(paths.labels, mesh, rng.choice(np.array([0, 1, 2, 3, 5, 13, 39], np.uint16), size=64))
    write_scene_txt(paths.scene_txt)
    frames = [RGBDFrame(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8),
                        rng.integers(500, 3000, size=(6, 8), dtype=np.uint16), np.eye(4, dtype=np.float32))
              for _ in range(3)]
    write_sens(paths.sens, frames, intrinsic_color=K, intrinsic_depth=K)
