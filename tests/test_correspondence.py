"""scene_kd.data.correspondence: frame-mode and scene-mode pairs on a processed synthetic scan and
on a hand-built two-surface scene; skipped frames counted."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pair_checks import make_processed_scans, pixel_point_in_voxel, rederive_points

from scene_kd.data.augment import Augmentation, ImageTransform
from scene_kd.data.collate import sample_pairs
from scene_kd.data.correspondence import (
    RGBDCamera,
    frame_pairs,
    scene_pairs,
    unique_pairs,
    visible_points,
)
from scene_kd.scannet.exported import ExportedFrameSource
from scene_kd.scannet.frame_types import RGBDFrame
from scene_kd.sparse.quantize import sparse_quantize

VOXEL = 0.05
TEACHER_SIZE = (128, 96)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    out = make_processed_scans(tmp_path_factory.mktemp("corr"))
    source = ExportedFrameSource(out / "scene0000_00")
    frames = {i: source.read(i) for i in source.frame_ids}
    return out / "scene0000_00", source, RGBDCamera.from_source(source), frames


def transforms_for(seed: int, color_size):
    if seed < 0:
        return None, None
    rng = np.random.default_rng(seed)
    aug = Augmentation()
    return aug.point_transform(rng), aug.image_transform(rng, color_size, TEACHER_SIZE)


def expected_frame_triples(frame, camera, point_transform, image_transform):
    """Every (voxel coordinate, row, col) of a frame, with plain formulas: depth pixel -> camera point
    -> color pixel -> teacher pixel; camera point -> world -> augmented -> voxel."""
    kd, kc = camera.intrinsic_depth, camera.intrinsic_color
    rows, cols = np.nonzero(frame.depth)
    z = frame.depth[rows, cols] / 1000.0
    x, y = (cols - kd[0, 2]) * z / kd[0, 0], (rows - kd[1, 2]) * z / kd[1, 1]
    u, v = kc[0, 0] * x / z + kc[0, 2], kc[1, 1] * y / z + kc[1, 2]
    h, w = frame.color.shape[:2]
    in_color = (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    (x0, y0, x1, y1), (out_w, out_h) = image_transform.box, image_transform.out_size
    u2 = (u + 0.5 - x0) * out_w / (x1 - x0) - 0.5
    v2 = (v + 0.5 - y0) * out_h / (y1 - y0) - 0.5
    if image_transform.flip:
        u2 = out_w - 1 - u2
    in_teacher = in_color & (u2 >= -0.5) & (u2 < out_w - 0.5) & (v2 >= -0.5) & (v2 < out_h - 0.5)
    pose = frame.camera_to_world
    world = np.stack([x, y, z], 1) @ pose[:3, :3].T + pose[:3, 3]
    moved = world @ point_transform[:3, :3].T + point_transform[:3, 3]
    voxels = np.floor(moved / VOXEL).astype(np.int64)
    triples = {
        (*voxels[i], int(np.floor(v2[i] + 0.5)), int(np.floor(u2[i] + 0.5))) for i in np.flatnonzero(in_teacher)
    }
    return triples, {tuple(vx) for vx in voxels[in_color]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_pairs_match_plain_formulas(scan, seed):
    """Student voxels and pairs equal, as sets, what a plain re-implementation gives."""
    _, source, camera, frames = scan
    frame = frames[source.frame_ids[seed % len(source.frame_ids)]]
    point_transform, image_transform = transforms_for(seed, source.color_size)
    result = frame_pairs(
        frame, camera, VOXEL, point_transform=point_transform, image_transform=image_transform
    )
    assert result.counts == Counter(frames_used=1)
    assert result.pairs.dtype == np.int64 and result.pairs.shape[1] == 4
    assert (result.pairs[:, 1] == 0).all()
    assert len(np.unique(result.pairs, axis=0)) == len(result.pairs)
    triples, voxels = expected_frame_triples(frame, camera, point_transform, image_transform)
    got = {(*result.coords[p[0]], p[2], p[3]) for p in result.pairs}
    assert got == triples
    assert {tuple(c) for c in result.coords} == voxels and len(voxels) == len(result.coords)
    # the kept point of each voxel lies in it, and its color is the stored image at its color pixel
    moved = result.points.astype(np.float64) @ point_transform[:3, :3].T + point_transform[:3, 3]
    np.testing.assert_array_equal(np.floor(moved / VOXEL).astype(np.int64), result.coords)
    inv = np.linalg.inv(frame.camera_to_world)
    cam = result.points.astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
    kc = camera.intrinsic_color
    col = np.floor(kc[0, 0] * cam[:, 0] / cam[:, 2] + kc[0, 2] + 0.5).astype(int)
    row = np.floor(kc[1, 1] * cam[:, 1] / cam[:, 2] + kc[1, 2] + 0.5).astype(int)
    matches = (frame.color[row, col] == result.colors).all(axis=1)
    assert matches.mean() > 0.99  # float32 points: a rare pixel-boundary tie may round the other way


@pytest.mark.parametrize("augment", [False, True])
def test_every_sampled_pair_pixel_sees_its_voxel(scan, augment):
    """Re-derive each sampled pair's 3D point from the depth map, starting from the teacher pixel:
    a depth pixel next to where the pixel's ray meets the depth image lies in the pair's voxel."""
    _, source, camera, frames = scan
    generator = np.random.default_rng(0)
    for k, frame_id in enumerate(source.frame_ids):
        frame = frames[frame_id]
        if augment:
            point_transform, image_transform = transforms_for(10 + k, source.color_size)
        else:
            point_transform, image_transform = None, None
        result = frame_pairs(frame, camera, VOXEL, point_transform=point_transform, image_transform=image_transform)
        pairs = sample_pairs(result.pairs, 4096, generator).numpy()
        points, valid = rederive_points(
            pairs[:, 2], pairs[:, 3], image_transform, frame.depth, camera.intrinsic_color,
            camera.intrinsic_depth, frame.camera_to_world, point_transform,
        )
        ok = pixel_point_in_voxel(points, valid, result.coords[pairs[:, 0]], VOXEL)
        assert ok.all(), f"frame {frame_id}: {int((~ok).sum())} of {len(ok)} pairs off their voxel"
        # control: the same check fails for pixels moved 6 columns away
        moved = rederive_points(
            pairs[:, 2], pairs[:, 3] + 6, image_transform, frame.depth, camera.intrinsic_color,
            camera.intrinsic_depth, frame.camera_to_world, point_transform,
        )
        assert pixel_point_in_voxel(*moved, result.coords[pairs[:, 0]], VOXEL).mean() < 0.7


def test_augmented_pair_pixels_show_the_same_colour(scan):
    """On a smooth image, the augmented image at a pair's pixel equals the stored image at the
    pixel it maps back to (bilinear)."""
    _, source, camera, frames = scan
    frame = frames[source.frame_ids[0]]
    h, w = frame.color.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    smooth = np.stack([40 + 1.5 * xx, 30 + 2.0 * yy, 200 - xx - yy], axis=-1).astype(np.uint8)
    frame = RGBDFrame(smooth, frame.depth, frame.camera_to_world)
    for seed in range(4):
        _, image_transform = transforms_for(seed, source.color_size)
        result = frame_pairs(frame, camera, VOXEL, image_transform=image_transform)
        image = image_transform.apply_image(smooth).astype(np.float64)
        rows, cols = image_transform.inverse_pixels(result.pairs[:, 2], result.pairs[:, 3])
        interior = (rows >= 1) & (rows <= h - 2) & (cols >= 1) & (cols <= w - 2)
        r0, c0 = np.floor(rows[interior]).astype(int), np.floor(cols[interior]).astype(int)
        fr, fc = (rows[interior] - r0)[:, None], (cols[interior] - c0)[:, None]
        s = smooth.astype(np.float64)
        expected = (
            s[r0, c0] * (1 - fr) * (1 - fc) + s[r0, c0 + 1] * (1 - fr) * fc
            + s[r0 + 1, c0] * fr * (1 - fc) + s[r0 + 1, c0 + 1] * fr * fc
        )
        got = image[result.pairs[interior, 2], result.pairs[interior, 3]]
        assert interior.mean() > 0.8
        np.testing.assert_allclose(got, expected, atol=1.5)


def two_surface_scene():
    """Camera at the origin looking along +z; a 40 cm square at z = 1 in front of a wall at z = 2."""
    k = np.array([[50.0, 0, 31.5, 0], [0, 50.0, 23.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    size = (64, 48)
    rows, cols = np.mgrid[0 : size[1], 0 : size[0]]
    xn, yn = (cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1]
    depth = np.where((np.abs(xn) <= 0.2) & (np.abs(yn) <= 0.2), 1000, 2000).astype(np.uint16)
    color = np.zeros((size[1] // 2, size[0] // 2, 3), np.uint8)  # half-resolution color
    k_color = k.copy()
    k_color[:2] /= 2
    k_color[0, 2], k_color[1, 2] = (31.5 + 0.5) / 2 - 0.5, (23.5 + 0.5) / 2 - 0.5
    front = [(x, y, 1.0) for x in np.arange(-0.15, 0.16, 0.1) for y in np.arange(-0.15, 0.16, 0.1)]
    back = [(x, y, 2.0) for x in np.arange(-1.35, 1.36, 0.1) for y in np.arange(-1.05, 1.06, 0.1)]
    points = np.array(front + back)
    camera = RGBDCamera(intrinsic_color=k_color, intrinsic_depth=k)
    return points, len(front), RGBDFrame(color, depth, np.eye(4)), camera


def test_scene_pairs_occluded_points_not_paired():
    points, num_front, frame, camera = two_surface_scene()
    _, _, inverse_map = (t.numpy() for t in sparse_quantize(points, 0.02))
    result = scene_pairs(points, inverse_map, [frame], camera, depth_tolerance=0.05)
    assert result.used == [0] and result.counts == Counter(frames_used=1)
    paired = np.zeros(len(points), bool)
    point_of_voxel = np.empty(inverse_map.max() + 1, np.int64)
    point_of_voxel[inverse_map] = np.arange(len(points))
    paired[point_of_voxel[result.pairs[:, 0]]] = True
    x, y, z = points.T
    front = np.arange(len(points)) < num_front
    shadowed = ~front & (np.abs(x) < 0.4) & (np.abs(y) < 0.4)
    in_view = (np.abs(x / z) < 32 / 50) & (np.abs(y / z) < 24 / 50)  # the image spans -0.5 .. 63.5 / 47.5
    assert paired[front].all()
    assert not paired[shadowed].any() and shadowed.sum() == 64
    assert paired[~front & ~shadowed & in_view].all()
    assert not paired[~in_view].any() and (~in_view).sum() == 2 * 22 + 2 * 28 - 4
    # each pair's pixel is its point's projection in the half-resolution color image
    p = points[point_of_voxel[result.pairs[:, 0]]]
    np.testing.assert_array_equal(result.pairs[:, 3], np.floor(25 * p[:, 0] / p[:, 2] + 15.5 + 0.5))
    np.testing.assert_array_equal(result.pairs[:, 2], np.floor(25 * p[:, 1] / p[:, 2] + 11.5 + 0.5))


def test_depth_tolerance():
    _, _, frame, camera = two_surface_scene()
    points = np.array([[0.65, 0.65, 2.04], [0.65, -0.65, 1.5], [0.65, 0.5, 1.97], [0.0, 0.0, -2.0]])
    assert visible_points(points, frame, camera, 0.05).tolist() == [0, 2]
    assert visible_points(points, frame, camera, 0.035).tolist() == [2]
    assert visible_points(points, frame, camera, 0.6).tolist() == [0, 1, 2]


def test_scene_pairs_on_synthetic_scan(scan):
    """Scene-mode pairs equal a plain re-implementation of the depth test; the depth test rejects
    points that project into the image but are hidden."""
    scene_dir, source, camera, frames = scan
    points = np.load(scene_dir / "coord.npy").astype(np.float64)
    point_transform, _ = transforms_for(5, source.color_size)
    moved = points @ point_transform[:3, :3].T + point_transform[:3, 3]
    coords, _, inverse_map = (t.numpy() for t in sparse_quantize(moved, VOXEL))
    frame_list = [frames[i] for i in source.frame_ids]
    transforms = [transforms_for(20 + i, source.color_size)[1] for i in range(len(frame_list))]
    result = scene_pairs(points, inverse_map, frame_list, camera, depth_tolerance=0.05, image_transforms=transforms)
    assert result.used == list(range(len(frame_list)))
    kd, kc = camera.intrinsic_depth, camera.intrinsic_color
    hidden_total = 0
    for image_index, (frame, t) in enumerate(zip(frame_list, transforms, strict=True)):
        inv = np.linalg.inv(frame.camera_to_world)
        cam = points @ inv[:3, :3].T + inv[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            ud, vd = kd[0, 0] * cam[:, 0] / z + kd[0, 2], kd[1, 1] * cam[:, 1] / z + kd[1, 2]
            uc, vc = kc[0, 0] * cam[:, 0] / z + kc[0, 2], kc[1, 1] * cam[:, 1] / z + kc[1, 2]
        h, w = frame.depth.shape
        in_depth = (z > 0) & (ud >= -0.5) & (ud < w - 0.5) & (vd >= -0.5) & (vd < h - 0.5)
        measured = np.zeros(len(points))
        measured[in_depth] = frame.depth[
            np.floor(vd[in_depth] + 0.5).astype(int), np.floor(ud[in_depth] + 0.5).astype(int)
        ] / 1000.0
        visible = in_depth & (measured > 0) & (np.abs(z - measured) < 0.05)
        hidden_total += int((in_depth & (measured > 0) & (z - measured > 0.2)).sum())
        rows, cols = t.map_pixels(vc, uc)
        ow, oh = t.out_size
        ch, cw = frame.color.shape[:2]
        ok = visible & (uc >= -0.5) & (uc < cw - 0.5) & (vc >= -0.5) & (vc < ch - 0.5)
        ok &= (cols >= -0.5) & (cols < ow - 0.5) & (rows >= -0.5) & (rows < oh - 0.5)
        expected = {
            (int(inverse_map[i]), int(np.floor(rows[i] + 0.5)), int(np.floor(cols[i] + 0.5))) for i in np.flatnonzero(ok)
        }
        mine = result.pairs[result.pairs[:, 1] == image_index]
        assert {(p[0], p[2], p[3]) for p in mine} == expected
        assert len(mine) == len(expected) > 200
    assert hidden_total > 1000  # the room hides many points behind others


def test_invalid_frames_skipped_and_counted(scan):
    _, source, camera, frames = scan
    good = frames[source.frame_ids[0]]
    lost = RGBDFrame(good.color, good.depth, np.full((4, 4), -np.inf))
    empty = RGBDFrame(good.color, np.zeros_like(good.depth), good.camera_to_world)
    for frame, reason in ((lost, "skipped_invalid_pose"), (empty, "skipped_no_depth")):
        result = frame_pairs(frame, camera, VOXEL)
        assert result.counts == Counter({reason: 1})
        assert result.pairs.shape == (0, 4) and result.coords.shape == (0, 3) and result.colors.shape == (0, 3)
    few = frame_pairs(good, camera, VOXEL, min_pairs=10**7)
    assert few.counts == Counter(skipped_few_pairs=1) and len(few.pairs) == 0
    # a crop of one pixel leaves a handful of pairs
    tiny = ImageTransform(source.color_size, (4, 3), (60.0, 40.0, 61.0, 41.0))
    assert frame_pairs(good, camera, VOXEL, image_transform=tiny, min_pairs=13).counts == Counter(skipped_few_pairs=1)
    # scene mode: a frame looking away from the scene has no pairs
    away = good.camera_to_world.copy()
    away[:3, :3] = away[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
    looking_away = RGBDFrame(good.color, good.depth, away)
    scene_dir = scan[0]
    points = np.load(scene_dir / "coord.npy")
    _, _, inverse_map = (t.numpy() for t in sparse_quantize(points, VOXEL))
    result = scene_pairs(points, inverse_map, [lost, empty, good, looking_away, good], camera, min_pairs=50)
    assert result.used == [2, 4]
    assert result.counts == Counter(
        skipped_invalid_pose=1, skipped_no_depth=1, skipped_few_pairs=1, frames_used=2
    )
    assert set(result.pairs[:, 1].tolist()) == {0, 1}
    none = scene_pairs(points, inverse_map, [lost], camera)
    assert none.used == [] and none.pairs.shape == (0, 4)


def test_unique_pairs():
    pairs = unique_pairs(np.array([3, 1, 3, 3]), 7, np.array([2, 5, 2, 0]), np.array([4, 1, 4, 9]))
    np.testing.assert_array_equal(pairs, [[1, 7, 5, 1], [3, 7, 0, 9], [3, 7, 2, 4]])
    assert unique_pairs(np.zeros(0, np.int64), 0, np.zeros(0), np.zeros(0)).shape == (0, 4)
