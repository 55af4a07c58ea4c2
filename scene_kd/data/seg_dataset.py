"""The semantic segmentation dataset over processed scene directories (docs/data_format.md): one
voxelized, augmented scene per sample with 20-class targets; batch with `collate_segmentation`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from scene_kd.data.augment import coerce_augmentation
from scene_kd.data.scenes import (
    DEFAULT_COLOR_NORM,
    check_color_norm,
    feature_channels,
    feature_fields,
    input_features,
    load_scene,
    read_point_subset,
    resolve_scene_ids,
    select_scene_subset,
)
from scene_kd.data.seg_augment import SegAugmentation
from scene_kd.sparse.quantize import batched_coordinates, sparse_quantize

IGNORE_LABEL = -1


def crop_nearest_voxels(coords: np.ndarray, max_voxels: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [max_voxels] sorted rows of `coords` [V, 3] (V > max_voxels): the voxels nearest
    (Euclidean, in voxel units) to a uniformly drawn voxel, a ball around it."""
    centre = coords[int(rng.integers(len(coords)))]
    distance2 = ((coords.astype(np.int64) - centre) ** 2).sum(1)
    return np.sort(np.argpartition(distance2, max_voxels - 1)[:max_voxels])


class SegmentationDataset(torch.utils.data.Dataset):
    """Voxelized scenes with 20-class labels from processed scene directories under `root`.

    split: "train" / "val" / "test" (`<root>/splits/`), a split file, a list of scene ids, or None
    (every processed scene). scene_subset: a scene-list file (or list) restricting the split, e.g.
    `subsets/scenes_1pct.txt`; an id outside the split is an error. labelled_points: a
    `points_{n}.json` file; only those points keep their label in `labels` (the others are -1),
    and a voxel holding one keeps that point (its features and label); every scene of the dataset
    must be listed. voxel_size: metres. augment: True (`SegAugmentation()`), False / None, a
    `SegAugmentation` or a mapping of its keyword arguments. max_voxels: a sample with more voxels
    keeps the `max_voxels` nearest a random voxel (None: no cap). in_features: "rgb" (3 channels)
    or "rgb+normal" (6). color_norm: "symmetric" (rgb / 127.5 - 1) or "unit" (rgb / 255,
    Pointcept's), see `input_features`. seed: with the epoch (`set_epoch`) and the index, fixes every random choice
    of a sample, whatever the DataLoader workers. For validation pass augment=False,
    max_voxels=None: every point then has a voxel.

    Each scene is centred (x, y about the middle of its bounding box, z from its floor) before
    augmentation, so rotations are about its centre. Voxelization is `sparse_quantize` (one point
    per voxel, the lowest index, unless labelled_points prefers a labelled one).

    A sample is a dict: coords int32 [V, 3]; feats float32 [V, C] (the kept point's colour
    normalized by color_norm, then its unit normal, rotated with the points); labels int64 [V] (the kept point's label,
    -1 ignore); inverse_map int64 [P] (each point's row of coords, -1 for points cropped away);
    point_labels int64 [P] (the scene's segment20, all labels, for evaluation); scene_id str.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | os.PathLike | Sequence[str] | None = "train",
        *,
        voxel_size: float = 0.02,
        augment: bool | SegAugmentation | Mapping | None = True,
        max_voxels: int | None = 120_000,
        labelled_points: str | os.PathLike | None = None,
        scene_subset: str | os.PathLike | Sequence[str] | None = None,
        in_features: str = "rgb",
        color_norm: str = DEFAULT_COLOR_NORM,
        seed: int = 0,
    ):
        feature_channels(in_features)
        self.color_norm = check_color_norm(color_norm)
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {voxel_size}")
        if max_voxels is not None and max_voxels < 1:
            raise ValueError(f"max_voxels must be >= 1 or None, got {max_voxels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: processed dataset directory not found")
        self.augment: SegAugmentation | None = coerce_augmentation(augment, SegAugmentation)
        self.voxel_size = float(voxel_size)
        self.max_voxels = None if max_voxels is None else int(max_voxels)
        self.in_features = in_features
        self.seed = int(seed)
        self.epoch = 0
        scene_ids = select_scene_subset(resolve_scene_ids(self.root, split), scene_subset, split)
        self.scene_ids = scene_ids
        self.labelled_points_path = None if labelled_points is None else Path(labelled_points)
        self.labelled_points: dict[str, np.ndarray] | None = None
        if self.labelled_points_path is not None:
            points = read_point_subset(self.labelled_points_path)
            unlisted = [s for s in scene_ids if s not in points]
            if unlisted:
                raise ValueError(
                    f"{self.labelled_points_path}: no labelled points for {len(unlisted)} scene(s) of the "
                    f"dataset: {', '.join(unlisted[:5])}"
                )
            self.labelled_points = {s: points[s] for s in scene_ids}

    @property
    def in_channels(self) -> int:
        """Feature channels of `feats`: 3 (rgb) or 6 (rgb+normal)."""
        return feature_channels(self.in_features)

    def __len__(self) -> int:
        return len(self.scene_ids)

    def set_epoch(self, epoch: int) -> None:
        """Draw other augmentations and crops from now on (call before each epoch; DataLoader
        workers see it when they are started per epoch, i.e. without persistent_workers)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _load(self, scene_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        scene = load_scene(self.root, scene_id, ("coord", *feature_fields(self.in_features), "segment20"))
        points, colors, normals = scene["coord"].astype(np.float64), scene["color"], scene.get("normal")
        return points, colors, normals, scene["segment20"].astype(np.int64)

    def _training_labels(self, scene_id: str, point_labels: np.ndarray) -> np.ndarray:
        if self.labelled_points is None:
            return point_labels
        indices = self.labelled_points[scene_id]
        if len(indices) and indices.max() >= len(point_labels):
            raise ValueError(
                f"{self.labelled_points_path}: {scene_id} lists point {int(indices.max())}, but the scene has "
                f"{len(point_labels)} points"
            )
        masked = np.full_like(point_labels, IGNORE_LABEL)
        masked[indices] = point_labels[indices]
        return masked

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.scene_ids):
            raise IndexError(f"index {index} out of range for {len(self.scene_ids)} scenes")
        scene_id = self.scene_ids[index]
        rng = self._rng(index)
        augment_rng, crop_rng = (np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=2))
        points, colors, normals, point_labels = self._load(scene_id)
        labels = self._training_labels(scene_id, point_labels)
        if len(points):
            low, high = points.min(0), points.max(0)
            points = points - np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
        if self.augment is not None:
            points, colors, normals = self.augment.apply(augment_rng, points, colors, normals)
        coords, unique_map, inverse_map = (t.numpy() for t in sparse_quantize(points, self.voxel_size))
        if self.labelled_points is not None:
            # Keep a labelled point for its voxel: with 20 labels in a scene, the lowest-index point
            # of a voxel is rarely the labelled one and its label would be lost (Pointcept forces
            # the sampled points into its grid sampling for the same reason).
            labelled = np.flatnonzero(labels >= 0)
            best = np.full(len(coords), len(points), dtype=np.int64)
            np.minimum.at(best, inverse_map[labelled], labelled)
            has = best < len(points)
            unique_map = unique_map.copy()
            unique_map[has] = best[has]
        if self.max_voxels is not None and len(coords) > self.max_voxels:
            keep = crop_nearest_voxels(coords, self.max_voxels, crop_rng)
            new_row = np.full(len(coords), -1, dtype=np.int64)
            new_row[keep] = np.arange(len(keep))
            coords, unique_map, inverse_map = coords[keep], unique_map[keep], new_row[inverse_map]
        feats = input_features(np.asarray(colors)[unique_map], None if normals is None else normals[unique_map],
                               self.color_norm)
        return {
            "coords": torch.from_numpy(np.ascontiguousarray(coords, dtype=np.int32)),
            "feats": torch.from_numpy(feats),
            "labels": torch.from_numpy(labels[unique_map]),
            "inverse_map": torch.from_numpy(inverse_map.astype(np.int64)),
            "point_labels": torch.from_numpy(point_labels),
            "scene_id": scene_id,
        }


def collate_segmentation(samples: Sequence[dict]) -> dict:
    """Stack `SegmentationDataset` samples (numbered 0 .. B-1 in order) into one batch.

    Returns coordinates int32 [N, 4] (batch index, x, y, z; `batched_coordinates`); features
    float32 [N, C]; labels int64 [N]; voxel_offsets int64 [B + 1] (sample b's voxels are rows
    `voxel_offsets[b]:voxel_offsets[b + 1]`); and per-sample lists inverse_maps (int64 [P_b], rows
    of the sample's own voxels, -1 where cropped: add `voxel_offsets[b]` to index the batch),
    point_labels (int64 [P_b]) and scene_ids.
    """
    if not samples:
        raise ValueError("collate_segmentation needs at least one sample")
    counts = torch.tensor([0] + [len(s["coords"]) for s in samples], dtype=torch.int64)
    return {
        "coordinates": batched_coordinates([torch.as_tensor(s["coords"]) for s in samples]),
        "features": torch.cat([torch.as_tensor(s["feats"], dtype=torch.float32) for s in samples]),
        "labels": torch.cat([torch.as_tensor(s["labels"], dtype=torch.int64) for s in samples]),
        "voxel_offsets": torch.cumsum(counts, 0),
        "inverse_maps": [torch.as_tensor(s["inverse_map"], dtype=torch.int64) for s in samples],
        "point_labels": [torch.as_tensor(s["point_labels"], dtype=torch.int64) for s in samples],
        "scene_ids": [s["scene_id"] for s in samples],
    }


__all__ = ["SegmentationDataset", "collate_segmentation", "crop_nearest_voxels"]
