"""2D semantic labels of a processed scene's frames, made the way ScanNet makes its `label-filt`
images: the annotated 3D points are projected into each frame, keeping those its depth map sees.

Pixels that no labelled point reaches stay -1 (unlabelled); the labels are as dense as the scene's
points are (a 6 cm vertex spacing seen from 2 m labels about one pixel in twenty at 160 x 120).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scene_kd.data.correspondence import RGBDCamera, visible_points
from scene_kd.data.geometry import as_matrix4, pose_is_valid, project_points, round_pixels
from scene_kd.data.scenes import load_scene, read_manifest, resolve_scene_ids
from scene_kd.scannet.exported import ExportedFrameSource
from scene_kd.scannet.frame_types import RGBDFrame


def frame_label_image(
    points: np.ndarray,
    labels: np.ndarray,
    frame: RGBDFrame,
    camera: RGBDCamera,
    image_size: tuple[int, int],
    depth_tolerance: float = 0.05,
) -> np.ndarray:
    """Labels int64 [H, W] of `frame`'s color image resized to `image_size` (W, H), -1 where no
    labelled point lands. points: world float [P, 3]; labels: int [P] (-1 = unlabelled). A point
    labels the pixel its projection falls in when the frame's depth map sees it
    (`visible_points`); the pose must be finite."""
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 3 or labels.shape != (len(points),):
        raise ValueError(f"points must be [P, 3] and labels [P], got {list(points.shape)} and {list(labels.shape)}")
    width, height = int(image_size[0]), int(image_size[1])
    out = np.full((height, width), -1, dtype=np.int64)
    if not pose_is_valid(frame.camera_to_world):
        return out
    seen = visible_points(points, frame, camera, depth_tolerance)
    seen = seen[labels[seen] >= 0]
    color_h, color_w = frame.color.shape[:2]
    world_to_color = np.linalg.inv(as_matrix4(frame.camera_to_world))
    if camera.extrinsic_color is not None:
        world_to_color = as_matrix4(camera.extrinsic_color) @ world_to_color
    rows, cols, _, inside = project_points(points[seen], None, camera.intrinsic_color, (color_w, color_h),
                                           extrinsic=world_to_color)
    seen, rows, cols = seen[inside], rows[inside], cols[inside]
    # Pixel centres of the stored image map onto pixel centres of the resized one.
    r = np.clip(round_pixels((rows + 0.5) * height / color_h - 0.5), 0, height - 1)
    c = np.clip(round_pixels((cols + 0.5) * width / color_w - 0.5), 0, width - 1)
    out[r, c] = labels[seen]
    return out


CODE_BASE = 1024  # with instances: class index + CODE_BASE * (instance + 1), both labels projected as one


def load_labelled_frames(
    root: str | os.PathLike,
    split: str | os.PathLike | Sequence[str] | None,
    image_size: tuple[int, int],
    *,
    label_name: str = "segment20",
    depth_tolerance: float = 0.05,
    with_instances: bool = False,
    progress: bool = False,
) -> dict:
    """Every frame of the processed scenes of `split` with its projected labels:
    {"images": uint8 [F, H, W, 3], "labels": int64 [F, H, W], "scene_index": int64 [F] (into
    "scene_ids"), "frame_ids": int64 [F], "scene_ids": list[str]} at `image_size` (W, H). Frames with
    a non-finite pose are left out. with_instances: also "instances" int64 [F, H, W] (instance id, -1
    none), from the same projection as the class, so a pixel's class and instance are one point's."""
    root = Path(root)
    scene_ids = resolve_scene_ids(root, split)
    width, height = int(image_size[0]), int(image_size[1])
    images, codes, scene_index, frame_ids = [], [], [], []
    for index, scene_id in enumerate(tqdm(scene_ids, desc="frame labels", unit="scene", disable=not progress)):
        scene_dir = root / scene_id
        arrays = load_scene(root, scene_id, ("coord", label_name, *(("instance",) if with_instances else ())))
        code = arrays[label_name]
        if with_instances:
            if code.max(initial=-1) >= CODE_BASE:
                raise ValueError(f"{scene_dir / (label_name + '.npy')}: class indices must be < {CODE_BASE}")
            code = np.where(code >= 0, code + CODE_BASE * (arrays["instance"] + 1), -1)
        source = ExportedFrameSource(scene_dir)
        camera = RGBDCamera.from_source(source)
        for frame_id in (int(i) for i in read_manifest(scene_dir)["frame_ids"]):
            frame = source.read(frame_id)
            if not pose_is_valid(frame.camera_to_world):
                continue
            codes.append(frame_label_image(arrays["coord"], code, frame, camera, (width, height), depth_tolerance))
            color = Image.fromarray(frame.color).resize((width, height), Image.BILINEAR)
            images.append(np.asarray(color, dtype=np.uint8))
            scene_index.append(index)
            frame_ids.append(frame_id)
    if not images:
        raise ValueError(f"{root}: no frames with a valid pose in split {split!r}")
    codes = np.stack(codes)
    frames = {"images": np.stack(images), "labels": codes, "scene_index": np.asarray(scene_index, dtype=np.int64),
              "frame_ids": np.asarray(frame_ids, dtype=np.int64), "scene_ids": list(scene_ids)}
    if with_instances:
        seen = codes >= 0
        frames["labels"] = np.where(seen, codes % CODE_BASE, -1)
        frames["instances"] = np.where(seen, codes // CODE_BASE - 1, -1)
    return frames
