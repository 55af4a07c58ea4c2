"""The 3D detection dataset over processed scene directories (docs/data_format.md): one voxelized,
augmented scene per sample in the axis-aligned frame, with its ground-truth boxes; batch with
`collate_detection`.

Augmentation keeps boxes axis-aligned: quarter turns about +z, x / y flips and isotropic scaling
map an axis-aligned box onto an axis-aligned box exactly; a small extra rotation about +z (FCAF3D:
up to 5 degrees) replaces each box by the axis-aligned box enclosing its rotated corners, which
is slightly larger than the object (mmdet3d does the same for ScanNet's yaw-less boxes). Every
geometric map is one [4, 4] matrix applied to the points and to the 8 corners of every box.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scene_kd.data.augment import coerce_augmentation
from scene_kd.data.geometry import transform_points
from scene_kd.data.scenes import (
    DEFAULT_COLOR_NORM,
    check_color_norm,
    feature_channels,
    feature_fields,
    input_features,
    load_scene,
    resolve_scene_ids,
    select_scene_subset,
)
from scene_kd.data.seg_augment import (
    check_probabilities,
    chromatic_auto_contrast,
    chromatic_jitter,
    chromatic_translation,
    scale_range,
    transform_normals,
)
from scene_kd.scannet.boxes import align_points, instance_boxes
from scene_kd.sparse.quantize import batched_coordinates, sparse_quantize


def transform_boxes(boxes: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """float64 [G, 6]: the axis-aligned boxes enclosing boxes [G, 6] (x_min, y_min, z_min, x_max,
    y_max, z_max) moved by the [4, 4] `transform` (all 8 corners moved, then min / max). Exact for
    maps that permute and scale the axes (quarter turns, flips, scaling, translation)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    bits = np.arange(8)
    corners = np.stack([np.where((bits >> axis) & 1, boxes[:, None, 3 + axis], boxes[:, None, axis])
                        for axis in range(3)], axis=2)  # [G, 8, 3]
    moved = transform_points(corners.reshape(-1, 3), transform).reshape(-1, 8, 3)
    return np.concatenate([moved.min(1), moved.max(1)], axis=1) if len(boxes) else np.zeros((0, 6))


@dataclass(frozen=True)
class DetAugmentation:
    """The augmentation settings of detection finetuning (`None`, 0 or False turns one off).

    quarter_turns: rotate by k x 90 degrees about +z, k uniform in {0, 1, 2, 3}. rotate_z: a further
    rotation uniform in [-rotate_z, rotate_z] radians (boxes enlarged to enclose their rotated
    corners; FCAF3D's 0.087 by default). scale: (low, high) uniform isotropic factor. flip_x,
    flip_y: probability of negating x, resp. y. translate_std: metres, Gaussian per axis.
    auto_contrast_p, color_translation_p / _ratio, color_jitter_p / _std: the colour augmentation
    of segmentation finetuning (`scene_kd.data.seg_augment`).
    """

    quarter_turns: bool = True
    rotate_z: float = 0.087
    scale: tuple[float, float] | None = (0.9, 1.1)
    flip_x: float = 0.5
    flip_y: float = 0.5
    translate_std: float = 0.1
    auto_contrast_p: float = 0.2
    color_translation_p: float = 0.95
    color_translation_ratio: float = 0.05
    color_jitter_p: float = 0.95
    color_jitter_std: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "scale", scale_range(self.scale))
        check_probabilities(self, ("flip_x", "flip_y", "auto_contrast_p", "color_translation_p", "color_jitter_p"))
        for name in ("rotate_z", "translate_std", "color_translation_ratio", "color_jitter_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def point_transform(self, rng: np.random.Generator) -> np.ndarray:
        """A random float64 [4, 4]: flips, then rotation about +z, then scale, then translation.
        Draws the same number of values whatever is turned off."""
        k, angle_u, scale_u, fx, fy = rng.uniform(size=5)
        shift = rng.standard_normal(3)
        angle = (math.floor(k * 4) * math.pi / 2 if self.quarter_turns else 0.0) + (2 * angle_u - 1) * self.rotate_z
        c, s = math.cos(angle), math.sin(angle)
        if self.quarter_turns and self.rotate_z == 0:  # exact zeros and ones for quarter turns
            c, s = round(c), round(s)
        scale = 1.0 if self.scale is None else self.scale[0] + scale_u * (self.scale[1] - self.scale[0])
        flips = np.diag([-1.0 if fx < self.flip_x else 1.0, -1.0 if fy < self.flip_y else 1.0, 1.0])
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        transform = np.eye(4)
        transform[:3, :3] = scale * rotation @ flips
        transform[:3, 3] = shift * self.translate_std
        return transform

    def colors(self, rng: np.random.Generator, colors: np.ndarray) -> np.ndarray:
        """float64 [P, 3] in [0, 255]: auto-contrast, translation and jitter of colors [P, 3]."""
        colors = chromatic_auto_contrast(colors, rng, self.auto_contrast_p)
        colors = chromatic_translation(colors, rng, self.color_translation_p, self.color_translation_ratio)
        return chromatic_jitter(colors, rng, self.color_jitter_p, self.color_jitter_std)


class DetectionDataset(torch.utils.data.Dataset):
    """Voxelized scenes in the axis-aligned frame with their 18-class boxes.

    split: "train" / "val" / "test" (`<root>/splits/`), a split file, a list of scene ids, or None
    (every processed scene). scene_subset: a scene-list file (or list) restricting the split, e.g.
    `subsets/scenes_1pct.txt`. voxel_size: metres. augment: True (`DetAugmentation()`), False /
    None, a `DetAugmentation` or a mapping of its keyword arguments. in_features: "rgb" or
    "rgb+normal". color_norm: "symmetric" (rgb / 127.5 - 1) or "unit" (rgb / 255, Pointcept's).
    seed: with the epoch (`set_epoch`) and the index, fixes every random choice.
    min_box_points: instances with fewer points get no box (VoteNet: 1).

    Each scene is moved into the aligned frame (`axis_align.npy`), then centred (x, y about the
    middle of its bounding box, z from its floor) and augmented; the boxes (`load_scene_boxes`'s
    rule) undergo the same map. Voxelization is `sparse_quantize` (one point per voxel, the lowest
    index): the voxel with coordinates c covers [c, c + 1) x voxel_size.

    A sample is a dict: coords int32 [V, 3]; feats float32 [V, C] (colours normalized by
    color_norm, then unit normals); boxes float32 [G, 6] in the sample's frame (metres); labels int64 [G] (0..17);
    to_aligned float64 [4, 4] mapping the sample's frame back to the aligned frame; scene_id str.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | os.PathLike | Sequence[str] | None = "train",
        *,
        voxel_size: float = 0.02,
        augment: bool | DetAugmentation | Mapping | None = True,
        scene_subset: str | os.PathLike | Sequence[str] | None = None,
        in_features: str = "rgb",
        color_norm: str = DEFAULT_COLOR_NORM,
        seed: int = 0,
        min_box_points: int = 1,
    ):
        feature_channels(in_features)
        self.color_norm = check_color_norm(color_norm)
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {voxel_size}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: processed dataset directory not found")
        self.augment: DetAugmentation | None = coerce_augmentation(augment, DetAugmentation)
        self.voxel_size = float(voxel_size)
        self.in_features = in_features
        self.seed = int(seed)
        self.min_box_points = int(min_box_points)
        self.epoch = 0
        self.scene_ids = select_scene_subset(resolve_scene_ids(self.root, split), scene_subset, split)

    @property
    def in_channels(self) -> int:
        """Feature channels of `feats`: 3 (rgb) or 6 (rgb+normal)."""
        return feature_channels(self.in_features)

    def __len__(self) -> int:
        return len(self.scene_ids)

    def set_epoch(self, epoch: int) -> None:
        """Draw other augmentations from now on (call before each epoch)."""
        self.epoch = int(epoch)

    def load_aligned(self, scene_id: str) -> dict[str, np.ndarray]:
        """The scene in the aligned frame: points float64 [P, 3], colors [P, 3], normals [P, 3]
        (aligned) or None, boxes float64 [G, 6], labels int64 [G]; errors name the file."""
        fields = ("coord", "segment20", "instance", "axis_align", *feature_fields(self.in_features))
        scene = load_scene(self.root, scene_id, fields)
        coord, axis_align = scene["coord"], scene["axis_align"]
        normals = None
        if "normal" in scene:
            normals = transform_normals(scene["normal"], axis_align[:3, :3])
        boxes, labels, _ = instance_boxes(coord, scene["segment20"], scene["instance"], axis_align, self.min_box_points)
        return {"points": align_points(coord, axis_align), "colors": scene["color"], "normals": normals,
                "boxes": boxes, "labels": labels}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.scene_ids):
            raise IndexError(f"index {index} out of range for {len(self.scene_ids)} scenes")
        scene_id = self.scene_ids[index]
        scene = self.load_aligned(scene_id)
        points, colors, normals = scene["points"], np.asarray(scene["colors"], dtype=np.float64), scene["normals"]
        transform = np.eye(4)
        if len(points):
            low, high = points.min(0), points.max(0)
            transform[:3, 3] = -np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
        if self.augment is not None:
            geometry_rng, color_rng = (np.random.default_rng(int(s)) for s in
                                       np.random.default_rng([self.seed, self.epoch, index]).integers(0, 2**63, size=2))
            transform = self.augment.point_transform(geometry_rng) @ transform
            colors = self.augment.colors(color_rng, colors)
            if normals is not None:
                normals = transform_normals(normals, transform[:3, :3])
        points = transform_points(points, transform)
        coords, unique_map, _ = (t.numpy() for t in sparse_quantize(points, self.voxel_size))
        feats = input_features(colors[unique_map], None if normals is None else normals[unique_map], self.color_norm)
        return {
            "coords": torch.from_numpy(np.ascontiguousarray(coords, dtype=np.int32)),
            "feats": torch.from_numpy(feats),
            "boxes": torch.from_numpy(transform_boxes(scene["boxes"], transform).astype(np.float32)),
            "labels": torch.from_numpy(np.asarray(scene["labels"], dtype=np.int64)),
            "to_aligned": torch.from_numpy(np.linalg.inv(transform)),
            "scene_id": scene_id,
        }


def collate_detection(samples: Sequence[dict]) -> dict:
    """Stack `DetectionDataset` samples (numbered 0 .. B-1 in order) into one batch.

    Returns coordinates int32 [N, 4] (batch index, x, y, z); features float32 [N, C]; voxel_offsets
    int64 [B + 1]; and per-sample lists boxes (float32 [G_b, 6], metres), labels (int64 [G_b]),
    to_aligned (float64 [4, 4]) and scene_ids.
    """
    if not samples:
        raise ValueError("collate_detection needs at least one sample")
    counts = torch.tensor([0] + [len(s["coords"]) for s in samples], dtype=torch.int64)
    return {
        "coordinates": batched_coordinates([torch.as_tensor(s["coords"]) for s in samples]),
        "features": torch.cat([torch.as_tensor(s["feats"], dtype=torch.float32) for s in samples]),
        "voxel_offsets": torch.cumsum(counts, 0),
        "boxes": [torch.as_tensor(s["boxes"], dtype=torch.float32) for s in samples],
        "labels": [torch.as_tensor(s["labels"], dtype=torch.int64) for s in samples],
        "to_aligned": [torch.as_tensor(s["to_aligned"], dtype=torch.float64) for s in samples],
        "scene_ids": [s["scene_id"] for s in samples],
    }


__all__ = ["DetAugmentation", "DetectionDataset", "collate_detection", "transform_boxes"]
