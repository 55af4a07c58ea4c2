"""Round trips of every raw ScanNet format, the .sens bytes against the spec, and the errors for
bad input (truncated, corrupt, missing, inconsistent files)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import plyfile
import pytest
from PIL import Image

from scene_kd.scannet.annotations import (
    SegGroup,
    instance_ids_from_groups,
    labels_from_groups,
    read_aggregation_json,
    read_axis_alignment,
    read_scene_txt,
    read_segs_json,
    write_aggregation_json,
    write_scene_txt,
    write_segs_json,
)
from scene_kd.scannet.codecs import decode_png16, encode_png16
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.exported import read_matrix_txt, write_matrix_txt
from scene_kd.scannet.frames import (
    ExportedFrameSource,
    FrameSource,
    RGBDFrame,
    SensFrameSource,
    export_frames,
    open_frame_source,
)
from scene_kd.scannet.labels import (
    DET18_NAMES,
    DET18_NYU40_IDS,
    NYU40_NAMES,
    NYU40_PALETTE,
    SEG20_NAMES,
    SEG20_NYU40_IDS,
    SEG20_PALETTE,
    SEG200_IDS,
    SEG200_NAMES,
    LabelRow,
    nyu40_to_det18,
    nyu40_to_seg20,
    raw_to_nyu40,
    raw_to_seg200,
    read_label_tsv,
    scannet_id_to_seg200,
    write_label_tsv,
)
from scene_kd.scannet.layout import list_scenes, scene_paths
from scene_kd.scannet.mesh import Mesh, read_labels_ply, read_mesh_ply, write_labels_ply, write_mesh_ply
from scene_kd.scannet.points import vertex_normals
from scene_kd.scannet.sens import SensReader, SensWriter, read_sens_header, write_sens
from scene_kd.scannet.splits import read_split, write_split

COLOR_W, COLOR_H, DEPTH_W, DEPTH_H = 40, 30, 20, 16
K_COLOR = np.array([[50.0, 0, 19.75, 0], [0, 50.0, 14.75, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_DEPTH = np.array([[25.0, 0, 9.5, 0], [0, 25.0, 7.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def make_frames(n: int, invalid: tuple[int, ...] = (), seed: int = 0) -> list[RGBDFrame]:
    """Smooth color images (so JPEG stays close), random depth, poses; `invalid` frames get -inf."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:COLOR_H, 0:COLOR_W]
    frames = []
    for i in range(n):
        color = np.stack([xx * 6 + i, yy * 8, np.full_like(xx, 40 * i % 256)], axis=-1).astype(np.uint8)
        depth = rng.integers(0, 5000, size=(DEPTH_H, DEPTH_W), dtype=np.uint16)
        depth[0, :3] = 0
        pose = np.eye(4, dtype=np.float32)
        pose[:3, 3] = [0.1 * i, -0.2 * i, 1.5]
        pose[0, 1] = 1 / 3
        if i in invalid:
            pose[:] = -np.inf
        frames.append(
            RGBDFrame(color, depth, pose, timestamp_color=1000 * i + 1, timestamp_depth=1000 * i + 2)
        )
    return frames


def write_test_sens(path: Path, frames: list[RGBDFrame], **kwargs) -> int:
    return write_sens(path, frames, intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH, **kwargs)


# ---------------------------------------------------------------------------------------------- .sens


@pytest.mark.parametrize(
    "color_compression, depth_compression",
    [("jpeg", "zlib_ushort"), ("png", "raw_ushort"), ("raw", "zlib_ushort")],
)
def test_sens_round_trip(tmp_path, color_compression, depth_compression):
    frames = make_frames(4, invalid=(2,))
    path = tmp_path / "scene.sens"
    count = write_test_sens(
        path,
        iter(frames),
        color_compression=color_compression,
        depth_compression=depth_compression,
        depth_shift=4000.0,
    )
    assert count == 4
    header = read_sens_header(path)
    assert (header.version, header.sensor_name, header.num_frames) == (4, "StructureSensor", 4)
    assert (header.color_compression, header.depth_compression) == (color_compression, depth_compression)
    assert header.color_size == (COLOR_W, COLOR_H) and header.depth_size == (DEPTH_W, DEPTH_H)
    assert header.depth_shift == 4000.0
    np.testing.assert_array_equal(header.intrinsic_color, K_COLOR.astype(np.float32))
    np.testing.assert_array_equal(header.extrinsic_depth, np.eye(4))
    with SensReader(path) as reader:
        assert len(reader) == 4
        for i in (3, 0, 2, 1):  # random order: each frame decodes on its own
            frame = reader.read_frame(i)
            assert frame.color.dtype == np.uint8 and frame.color.shape == (COLOR_H, COLOR_W, 3)
            assert frame.depth.dtype == np.uint16 and frame.depth.shape == (DEPTH_H, DEPTH_W)
            np.testing.assert_array_equal(frame.depth, frames[i].depth)
            if color_compression == "jpeg":
                assert np.abs(frame.color.astype(int) - frames[i].color).mean() < 3
            else:
                np.testing.assert_array_equal(frame.color, frames[i].color)
            np.testing.assert_array_equal(frame.camera_to_world, frames[i].camera_to_world)
            assert (frame.timestamp_color, frame.timestamp_depth) == (1000 * i + 1, 1000 * i + 2)
            assert frame.pose_valid == (i != 2)
        assert np.all(reader.read_pose(2) == -np.inf)
        np.testing.assert_array_equal(reader.read_pose(1), frames[1].camera_to_world)
        with pytest.raises(IndexError, match="frame 4 out of range"):
            reader.read_pose(4)


def test_sens_reduced_color_decode(tmp_path):
    path = tmp_path / "scene.sens"
    write_test_sens(path, make_frames(2))
    with SensReader(path) as reader:
        full = reader.read_frame(1).color
        small = reader.read_frame(1, color_size=(10, 8)).color
    assert small.shape == (8, 10, 3)
    reference = np.asarray(Image.fromarray(full).resize((10, 8), Image.BILINEAR))
    assert np.abs(small.astype(int) - reference).mean() < 6


def parse_sens_by_spec(data: bytes) -> dict:
    """An independent .sens parser, written from docs/data_format.md with `struct` only."""
    out, at = {}, 0

    def take(fmt: str):
        nonlocal at
        values = struct.unpack_from("<" + fmt, data, at)
        at += struct.calcsize("<" + fmt)
        return values

    (out["version"],) = take("I")
    (name_len,) = take("Q")
    out["name"] = data[at : at + name_len].decode()
    at += name_len
    for key in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
        out[key] = np.array(take("16f")).reshape(4, 4)
    out["color_compression"], out["depth_compression"] = take("i") + take("i")
    out["sizes"] = take("4I")
    (out["depth_shift"],) = take("f")
    (out["num_frames"],) = take("Q")
    out["header_size"] = at
    out["frames"] = []
    for _ in range(out["num_frames"]):
        pose = np.array(take("16f")).reshape(4, 4)
        ts_color, ts_depth, color_bytes, depth_bytes = take("4Q")
        color = data[at : at + color_bytes]
        depth = data[at + color_bytes : at + color_bytes + depth_bytes]
        at += color_bytes + depth_bytes
        out["frames"].append((pose, ts_color, ts_depth, color, depth))
    (out["imu_count"],) = take("Q")
    out["end"] = at
    return out


def test_sens_writer_bytes_follow_the_spec(tmp_path):
    frames = make_frames(3, invalid=(1,))
    path = tmp_path / "scene.sens"
    write_test_sens(path, frames, sensor_name="MySensor")
    data = path.read_bytes()
    spec = parse_sens_by_spec(data)
    assert spec["version"] == 4 and spec["name"] == "MySensor"
    assert spec["header_size"] == 304 + len("MySensor")
    np.testing.assert_array_equal(spec["intrinsic_color"], K_COLOR)
    np.testing.assert_array_equal(spec["intrinsic_depth"], K_DEPTH)
    np.testing.assert_array_equal(spec["extrinsic_color"], np.eye(4))
    assert spec["intrinsic_color"][0, 2] == 19.75  # row-major: cx at index 2
    assert (spec["color_compression"], spec["depth_compression"]) == (2, 1)  # jpeg, zlib_ushort
    assert spec["sizes"] == (COLOR_W, COLOR_H, DEPTH_W, DEPTH_H)
    assert spec["depth_shift"] == 1000.0 and spec["num_frames"] == 3
    for i, (pose, ts_color, ts_depth, color, depth) in enumerate(spec["frames"]):
        np.testing.assert_array_equal(pose, frames[i].camera_to_world)
        assert pose[0, 3] == frames[i].camera_to_world[0, 3]  # translation at [3]
        assert (ts_color, ts_depth) == (1000 * i + 1, 1000 * i + 2)
        assert color[:2] == b"\xff\xd8"  # a JPEG stream
        assert Image.open(io.BytesIO(color)).size == (COLOR_W, COLOR_H)
        raw = zlib.decompress(depth)  # an RFC 1950 stream of little-endian uint16, row-major
        np.testing.assert_array_equal(np.frombuffer(raw, "<u2").reshape(DEPTH_H, DEPTH_W), frames[i].depth)
    assert np.all(spec["frames"][1][0] == -np.inf)
    assert spec["imu_count"] == 0 and spec["end"] == len(data)


def test_sens_writer_rejects_a_frame_of_another_size_and_leaves_no_file(tmp_path):
    frames = make_frames(2)
    frames.append(RGBDFrame(np.zeros((8, 8, 3), np.uint8), frames[0].depth, frames[0].camera_to_world))
    path = tmp_path / "scene.sens"
    with pytest.raises(ValueError, match="frame 2"):
        write_test_sens(path, frames)
    assert list(tmp_path.iterdir()) == []


def test_truncated_sens_names_file_and_frame(tmp_path):
    path = tmp_path / "scene0000_00.sens"
    write_test_sens(path, make_frames(4))
    data = path.read_bytes()
    spec = parse_sens_by_spec(data)
    frame2_start = spec["header_size"] + sum(96 + len(f[3]) + len(f[4]) for f in spec["frames"][:2])
    for cut in (frame2_start + 50, frame2_start + 96 + 10):  # inside the fixed part, inside the payload
        path.write_bytes(data[:cut])
        with pytest.raises(ScanNetFormatError, match=r"scene0000_00\.sens: truncated at frame 2 of 4"):
            SensReader(path)
    path.write_bytes(data[:100])
    with pytest.raises(ScanNetFormatError, match=r"scene0000_00\.sens: file truncated in the header"):
        read_sens_header(path)


def test_not_a_sens_file(tmp_path):
    path = tmp_path / "x.sens"
    path.write_bytes(struct.pack("<I", 3) + bytes(400))
    with pytest.raises(ScanNetFormatError, match=r"x\.sens: \.sens version 3"):
        SensReader(path)


def test_corrupt_jpeg_names_file_and_frame(tmp_path):
    frames = make_frames(3)
    path = tmp_path / "scene.sens"
    with SensWriter(
        path,
        color_size=(COLOR_W, COLOR_H),
        depth_size=(DEPTH_W, DEPTH_H),
        intrinsic_color=K_COLOR,
        intrinsic_depth=K_DEPTH,
    ) as writer:
        writer.write_frame(frames[0])
        good = io.BytesIO()
        Image.fromarray(frames[1].color).save(good, format="JPEG")
        depth_bytes = zlib.compress(frames[1].depth.tobytes())
        writer.write_encoded_frame(
            frames[1].camera_to_world, good.getvalue()[:200], depth_bytes
        )  # truncated JPEG
        writer.write_encoded_frame(frames[1].camera_to_world, b"not a jpeg at all", depth_bytes)
        writer.write_encoded_frame(frames[1].camera_to_world, good.getvalue(), b"not zlib")
    with SensReader(path) as reader:
        reader.read_frame(0)
        for i, what in (
            (1, "cannot decode jpeg color image"),
            (2, "cannot decode jpeg"),
            (3, "cannot inflate zlib"),
        ):
            with pytest.raises(ScanNetFormatError, match=rf"scene\.sens frame {i}: {what}"):
                reader.read_frame(i)


def test_sens_writer_exception_leaves_no_file(tmp_path):
    path = tmp_path / "scene.sens"
    with pytest.raises(RuntimeError):
        with SensWriter(
            path,
            color_size=(COLOR_W, COLOR_H),
            depth_size=(DEPTH_W, DEPTH_H),
            intrinsic_color=K_COLOR,
            intrinsic_depth=K_DEPTH,
        ) as writer:
            writer.write_frame(make_frames(1)[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ exported frames


def test_export_frames_round_trip(tmp_path):
    frames = make_frames(6, invalid=(4,))
    sens = tmp_path / "scene0000_00.sens"
    write_test_sens(sens, frames)
    out = tmp_path / "exported"
    with SensFrameSource(sens) as source:
        assert isinstance(source, FrameSource)
        written = export_frames(source, out, frame_skip=2)
        assert written == [0, 2, 4]
        assert sorted(p.name for p in (out / "color").iterdir()) == ["0.jpg", "2.jpg", "4.jpg"]
        assert read_matrix_txt(out / "pose" / "4.txt").tolist() == [[-np.inf] * 4] * 4
        exported = ExportedFrameSource(out)
        assert isinstance(exported, FrameSource)
        assert exported.frame_ids == [0, 2, 4]
        assert exported.color_size == (COLOR_W, COLOR_H) and exported.depth_size == (DEPTH_W, DEPTH_H)
        np.testing.assert_array_equal(exported.intrinsic_color, source.intrinsic_color)
        np.testing.assert_array_equal(exported.intrinsic_depth, source.intrinsic_depth)
        for i in written:
            a, b = source.read(i), exported.read(i)
            np.testing.assert_array_equal(a.color, b.color)  # the JPEG payload is copied, not re-encoded
            np.testing.assert_array_equal(a.depth, b.depth)
            np.testing.assert_array_equal(a.camera_to_world, b.camera_to_world)  # float32 written exactly
            assert a.pose_valid == b.pose_valid == (i != 4)
        assert exported.read(2, color_size=(20, 15)).color.shape == (15, 20, 3)


def test_exported_png_color_and_depth_shift(tmp_path):
    frames = make_frames(2)
    sens = tmp_path / "s.sens"
    write_test_sens(sens, frames, color_compression="png", depth_shift=2000.0)
    with SensFrameSource(sens) as source:
        export_frames(source, tmp_path / "out")
    # ScanNet-style exports from other tools use color/{i}.png
    for i in (0, 1):
        jpg = tmp_path / "out" / "color" / f"{i}.jpg"
        Image.fromarray(frames[i].color).save(jpg.with_suffix(".png"))
        jpg.unlink()
    exported = ExportedFrameSource(tmp_path / "out")
    frame = exported.read(1)
    np.testing.assert_array_equal(frame.color, frames[1].color)
    np.testing.assert_array_equal(frame.depth, np.rint(frames[1].depth / 2.0).astype(np.uint16))  # to mm
    assert exported.depth_shift == 1000.0


def test_exported_errors_name_the_file(tmp_path):
    sens = tmp_path / "s.sens"
    write_test_sens(sens, make_frames(3))
    with SensFrameSource(sens) as source:
        export_frames(source, tmp_path / "out")
    exported = ExportedFrameSource(tmp_path / "out")
    (tmp_path / "out" / "color" / "1.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ScanNetFormatError, match=r"color/1\.jpg: cannot decode jpeg"):
        exported.read(1)
    (tmp_path / "out" / "depth" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth/2\.png"):
        exported.read(2)
    (tmp_path / "out" / "pose" / "0.txt").write_text("1 2 3\n")
    with pytest.raises(ScanNetFormatError, match=r"pose/0\.txt: holds 3 numbers"):
        exported.read_pose(0)
    (tmp_path / "out" / "intrinsic" / "intrinsic_depth.txt").unlink()
    with pytest.raises(FileNotFoundError, match="intrinsic_depth.txt"):
        ExportedFrameSource(tmp_path / "out")


def test_open_frame_source_picks_sens_then_exported(tmp_path):
    scene = tmp_path / "scene0001_00"
    scene.mkdir()
    with pytest.raises(FileNotFoundError, match=r"scene0001_00: no frames"):
        open_frame_source(scene, "scene0001_00")
    write_test_sens(tmp_path / "tmp.sens", make_frames(2))
    with SensFrameSource(tmp_path / "tmp.sens") as source:
        export_frames(source, scene)  # exported layout directly in the scene directory
        export_frames(source, scene / "exported", frame_skip=2)
    source = open_frame_source(scene, "scene0001_00")
    assert isinstance(source, ExportedFrameSource) and source.frame_ids == [0]  # exported/ first
    (tmp_path / "tmp.sens").rename(scene / "scene0001_00.sens")
    source = open_frame_source(scene, "scene0001_00")
    assert isinstance(source, SensFrameSource) and source.frame_ids == [0, 1]
    source.close()


def test_matrix_txt_round_trip(tmp_path):
    m64 = np.random.default_rng(0).normal(size=(4, 4))
    write_matrix_txt(tmp_path / "a.txt", m64)
    np.testing.assert_array_equal(read_matrix_txt(tmp_path / "a.txt"), m64)
    m32 = m64.astype(np.float32)
    write_matrix_txt(tmp_path / "b.txt", m32)
    np.testing.assert_array_equal(read_matrix_txt(tmp_path / "b.txt"), m32)


# ------------------------------------------------------------------------------------------ meshes


def small_mesh() -> Mesh:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.5], [2, 0, 0]], dtype=np.float32)
    colors = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [1, 2, 3], [255, 0, 128]], dtype=np.uint8)
    faces = np.array([[0, 1, 2], [1, 3, 2], [1, 4, 3]], dtype=np.int32)
    return Mesh(vertices, colors, faces)


def test_mesh_round_trip_and_header(tmp_path):
    mesh = small_mesh()
    path = tmp_path / "scene_vh_clean_2.ply"
    write_mesh_ply(path, mesh)
    back = read_mesh_ply(path)
    for name in ("vertices", "colors", "faces"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mesh, name))
    assert (
        back.vertices.dtype == np.float32 and back.colors.dtype == np.uint8 and back.faces.dtype == np.int32
    )
    ply = plyfile.PlyData.read(str(path))  # plain plyfile, variable-length lists
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [(p.name, p.val_dtype) for p in vertex.properties] == [
        ("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")
    ]  # fmt: skip
    face_prop = ply["face"].properties[0]
    assert (face_prop.name, face_prop.len_dtype, face_prop.val_dtype) == ("vertex_indices", "u1", "i4")
    assert np.all(vertex["alpha"] == 255)


def test_labels_ply_round_trip(tmp_path):
    mesh = small_mesh()
    labels = np.array([1, 2, 0, 39, 300], dtype=np.uint16)
    path = tmp_path / "labels.ply"
    write_labels_ply(path, mesh, labels)
    np.testing.assert_array_equal(read_labels_ply(path), labels)
    assert read_labels_ply(path).dtype == np.uint16
    ply = plyfile.PlyData.read(str(path))
    assert ply["vertex"].properties[-1].name == "label" and ply["vertex"].properties[-1].val_dtype == "u2"
    np.testing.assert_array_equal(ply["vertex"]["red"][:2], NYU40_PALETTE[[1, 2], 0])
    np.testing.assert_array_equal(read_mesh_ply(path).faces, mesh.faces)
    with pytest.raises(ValueError, match="one per vertex"):
        write_labels_ply(path, mesh, labels[:3])


def test_mesh_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_vh_clean_2.ply"):
        read_mesh_ply(tmp_path / "missing_vh_clean_2.ply")
    path = tmp_path / "m.ply"
    write_mesh_ply(path, small_mesh())
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ScanNetFormatError, match=r"m\.ply: malformed or truncated PLY"):
        read_mesh_ply(path)
    write_mesh_ply(path, small_mesh())
    with pytest.raises(ScanNetFormatError, match=r"m\.ply: vertex element has no 'label'"):
        read_labels_ply(path)


def test_vertex_normals_hand_computed():
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [5, 5, 5]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3]])  # +z face of area 2, -y face of area 1
    normals = vertex_normals(vertices, faces)
    assert normals.dtype == np.float32
    expected_shared = np.array([0, -1, 2]) / np.sqrt(5)  # area-weighted: 2 * (0,0,1) + 1 * (0,-1,0)
    np.testing.assert_allclose(normals[0], expected_shared, atol=1e-6)
    np.testing.assert_allclose(normals[1], expected_shared, atol=1e-6)
    np.testing.assert_allclose(normals[2], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(normals[3], [0, -1, 0], atol=1e-6)
    np.testing.assert_array_equal(normals[4], [0, 0, 0])  # in no face


# ------------------------------------------------------------------------------------- annotations


def test_segs_and_aggregation_round_trip(tmp_path):
    seg = np.array([7, 7, 12, 12, 30, 99, 7], dtype=np.int64)
    write_segs_json(tmp_path / "s.segs.json", "scene0000_00", seg)
    np.testing.assert_array_equal(read_segs_json(tmp_path / "s.segs.json"), seg)
    data = json.loads((tmp_path / "s.segs.json").read_text())
    assert data["sceneId"] == "scene0000_00" and "params" in data
    groups = [SegGroup(0, 1, [7], "chair"), SegGroup(1, 2, [12, 30], "table"), SegGroup(2, 3, [30], "book")]
    write_aggregation_json(tmp_path / "a.json", "scene0000_00", groups)
    assert read_aggregation_json(tmp_path / "a.json") == groups
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["segGroups"][1] == {"id": 1, "objectId": 2, "segments": [12, 30], "label": "table"}
    assert data["segmentsFile"].endswith("scene0000_00_vh_clean_2.0.010000.segs.json")
    # ids contiguous in group order, -1 for none, the later group wins on segment 30
    np.testing.assert_array_equal(instance_ids_from_groups(seg, groups), [0, 0, 1, 1, 2, -1, 0])
    np.testing.assert_array_equal(
        labels_from_groups(seg, groups, {"chair": 4, "table": 6}), [4, 4, 6, 6, -1, -1, 4]
    )


def test_annotation_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ScanNetFormatError, match=r"bad\.json: not valid JSON"):
        read_segs_json(tmp_path / "bad.json")
    (tmp_path / "agg.json").write_text(json.dumps({"segGroups": [{"id": 0, "segments": [1]}]}))
    with pytest.raises(ScanNetFormatError, match=r"agg\.json: segGroups\[0\] is malformed"):
        read_aggregation_json(tmp_path / "agg.json")


def test_scene_txt(tmp_path):
    axis = np.random.default_rng(1).normal(size=(4, 4))
    write_scene_txt(tmp_path / "a.txt", axis, extra={"sceneType": "Bedroom / Hotel"})
    np.testing.assert_array_equal(read_axis_alignment(tmp_path / "a.txt"), axis)
    assert read_scene_txt(tmp_path / "a.txt")["sceneType"] == "Bedroom / Hotel"
    (tmp_path / "b.txt").write_bytes(
        b"colorHeight = 968\r\naxisAlignment = " + b" ".join([b"1"] * 16) + b"\r\n"
    )
    np.testing.assert_array_equal(read_axis_alignment(tmp_path / "b.txt"), np.ones((4, 4)))
    write_scene_txt(tmp_path / "c.txt", extra={"colorWidth": "1296"})
    np.testing.assert_array_equal(read_axis_alignment(tmp_path / "c.txt"), np.eye(4))
    (tmp_path / "d.txt").write_text("axisAlignment = 1 2 3\n")
    with pytest.raises(ScanNetFormatError, match=r"d\.txt: axisAlignment has 3 numbers"):
        read_axis_alignment(tmp_path / "d.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_axis_alignment(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------- labels


def test_label_tsv_round_trip_and_crlf(tmp_path):
    rows = [
        LabelRow(1, "wall", "wall", 1, count=8277),
        LabelRow(2, "chair", "chair", 5),
        LabelRow(35, "book", "book", 23),
    ]
    path = tmp_path / "labels.tsv"
    write_label_tsv(path, rows)
    header = path.read_text().splitlines()[0].split("\t")
    assert len(header) == 17 and header[:5] == ["id", "raw_category", "category", "count", "nyu40id"]
    assert header[-1] == "mpcat40index"
    back = read_label_tsv(path)
    assert back["wall"].count == 8277 and back["chair"].nyu40class == "chair"
    assert raw_to_nyu40(path) == {"wall": 1, "chair": 5, "book": 23}
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert raw_to_nyu40(path) == {"wall": 1, "chair": 5, "book": 23}
    assert raw_to_seg200(read_label_tsv(path)) == {"wall": 0, "chair": 1, "book": SEG200_IDS.index(35)}
    path.write_text("id\traw_category\tnyu40id\n1\twall\tx\n")
    with pytest.raises(ScanNetFormatError, match=r"labels\.tsv: line 2: column nyu40id is 'x'"):
        read_label_tsv(path)


def test_label_maps():
    assert len(SEG20_NAMES) == 20 and SEG20_PALETTE.shape == (20, 3) and SEG20_PALETTE.dtype == np.uint8
    assert len(DET18_NAMES) == len(DET18_NYU40_IDS) == 18 and len(NYU40_NAMES) == 41
    assert len(SEG200_IDS) == len(set(SEG200_IDS)) == len(SEG200_NAMES) == 200
    nyu40 = np.array([0, 1, 2, 3, 13, 14, 36, 39, 40, 41, 65535])
    np.testing.assert_array_equal(nyu40_to_seg20(nyu40), [-1, 0, 1, 2, -1, 12, 18, 19, -1, -1, -1])
    np.testing.assert_array_equal(nyu40_to_det18(nyu40), [-1, -1, -1, 0, -1, 10, 16, 17, -1, -1, -1])
    assert nyu40_to_seg20(nyu40).dtype == np.int64
    assert [SEG20_NAMES[i] for i in nyu40_to_seg20(np.array(SEG20_NYU40_IDS))] == list(SEG20_NAMES)
    np.testing.assert_array_equal(
        scannet_id_to_seg200(np.array([1, 2, 3, 12, 1191, 5000])), [0, 1, 2, -1, 199, -1]
    )
    assert SEG200_NAMES[0] == "wall" and SEG200_NAMES[2] == "floor"


# ------------------------------------------------------------------------------------ splits, layout


def test_splits_round_trip(tmp_path):
    write_split(tmp_path / "scannetv2_val.txt", ["scene0011_00", "scene0011_01"])
    assert read_split(tmp_path / "scannetv2_val.txt") == ["scene0011_00", "scene0011_01"]
    (tmp_path / "crlf.txt").write_bytes(b"scene0000_00\r\nscene0000_01\r\n\r\n")
    assert read_split(tmp_path / "crlf.txt") == ["scene0000_00", "scene0000_01"]


def test_layout(tmp_path):
    paths = scene_paths(tmp_path, "scene0000_00")
    assert paths.scene_dir == tmp_path / "scans" / "scene0000_00" and not paths.is_test
    assert paths.mesh.name == "scene0000_00_vh_clean_2.ply"
    assert paths.labels.name == "scene0000_00_vh_clean_2.labels.ply"
    assert paths.segs.name == "scene0000_00_vh_clean_2.0.010000.segs.json"
    assert paths.aggregation.name == "scene0000_00.aggregation.json"
    assert (paths.scene_txt.name, paths.sens.name) == ("scene0000_00.txt", "scene0000_00.sens")
    (tmp_path / "scans" / "scene0000_00").mkdir(parents=True)
    (tmp_path / "scans_test" / "scene0707_00").mkdir(parents=True)
    (tmp_path / "scans" / ".tmp").mkdir()
    assert list_scenes(tmp_path) == ["scene0000_00", "scene0707_00"]
    assert scene_paths(tmp_path, "scene0707_00").is_test
    flat = tmp_path / "flat"
    (flat / "scene0002_01").mkdir(parents=True)
    (flat / "other").mkdir()
    assert list_scenes(flat) == ["scene0002_01"]
    assert scene_paths(flat, "scene0002_01").scene_dir == flat / "scene0002_01"


def test_png16_encoder_follows_the_spec():
    depth = np.random.default_rng(3).integers(0, 65536, size=(7, 5), dtype=np.uint16)
    for compression in ("none", "rle", "deflate"):
        data = encode_png16(depth, compression)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        length, kind = struct.unpack(">I4s", data[8:16])
        assert (length, kind) == (13, b"IHDR")
        assert struct.unpack(">IIBBBBB", data[16:29]) == (5, 7, 16, 0, 0, 0, 0)  # 16-bit gray
        assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
        length, kind = struct.unpack(">I4s", data[33:41])
        assert kind == b"IDAT"
        rows = np.frombuffer(zlib.decompress(data[41 : 41 + length]), np.uint8).reshape(7, 11)
        if compression == "none":
            assert np.all(rows[:, 0] == 0)  # no filter
            raw = rows[:, 1:].reshape(7, 5, 2).astype(np.int64)
        else:
            assert np.all(rows[:, 0] == 1)  # Sub filter: byte - byte two to the left (mod 256)
            raw = np.cumsum(rows[:, 1:].reshape(7, 5, 2).astype(np.int64), axis=1) % 256
        np.testing.assert_array_equal(raw[..., 0] * 256 + raw[..., 1], depth)  # big-endian samples
        assert data[-12:] == struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
        image = Image.open(io.BytesIO(data))
        assert image.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(image), depth)
        np.testing.assert_array_equal(decode_png16(data, "x.png", (5, 7)), depth)
    with pytest.raises(ScanNetFormatError, match=r"x\.png: depth image is 5x7, expected 7x5"):
        decode_png16(data, "x.png", (7, 5))
    gray8 = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gray8, format="PNG")
    with pytest.raises(ScanNetFormatError, match=r"y\.png: depth PNG has mode 'L'"):
        decode_png16(gray8.getvalue(), "y.png")
