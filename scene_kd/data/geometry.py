"""Pinhole camera geometry for RGB-D frames: back-projecting depth pixels to 3D and projecting 3D
points to pixels.

Conventions (OpenCV, as ScanNet): the camera looks along +z, x to the right, y down; a pixel's
centre sits at integer coordinates, so column `u = fx * x / z + cx` and row `v = fy * y / z + cy`,
and a continuous coordinate `u` belongs to pixel `floor(u + 0.5)`. Intrinsics are [4, 4] (ScanNet's
files) or [3, 3] matrices. `camera_to_world` maps camera coordinates to world coordinates.

Extrinsics follow ScanNet's `.sens` (mLib's `CalibrationData.m_extrinsic`, "world-to-camera"): a
frame's pose is that of the sensor rig, and `extrinsic_color` / `extrinsic_depth` map rig
coordinates into each camera. A depth-camera point `p_d` lies at `extrinsic_color @
inv(extrinsic_depth) @ p_d` in the color camera and at `camera_to_world @ inv(extrinsic_depth) @ p_d`
in the world. Every ScanNet scan has identity extrinsics.
"""

from __future__ import annotations

import numpy as np


def as_matrix4(matrix: np.ndarray) -> np.ndarray:
    """A [3, 3] intrinsic (or any [3, 3] linear map) padded to float64 [4, 4]; a [4, 4] copied."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (4, 4):
        return m.copy()
    if m.shape == (3, 3):
        out = np.eye(4)
        out[:3, :3] = m
        return out
    raise ValueError(f"expected a [3, 3] or [4, 4] matrix, got shape {list(m.shape)}")


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a [4, 4] homogeneous transform to points [P, 3]: `M[:3, :3] @ p + M[:3, 3]`.

    The result is float64 unless `points` is float32, which stays float32.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [P, 3], got {list(pts.shape)}")
    m = as_matrix4(matrix)
    out = pts.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    return out.astype(np.float32) if pts.dtype == np.float32 else out


def round_pixels(coordinates: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates -> the int64 index of the pixel containing them
    (`floor(x + 0.5)`: pixel centres at integers, halves rounded up, never to even)."""
    return np.floor(np.asarray(coordinates, dtype=np.float64) + 0.5).astype(np.int64)


def inside_image(rows: np.ndarray, cols: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """True where continuous (rows, cols) fall in a pixel of an image of `image_size` (W, H),
    i.e. `-0.5 <= col < W - 0.5` and the same for rows; False for non-finite values."""
    width, height = image_size
    with np.errstate(invalid="ignore"):
        return (cols >= -0.5) & (cols < width - 0.5) & (rows >= -0.5) & (rows < height - 0.5)


def backproject_depth(
    depth: np.ndarray,
    intrinsic_depth: np.ndarray,
    depth_shift: float = 1000.0,
    camera_to_world: np.ndarray | None = None,
    *,
    extrinsic_depth: np.ndarray | None = None,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lift every valid depth pixel to 3D.

    depth: uint16 [h, w] in 1 / depth_shift metres, or float [h, w] (also divided by depth_shift);
    0, negative and non-finite values mean no measurement.
    Returns `points` [P, 3] of `dtype` (world coordinates when `camera_to_world` is given, else
    the depth camera's; with `extrinsic_depth` and a pose, the rig convention of the module
    docstring), and the int64 `rows` [P], `cols` [P] of the pixels, in row-major order.
    """
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be a [h, w] image, got shape {list(d.shape)}")
    if not depth_shift > 0:
        raise ValueError(f"depth_shift must be positive, got {depth_shift}")
    k = as_matrix4(intrinsic_depth)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0) if d.dtype.kind == "f" else d > 0
    rows, cols = np.nonzero(valid)
    z = d[rows, cols].astype(np.float64) / depth_shift
    x = (cols - k[0, 2] - k[0, 1] * (rows - k[1, 2]) / k[1, 1]) * z / k[0, 0]
    y = (rows - k[1, 2]) * z / k[1, 1]
    points = np.stack([x, y, z], axis=1)
    if camera_to_world is not None:
        to_world = as_matrix4(camera_to_world)
        if extrinsic_depth is not None:
            to_world = to_world @ np.linalg.inv(as_matrix4(extrinsic_depth))
        points = transform_points(points, to_world)
    return points.astype(dtype, copy=False), rows.astype(np.int64), cols.astype(np.int64)


def project_points(
    points: np.ndarray,
    camera_to_world: np.ndarray | None,
    intrinsic: np.ndarray,
    image_size: tuple[int, int],
    *,
    extrinsic: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Project world points [P, 3] into an image of `image_size` (W, H).

    camera_to_world: [4, 4] pose (None: the points are already in camera coordinates);
    extrinsic: the camera's rig-to-camera matrix (None: identity). Returns float64 `rows` [P],
    `cols` [P] (continuous; `round_pixels` gives the pixel), `depth` [P] (z in the camera, metres)
    and `inside` bool [P]: in front of the camera (z > 0) and inside the image (`inside_image`).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [P, 3], got {list(pts.shape)}")
    world_to_camera = np.eye(4)
    if camera_to_world is not None:
        world_to_camera = np.linalg.inv(as_matrix4(camera_to_world))
    if extrinsic is not None:
        world_to_camera = as_matrix4(extrinsic) @ world_to_camera
    cam = transform_points(pts, world_to_camera)
    k = as_matrix4(intrinsic)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols = (k[0, 0] * cam[:, 0] + k[0, 1] * cam[:, 1]) / z + k[0, 2]
        rows = k[1, 1] * cam[:, 1] / z + k[1, 2]
        inside = (z > 0) & inside_image(rows, cols, image_size)
    return rows, cols, z, inside


def depth_to_color_pixels(
    points_depth_camera: np.ndarray,
    intrinsic_color: np.ndarray,
    color_size: tuple[int, int],
    *,
    extrinsic_color: np.ndarray | None = None,
    extrinsic_depth: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where points in depth-camera coordinates [P, 3] appear in the color image.

    The color/depth resolution difference is handled exactly: the point is projected with the
    color intrinsics (of the stored color size), after `extrinsic_color @ inv(extrinsic_depth)`.
    Returns float64 `rows` [P], `cols` [P] (continuous) and `inside` bool [P].
    """
    depth_to_color = np.eye(4)
    if extrinsic_depth is not None:
        depth_to_color = np.linalg.inv(as_matrix4(extrinsic_depth))
    if extrinsic_color is not None:
        depth_to_color = as_matrix4(extrinsic_color) @ depth_to_color
    rows, cols, _, inside = project_points(
        points_depth_camera, None, intrinsic_color, color_size, extrinsic=depth_to_color
    )
    return rows, cols, inside


def pose_is_valid(camera_to_world: np.ndarray) -> bool:
    """True when the pose is a finite [4, 4] matrix (ScanNet marks lost tracking with -inf)."""
    m = np.asarray(camera_to_world)
    return m.shape == (4, 4) and bool(np.isfinite(m).all())


__all__ = [
    "as_matrix4",
    "backproject_depth",
    "depth_to_color_pixels",
    "inside_image",
    "pose_is_valid",
    "project_points",
    "round_pixels",
    "transform_points",
]
