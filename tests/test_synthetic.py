"""Synthetic ScanNet scans: determinism, consistent ground truth across files, rendering that
agrees with the mesh, and enough variety (classes, colors) to be a meaningful test set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scene_kd.scannet.annotations import read_aggregation_json, read_axis_alignment, read_segs_json
from scene_kd.scannet.codecs import encode_depth
from scene_kd.scannet.labels import SEG20_NYU40_IDS, nyu40_to_seg20, raw_to_nyu40
from scene_kd.scannet.layout import LABEL_TSV_NAME, scene_paths
from scene_kd.scannet.mesh import read_labels_ply, read_mesh_ply
from scene_kd.scannet.sens import SensReader
from scene_kd.scannet.splits import read_split
from scene_kd.synthetic import scene_room, write_synthetic_scannet
from scene_kd.synthetic.catalog import CATEGORIES
from scene_kd.synthetic.render import (
    SCANNET_COLOR_PINHOLE,
    SCANNET_DEPTH_PINHOLE,
    FrameRenderer,
    camera_path,
    camera_track,
    color_intrinsics,
    depth_intrinsics,
)
from scene_kd.synthetic.room import generate_room

# Small and fast, with ScanNet's aspect ratios (a quarter of each side).
SMALL = {"num_frames": 16, "color_size": (324, 242), "depth_size": (160, 120), "vertex_spacing": 0.08}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan_set(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("synthetic_scannet")
    return root, write_synthetic_scannet(root, num_scenes=2, seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(scan_set):
    root, scene_ids = scan_set
    assert scene_ids == ["scene0000_00", "scene0001_00"]
    assert read_split(root / "scannetv2_train.txt") == ["scene0000_00"]
    assert read_split(root / "scannetv2_val.txt") == ["scene0001_00"]
    for scene_id in scene_ids:
        paths = scene_paths(root, scene_id)
        for p in (paths.sens, paths.mesh, paths.labels, paths.segs, paths.aggregation, paths.scene_txt):
            assert p.is_file(), p
    # no temporary scan directories left behind
    assert sorted(p.name for p in (root / "scans").iterdir()) == scene_ids


def test_same_seed_same_bytes(scan_set, tmp_path):
    root, _ = scan_set
    # one thread here, two for the fixture: the bytes depend on the seed only
    write_synthetic_scannet(tmp_path, num_scenes=2, seed=3, workers=1, **SMALL)
    first, second = _files(root), _files(tmp_path)
    assert first.keys() == second.keys()
    different = [name for name in first if first[name] != second[name]]
    assert not different


def test_different_seed_different_room():
    a, b = generate_room(1, vertex_spacing=0.1), generate_room(2, vertex_spacing=0.1)
    assert len(a.vertices) != len(b.vertices) or not np.array_equal(a.vertices, b.vertices)


def test_labels_segments_and_aggregation_agree(scan_set):
    root, scene_ids = scan_set
    nyu40_of = raw_to_nyu40(root / LABEL_TSV_NAME)
    for scene_id in scene_ids:
        paths = scene_paths(root, scene_id)
        mesh = read_mesh_ply(paths.mesh)
        labels = read_labels_ply(paths.labels)
        segments = read_segs_json(paths.segs)
        groups = read_aggregation_json(paths.aggregation)
        assert labels.shape == segments.shape == (len(mesh.vertices),)
        # ScanNet-like sparse segment ids
        assert len(np.unique(segments)) < segments.max()
        covered = np.zeros(len(labels), dtype=bool)
        for group in groups:
            assert group.label in nyu40_of, group.label
            members = np.isin(segments, group.segments)
            assert members.any()
            assert not (covered & members).any(), "groups overlap"
            covered |= members
            assert (labels[members] == nyu40_of[group.label]).all(), group.label
        assert (labels[~covered] == 0).all()
        assert (~covered).any(), "some unannotated clutter is expected"
        assert {"wall", "floor"} <= {g.label for g in groups}


def test_tsv_covers_every_category(scan_set):
    root, _ = scan_set
    nyu40_of = raw_to_nyu40(root / LABEL_TSV_NAME)
    assert nyu40_of == {c.raw_category: c.nyu40_id for c in CATEGORIES}
    assert nyu40_of["trash can"] == 39 and nyu40_of["kitchen cabinets"] == 3 and nyu40_of["office chair"] == 5


def test_axis_alignment_aligns_the_room(scan_set):
    root, scene_ids = scan_set
    for index, scene_id in enumerate(scene_ids):
        paths = scene_paths(root, scene_id)
        matrix = read_axis_alignment(paths.scene_txt)
        assert not np.allclose(matrix, np.eye(4))
        raw = read_mesh_ply(paths.mesh).vertices.astype(np.float64)
        aligned = raw @ matrix[:3, :3].T + matrix[:3, 3]
        labels = read_labels_ply(paths.labels)
        segments = read_segs_json(paths.segs)
        floor = labels == 2
        assert np.abs(aligned[floor, 2]).max() < 1e-4
        assert np.abs(raw[floor, 2]).max() > 0.01  # the raw frame is really moved
        for group in read_aggregation_json(paths.aggregation):
            pts = aligned[np.isin(segments, group.segments)]
            if group.label == "wall":
                # a wall is a plane x = const or y = const once aligned, and not before
                assert min(pts[:, 0].std(), pts[:, 1].std()) < 1e-4
                raw_pts = raw[np.isin(segments, group.segments)]
                assert min(raw_pts[:, 0].std(), raw_pts[:, 1].std()) > 0.1
        # the boxes generate_room exposes are those of the written, aligned vertices
        room = scene_room(3, index, vertex_spacing=SMALL["vertex_spacing"])
        for obj in room.objects:
            pts = aligned[np.isin(segments, obj.segments)]
            box = np.concatenate([(pts.min(0) + pts.max(0)) / 2, pts.max(0) - pts.min(0)])
            np.testing.assert_allclose(obj.box[:6], box, atol=1e-4)


def test_room_boxes_are_tight_and_axis_aligned():
    room = generate_room(5, vertex_spacing=0.08)
    aligned = room.aligned_vertices()
    assert room.boxes.shape == (len(room.objects), 7)
    for obj in room.objects:
        pts = aligned[room.instances == obj.object_id]
        assert obj.box[6] == obj.nyu40_id
        lo, hi = obj.box[:3] - obj.box[3:6] / 2, obj.box[:3] + obj.box[3:6] / 2
        np.testing.assert_allclose(pts.min(0), lo, atol=1e-5)
        np.testing.assert_allclose(pts.max(0), hi, atol=1e-5)
        if obj.nyu40_id in (3, 4, 6, 7, 10, 14, 24, 36) and min(obj.box[3:5]) > 0.3:
            # box-built furniture: its axis-aligned box is the tightest; any other turn about z
            # (here the raw frame's) gives a bigger footprint
            raw = room.vertices[room.instances == obj.object_id].astype(np.float64)
            raw_area = np.prod(raw[:, :2].max(0) - raw[:, :2].min(0))
            assert raw_area > 1.05 * np.prod(obj.box[3:5])


def test_depth_agrees_with_the_mesh(scan_set):
    import open3d as o3d

    root, scene_ids = scan_set
    paths = scene_paths(root, scene_ids[0])
    mesh = read_mesh_ply(paths.mesh)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    rng = np.random.default_rng(0)
    checked = 0
    with SensReader(paths.sens) as reader:
        header = reader.header
        assert header.color_size == SMALL["color_size"] and header.depth_size == SMALL["depth_size"]
        np.testing.assert_allclose(header.intrinsic_depth, depth_intrinsics(SMALL["depth_size"]), rtol=1e-6)
        np.testing.assert_allclose(header.intrinsic_color, color_intrinsics(SMALL["color_size"]), rtol=1e-6)
        k = header.intrinsic_depth
        for i in range(len(reader)):
            frame = reader.read_frame(i)
            if not frame.pose_valid:
                continue
            v, u = np.nonzero(frame.depth)
            pick = rng.choice(len(u), size=min(300, len(u)), replace=False)
            u, v = u[pick], v[pick]
            z = frame.depth[v, u] / header.depth_shift
            cam = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], 1)
            pose = frame.camera_to_world.astype(np.float64)
            world = cam @ pose[:3, :3].T + pose[:3, 3]
            distance = scene.compute_distance(o3d.core.Tensor(world.astype(np.float32))).numpy()
            # axial noise sigma(z) = 1.2 mm + 1.9 mm (z - 0.4)^2, plus the millimetre rounding
            sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2 + 0.0005
            assert np.mean(distance <= 4 * sigma) > 0.99, i
            # the distance to the surface is at most the axial error: |N(0, 1)| has median 0.67
            assert np.median(distance / sigma) < 0.8, i
            checked += 1
    assert checked >= 10


def test_lost_poses_holes_and_color(scan_set):
    root, scene_ids = scan_set
    for scene_id in scene_ids:
        with SensReader(scene_paths(root, scene_id).sens) as reader:
            frames = [reader.read_frame(i) for i in range(len(reader))]
        assert len(frames) == SMALL["num_frames"]
        lost = [not f.pose_valid for f in frames]
        assert any(lost) and not all(lost)
        for f in frames:
            if not f.pose_valid:
                assert np.isneginf(f.camera_to_world).all()
        holes = np.mean([np.mean(f.depth == 0) for f in frames])
        assert 0.001 < holes < 0.5
        assert all(f.color.shape == (242, 324, 3) and f.color.std() > 10 for f in frames)
        assert frames[1].timestamp_color > frames[0].timestamp_color


def test_camera_walks_smoothly_inside_the_room():
    room = generate_room(7, vertex_spacing=0.1)
    poses = camera_path(room, 300, np.random.default_rng(0))
    width, depth, _ = room.size
    position = poses[:, :3, 3]
    assert (np.abs(position[:, 0]) < width / 2 - 0.5).all() and (
        np.abs(position[:, 1]) < depth / 2 - 0.5
    ).all()
    assert (position[:, 2] > 1.25).all() and (position[:, 2] < 1.7).all()
    assert np.linalg.norm(np.diff(position, axis=0), axis=1).max() < 0.15  # metres per frame at 30 Hz
    forward = poses[:, :3, 2]
    assert (forward[:, 2] < 0).mean() > 0.9  # mostly looking down at the room
    rotations = poses[:, :3, :3]
    np.testing.assert_allclose(
        rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)


def test_scannet_intrinsics():
    k = color_intrinsics()
    assert (k[0, 0], k[1, 1], k[0, 2], k[1, 2]) == SCANNET_COLOR_PINHOLE
    k = depth_intrinsics()
    assert (k[0, 0], k[1, 1], k[0, 2], k[1, 2]) == SCANNET_DEPTH_PINHOLE
    half = depth_intrinsics((320, 240))
    np.testing.assert_allclose([half[0, 0], half[0, 2], half[1, 2]], [577.870605 / 2, 159.5, 119.5])


def test_many_benchmark_classes_in_two_scenes(scan_set):
    root, scene_ids = scan_set
    present = set()
    for scene_id in scene_ids:
        present |= set(np.unique(read_labels_ply(scene_paths(root, scene_id).labels)).tolist())
    assert len(present & set(SEG20_NYU40_IDS)) >= 10, sorted(present)


def test_color_does_not_give_the_class():
    colors, classes = [], []
    for seed in range(3):
        room = generate_room(seed, vertex_spacing=0.1)
        keep = nyu40_to_seg20(room.labels) >= 0
        colors.append(room.colors[keep])
        classes.append(nyu40_to_seg20(room.labels[keep]))
    color, label = np.concatenate(colors), np.concatenate(classes)
    q = color.astype(np.int64) // 16
    bins = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    counts = np.zeros((4096, 20))
    np.add.at(counts, (bins, label), 1)
    # the best any color lookup table can do, fitted on these very vertices
    predicted = counts.argmax(1)[bins]
    recall = [np.mean(predicted[label == c] == c) for c in np.unique(label)]
    assert np.mean(recall) < 0.75
    # most vertices have a color that other classes' vertices have too
    classes_per_bin = (counts > 0).sum(1)
    assert np.mean(classes_per_bin[bins] >= 2) > 0.5


def test_cli_help_and_small_run(tmp_path):
    script = REPO / "tools" / "make_synthetic_scannet.py"
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--out", "--scenes", "--seed", "--frames", "--color-size", "--depth-size"):
        assert flag in help_text
    out = tmp_path / "scannet"
    args = [
        "--out",
        str(out),
        "--scenes",
        "1",
        "--frames",
        "3",
        "--color-size",
        "162x121",
        "--depth-size",
        "80x60",
        "--vertex-spacing",
        "0.15",
    ]
    subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
    with SensReader(scene_paths(out, "scene0000_00").sens) as reader:
        assert len(reader) == 3 and reader.header.color_size == (162, 121)
    bad = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--color-size", "12by3"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr


def test_color_resampled_from_depth_rays_matches_color_rays():
    # the default color image is shaded on the depth camera's rays and resampled to the color
    # intrinsics; casting every color pixel must give nearly the same image (same camera)
    room = generate_room(4, vertex_spacing=0.1)
    track = camera_track(room, 10, seed=0)
    resampled = FrameRenderer(room, (648, 484), (320, 240))
    exact = FrameRenderer(room, (648, 484), (320, 240), color_render_scale=1.0)
    color_a, depth_a = resampled.render(track.poses[5], np.random.default_rng(0))
    color_b, depth_b = exact.render(track.poses[5], np.random.default_rng(0))
    np.testing.assert_array_equal(depth_a, depth_b)
    difference = np.abs(color_a.astype(np.int64) - color_b.astype(np.int64)).mean(-1)
    assert np.median(difference) <= 4 and np.mean(difference > 40) < 0.02


def test_interrupted_write_leaves_no_scan(tmp_path, monkeypatch):
    import scene_kd.synthetic.scans as synthetic

    calls = []

    def failing_encode_depth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return encode_depth(*args, **kwargs)

    monkeypatch.setattr(synthetic, "encode_depth", failing_encode_depth)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_scannet(tmp_path, num_scenes=1, seed=0, **{**SMALL, "num_frames": 8})
    assert list((tmp_path / "scans").iterdir()) == []
