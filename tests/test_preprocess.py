"""tools/preprocess_scannet.py and scene_kd.scannet.preprocess on small hand-built scans: the
expected points, labels, instances and frames; bad scans failing alone; resuming after a kill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scene_kd.scannet.annotations import SegGroup, write_aggregation_json, write_scene_txt, write_segs_json
from scene_kd.scannet.codecs import decode_png16
from scene_kd.scannet.exported import read_matrix_txt
from scene_kd.scannet.frames import RGBDFrame, SensFrameSource, export_frames
from scene_kd.scannet.labels import SEG200_IDS, LabelRow, write_label_tsv
from scene_kd.scannet.layout import scene_paths
from scene_kd.scannet.mesh import Mesh, write_labels_ply, write_mesh_ply
from scene_kd.scannet.points import vertex_normals
from scene_kd.scannet.preprocess import (
    format_summary,
    preprocess_dataset,
    scale_intrinsic,
    select_scenes,
)
from scene_kd.scannet.sens import write_sens
from scene_kd.scannet.splits import write_split

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import preprocess_scannet  # noqa: E402

COLOR_W, COLOR_H, DEPTH_W, DEPTH_H = 40, 30, 20, 16
IMAGE_SIZE = (20, 15)
FRAME_SKIP = 5
NUM_FRAMES = 23  # candidates 0, 5, 10, 15, 20
K_COLOR = np.array([[50.0, 0, 19.75, 0], [0, 50.0, 14.75, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_DEPTH = np.array([[25.0, 0, 9.5, 0], [0, 25.0, 7.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
NX, NY = 6, 5  # 30 vertices
NYU40 = np.array([1, 2, 5, 13, 39, 0] * 5, dtype=np.uint16)  # wall floor chair blinds otherfurniture none
SEGMENT20 = np.array([0, 1, 4, -1, 19, -1] * 5)
SEG_INDICES = 100 + 3 * (np.arange(30) // 5)  # segments 100, 103, ..., 115 of 5 vertices each
GROUPS = [
    SegGroup(0, 1, [100, 103], "chair"),
    SegGroup(1, 2, [106], "wall"),
    SegGroup(2, 3, [103], "book"),  # overlaps the chair: the later group wins
    SegGroup(3, 4, [109], "mystery object"),  # not in the tsv
    SegGroup(4, 5, [999], "chair"),  # no vertices
]
INSTANCE = np.array([0] * 5 + [2] * 5 + [1] * 5 + [3] * 5 + [-1] * 10)
SEGMENT200 = np.array([1] * 5 + [SEG200_IDS.index(35)] * 5 + [0] * 5 + [-1] * 15)
AXIS = np.array([[0.0, 1, 0, 2], [-1, 0, 0, 3], [0, 0, 1, 0.5], [0, 0, 0, 1]])


def make_mesh(offset: float) -> Mesh:
    x, y = np.meshgrid(np.arange(NX, dtype=np.float32), np.arange(NY, dtype=np.float32))
    vertices = np.stack([x.ravel(), y.ravel(), 0.1 * x.ravel() * y.ravel() + offset], axis=1)
    colors = np.stack([np.arange(30) * 8, 255 - np.arange(30) * 8, np.full(30, 77)], axis=1)
    faces = []
    for j in range(NY - 1):
        for i in range(NX - 1):
            a = j * NX + i
            faces += [[a, a + 1, a + NX], [a + 1, a + NX + 1, a + NX]]
    return Mesh(vertices, colors, np.array(faces))


def make_frames(invalid: tuple[int, ...], seed: int) -> list[RGBDFrame]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:COLOR_H, 0:COLOR_W]
    frames = []
    for i in range(NUM_FRAMES):
        color = np.stack([xx * 6 + i, yy * 8, np.full_like(xx, 11 * i % 256)], axis=-1).astype(np.uint8)
        depth = rng.integers(0, 8000, size=(DEPTH_H, DEPTH_W), dtype=np.uint16)
        pose = np.eye(4, dtype=np.float32)
        pose[:3, 3] = [0.1 * i, 0.3, 1.25]
        if i in invalid:
            pose[:] = -np.inf
        frames.append(RGBDFrame(color, depth, pose))
    return frames


def make_scan(
    root: Path,
    scene_id: str,
    *,
    seed: int = 0,
    invalid: tuple[int, ...] = (10, 11),
    depth_shift: float = 1000.0,
) -> list[RGBDFrame]:
    """A 30-vertex scan with labels, segments, aggregation, axis alignment and a 23-frame .sens."""
    paths = scene_paths(root, scene_id, subdir="scans")
    paths.scene_dir.mkdir(parents=True)
    mesh = make_mesh(offset=seed)
    write_mesh_ply(paths.mesh, mesh)
    write_labels_ply(paths.labels, mesh, NYU40)
    write_segs_json(paths.segs, scene_id, SEG_INDICES)
    write_aggregation_json(paths.aggregation, scene_id, GROUPS)
    write_scene_txt(paths.scene_txt, AXIS, extra={"sceneType": "Office"})
    frames = make_frames(invalid, seed)
    write_sens(paths.sens, frames, intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH, depth_shift=depth_shift)
    return frames


def make_root(root: Path) -> dict[str, list[RGBDFrame]]:
    rows = [
        LabelRow(1, "wall", "wall", 1),
        LabelRow(2, "chair", "chair", 5),
        LabelRow(35, "book", "book", 23),
    ]
    root.mkdir(parents=True, exist_ok=True)
    write_label_tsv(root / "scannetv2-labels.combined.tsv", rows)
    write_split(root / "scannetv2_train.txt", ["scene0000_00"])
    write_split(root / "scannetv2_val.txt", ["scene0001_00"])
    return {
        "scene0000_00": make_scan(root, "scene0000_00", seed=0),
        "scene0001_00": make_scan(root, "scene0001_00", seed=1, invalid=(3, 15), depth_shift=2000.0),
    }


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(root: Path, out: Path, **kwargs):
    kwargs = {"frame_skip": FRAME_SKIP, "image_size": IMAGE_SIZE, "progress": False, **kwargs}
    return preprocess_dataset(root, out, **kwargs)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> tuple[Path, dict[str, list[RGBDFrame]]]:
    root = tmp_path_factory.mktemp("raw")
    return root, make_root(root)


@pytest.fixture(scope="module")
def reference(raw_root, tmp_path_factory) -> Path:
    """An uninterrupted run over the two good scans."""
    out = tmp_path_factory.mktemp("reference")
    summary = run(raw_root[0], out)
    assert [s.status for s in summary.scenes] == ["done", "done"], format_summary(summary)
    return out


def test_points_labels_instances(raw_root, reference):
    for seed, scene_id in enumerate(["scene0000_00", "scene0001_00"]):
        scene = reference / scene_id
        mesh = make_mesh(offset=seed)
        expected = {
            "coord": (mesh.vertices, np.float32),
            "color": (mesh.colors, np.uint8),
            "normal": (vertex_normals(mesh.vertices, mesh.faces), np.float32),
            "segment20": (SEGMENT20, np.int64),
            "segment200": (SEGMENT200, np.int64),
            "instance": (INSTANCE, np.int64),
            "axis_align": (AXIS, np.float64),
        }
        for name, (values, dtype) in expected.items():
            array = np.load(scene / f"{name}.npy")
            assert array.dtype == dtype, name
            np.testing.assert_array_equal(array, values, err_msg=name)
        assert np.load(scene / "coord.npy").shape == (30, 3)
        np.testing.assert_allclose(np.linalg.norm(np.load(scene / "normal.npy"), axis=1), 1, atol=1e-6)


def test_frames(raw_root, reference):
    _, frames_of = raw_root
    for scene_id, kept, shift in (
        ("scene0000_00", [0, 5, 15, 20], 1000.0),
        ("scene0001_00", [0, 5, 10, 20], 2000.0),
    ):
        scene = reference / scene_id
        manifest = json.loads((scene / "manifest.json").read_text())
        assert manifest["frame_ids"] == kept and manifest["num_frames"] == 4
        assert manifest["num_invalid_pose_dropped"] == 1 and manifest["num_source_frames"] == NUM_FRAMES
        assert manifest["num_points"] == 30 and manifest["num_faces"] == 40 and manifest["num_instances"] == 4
        assert manifest["source_format"] == "sens" and manifest["frame_skip"] == FRAME_SKIP
        assert manifest["color_size"] == [20, 15] and manifest["depth_size"] == [DEPTH_W, DEPTH_H]
        assert manifest["has_labels"] and manifest["has_segment200"] and manifest["has_instances"]
        assert sorted(int(p.stem) for p in (scene / "color").iterdir()) == kept
        for i in kept:
            frame = frames_of[scene_id][i]
            with Image.open(scene / "color" / f"{i}.jpg") as image:
                assert image.size == IMAGE_SIZE and image.mode == "RGB"
                small = np.asarray(Image.fromarray(frame.color).resize(IMAGE_SIZE, Image.BILINEAR))
                assert np.abs(np.asarray(image).astype(int) - small).mean() < 6
            depth = decode_png16((scene / "depth" / f"{i}.png").read_bytes(), "depth")
            np.testing.assert_array_equal(depth, np.rint(frame.depth * (1000.0 / shift)).astype(np.uint16))
            np.testing.assert_array_equal(read_matrix_txt(scene / "pose" / f"{i}.txt"), frame.camera_to_world)
        intrinsic = read_matrix_txt(scene / "intrinsic" / "intrinsic_color.txt")
        np.testing.assert_allclose(intrinsic[:3, :3], [[25, 0, 9.625], [0, 25, 7.125], [0, 0, 1]])
        np.testing.assert_array_equal(read_matrix_txt(scene / "intrinsic" / "intrinsic_depth.txt"), K_DEPTH)
    assert (reference / "splits" / "train.txt").read_text() == "scene0000_00\n"
    assert not [p for p in reference.iterdir() if p.name.startswith(".tmp")]


def test_scale_intrinsic_keeps_pixel_centres():
    k = scale_intrinsic(K_DEPTH, (20, 16), (40, 32))
    # pixel centre u maps to 2u + 0.5; the principal point at 9.5 to 19.5
    np.testing.assert_allclose(k[:2, :3], [[50, 0, 19.5], [0, 50, 15.5]])


def test_exported_layout_gives_the_same_output(raw_root, reference, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw_root[0] / "scans" / "scene0000_00", root / "scans" / "scene0000_00")
    shutil.copy(raw_root[0] / "scannetv2-labels.combined.tsv", root)
    paths = scene_paths(root, "scene0000_00")
    with SensFrameSource(paths.sens) as source:
        export_frames(source, paths.exported_frames)
    paths.sens.unlink()
    out = tmp_path / "out"
    assert run(root, out).count("done") == 1
    got, want = tree(out / "scene0000_00"), tree(reference / "scene0000_00")
    assert json.loads(got.pop("manifest.json"))["source_format"] == "exported"
    want.pop("manifest.json")
    assert got == want


def break_scans(root: Path) -> dict[str, str]:
    """Add one bad scan per failure mode; returns scene id -> expected text in the reason."""
    bad = {}
    make_scan(root, "scene0003_00")
    sens = scene_paths(root, "scene0003_00").sens
    sens.write_bytes(sens.read_bytes()[:-5000])
    bad["scene0003_00"] = "scene0003_00.sens: truncated at frame"
    make_scan(root, "scene0004_00")
    scene_paths(root, "scene0004_00").mesh.unlink()
    bad["scene0004_00"] = "FileNotFoundError: [Errno 2] No such file or directory: '" + str(
        scene_paths(root, "scene0004_00").mesh
    )
    make_scan(root, "scene0005_00")
    mesh = make_mesh(0)
    short = Mesh(mesh.vertices[:-1], mesh.colors[:-1], mesh.faces[:30])
    write_labels_ply(scene_paths(root, "scene0005_00").labels, short, NYU40[:-1])
    bad["scene0005_00"] = "scene0005_00_vh_clean_2.labels.ply: 29 per-vertex entries but the mesh"
    make_scan(root, "scene0006_00", invalid=(0, 5, 10, 15, 20))
    bad["scene0006_00"] = "scene0006_00.sens: no frame to keep: 5 frame(s) at multiples of 5 among 23"
    return bad


def test_bad_scans_fail_alone(raw_root, reference, tmp_path, capsys):
    root = tmp_path / "raw"
    shutil.copytree(raw_root[0], root)
    bad = break_scans(root)
    out = tmp_path / "out"
    argv = ["--scannet-root", str(root), "--out", str(out), "--frame-skip", "5", "--image-size", "20x15"]
    assert preprocess_scannet.main(argv + ["--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "scenes: 2 done, 0 skipped, 4 failed" in printed
    for scene_id, reason in bad.items():
        line = next(line for line in printed.splitlines() if line.startswith(f"FAILED {scene_id}: "))
        assert reason in line, line
        assert not (out / scene_id).exists()
    assert sorted(p.name for p in out.iterdir()) == ["scene0000_00", "scene0001_00", "splits"]  # no .tmp left
    assert tree(out / "scene0000_00") == tree(reference / "scene0000_00")
    # Resuming skips the finished scans and reports the bad ones again.
    summary = run(root, out)
    assert (summary.count("done"), summary.count("skipped"), summary.count("failed")) == (0, 2, 4)


KILL_SCRIPT = """
import os, sys
import scene_kd.scannet.preprocess as pp

write = pp.write_scene_frames

def dying(source, frame_ids, out_dir, *args, **kwargs):
    if out_dir.name.startswith(".tmp-scene0001_00-"):
        write(source, frame_ids[:2], out_dir, *args, **kwargs)
        os._exit(9)  # like SIGKILL: no cleanup runs
    return write(source, frame_ids, out_dir, *args, **kwargs)

pp.write_scene_frames = dying
pp.preprocess_dataset(sys.argv[1], sys.argv[2], frame_skip=5, image_size=(20, 15), progress=False)
"""


def test_killed_run_resumes_to_identical_output(raw_root, reference, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(raw_root[0]), str(out)],
        cwd=REPO,
        capture_output=True,
    )
    assert result.returncode == 9, result.stderr.decode()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".tmp-scene0001_00-")]
    assert len(leftovers) == 1 and (out / leftovers[0] / "coord.npy").exists()
    assert (out / "scene0000_00").is_dir() and not (out / "scene0001_00").exists()
    summary = run(raw_root[0], out)
    assert [(s.scene_id, s.status) for s in summary.scenes] == [
        ("scene0000_00", "skipped"),
        ("scene0001_00", "done"),
    ]
    assert tree(out) == tree(reference)


def test_worker_exception_then_restart_is_identical(raw_root, reference, tmp_path, monkeypatch):
    import scene_kd.scannet.preprocess as pp

    write = pp.write_scene_frames

    def failing(source, frame_ids, out_dir, *args, **kwargs):
        if out_dir.name.startswith(".tmp-scene0000_00-"):
            write(source, frame_ids[:1], out_dir, *args, **kwargs)
            raise RuntimeError("disk full")
        return write(source, frame_ids, out_dir, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(pp, "write_scene_frames", failing)
    summary = run(raw_root[0], out)
    assert [(s.status, s.reason) for s in summary.scenes] == [
        ("failed", "RuntimeError: disk full"),
        ("done", None),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["scene0001_00", "splits"]
    monkeypatch.setattr(pp, "write_scene_frames", write)
    assert run(raw_root[0], out).count("done") == 1
    assert tree(out) == tree(reference)


def test_two_workers_give_identical_output(raw_root, reference, tmp_path):
    out = tmp_path / "out"
    summary = run(raw_root[0], out, workers=2)
    assert summary.count("done") == 2, format_summary(summary)
    assert tree(out) == tree(reference)


def test_select_scenes(tmp_path):
    for i in range(5):
        (tmp_path / "scans" / f"scene000{i}_00").mkdir(parents=True)
    write_split(tmp_path / "scannetv2_val.txt", ["scene0003_00", "scene0001_00"])
    everything = [f"scene000{i}_00" for i in range(5)]
    assert select_scenes(tmp_path) == everything
    assert select_scenes(tmp_path, split="val") == ["scene0001_00", "scene0003_00"]
    assert select_scenes(tmp_path, split=str(tmp_path / "scannetv2_val.txt")) == [
        "scene0001_00",
        "scene0003_00",
    ]
    assert select_scenes(tmp_path, scene_ids=["scene0003_00", "scene0004_00"], split="val") == [
        "scene0003_00"
    ]
    shards = [select_scenes(tmp_path, shard=(i, 2)) for i in range(2)]
    assert shards == [everything[0::2], everything[1::2]]
    with pytest.raises(ValueError, match="shard"):
        select_scenes(tmp_path, shard=(2, 2))


def test_cli_flags_all_have_help():
    parser = preprocess_scannet.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    args = parser.parse_args(["--scannet-root", "r", "--out", "o", "--shard", "1/4"])
    assert (args.shard, args.image_size, args.frame_skip, args.workers) == ((1, 4), (320, 240), 25, 1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--scannet-root", "r", "--out", "o", "--shard", "4/4"])


def test_two_synthetic_scans(tmp_path):
    """The project's synthetic scans: every processed array equals what the raw files say."""
    from scene_kd.scannet.annotations import (
        instance_ids_from_groups,
        labels_from_groups,
        read_aggregation_json,
        read_axis_alignment,
        read_segs_json,
    )
    from scene_kd.scannet.labels import nyu40_to_seg20, raw_to_seg200, read_label_tsv
    from scene_kd.scannet.mesh import read_labels_ply, read_mesh_ply
    from scene_kd.scannet.sens import SensReader
    from scene_kd.synthetic import write_synthetic_scannet

    root, out = tmp_path / "raw", tmp_path / "out"
    scene_ids = write_synthetic_scannet(
        root,
        num_scenes=2,
        seed=0,
        num_frames=12,
        color_size=(64, 48),
        depth_size=(32, 24),
        vertex_spacing=0.2,
    )
    summary = run(root, out, image_size=(32, 24))
    assert summary.count("done") == 2, format_summary(summary)
    seg200_of = raw_to_seg200(read_label_tsv(root / "scannetv2-labels.combined.tsv"))
    for scene_id in scene_ids:
        paths, scene = scene_paths(root, scene_id), out / scene_id
        mesh = read_mesh_ply(paths.mesh)
        seg, groups = read_segs_json(paths.segs), read_aggregation_json(paths.aggregation)
        np.testing.assert_array_equal(np.load(scene / "coord.npy"), mesh.vertices)
        np.testing.assert_array_equal(np.load(scene / "color.npy"), mesh.colors)
        segment20 = np.load(scene / "segment20.npy")
        np.testing.assert_array_equal(segment20, nyu40_to_seg20(read_labels_ply(paths.labels)))
        assert {0, 1} <= set(segment20.tolist())  # wall and floor
        instance = np.load(scene / "instance.npy")
        np.testing.assert_array_equal(instance, instance_ids_from_groups(seg, groups))
        assert instance.max() + 1 == len(groups) >= 5
        np.testing.assert_array_equal(
            np.load(scene / "segment200.npy"), labels_from_groups(seg, groups, seg200_of)
        )
        axis = read_axis_alignment(paths.scene_txt)
        assert not np.allclose(axis, np.eye(4))
        np.testing.assert_array_equal(np.load(scene / "axis_align.npy"), axis)
        with SensReader(paths.sens) as reader:
            expected = [
                i for i in range(0, len(reader), FRAME_SKIP) if np.isfinite(reader.read_pose(i)).all()
            ]
        manifest = json.loads((scene / "manifest.json").read_text())
        assert manifest["frame_ids"] == expected and manifest["num_points"] == len(mesh.vertices)
        assert sorted(int(p.stem) for p in (scene / "depth").iterdir()) == expected


def test_test_scan_without_annotations(raw_root, tmp_path):
    """A scans_test/ scan has only the .sens, the mesh and a scene .txt without axisAlignment."""
    root = tmp_path / "raw"
    source = raw_root[0] / "scans" / "scene0000_00"
    paths = scene_paths(root, "scene0707_00", subdir="scans_test")
    paths.scene_dir.mkdir(parents=True)
    shutil.copy(source / "scene0000_00.sens", paths.sens)
    shutil.copy(source / "scene0000_00_vh_clean_2.ply", paths.mesh)
    write_scene_txt(paths.scene_txt, extra={"sceneType": "Office"})
    out = tmp_path / "out"
    summary_file = tmp_path / "summary.json"
    argv = ["--scannet-root", str(root), "--out", str(out), "--frame-skip", "5", "--image-size", "20x15"]
    assert preprocess_scannet.main(argv + ["--no-progress", "--summary-json", str(summary_file)]) == 0
    assert json.loads(summary_file.read_text())["scenes"][0]["status"] == "done"
    scene = out / "scene0707_00"
    for name in ("segment20", "segment200", "instance"):
        np.testing.assert_array_equal(np.load(scene / f"{name}.npy"), np.full(30, -1))
    np.testing.assert_array_equal(np.load(scene / "axis_align.npy"), np.eye(4))
    manifest = json.loads((scene / "manifest.json").read_text())
    assert manifest["is_test_scan"] and not manifest["has_labels"] and not manifest["has_instances"]
    assert manifest["frame_ids"] == [0, 5, 15, 20]
