"""scene_kd.data.geometry: back-projection and projection against hand-computed values, round trips,
the color/depth resolution difference, extrinsics."""

from __future__ import annotations

import numpy as np
import pytest

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
from scene_kd.scannet.preprocess import scale_intrinsic

K_DEPTH = np.array([[50.0, 0, 31.5, 0], [0, 52.0, 23.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
DEPTH_SIZE = (64, 48)


def random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    pose = np.eye(4)
    pose[:3, :3] = q
    pose[:3, 3] = rng.uniform(-3, 3, size=3)
    return pose


def random_depth(seed: int, size=DEPTH_SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    depth = rng.integers(300, 6000, size=(size[1], size[0]), dtype=np.uint16)
    depth[rng.uniform(size=depth.shape) < 0.2] = 0  # holes
    return depth


def test_transform_points_hand_values():
    m = np.array([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])  # 90 deg about z, then +(1,2,3)
    p = np.array([[1.0, 0, 0], [0, 2, 5]], dtype=np.float32)
    out = transform_points(p, m)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1, 3, 3], [-1, 2, 8]])
    np.testing.assert_allclose(transform_points(p.astype(np.float64), m), [[1, 3, 3], [-1, 2, 8]])


def test_backproject_hand_values():
    depth = np.array([[0, 2000, 1000], [500, 0, 4000]], dtype=np.uint16)
    k = np.array([[100.0, 0, 1.0], [0, 200.0, 0.5], [0, 0, 1]])  # 3x3 accepted
    pose = np.eye(4)
    pose[:3, 3] = [10, 20, 30]
    points, rows, cols = backproject_depth(depth, k, 1000.0)
    assert points.dtype == np.float32
    np.testing.assert_array_equal(rows, [0, 0, 1, 1])
    np.testing.assert_array_equal(cols, [1, 2, 0, 2])
    expected = [
        [(1 - 1) * 2.0 / 100, (0 - 0.5) * 2.0 / 200, 2.0],
        [(2 - 1) * 1.0 / 100, (0 - 0.5) * 1.0 / 200, 1.0],
        [(0 - 1) * 0.5 / 100, (1 - 0.5) * 0.5 / 200, 0.5],
        [(2 - 1) * 4.0 / 100, (1 - 0.5) * 4.0 / 200, 4.0],
    ]
    np.testing.assert_allclose(points, expected, rtol=1e-6)
    world, _, _ = backproject_depth(depth, k, 1000.0, pose)
    np.testing.assert_allclose(world, np.array(expected) + [10, 20, 30], rtol=1e-6)
    # depth_shift: values in 1/4000 m
    quarter, _, _ = backproject_depth(depth, k, 4000.0)
    np.testing.assert_allclose(quarter, np.array(expected) / 4, rtol=1e-6)


def test_backproject_invalid_float_depth():
    depth = np.array([[np.nan, np.inf, -1.0], [0.0, 1.5, 2.0]])
    points, rows, cols = backproject_depth(depth, K_DEPTH, depth_shift=1.0)
    np.testing.assert_array_equal(rows, [1, 1])
    np.testing.assert_array_equal(cols, [1, 2])
    np.testing.assert_allclose(points[:, 2], [1.5, 2.0])
    empty, r, c = backproject_depth(np.zeros((4, 5), np.uint16), K_DEPTH)
    assert empty.shape == (0, 3) and r.shape == c.shape == (0,)


@pytest.mark.parametrize("seed", [0, 1])
def test_backproject_then_project_same_pixels(seed):
    depth = random_depth(seed)
    pose = random_pose(seed)
    points, rows, cols = backproject_depth(depth, K_DEPTH, 1000.0, pose, dtype=np.float64)
    r, c, z, inside = project_points(points, pose, K_DEPTH, DEPTH_SIZE)
    assert inside.all()
    np.testing.assert_allclose(r, rows, atol=1e-9)
    np.testing.assert_allclose(c, cols, atol=1e-9)
    np.testing.assert_allclose(z, depth[rows, cols] / 1000.0, rtol=1e-12)
    np.testing.assert_array_equal(round_pixels(r), rows)
    np.testing.assert_array_equal(round_pixels(c), cols)
    # float32 points (the default) round-trip to the same pixels too
    points32, _, _ = backproject_depth(depth, K_DEPTH, 1000.0, pose)
    r32, c32, _, _ = project_points(points32, pose, K_DEPTH, DEPTH_SIZE)
    np.testing.assert_allclose(r32, rows, atol=2e-3)
    np.testing.assert_array_equal(round_pixels(c32), cols)


@pytest.mark.parametrize("color_size", [(32, 24), (160, 120), (96, 48)])
def test_depth_pixel_to_color_pixel_exact(color_size):
    """Color intrinsics for another resolution of the same view: a depth pixel's color pixel is its
    pixel-centre rescaling, (c + 0.5) * s - 0.5, through depth -> 3D -> color."""
    depth = random_depth(3)
    pose = random_pose(3)
    k_color = scale_intrinsic(K_DEPTH, DEPTH_SIZE, color_size)
    sx, sy = color_size[0] / DEPTH_SIZE[0], color_size[1] / DEPTH_SIZE[1]
    camera_points, rows, cols = backproject_depth(depth, K_DEPTH, 1000.0, dtype=np.float64)
    r, c, inside = depth_to_color_pixels(camera_points, k_color, color_size)
    assert inside.all()
    np.testing.assert_allclose(c, (cols + 0.5) * sx - 0.5, atol=1e-9)
    np.testing.assert_allclose(r, (rows + 0.5) * sy - 0.5, atol=1e-9)
    # the same through world coordinates and the pose
    world, _, _ = backproject_depth(depth, K_DEPTH, 1000.0, pose, dtype=np.float64)
    rw, cw, _, inside_w = project_points(world, pose, k_color, color_size)
    assert inside_w.all()
    np.testing.assert_allclose(cw, c, atol=1e-8)
    np.testing.assert_allclose(rw, r, atol=1e-8)


def test_extrinsics():
    """Rig convention: the color camera 10 cm to the right of the depth camera (extrinsic_color
    maps rig to color camera coordinates: x_color = x_rig - 0.1)."""
    k_color = np.array([[100.0, 0, 50, 0], [0, 100, 40, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    ext_color = np.eye(4)
    ext_color[0, 3] = -0.1
    p = np.array([[0.3, -0.2, 2.0]])
    r, c, inside = depth_to_color_pixels(p, k_color, (100, 80), extrinsic_color=ext_color)
    np.testing.assert_allclose(c, [100 * 0.2 / 2 + 50])
    np.testing.assert_allclose(r, [100 * -0.2 / 2 + 40])
    assert inside.all()
    # a depth extrinsic moves both: only their relative transform matters
    ext_depth = np.eye(4)
    ext_depth[:3, 3] = [0.5, 0.1, 0.0]
    both = ext_color @ ext_depth
    r2, c2, _ = depth_to_color_pixels(p, k_color, (100, 80), extrinsic_color=both, extrinsic_depth=ext_depth)
    np.testing.assert_allclose([r2, c2], [r, c], atol=1e-12)
    # back-projection to world goes through the rig: world = pose @ inv(ext_depth) @ p
    depth = np.zeros((3, 4), np.uint16)
    depth[1, 2] = 1000
    world, _, _ = backproject_depth(depth, K_DEPTH, 1000.0, np.eye(4), extrinsic_depth=ext_depth)
    camera, _, _ = backproject_depth(depth, K_DEPTH, 1000.0)
    np.testing.assert_allclose(world, camera - [0.5, 0.1, 0.0], atol=1e-6)


def test_projection_inside_and_rounding():
    k = np.array([[10.0, 0, 1.5], [0, 10.0, 1.0], [0, 0, 1]])
    size = (4, 3)  # columns -0.5 .. 3.5, rows -0.5 .. 2.5
    cols = np.array([-0.5, -0.51, 3.49, 3.5, 1.0, 1.0])
    rows = np.array([0.0, 0.0, 0.0, 0.0, 2.49, 2.5])
    z = np.array([1.0, 1, 1, 1, 1, 1])
    points = np.stack([(cols - 1.5) * z / 10, (rows - 1.0) * z / 10, z], axis=1)
    r, c, depth, inside = project_points(points, np.eye(4), k, size)
    np.testing.assert_allclose(c, cols, atol=1e-12)
    np.testing.assert_array_equal(inside, [True, False, True, False, True, False])
    np.testing.assert_array_equal(round_pixels([-0.5, 0.5, 1.5, 2.5, -0.51]), [0, 1, 2, 3, -1])
    behind = project_points(np.array([[0.0, 0, -1.0], [0, 0, 0]]), None, k, size)[3]
    assert not behind.any()
    assert not inside_image(np.array([np.nan]), np.array([0.0]), size).any()


def test_matrix_helpers():
    np.testing.assert_array_equal(as_matrix4(np.eye(3) * 2)[:3, :3], np.eye(3) * 2)
    with pytest.raises(ValueError, match=r"\[3, 3\] or \[4, 4\]"):
        as_matrix4(np.eye(2))
    assert pose_is_valid(np.eye(4))
    assert not pose_is_valid(np.full((4, 4), -np.inf))
    assert not pose_is_valid(np.eye(3))
