"""Issue 14, raw data and preprocessing: nothing silent, nothing lost. Each fault a user met is
reproduced on tiny synthetic scans: it must end in a clear error naming the file, a recorded note,
or a refusal, never in a "done" that fails later; and no worker or temporary directory outlives
(or is deleted under) the run that owns it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from scene_kd.cli import run_tool
from scene_kd.scannet.annotations import (
    read_aggregation_json,
    read_axis_alignment,
    read_scene_txt,
    read_segs_json,
    write_scene_txt,
)
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.labels import read_label_tsv
from scene_kd.scannet.layout import LABEL_TSV_NAME, scene_paths
from scene_kd.scannet.mesh import Mesh, read_mesh_ply, write_mesh_ply
from scene_kd.scannet.out_lock import OutputLock, pid_alive
from scene_kd.scannet.preprocess import preprocess_scene
from scene_kd.scannet.sens import SensReader, SensWriter, read_sens_header
from scene_kd.scannet.splits import read_split
from scene_kd.synthetic import write_synthetic_scannet

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import preprocess_scannet  # noqa: E402

SCENES = ["scene0000_00", "scene0001_00", "scene0002_00"]
FAST = ["--frame-skip", "2", "--image-size", "16x12", "--no-progress"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    ids = write_synthetic_scannet(root, num_scenes=3, seed=0, num_frames=6, color_size=(32, 24),
                                  depth_size=(16, 12), vertex_spacing=0.4, workers=1)  # fmt: skip
    assert ids == SCENES
    return root


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(pristine, copy)
    return copy


def tool(capsys, root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """Run tools/preprocess_scannet.py as its command line does (errors as one line, exit 1)."""
    argv = ["--scannet-root", str(root), "--out", str(out), *FAST, *extra]
    capsys.readouterr()
    code = run_tool(preprocess_scannet.main, argv, name="preprocess_scannet")
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("preprocess_scannet: error: "), err
    return lines[0]


# -------------------------------------------------------------------- silent wrong results


def test_empty_mesh_and_nan_vertices_fail_naming_the_mesh(root, tmp_path, capsys):
    empty = scene_paths(root, "scene0000_00").mesh
    write_mesh_ply(empty, Mesh(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3))))
    nan = scene_paths(root, "scene0001_00").mesh
    mesh = read_mesh_ply(nan)
    mesh.vertices[3, 1] = np.nan
    write_mesh_ply(nan, mesh)
    out = tmp_path / "out"
    code, printed, _ = tool(capsys, root, out)
    assert code == 1 and "scenes: 1 done, 0 skipped, 2 failed" in printed
    assert f"FAILED scene0000_00: ScanNetFormatError: {empty}: empty mesh (0 vertices, 0 faces)" in printed
    assert f"FAILED scene0001_00: ScanNetFormatError: {nan}: 1 of " in printed
    assert "non-finite coordinates (first: vertex 3 = [" in printed
    assert sorted(p.name for p in out.iterdir()) == ["scene0002_00", "splits"]


def test_missing_axis_alignment_is_recorded_and_reported(root, tmp_path, capsys):
    scene_txt = scene_paths(root, "scene0002_00").scene_txt
    meta = read_scene_txt(scene_txt)
    del meta["axisAlignment"]
    write_scene_txt(scene_txt, extra=meta)
    out = tmp_path / "out"
    code, printed, _ = tool(capsys, root, out)
    assert code == 0 and "scenes: 3 done" in printed
    note = next(line for line in printed.splitlines() if line.startswith("note: "))
    assert note.startswith("note: 1 scene(s): no axisAlignment in the scene .txt") and note.endswith(
        ": scene0002_00"
    )
    manifests = {s: json.loads((out / s / "manifest.json").read_text()) for s in SCENES}
    assert [manifests[s]["has_axis_alignment"] for s in SCENES] == [True, True, False]
    np.testing.assert_array_equal(np.load(out / "scene0002_00" / "axis_align.npy"), np.eye(4))
    code, printed, _ = tool(capsys, root, out)  # said again when the scene is skipped
    assert code == 0 and "scenes: 0 done, 3 skipped" in printed and "note: 1 scene(s)" in printed


def test_rerun_with_other_settings_is_refused_and_keeps_the_outputs(root, tmp_path, capsys):
    out = tmp_path / "out"
    assert tool(capsys, root, out)[0] == 0
    before = tree(out)
    other_tsv = tmp_path / "labels.tsv"
    other_tsv.write_text("".join(read_label_tsv_lines(root)[:-3]))
    for extra, difference in (
        (["--frame-skip", "3"], "frame_skip 2 (this run: 3)"),
        (["--image-size", "8x6"], "color_size [16, 12] (this run: [8, 6])"),
        (["--jpeg-quality", "80"], "jpeg_quality 95 (this run: 80)"),
        (["--depth-png", "rle"], 'depth_png "none" (this run: "rle")'),
        (["--label-tsv", str(other_tsv)], "label_map_sha256 "),
    ):
        code, _, err = tool(capsys, root, out, *extra)
        line = one_error_line(err)
        assert code == 1, extra
        assert f"{out}: 3 processed scene(s) were not made with this run's settings" in line
        assert f"scene0000_00: {difference}" in line and "use another --out" in line
        assert tree(out) == before
    code, printed, _ = tool(capsys, root, out)
    assert code == 0 and "scenes: 0 done, 3 skipped, 0 failed" in printed
    # A manifest of the previous format (no label map recorded) is not taken for done either.
    manifest_path = out / "scene0001_00" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("label_map_sha256")
    manifest_path.write_text(json.dumps({**manifest, "format_version": 1}))
    code, _, err = tool(capsys, root, out)
    assert (
        code == 1 and 'scene0001_00: format_version 1 (this run: 2); label_map_sha256 "not recorded"' in err
    )
    with pytest.raises(
        ValueError, match=r"scene0000_00/manifest\.json: made with other settings: frame_skip 2"
    ):
        preprocess_scene(root, "scene0000_00", out, frame_skip=4, image_size=(16, 12))


def read_label_tsv_lines(root: Path) -> list[str]:
    return (root / LABEL_TSV_NAME).read_text().splitlines(keepends=True)


# ------------------------------------------------------------------------- unclear errors


def latin1(text: str) -> bytes:
    return ("é " + text).encode("latin-1")  # 0xe9: not UTF-8


@pytest.mark.parametrize(
    "name, content, read",
    [
        ("x_vh_clean_2.0.010000.segs.json", '{"segIndices": [1, 2]}', read_segs_json),
        ("x.aggregation.json", '{"segGroups": []}', read_aggregation_json),
        ("x.txt", "sceneType = Bureau\n", read_axis_alignment),
        (LABEL_TSV_NAME, "id\traw_category\tnyu40id\n1\tchaise\t5\n", read_label_tsv),
        ("scannetv2_train.txt", "scene0000_00\n", read_split),
    ],
)
def test_non_utf8_annotation_files_name_the_file(tmp_path, name, content, read):
    path = tmp_path / name
    path.write_bytes(latin1(content))
    with pytest.raises(
        ScanNetFormatError, match=rf"^{re.escape(str(path))}: not UTF-8 text \(byte 0xe9 at offset 0\)"
    ):
        read(path)


def test_non_utf8_files_through_the_tool(root, tmp_path, capsys):
    aggregation = scene_paths(root, "scene0001_00").aggregation
    aggregation.write_bytes(latin1(aggregation.read_text()))
    code, printed, _ = tool(capsys, root, tmp_path / "out")
    assert code == 1 and f"FAILED scene0001_00: ScanNetFormatError: {aggregation}: not UTF-8 text" in printed
    tsv = root / LABEL_TSV_NAME
    tsv.write_bytes(latin1(tsv.read_text()))
    code, _, err = tool(capsys, root, tmp_path / "out2")
    assert code == 1 and f"error: {tsv}: not UTF-8 text" in one_error_line(err)


@pytest.mark.parametrize(
    "seg_groups, problem",
    [
        ({"0": {"id": 0, "segments": [1], "label": "chair"}}, "'segGroups' is a dict, expected a list"),
        ([7], r"segGroups\[0\] is malformed \(a int, expected an object\)"),
        ([{"id": 0, "segments": "123", "label": "chair"}], r"segments is '123', not a list of integers"),
        (
            [{"id": 0, "segments": [1]}, {"id": "1", "segments": [2], "label": "x"}],
            r"segGroups\[0\] is malformed",
        ),
        (
            [{"id": "1", "segments": [2], "label": "x"}],
            r"segGroups\[0\] is malformed \(id is '1', not an integer",
        ),
        ([{"id": 1, "segments": [2.5], "label": "x"}], r"segments is \[2\.5\], not a list of integers"),
        ([{"id": 1, "segments": [2], "label": 3}], r"label is 3, not a string"),
        (None, r"'segGroups' is a NoneType"),
    ],
)
def test_malformed_seg_groups_name_the_file_and_entry(tmp_path, seg_groups, problem):
    path = tmp_path / "scene0000_00.aggregation.json"
    path.write_text(json.dumps({"segGroups": seg_groups}))
    with pytest.raises(ScanNetFormatError, match=rf"^{re.escape(str(path))}: .*{problem}"):
        read_aggregation_json(path)


@pytest.mark.parametrize("seg_indices", [["1", "2"], [[1, 2], [3, 4]], [1.5, 2], [True, 1], {"a": 1}])
def test_malformed_seg_indices_name_the_file(tmp_path, seg_indices):
    path = tmp_path / "x.segs.json"
    path.write_text(json.dumps({"segIndices": seg_indices}))
    with pytest.raises(ScanNetFormatError, match=rf"^{re.escape(str(path))}: 'segIndices' is "):
        read_segs_json(path)


def patched(data: bytes, offset_from_header_end: int, fmt: str, value) -> bytes:
    """`data` with one header field (counted back from the end of the header) overwritten."""
    name_length = struct.unpack_from("<Q", data, 4)[0]
    at = 304 + name_length - offset_from_header_end
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


@pytest.mark.parametrize(
    "back, fmt, value, message",
    [
        (8, "<Q", 1 << 40, "header declares 1099511627776 frames, which need at least"),
        (8, "<Q", 200, "header declares 200 frames, which need at least 19200 bytes"),
        (28, "<I", 0, "header declares color images of 0 x 24 pixels"),
        (16, "<I", 1 << 30, "header declares depth images of 16 x 1073741824 pixels"),
        (36, "<i", 0, "header declares 6 frames, which need at least"),  # raw color: 32 x 24 x 3 a frame
        (12, "<f", 0.0, "depth shift 0.0 in the header"),
        (12, "<f", float("nan"), "depth shift nan in the header"),
    ],
)
def test_absurd_sens_header_is_one_clear_error(pristine, tmp_path, back, fmt, value, message):
    good = scene_paths(pristine, "scene0000_00").sens.read_bytes()
    path = tmp_path / "scene0000_00.sens"
    path.write_bytes(patched(good, back, fmt, value))
    for read in (read_sens_header, SensReader):
        with pytest.raises(ScanNetFormatError, match=rf"^{re.escape(str(path))}: {re.escape(message)}"):
            read(path)


def test_absurd_sens_name_length_and_depth_bomb(pristine, tmp_path):
    good = scene_paths(pristine, "scene0000_00").sens.read_bytes()
    path = tmp_path / "a.sens"
    path.write_bytes(good[:4] + struct.pack("<Q", 1 << 40) + good[12:])
    with pytest.raises(ScanNetFormatError, match=r"a\.sens: sensor name length 1099511627776 is implausible"):
        SensReader(path)
    # A depth payload that would inflate to 64 MB is cut at one byte more than H x W x 2.
    k = np.eye(4)
    with SensWriter(tmp_path / "b.sens", color_size=(4, 2), depth_size=(4, 2), intrinsic_color=k,
                    intrinsic_depth=k, color_compression="raw", depth_compression="zlib_ushort") as writer:  # fmt: skip
        writer.write_encoded_frame(np.eye(4), bytes(24), zlib.compress(bytes(64 << 20)))
    with (
        SensReader(tmp_path / "b.sens") as reader,
        pytest.raises(
            ScanNetFormatError,
            match=r"b\.sens frame 0: depth payload has 17 bytes after decoding, expected 4x2x2",
        ),
    ):
        reader.read_frame(0)


# ------------------------------------------------------------------ processes and lock


HOLD_LOCK = """
import sys, time
from scene_kd.scannet.out_lock import OutputLock
lock = OutputLock(sys.argv[1], (int(sys.argv[2]), int(sys.argv[3])))
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(out: Path, shard: tuple[int, int] = (0, 1)) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), *map(str, shard)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_run_on_one_out_is_refused(root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    try:
        code, _, err = tool(capsys, root, out)
        line = one_error_line(err)
        assert (
            code == 1
            and f"{out / '.preprocess.lock'}: another preprocessing run (pid {holder.pid} on host" in line
        )
        code, _, err = tool(capsys, root, out, "--shard", "1/2")  # a shard overlaps a whole run
        assert code == 1 and "its scans may overlap this run's (shard 1/2)" in one_error_line(err)
        assert sorted(p.name for p in out.iterdir()) == [".preprocess.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    holder = hold_lock(out, (0, 2))
    try:  # the other shard of the same array job may share --out
        code, printed, _ = tool(capsys, root, out, "--shard", "1/2")
        assert code == 0 and "scenes: 1 done" in printed and (out / "scene0001_00").is_dir()
    finally:
        holder.kill()
        holder.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


def test_stale_lock_is_taken_over_and_only_dead_runs_tmp_dirs_removed(root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    gone = dead_pid()
    (out / ".preprocess.lock").write_text(
        json.dumps({"pid": gone, "host": socket.gethostname(), "started": 0})
    )
    (out / f".tmp-scene0000_00-{gone}").mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    live_tmp = out / f".tmp-scene0001_00-{sleeper.pid}"
    live_tmp.mkdir()
    (live_tmp / "coord.npy").write_bytes(b"another run's")
    try:
        code, printed, _ = tool(capsys, root, out)
        assert code == 0 and "scenes: 3 done" in printed
        assert sorted(p.name for p in out.iterdir()) == [live_tmp.name, *SCENES, "splits"]
        assert (live_tmp / "coord.npy").read_bytes() == b"another run's"
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutputLock(out):  # a lock held by this very process is not taken over either
        with pytest.raises(OSError, match=r"\.preprocess\.lock: another preprocessing run"):
            OutputLock(out).acquire()


SLOW_TOOL = """
import os, sys, time
sys.path.insert(0, {tools!r})
import scene_kd.scannet.preprocess as pp

write = pp.write_scene_frames

def slow(source, frame_ids, out_dir, *args, **kwargs):
    # runs in the spawned workers too (they import this file as __mp_main__)
    open(os.path.join(os.environ["MARKERS"], str(os.getpid())), "w").close()
    time.sleep(30)
    return write(source, frame_ids, out_dir, *args, **kwargs)

pp.write_scene_frames = slow
if __name__ == "__main__":
    import preprocess_scannet
    from scene_kd.cli import run_tool
    sys.exit(run_tool(preprocess_scannet.main))
"""


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if entry.isdigit() and int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_leaves_no_worker_and_the_next_run_finishes(root, tmp_path, capsys):
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "slow_preprocess.py"
    script.write_text(textwrap.dedent(SLOW_TOOL.format(tools=str(REPO / "tools"))))
    run = subprocess.Popen(
        [sys.executable, str(script), "--scannet-root", str(root), "--out", str(out), *FAST, "--workers", "2"],
        cwd=REPO, env={**os.environ, "MARKERS": str(markers)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(markers)) < 2:
            if run.poll() is not None:
                pytest.fail(f"the run ended early: {run.stderr.read().decode()}")
            assert time.monotonic() < deadline, "the workers did not start within 60 s"
            time.sleep(0.1)
        workers = sorted(int(name) for name in os.listdir(markers))
        children = children_of(run.pid)
        assert set(workers) <= set(children)
        tmp_dirs = sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-"))
        assert len(tmp_dirs) == 2
        # A second run meanwhile is refused and deletes nothing of the first.
        code, _, err = tool(capsys, root, out)
        assert code == 1 and f"another preprocessing run (pid {run.pid} on host" in one_error_line(err)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-")) == tmp_dirs
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 5
        while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if pid_alive(pid)], "a child of the killed run is still alive"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # The next run takes over the dead run's lock, removes its temporary directories and finishes.
    code, printed, _ = tool(capsys, root, out)
    assert code == 0 and "scenes: 3 done, 0 skipped, 0 failed" in printed
    assert sorted(p.name for p in out.iterdir()) == [*SCENES, "splits"]


def test_other_bad_inputs_name_the_file(tmp_path, capsys):
    txt = tmp_path / "scene0000_00.txt"
    txt.write_text("axisAlignment = " + " ".join(["1"] * 15 + ["nan"]) + "\n")
    with pytest.raises(
        ScanNetFormatError, match=r"scene0000_00\.txt: axisAlignment holds non-finite numbers"
    ):
        read_axis_alignment(txt)
    tsv = tmp_path / LABEL_TSV_NAME
    tsv.write_text("id\traw_category\tnyu40id\n1\tchair\t5\n2\tchair\t6\n")
    with pytest.raises(
        ScanNetFormatError, match=r"tsv: line 3: raw category 'chair' is listed again with id 2"
    ):
        read_label_tsv(tsv)
    ply = tmp_path / "m.ply"
    ply.write_bytes(b"ply\nformat binary_little_endian 1.0\ncomment \xff\nelement vertex 0\nend_header\n")
    with pytest.raises(ScanNetFormatError, match=r"m\.ply: malformed or truncated PLY: UnicodeDecodeError"):
        read_mesh_ply(ply)
    (tmp_path / "empty" / "scans").mkdir(parents=True)
    code, _, err = tool(capsys, tmp_path / "empty", tmp_path / "out")
    assert code == 1 and f"error: {tmp_path / 'empty'}: no scans selected" in one_error_line(err)
