"""Turn raw ScanNet scans into processed scene directories (see docs/data_format.md).

One function per step: `select_frame_ids` (every k-th frame with a valid pose),
`write_scene_points` (the Pointcept-named .npy files), `write_scene_frames` (resized color,
millimetre depth, poses, adjusted intrinsics), `preprocess_scene` (one scan, written to a
temporary directory and renamed into place when complete) and `preprocess_dataset` (many scans
in parallel worker processes, resumable, one failing scan never stopping the others). Each
scene's manifest records the settings it was made with (`manifest.py`); a run holds the output
directory's lock (`out_lock.py`) and its workers die with it (`worker_lifetime.py`). With
`pointcept_layout`, the run also links the scenes into Pointcept's `<out>/{train,val,test}/` layout
(`pointcept_layout.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scene_kd import __version__
from scene_kd.atomic import AlreadyWritten, atomic_directory, write_bytes_atomic
from scene_kd.scannet.annotations import find_axis_alignment
from scene_kd.scannet.codecs import PNG16_COMPRESSIONS, encode_color, encode_png16
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.exported import INTRINSIC_FILES, depth_to_millimetres, write_matrix_txt
from scene_kd.scannet.frame_types import FrameSource
from scene_kd.scannet.frames import open_frame_source
from scene_kd.scannet.labels import raw_to_seg200, read_label_tsv
from scene_kd.scannet.layout import LABEL_TSV_NAME, ScenePaths, list_scenes, scene_paths, split_file_name
from scene_kd.scannet.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    REFUSAL_ADVICE,
    check_scene_settings,
    manifest_json,
    read_scene_manifest,
    scene_settings,
    setting_differences,
)
from scene_kd.scannet.out_lock import OutputLock, pid_alive
from scene_kd.scannet.pointcept_layout import check_pointcept_layout, write_pointcept_layout
from scene_kd.scannet.points import ScenePoints, load_scene_points
from scene_kd.scannet.sens import SensFrameSource
from scene_kd.scannet.splits import read_split
from scene_kd.scannet.worker_lifetime import die_with_parent

DEFAULT_FRAME_SKIP = 25
DEFAULT_IMAGE_SIZE = (320, 240)
DEFAULT_JPEG_QUALITY = 95
DEFAULT_DEPTH_PNG = "none"
TMP_PREFIX = ".tmp-"
NO_AXIS_ALIGNMENT_NOTE = (
    "no axisAlignment in the scene .txt (ScanNet's test scans have none): the identity was used "
    "and recorded as has_axis_alignment: false in manifest.json"
)


@dataclass
class SceneSummary:
    """The outcome for one scan: status "done", "skipped" (already processed with the same
    settings) or "failed" (with the reason: the exception type and message, which name the
    offending file). notes: what was done that the user should know (e.g. a missing
    axisAlignment), reported by `format_summary`."""

    scene_id: str
    status: str
    reason: str | None = None
    num_points: int = 0
    num_frames: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class DatasetSummary:
    """The outcomes of a `preprocess_dataset` run, sorted by scene id, run-level warnings and notes
    (what was done besides the scenes, e.g. the Pointcept layout)."""

    scenes: list[SceneSummary] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        """How many scans ended with `status`."""
        return sum(s.status == status for s in self.scenes)

    @property
    def failed(self) -> list[SceneSummary]:
        """The failed scans."""
        return [s for s in self.scenes if s.status == "failed"]


def select_frame_ids(source: FrameSource, frame_skip: int) -> tuple[list[int], int]:
    """The frames to keep: ids that are multiples of `frame_skip` and have a finite pose.

    Returns (kept ids, number of candidate frames dropped for an invalid pose). Reads poses only.
    """
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
    kept, invalid = [], 0
    for frame_id in source.frame_ids:
        if frame_id % frame_skip:
            continue
        if np.isfinite(source.read_pose(frame_id)).all():
            kept.append(frame_id)
        else:
            invalid += 1
    return kept, invalid


def scale_intrinsic(
    intrinsic: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]
) -> np.ndarray:
    """The [4, 4] intrinsic matrix of an image resized from `from_size` to `to_size` (W, H).

    Pixel centres sit at integer coordinates (ScanNet's cx ~ (W - 1) / 2), so the principal point
    maps as c' = (c + 0.5) * s - 0.5 while focal lengths and skew scale by s.
    """
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    k = np.array(intrinsic, dtype=np.float64)
    k[0, 0:2] *= sx
    k[1, 1] *= sy
    k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return k


def write_scene_points(points: ScenePoints, axis_alignment: np.ndarray, out_dir: Path) -> None:
    """Write coord, color, normal, segment20, segment200, instance (.npy) and axis_align.npy."""
    np.save(out_dir / "coord.npy", points.coord.astype(np.float32))
    np.save(out_dir / "color.npy", points.color.astype(np.uint8))
    np.save(out_dir / "normal.npy", points.normal.astype(np.float32))
    np.save(out_dir / "segment20.npy", points.segment20.astype(np.int64))
    np.save(out_dir / "segment200.npy", points.segment200.astype(np.int64))
    np.save(out_dir / "instance.npy", points.instance.astype(np.int64))
    np.save(out_dir / "axis_align.npy", np.asarray(axis_alignment, dtype=np.float64))


def write_scene_frames(
    source: FrameSource,
    frame_ids: list[int],
    out_dir: Path,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    depth_png: str = DEFAULT_DEPTH_PNG,
) -> None:
    """Write the kept frames in ScanNet's exported layout at the stored resolutions.

    color/{i}.jpg: RGB resized to `image_size` (a JPEG source is decoded at reduced DCT scale and
    then resized); depth/{i}.png: 16-bit millimetres at the depth resolution; pose/{i}.txt:
    camera_to_world; intrinsic/intrinsic_color.txt adjusted to `image_size`, intrinsic_depth.txt
    and the extrinsics as in the source. depth_png: the depth PNGs' compression, "rle", "deflate"
    or "none" (see `encode_png16`).
    """
    for sub in ("color", "depth", "pose", "intrinsic"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    matrices = {
        "intrinsic_color": scale_intrinsic(source.intrinsic_color, source.color_size, image_size),
        "extrinsic_color": source.extrinsic_color,
        "intrinsic_depth": source.intrinsic_depth,
        "extrinsic_depth": source.extrinsic_depth,
    }
    for name in INTRINSIC_FILES:
        write_matrix_txt(out_dir / "intrinsic" / f"{name}.txt", np.asarray(matrices[name], dtype=np.float64))
    for frame_id in frame_ids:
        frame = source.read(frame_id, color_size=image_size)
        (out_dir / "color" / f"{frame_id}.jpg").write_bytes(encode_color(frame.color, "jpeg", jpeg_quality))
        depth = depth_to_millimetres(frame.depth, source.depth_shift)
        (out_dir / "depth" / f"{frame_id}.png").write_bytes(encode_png16(depth, depth_png))
        write_matrix_txt(out_dir / "pose" / f"{frame_id}.txt", frame.camera_to_world)


def _remove_stale_tmp(out_root: Path, scene_id: str) -> None:
    """Delete the temporary directories of this scene left by interrupted runs: those whose owner
    pid (the name's suffix) is dead. Another live run's directory is never touched."""
    prefix = f"{TMP_PREFIX}{scene_id}-"
    if out_root.is_dir():
        for entry in os.scandir(out_root):
            if not (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)):
                continue
            owner = entry.name[len(prefix) :]
            if owner.isdigit() and not pid_alive(int(owner)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _skipped(scene_id: str, manifest: dict) -> SceneSummary:
    notes = [NO_AXIS_ALIGNMENT_NOTE] if manifest.get("has_axis_alignment") is False else []
    return SceneSummary(scene_id, "skipped", notes=notes)


def _scene_manifest(
    scene_id: str,
    paths: ScenePaths,
    points: ScenePoints,
    source: FrameSource,
    frame_ids: list[int],
    invalid: int,
    settings: dict,
    has_axis_alignment: bool,
) -> dict:
    """The manifest of one processed scene (docs/data_format.md); no timestamps, so a rerun with the
    same settings writes the same bytes."""
    return {
        "format_version": FORMAT_VERSION,
        "scene_kd_version": __version__,
        "scene_id": scene_id,
        "source_format": "sens" if isinstance(source, SensFrameSource) else "exported",
        "is_test_scan": paths.is_test,
        "num_points": len(points.coord),
        "num_faces": points.num_faces,
        "has_labels": points.has_labels,
        "has_segment200": points.has_segment200,
        "has_instances": points.has_instances,
        "num_instances": int(points.instance.max(initial=-1)) + 1,
        "has_axis_alignment": has_axis_alignment,
        "num_source_frames": len(source.frame_ids),
        "frame_skip": settings["frame_skip"],
        "num_invalid_pose_dropped": invalid,
        "num_frames": len(frame_ids),
        "frame_ids": frame_ids,
        "color_size": settings["color_size"],
        "depth_size": list(source.depth_size),
        "source_color_size": list(source.color_size),
        "source_depth_shift": source.depth_shift,
        "depth_unit": "millimetre",
        "jpeg_quality": settings["jpeg_quality"],
        "depth_png": settings["depth_png"],
        "label_map_sha256": settings["label_map_sha256"],
    }


def preprocess_scene(
    scannet_root: str | os.PathLike,
    scene_id: str,
    out_root: str | os.PathLike,
    frame_skip: int = DEFAULT_FRAME_SKIP,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    raw_to_seg200: dict[str, int] | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    depth_png: str = DEFAULT_DEPTH_PNG,
) -> SceneSummary:
    """Process one scan into `<out_root>/<scene_id>/`; "skipped" when that directory exists and its
    manifest records the same settings, a ValueError naming the differences when it records others.

    Everything is written to `<out_root>/.tmp-<scene_id>-<pid>/` and renamed into place when
    complete, so the scene directory exists only when whole. Errors propagate (after removing
    the temporary directory): FileNotFoundError for a missing file, ScanNetFormatError for a
    malformed or inconsistent one (an empty mesh, non-finite vertices, ...), or for a scan with no
    valid frame to keep. A scan without axisAlignment gets the identity, with a note.
    """
    start = time.perf_counter()
    out_root = Path(out_root)
    final = out_root / scene_id
    settings = scene_settings(frame_skip, image_size, jpeg_quality, depth_png, raw_to_seg200)
    if final.exists():
        return _skipped(scene_id, check_scene_settings(final, settings))
    out_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out_root, scene_id)
    tmp_dir = out_root / f"{TMP_PREFIX}{scene_id}-{os.getpid()}"
    try:
        with atomic_directory(final, tmp=tmp_dir, replace=False) as tmp:
            paths = scene_paths(scannet_root, scene_id)
            if not paths.scene_dir.is_dir():
                raise FileNotFoundError(f"{paths.scene_dir}: scan directory not found")
            points = load_scene_points(paths, raw_to_seg200)
            axis_alignment = find_axis_alignment(paths.scene_txt)
            source = open_frame_source(paths.scene_dir, scene_id)
            try:
                frame_ids, invalid = select_frame_ids(source, frame_skip)
                if not frame_ids:
                    where = getattr(source, "path", None) or getattr(source, "root", paths.scene_dir)
                    raise ScanNetFormatError(
                        f"{where}: no frame to keep: {invalid} frame(s) at multiples of {frame_skip} "
                        f"among {len(source.frame_ids)}, none with a valid pose"
                    )
                write_scene_points(points, np.eye(4) if axis_alignment is None else axis_alignment, tmp)
                write_scene_frames(source, frame_ids, tmp, image_size, jpeg_quality, depth_png)
                manifest = _scene_manifest(
                    scene_id, paths, points, source, frame_ids, invalid, settings, axis_alignment is not None
                )
            finally:
                source.close()
            write_bytes_atomic(tmp / MANIFEST_NAME, manifest_json(manifest).encode("utf-8"))
    except AlreadyWritten:  # another process finished this scan first
        return _skipped(scene_id, check_scene_settings(final, settings))
    return SceneSummary(
        scene_id, "done", num_points=len(points.coord), num_frames=len(frame_ids),
        seconds=time.perf_counter() - start, notes=[] if axis_alignment is not None else [NO_AXIS_ALIGNMENT_NOTE],
    )  # fmt: skip


@dataclass(frozen=True)
class _SceneJob:
    scannet_root: str
    scene_id: str
    out_root: str
    options: dict  # the keyword arguments of preprocess_scene


def _run_job(job: _SceneJob) -> SceneSummary:
    """Run one scan; any Exception becomes a "failed" summary so the other scans go on."""
    try:
        return preprocess_scene(job.scannet_root, job.scene_id, job.out_root, **job.options)
    except Exception as e:
        return SceneSummary(job.scene_id, "failed", reason=f"{type(e).__name__}: {e}")


def select_scenes(
    scannet_root: str | os.PathLike,
    scene_ids: list[str] | None = None,
    split: str | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[str]:
    """The scans to process, sorted: `scene_ids` if given, else every scan under the root;
    restricted to `split` ("train", "val", "test" for `<root>/scannetv2_<split>.txt`, or a split
    file's path); then every n-th of them for shard (i, n), starting at i."""
    root = Path(scannet_root)
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    selected = sorted(set(scene_ids)) if scene_ids else list_scenes(root)
    if split is not None:
        split_path = Path(split) if Path(split).is_file() else root / split_file_name(split)
        in_split = set(read_split(split_path))
        selected = sorted(set(selected) & in_split) if scene_ids else sorted(in_split)
    return selected[index::count]


def preprocess_dataset(
    scannet_root: str | os.PathLike,
    out_root: str | os.PathLike,
    *,
    scene_ids: list[str] | None = None,
    split: str | None = None,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    frame_skip: int = DEFAULT_FRAME_SKIP,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    label_tsv: str | os.PathLike | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    depth_png: str = DEFAULT_DEPTH_PNG,
    pointcept_layout: bool = False,
    progress: bool = True,
) -> DatasetSummary:
    """Process the selected scans (see `select_scenes`) into `<out_root>/<scene_id>/`.

    Scans already processed with the same settings are skipped; a scan processed with other
    settings (frame skip, image size, JPEG quality, depth PNG, label map) makes the whole run a
    ValueError naming them, before any work. Each other scan runs in one of `workers` processes
    (in this process when workers == 1; a worker dies with this process) and fails alone, with its
    reason, on bad input. The run holds `out_root`'s lock (`OutputLock`): a second run on the same
    output is an OSError. The label tsv defaults to `<scannet_root>/scannetv2-labels.combined.tsv`;
    without one, segment200 is all -1 (a warning says so). The split files found in the root are
    copied to `<out_root>/splits/`. No scan selected at all is a ValueError. pointcept_layout: also
    link the selected processed scenes into `<out_root>/{train,val,test}/` by those split files
    (`write_pointcept_layout`; refused before any work when that would replace a path it did not make).
    """
    if frame_skip < 1 or workers < 1 or min(image_size) < 1 or not 1 <= jpeg_quality <= 100:
        raise ValueError(
            f"need frame_skip >= 1, workers >= 1, a positive image_size and jpeg_quality in 1..100; got "
            f"{frame_skip}, {workers}, {image_size}, {jpeg_quality}"
        )
    if depth_png not in PNG16_COMPRESSIONS:
        raise ValueError(f"depth_png must be one of {PNG16_COMPRESSIONS}, got {depth_png!r}")
    root, out_root = Path(scannet_root), Path(out_root)
    summary = DatasetSummary()
    tsv = Path(label_tsv) if label_tsv is not None else root / LABEL_TSV_NAME
    seg200_map = None
    if tsv.exists():
        seg200_map = raw_to_seg200(read_label_tsv(tsv))
    elif label_tsv is not None:
        raise FileNotFoundError(f"{tsv}: label tsv not found")
    else:
        summary.warnings.append(f"{tsv} not found: segment200.npy is all -1")
    selected = select_scenes(root, scene_ids, split, shard)
    if not selected:
        everything = select_scenes(root, scene_ids, split)
        if not everything:
            raise ValueError(f"{root}: no scans selected (scenes {scene_ids}, split {split}): nothing to do")
        summary.warnings.append(f"shard {shard[0]}/{shard[1]} of {len(everything)} scans is empty")
    options = {
        "frame_skip": frame_skip,
        "image_size": tuple(image_size),
        "raw_to_seg200": seg200_map,
        "jpeg_quality": jpeg_quality,
        "depth_png": depth_png,
    }
    out_root.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_root, shard):
        _copy_split_files(root, out_root / "splits")
        settings = scene_settings(frame_skip, image_size, jpeg_quality, depth_png, seg200_map)
        done = {s for s in selected if (out_root / s).exists()}
        summary.scenes += _check_processed_scenes(out_root, sorted(done), settings)
        if pointcept_layout:
            check_pointcept_layout(out_root, selected)
        jobs = [_SceneJob(str(root), s, str(out_root), options) for s in selected if s not in done]
        summary.scenes += _run_jobs(jobs, workers, progress)
        if pointcept_layout:
            summary.notes += write_pointcept_layout(out_root, selected)
    summary.scenes.sort(key=lambda s: s.scene_id)
    return summary


def _check_processed_scenes(out_root: Path, scene_ids: list[str], settings: dict) -> list[SceneSummary]:
    """A "skipped" summary for each processed scene made with `settings`; a ValueError listing every
    scene made with other settings (or without a readable manifest) otherwise."""
    skipped, problems = [], []
    for scene_id in scene_ids:
        try:
            manifest = read_scene_manifest(out_root / scene_id)
        except ScanNetFormatError as e:
            problems.append(str(e))
            continue
        differences = setting_differences(manifest, settings)
        if differences:
            problems.append(f"{scene_id}: {'; '.join(differences)}")
        else:
            skipped.append(_skipped(scene_id, manifest))
    if problems:  # one line, as every tool error: the first few scenes, then how many more
        listed = " | ".join(problems[:5]) + (
            f" | ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise ValueError(
            f"{out_root}: {len(problems)} processed scene(s) were not made with this run's settings "
            f"(see <scene>/manifest.json): {listed}. {REFUSAL_ADVICE}"
        )
    return skipped


def _run_jobs(jobs: list[_SceneJob], workers: int, progress: bool) -> list[SceneSummary]:
    results = []
    with tqdm(total=len(jobs), desc="scenes", unit="scene", disable=not progress, dynamic_ncols=True) as bar:

        def record(result: SceneSummary) -> None:
            results.append(result)
            bar.update(1)
            bar.set_postfix(failed=sum(r.status == "failed" for r in results), refresh=False)

        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                record(_run_job(job))
            return results
        # spawn: workers start clean, never inheriting threads (torch, tqdm) from this process.
        # die_with_parent: a worker exits when this process dies, even by SIGKILL.
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"),
            initializer=die_with_parent, initargs=(os.getpid(),),
        )  # fmt: skip
        with pool:
            futures = {pool.submit(_run_job, job): job for job in jobs}
            try:
                for future in as_completed(futures):
                    try:
                        record(future.result())
                    except BrokenProcessPool:
                        reason = (
                            "worker process died (killed or crashed) while this scan was running or queued"
                        )
                        record(SceneSummary(futures[future].scene_id, "failed", reason=reason))
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)  # stop now; unfinished scans leave no output
                raise
    return results


def _copy_split_files(root: Path, splits_dir: Path) -> None:
    """Copy `scannetv2_<split>.txt` files of the root to `<splits_dir>/<split>.txt`."""
    for split in ("train", "val", "test"):
        source = root / split_file_name(split)
        if source.is_file():
            splits_dir.mkdir(parents=True, exist_ok=True)
            target = splits_dir / f"{split}.txt"
            data = source.read_bytes()
            if not target.exists() or target.read_bytes() != data:
                write_bytes_atomic(target, data)


def format_summary(summary: DatasetSummary) -> str:
    """A human-readable report: warnings, counts, one line per note (with the scans it concerns)
    and one line per failed scan with its reason."""
    lines = [f"warning: {w}" for w in summary.warnings]
    lines.append(
        f"scenes: {summary.count('done')} done, {summary.count('skipped')} skipped, {summary.count('failed')} failed"
    )
    lines += [f"note: {note}" for note in summary.notes]
    scenes_of_note: dict[str, list[str]] = defaultdict(list)
    for scene in summary.scenes:
        for note in scene.notes:
            scenes_of_note[note].append(scene.scene_id)
    for note, scene_ids in scenes_of_note.items():
        listed = ", ".join(scene_ids[:8]) + (f", ... ({len(scene_ids)} in all)" if len(scene_ids) > 8 else "")
        lines.append(f"note: {len(scene_ids)} scene(s): {note}: {listed}")
    lines += [f"FAILED {s.scene_id}: {s.reason}" for s in summary.failed]
    return "\n".join(lines)


def summary_to_json(summary: DatasetSummary) -> str:
    """The summary as JSON (for logs of cluster array jobs)."""
    return json.dumps({"scenes": [asdict(s) for s in summary.scenes], "warnings": summary.warnings,
                       "notes": summary.notes}, indent=1)
