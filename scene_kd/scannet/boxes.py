"""Ground-truth detection boxes of a scan: one axis-aligned box per annotated instance.

VoteNet's protocol (`scannet/load_scannet_data.py`): the mesh vertices are moved into the
axis-aligned frame with the scene's `axisAlignment`, and each instance whose class is one of the
18 detection classes gets the min/max box of its aligned vertices. Boxes are float64 `[K, 6]`
`(x_min, y_min, z_min, x_max, y_max, z_max)`; labels are int64 indices into `DET18_NAMES`.

The class of an instance is the majority of `segment20` over its vertices, -1 (ignore) counting
as a candidate of its own: an instance whose vertices mostly carry no 20-class label (blinds,
lamps, ...) gets no box, which is what VoteNet's per-instance nyu40 label gives, since
`segment20` is the labels.ply nyu40 id of the instance's own vertices. The 18 detection classes
are the 20 segmentation classes without wall and floor (`SEG20_NYU40_IDS[2:] ==
DET18_NYU40_IDS`), so segment20 index s >= 2 is detection index s - 2; `seg20_to_det18` derives
the map from the nyu40 id tables rather than assuming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scene_kd.box_geometry import enclosing_boxes
from scene_kd.scannet.labels import SEG20_NYU40_IDS, nyu40_to_det18

SCENE_BOX_FILES = ("coord.npy", "segment20.npy", "instance.npy", "axis_align.npy")


def seg20_to_det18(segment20: np.ndarray) -> np.ndarray:
    """20-class segmentation indices (any int array, -1 = ignore) -> 18-class detection indices
    int64, -1 for ignore, wall, floor and anything outside 0..19."""
    table = nyu40_to_det18(np.asarray(SEG20_NYU40_IDS))  # [20]: -1, -1, 0, 1, ..., 17
    segment20 = np.asarray(segment20, dtype=np.int64)
    valid = (segment20 >= 0) & (segment20 < len(table))
    return np.where(valid, table[np.where(valid, segment20, 0)], -1)


def align_points(coord: np.ndarray, axis_align: np.ndarray) -> np.ndarray:
    """float64 [N, 3]: raw-frame points [N, 3] moved by the 4 x 4 `axis_align` (`p' = M @ [p; 1]`)."""
    m = np.asarray(axis_align, dtype=np.float64)
    return np.asarray(coord, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


def instance_boxes(
    coord: np.ndarray,
    segment20: np.ndarray,
    instance: np.ndarray,
    axis_align: np.ndarray,
    min_points: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detection ground truth of one scan.

    coord: [N, 3] vertices in the raw frame; segment20: int [N] (-1 = ignore); instance: int [N]
    (-1 = none); axis_align: [4, 4] raw -> aligned. Returns (boxes float64 [K, 6] in the aligned
    frame, labels int64 [K] detection indices, instance_ids int64 [K]), sorted by instance id;
    one row per instance with at least `min_points` vertices (VoteNet: 1) whose majority
    segment20 class is one of the 18 detection classes.
    """
    coord = np.asarray(coord)
    segment20 = np.asarray(segment20).reshape(-1)
    instance = np.asarray(instance).reshape(-1)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape [N, 3], got {coord.shape}")
    if not len(segment20) == len(instance) == len(coord):
        raise ValueError(
            f"coord, segment20 and instance must have one entry per point: {len(coord)}, "
            f"{len(segment20)}, {len(instance)}"
        )
    if np.asarray(axis_align).shape != (4, 4):
        raise ValueError(f"axis_align must have shape [4, 4], got {np.asarray(axis_align).shape}")
    empty = (np.zeros((0, 6)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    annotated = instance >= 0
    if not annotated.any():
        return empty
    ids, inverse, counts = np.unique(instance[annotated], return_inverse=True, return_counts=True)
    # Majority vote per instance over segment20 + 1 (0 = ignore); argmax takes the lowest on ties.
    seg = segment20[annotated].astype(np.int64)
    num_seg = int(max(seg.max(initial=-1), 0)) + 2
    votes = np.zeros((len(ids), num_seg), dtype=np.int64)
    np.add.at(votes, (inverse, np.clip(seg + 1, 0, None)), 1)
    labels = seg20_to_det18(votes.argmax(axis=1) - 1)
    boxes = enclosing_boxes(align_points(coord[annotated], axis_align), inverse, len(ids))
    keep = (labels >= 0) & (counts >= max(min_points, 1))
    boxes = boxes[keep]
    return boxes, labels[keep].astype(np.int64), ids[keep].astype(np.int64)


def _load_array(path: Path, shape: tuple) -> np.ndarray:
    """np.load with the file named in every error; `shape` uses None for 'any length'."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (needed for the detection boxes)")
    try:
        array = np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from e
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        expected = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{path}: expected shape {expected}, got {list(array.shape)}")
    return array


def load_scene_boxes(scene_dir: str | os.PathLike, min_points: int = 1) -> dict[str, np.ndarray]:
    """The detection ground truth of a processed scene directory (see `instance_boxes`).

    Reads coord.npy, segment20.npy, instance.npy and axis_align.npy; a missing file is a
    FileNotFoundError and a malformed or inconsistent one (wrong shape, point counts that differ)
    a ValueError, each naming the file. Returns {"boxes": float64 [K, 6], "labels": int64 [K],
    "instance_ids": int64 [K]}.
    """
    scene_dir = Path(scene_dir)
    coord = _load_array(scene_dir / "coord.npy", (None, 3))
    segment20 = _load_array(scene_dir / "segment20.npy", (None,))
    instance = _load_array(scene_dir / "instance.npy", (None,))
    axis_align = _load_array(scene_dir / "axis_align.npy", (4, 4))
    for name, array in (("segment20.npy", segment20), ("instance.npy", instance)):
        if len(array) != len(coord):
            raise ValueError(
                f"{scene_dir / name}: {len(array)} entries, but coord.npy has {len(coord)} points"
            )
        if array.dtype.kind not in "iu":
            raise ValueError(f"{scene_dir / name}: expected integer values, got dtype {array.dtype}")
    boxes, labels, instance_ids = instance_boxes(coord, segment20, instance, axis_align, min_points)
    return {"boxes": boxes, "labels": labels, "instance_ids": instance_ids}


def load_ground_truth(
    data_root: str | os.PathLike, scene_ids: list[str], min_points: int = 1
) -> dict[str, dict[str, np.ndarray]]:
    """`load_scene_boxes` of `<data_root>/<scene>` for each scene id: {scene_id: {"boxes",
    "labels", "instance_ids"}}, the input `evaluate_detection` takes as ground truth."""
    root = Path(data_root)
    return {scene_id: load_scene_boxes(root / scene_id, min_points) for scene_id in scene_ids}
