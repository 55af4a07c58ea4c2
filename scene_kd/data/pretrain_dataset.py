"""The pretraining dataset over processed scene directories (docs/data_format.md): sparse voxels,
teacher images and pixel-to-point pairs per sample; batch them with `collate_pretrain`."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from scene_kd.data.augment import Augmentation, ImageTransform, coerce_augmentation
from scene_kd.data.correspondence import (
    SKIP_UNREADABLE,
    RGBDCamera,
    frame_pairs,
    scene_pairs,
)
from scene_kd.data.geometry import transform_points
from scene_kd.data.scenes import (
    DEFAULT_COLOR_NORM,
    check_color_norm,
    feature_channels,
    feature_fields,
    input_features,
    load_scene,
    read_manifest,
    resolve_scene_ids,
)
from scene_kd.data.seg_augment import transform_normals
from scene_kd.scannet.exported import ExportedFrameSource
from scene_kd.sparse.quantize import sparse_quantize

MODES = ("frame", "scene")
# Errors that mark one frame (or the frames of one scene) unreadable: missing or corrupt files.
# ScanNetFormatError is a ValueError.
READ_ERRORS = (OSError, ValueError, SyntaxError)


def _new_meta(scene_id: str, index: int) -> dict:
    return {
        "scene_id": scene_id, "frame_ids": [], "index": index, "errors": [],
        "point_transform": None, "image_transforms": [],
    }


def _to_image_tensor(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] images -> float32 [F, 3, H, W] in [0, 1] (zero rows when none)."""
    if not images:
        return torch.zeros(0, 3, size[1], size[0])
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return stacked.float().div_(255.0).contiguous()


class PretrainDataset(torch.utils.data.Dataset):
    """Samples for pixel-to-point distillation from processed scene directories under `root`.

    mode "frame" (PPKT): one sample per (scene, frame) of every manifest; the student sees the
    frame's back-projected depth. mode "scene": one sample per scene with `frames_per_sample`
    random frames; the student sees the scene's points. See `frame_pairs` / `scene_pairs`.

    split: None (every processed scene), "train" / "val" / "test" (`<root>/splits/`), a split
    file, or a list of scene ids. voxel_size: metres. image_size: (W, H) of the teacher's images
    (None: the stored color size). augment: True (`Augmentation()` defaults), False / None (no
    augmentation: the stored image is resized to image_size), an `Augmentation`, or a mapping of
    its keyword arguments. min_pairs: frames with fewer pairs are skipped. depth_tolerance: the
    scene-mode depth test in metres. in_features: "rgb" (3 channels) or "rgb+normal" (6, scene mode
    only: a frame's back-projected depth has no mesh normals). color_norm: "symmetric" (rgb / 127.5
    - 1) or "unit" (rgb / 255, Pointcept's), see `input_features`. seed: with the epoch (`set_epoch`) and the index, fixes every
    random choice of a sample, whatever the DataLoader workers.

    A sample is a dict: coords int32 [V, 3]; feats float32 [V, C] (the colours of the kept point of
    each voxel normalized by color_norm, then its unit normal, rotated with the points); images float32 [F, 3, H, W] in [0, 1]; pairs int64 [M, 4] (voxel, image
    index in this sample, row, col); counts (Counter of skipped / used frames); meta (scene_id,
    frame_ids of the images, index, errors: messages of unreadable frames, point_transform: the
    [4, 4] 3D augmentation or None, image_transforms: the `ImageTransform` of each image). A sample whose frames
    are all skipped has zero pairs (and, in frame mode, zero voxels and images);
    `collate_pretrain` drops it. Manifests are read on construction; all other files in
    `__getitem__`, and no file stays open, so the dataset pickles to DataLoader workers.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | os.PathLike | Sequence[str] | None = None,
        *,
        mode: str = "frame",
        voxel_size: float = 0.025,
        image_size: tuple[int, int] | None = (320, 240),
        frames_per_sample: int = 1,
        augment: bool | Augmentation | Mapping | None = True,
        min_pairs: int = 100,
        depth_tolerance: float = 0.05,
        in_features: str = "rgb",
        color_norm: str = DEFAULT_COLOR_NORM,
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_channels = feature_channels(in_features)
        if mode == "frame" and in_features != "rgb":
            raise ValueError(f"data.in_features={in_features} needs data.mode=scene: in frame mode the points are "
                             "a frame's back-projected depth, which has no mesh normals")
        if mode == "frame" and frames_per_sample != 1:
            raise ValueError(f"frame mode takes one frame per sample, got frames_per_sample={frames_per_sample}")
        if frames_per_sample < 1 or not voxel_size > 0 or not depth_tolerance > 0 or min_pairs < 0:
            raise ValueError(
                f"need frames_per_sample >= 1, voxel_size > 0, depth_tolerance > 0, min_pairs >= 0; got "
                f"{frames_per_sample}, {voxel_size}, {depth_tolerance}, {min_pairs}"
            )
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (width, height) of positive ints or None, got {image_size}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: processed dataset directory not found")
        self.mode = mode
        self.in_features = in_features
        self.color_norm = check_color_norm(color_norm)
        self.voxel_size = float(voxel_size)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.frames_per_sample = int(frames_per_sample)
        self.augment: Augmentation | None = coerce_augmentation(augment, Augmentation)
        self.min_pairs = int(min_pairs)
        self.depth_tolerance = float(depth_tolerance)
        self.seed = int(seed)
        self.epoch = 0
        self.scene_ids = resolve_scene_ids(self.root, split)
        self.frame_ids = [
            [int(i) for i in read_manifest(self.root / s)["frame_ids"]] for s in self.scene_ids
        ]
        if mode == "frame":
            self.index = [(s, f) for s, ids in enumerate(self.frame_ids) for f in ids]
        else:
            self.index = [(s, None) for s in range(len(self.scene_ids))]

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Draw other augmentations and frames from now on (call before each epoch; DataLoader
        workers see it when they are started per epoch, i.e. without persistent_workers)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _image_transform(self, rng: np.random.Generator, color_size: tuple[int, int]) -> ImageTransform:
        out_size = self.image_size or color_size
        if self.augment is None:
            return ImageTransform.resize(color_size, out_size)
        return self.augment.image_transform(rng, color_size, out_size)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.index):
            raise IndexError(f"index {index} out of range for {len(self.index)} samples")
        scene_index, frame_id = self.index[index]
        if self.mode == "frame":
            return self._frame_sample(index, scene_index, frame_id)
        return self._scene_sample(index, scene_index)

    def _empty_images(self, source_size: tuple[int, int] | None) -> torch.Tensor:
        size = self.image_size or source_size or (0, 0)
        return torch.zeros(0, 3, size[1], size[0])

    def _frame_sample(self, index: int, scene_index: int, frame_id: int) -> dict:
        scene_id = self.scene_ids[scene_index]
        rng = self._rng(index)
        meta = _new_meta(scene_id, index)
        try:
            source = ExportedFrameSource(self.root / scene_id)
            frame = source.read(frame_id)
        except READ_ERRORS as e:
            meta["errors"].append(f"{scene_id} frame {frame_id}: {e}")
            return {
                "coords": torch.zeros(0, 3, dtype=torch.int32),
                "feats": torch.zeros(0, self.in_channels),
                "images": self._empty_images(None),
                "pairs": torch.zeros(0, 4, dtype=torch.int64),
                "counts": Counter({SKIP_UNREADABLE: 1}),
                "meta": meta,
            }
        color_size = (frame.color.shape[1], frame.color.shape[0])
        point_transform = None if self.augment is None else self.augment.point_transform(rng)
        image_transform = self._image_transform(rng, color_size)
        result = frame_pairs(
            frame,
            RGBDCamera.from_source(source),
            self.voxel_size,
            point_transform=point_transform,
            image_transform=image_transform,
            min_pairs=self.min_pairs,
        )
        used = len(result.pairs) > 0
        meta["point_transform"] = point_transform
        if used:
            meta["frame_ids"] = [frame_id]
            meta["image_transforms"] = [image_transform]
        images = [image_transform.apply_image(frame.color)] if used else []
        return {
            "coords": torch.from_numpy(result.coords),
            "feats": torch.from_numpy(input_features(result.colors, color_norm=self.color_norm)),
            "images": _to_image_tensor(images, image_transform.out_size),
            "pairs": torch.from_numpy(result.pairs),
            "counts": result.counts,
            "meta": meta,
        }

    def _scene_sample(self, index: int, scene_index: int) -> dict:
        scene_id = self.scene_ids[scene_index]
        scene_dir = self.root / scene_id
        rng = self._rng(index)
        meta = _new_meta(scene_id, index)
        arrays = load_scene(self.root, scene_id, ("coord", *feature_fields(self.in_features)))
        points, colors, normals = arrays["coord"].astype(np.float64), arrays["color"], arrays.get("normal")
        point_transform = None if self.augment is None else self.augment.point_transform(rng)
        moved = points if point_transform is None else transform_points(points, point_transform)
        if normals is not None and point_transform is not None:
            normals = transform_normals(normals, point_transform[:3, :3])
        coords, unique_map, inverse_map = (t.numpy() for t in sparse_quantize(moved, self.voxel_size))
        ids = self.frame_ids[scene_index]
        chosen = sorted(rng.choice(ids, size=min(self.frames_per_sample, len(ids)), replace=False).tolist())
        counts: Counter = Counter()
        frames, frame_ids, transforms = [], [], []
        try:
            source = ExportedFrameSource(scene_dir)
            camera = RGBDCamera.from_source(source)
        except READ_ERRORS as e:
            meta["errors"].append(f"{scene_id}: {e}")
            counts[SKIP_UNREADABLE] += len(chosen)
            chosen = []
        for frame_id in chosen:
            try:
                frame = source.read(frame_id)
            except READ_ERRORS as e:
                meta["errors"].append(f"{scene_id} frame {frame_id}: {e}")
                counts[SKIP_UNREADABLE] += 1
                continue
            frames.append(frame)
            frame_ids.append(frame_id)
            transforms.append(self._image_transform(rng, (frame.color.shape[1], frame.color.shape[0])))
        if frames:
            result = scene_pairs(
                points, inverse_map, frames, camera,
                depth_tolerance=self.depth_tolerance, min_pairs=self.min_pairs, image_transforms=transforms,
            )
            counts.update(result.counts)
            pairs, used = result.pairs, result.used
        else:
            pairs, used = np.zeros((0, 4), dtype=np.int64), []
        meta["point_transform"] = point_transform
        meta["frame_ids"] = [frame_ids[i] for i in used]
        meta["image_transforms"] = [transforms[i] for i in used]
        images = [transforms[i].apply_image(frames[i].color) for i in used]
        out_size = transforms[0].out_size if transforms else None
        return {
            "coords": torch.from_numpy(coords.astype(np.int32)),
            "feats": torch.from_numpy(input_features(colors[unique_map], None if normals is None else normals[unique_map],
                                                     self.color_norm)),
            "images": _to_image_tensor(images, out_size) if out_size else self._empty_images(None),
            "pairs": torch.from_numpy(pairs),
            "counts": counts,
            "meta": meta,
        }


__all__ = ["MODES", "PretrainDataset"]
