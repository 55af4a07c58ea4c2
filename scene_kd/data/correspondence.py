"""Pixel-to-point correspondences between RGB-D frames and the voxels a sparse U-Net sees.

A pair is one int64 row (voxel index, image index, pixel row, pixel column): the voxel a pixel of
the teacher's image sees. Pixel coordinates are integers in the image given to the teacher (after
any `ImageTransform`); voxel indices are rows of the voxelized student input.

Two modes (see docs/pretraining_data.md):
- `frame_pairs` ("frame", PPKT): the student sees the frame's own back-projected depth pixels; each
  valid depth pixel pairs its voxel with the color pixel it projects to.
- `scene_pairs` ("scene", OpenScene / CLIP2Scene): the student sees the whole scene; a scene point
  pairs with a frame's color pixel when it projects into the frame and passes a depth test
  against the frame's depth map (occluded points do not pair).

Bad frames are never an error: a non-finite pose, a depth map without a valid pixel and a frame
with fewer than `min_pairs` pairs are skipped and counted in a `Counter` (`SKIP_KEYS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scene_kd.data.augment import ImageTransform
from scene_kd.data.geometry import (
    as_matrix4,
    backproject_depth,
    depth_to_color_pixels,
    inside_image,
    pose_is_valid,
    project_points,
    round_pixels,
    transform_points,
)
from scene_kd.scannet.frame_types import RGBDFrame
from scene_kd.sparse.quantize import sparse_quantize

SKIP_INVALID_POSE = "skipped_invalid_pose"
SKIP_NO_DEPTH = "skipped_no_depth"
SKIP_FEW_PAIRS = "skipped_few_pairs"
SKIP_UNREADABLE = "skipped_unreadable"
FRAMES_USED = "frames_used"
SKIP_KEYS = (SKIP_INVALID_POSE, SKIP_NO_DEPTH, SKIP_FEW_PAIRS, SKIP_UNREADABLE)


@dataclass(frozen=True)
class RGBDCamera:
    """The calibration of a scan's two cameras.

    intrinsic_color: [4, 4] (or [3, 3]) for the color image as stored (the size `frame.color` has);
    intrinsic_depth: the same for the depth image; extrinsic_color / extrinsic_depth: rig-to-camera
    [4, 4] (None: identity, as in every ScanNet scan); depth_shift: stored depth units per metre.
    """

    intrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_color: np.ndarray | None = None
    extrinsic_depth: np.ndarray | None = None
    depth_shift: float = 1000.0

    @classmethod
    def from_source(cls, source) -> RGBDCamera:
        """From a `scene_kd.scannet` frame source (`ExportedFrameSource`, `SensFrameSource`);
        identity extrinsics become None so that no matrix is inverted for nothing."""

        def non_identity(m):
            return None if m is None or np.array_equal(np.asarray(m), np.eye(4)) else as_matrix4(m)

        return cls(
            intrinsic_color=as_matrix4(source.intrinsic_color),
            intrinsic_depth=as_matrix4(source.intrinsic_depth),
            extrinsic_color=non_identity(source.extrinsic_color),
            extrinsic_depth=non_identity(source.extrinsic_depth),
            depth_shift=float(source.depth_shift),
        )

    def depth_to_world(self, camera_to_world: np.ndarray) -> np.ndarray:
        """[4, 4] from depth-camera to world coordinates."""
        m = as_matrix4(camera_to_world)
        return m if self.extrinsic_depth is None else m @ np.linalg.inv(as_matrix4(self.extrinsic_depth))


def empty_pairs() -> np.ndarray:
    """int64 [0, 4]."""
    return np.zeros((0, 4), dtype=np.int64)


def unique_pairs(voxels: np.ndarray, image_index: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """int64 [M, 4] rows (voxel, image_index, row, col) without duplicates, sorted by voxel then
    pixel. Duplicates arise when several depth pixels or scene points of one voxel land on one
    pixel; kept, they would be identical positives and negatives of each other in InfoNCE."""
    voxels = np.asarray(voxels, dtype=np.int64)
    if voxels.size == 0:
        return empty_pairs()
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    keys = np.unique((voxels * height + rows) * width + cols)
    out = np.empty((keys.size, 4), dtype=np.int64)
    out[:, 3] = keys % width
    out[:, 2] = (keys // width) % height
    out[:, 0] = keys // (width * height)
    out[:, 1] = image_index
    return out


def _teacher_pixels(
    rows: np.ndarray, cols: np.ndarray, color_size: tuple[int, int], image_transform: ImageTransform | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous pixels of the stored color image -> integer pixels of the teacher's image and a
    mask of those inside it."""
    out_size = color_size
    if image_transform is not None:
        if tuple(image_transform.in_size) != tuple(color_size):
            raise ValueError(
                f"image transform expects a {image_transform.in_size} image, the color image is {color_size}"
            )
        rows, cols = image_transform.map_pixels(rows, cols)
        out_size = image_transform.out_size
    keep = inside_image(rows, cols, out_size)
    return round_pixels(rows[keep]), round_pixels(cols[keep]), keep


@dataclass
class FramePairs:
    """The student input and pairs of one frame in "frame" mode.

    coords: int32 [V, 3] voxel coordinates (floor(transformed point / voxel_size)).
    points: float32 [V, 3] the kept point of each voxel (world coordinates, before the point
        transform; `sparse_quantize`'s lowest-index point, depth pixels in row-major order).
    colors: uint8 [V, 3] the stored color image at the kept point's color pixel.
    pairs: int64 [M, 4] (voxel, image_index, row, col) in the teacher's image.
    counts: skip counters and `frames_used`.
    Everything is empty when the frame is skipped.
    """

    coords: np.ndarray
    points: np.ndarray
    colors: np.ndarray
    pairs: np.ndarray
    counts: Counter = field(default_factory=Counter)

    @classmethod
    def skipped(cls, reason: str) -> FramePairs:
        """An empty result counting one frame skipped for `reason`."""
        return cls(
            np.zeros((0, 3), np.int32), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
            empty_pairs(), Counter({reason: 1}),
        )


def frame_pairs(
    frame: RGBDFrame,
    camera: RGBDCamera,
    voxel_size: float,
    *,
    image_index: int = 0,
    point_transform: np.ndarray | None = None,
    image_transform: ImageTransform | None = None,
    min_pairs: int = 1,
) -> FramePairs:
    """Pairs of one frame whose own points are the student's input (PPKT's "frame" mode).

    Every valid depth pixel is back-projected with the depth intrinsics, projected into the stored
    color image with the color intrinsics (so any color/depth resolution difference is exact) and
    kept when it lands inside it. The kept points, in world coordinates and then moved by
    `point_transform` ([4, 4], the 3D augmentation), are voxelized with `sparse_quantize`; each
    point pairs its voxel with its color pixel mapped through `image_transform` (crop, resize,
    flip to the teacher's image; None: the stored image), rounded, and dropped when outside.
    A frame with a non-finite pose, no valid depth, or fewer than `min_pairs` pairs is skipped
    (empty result, counted).
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if not pose_is_valid(frame.camera_to_world):
        return FramePairs.skipped(SKIP_INVALID_POSE)
    color_size = (frame.color.shape[1], frame.color.shape[0])
    points, _, _ = backproject_depth(frame.depth, camera.intrinsic_depth, camera.depth_shift, dtype=np.float64)
    if len(points) == 0:
        return FramePairs.skipped(SKIP_NO_DEPTH)
    rows, cols, inside = depth_to_color_pixels(
        points, camera.intrinsic_color, color_size,
        extrinsic_color=camera.extrinsic_color, extrinsic_depth=camera.extrinsic_depth,
    )
    points, rows, cols = points[inside], rows[inside], cols[inside]
    pixel_rows, pixel_cols, keep = _teacher_pixels(rows, cols, color_size, image_transform)
    if int(keep.sum()) < max(min_pairs, 1):
        # Cheap early exit; the exact count (after removing duplicates) is checked below.
        return FramePairs.skipped(SKIP_FEW_PAIRS)
    world = transform_points(points, camera.depth_to_world(frame.camera_to_world))
    moved = world if point_transform is None else transform_points(world, point_transform)
    coords, unique_map, inverse_map = (t.numpy() for t in sparse_quantize(moved, voxel_size))
    pairs = unique_pairs(inverse_map[keep], image_index, pixel_rows, pixel_cols)
    if len(pairs) < min_pairs:
        return FramePairs.skipped(SKIP_FEW_PAIRS)
    colors = frame.color[round_pixels(rows[unique_map]), round_pixels(cols[unique_map])]
    return FramePairs(
        coords=coords.astype(np.int32),
        points=world[unique_map].astype(np.float32),
        colors=np.ascontiguousarray(colors, dtype=np.uint8),
        pairs=pairs,
        counts=Counter({FRAMES_USED: 1}),
    )


@dataclass
class ScenePairs:
    """Pairs of several frames with the voxelized scene ("scene" mode).

    pairs: int64 [M, 4] (voxel, image index, row, col); the image index counts the used frames
        only (0 .. len(used) - 1, in the order given).
    used: positions (in the `frames` given) of the frames that gave pairs.
    counts: skip counters and `frames_used`.
    """

    pairs: np.ndarray
    used: list[int]
    counts: Counter


def visible_points(
    points: np.ndarray,
    frame: RGBDFrame,
    camera: RGBDCamera,
    depth_tolerance: float = 0.05,
) -> np.ndarray:
    """Indices (int64) of world points [P, 3] that the frame's depth map sees: in front of the
    depth camera, inside the depth image, and with `|z - depth| < depth_tolerance` (metres) at the
    nearest depth pixel, where that pixel has a measurement."""
    depth = np.asarray(frame.depth)
    depth_size = (depth.shape[1], depth.shape[0])
    world_to_depth = np.linalg.inv(camera.depth_to_world(frame.camera_to_world))
    rows, cols, z, inside = project_points(points, None, camera.intrinsic_depth, depth_size, extrinsic=world_to_depth)
    index = np.flatnonzero(inside)
    measured = depth[round_pixels(rows[index]), round_pixels(cols[index])].astype(np.float64) / camera.depth_shift
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(measured) & (measured > 0) & (np.abs(z[index] - measured) < depth_tolerance)
    return index[ok]


def scene_pairs(
    scene_points: np.ndarray,
    voxel_inverse_map: np.ndarray,
    frames: Sequence[RGBDFrame],
    camera: RGBDCamera,
    *,
    depth_tolerance: float = 0.05,
    min_pairs: int = 1,
    image_transforms: Sequence[ImageTransform | None] | None = None,
) -> ScenePairs:
    """Pairs of the scene's voxels with the pixels of several frames (OpenScene's "scene" mode).

    scene_points: float [P, 3] world coordinates as the poses use them (before any 3D
    augmentation); voxel_inverse_map: int [P], each point's voxel (`sparse_quantize`'s inverse map
    of the possibly augmented points). A point pairs with a frame when `visible_points` keeps it;
    its color pixel (color intrinsics, stored color size) goes through that frame's image transform
    and is rounded; pixels outside the teacher's image are dropped. Frames with a non-finite pose,
    no valid depth or fewer than `min_pairs` pairs are skipped and counted.
    """
    scene_points = np.asarray(scene_points)
    voxel_inverse_map = np.asarray(voxel_inverse_map, dtype=np.int64)
    if scene_points.ndim != 2 or scene_points.shape[1] != 3 or len(voxel_inverse_map) != len(scene_points):
        raise ValueError(
            f"scene_points must be [P, 3] and voxel_inverse_map [P], got {list(scene_points.shape)} "
            f"and {list(voxel_inverse_map.shape)}"
        )
    if image_transforms is not None and len(image_transforms) != len(frames):
        raise ValueError(f"{len(image_transforms)} image transforms for {len(frames)} frames")
    counts: Counter = Counter()
    chunks, used = [], []
    for position, frame in enumerate(frames):
        if not pose_is_valid(frame.camera_to_world):
            counts[SKIP_INVALID_POSE] += 1
            continue
        depth = np.asarray(frame.depth)
        with np.errstate(invalid="ignore"):
            has_depth = bool((np.isfinite(depth) & (depth > 0)).any())
        if not has_depth:
            counts[SKIP_NO_DEPTH] += 1
            continue
        seen = visible_points(scene_points, frame, camera, depth_tolerance)
        color_size = (frame.color.shape[1], frame.color.shape[0])
        world_to_color = np.linalg.inv(as_matrix4(frame.camera_to_world))
        if camera.extrinsic_color is not None:
            world_to_color = as_matrix4(camera.extrinsic_color) @ world_to_color
        rows, cols, _, inside = project_points(
            scene_points[seen], None, camera.intrinsic_color, color_size, extrinsic=world_to_color
        )
        seen, rows, cols = seen[inside], rows[inside], cols[inside]
        transform = None if image_transforms is None else image_transforms[position]
        pixel_rows, pixel_cols, keep = _teacher_pixels(rows, cols, color_size, transform)
        pairs = unique_pairs(voxel_inverse_map[seen[keep]], len(used), pixel_rows, pixel_cols)
        if len(pairs) < max(min_pairs, 1):
            counts[SKIP_FEW_PAIRS] += 1
            continue
        counts[FRAMES_USED] += 1
        chunks.append(pairs)
        used.append(position)
    pairs = np.concatenate(chunks) if chunks else empty_pairs()
    return ScenePairs(pairs=pairs, used=used, counts=counts)


__all__ = [
    "FRAMES_USED",
    "FramePairs",
    "RGBDCamera",
    "SKIP_FEW_PAIRS",
    "SKIP_INVALID_POSE",
    "SKIP_KEYS",
    "SKIP_NO_DEPTH",
    "SKIP_UNREADABLE",
    "ScenePairs",
    "empty_pairs",
    "frame_pairs",
    "scene_pairs",
    "unique_pairs",
    "visible_points",
]
