"""ScanNet's over-segmentation (`*.segs.json`), instance aggregation (`*.aggregation.json`) and
scene metadata (`sceneXXXX_XX.txt`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scene_kd.atomic import write_text_atomic
from scene_kd.scannet.errors import ScanNetFormatError, read_utf8_text

# The parameters ScanNet's segmentator records in every segs.json (kThresh 0.01 in the file name).
DEFAULT_SEGS_PARAMS = {
    "kThresh": "0.01",
    "segMinVerts": "20",
    "minPoints": "750",
    "maxPoints": "5000",
    "thinThresh": "0.05",
    "flatThresh": "0.001",
    "minLength": "0.02",
    "maxLength": "1",
}


def _load_json(path: Path, what: str) -> dict:
    text = read_utf8_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScanNetFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ScanNetFormatError(f"{path}: expected a JSON object at the top level")
    return data


def _is_int(value: object) -> bool:
    """A JSON integer (not a bool, a float or a string of digits)."""
    return isinstance(value, int) and not isinstance(value, bool)


def read_segs_json(path: str | os.PathLike) -> np.ndarray:
    """The per-vertex segment ids (`segIndices`, not contiguous) as int64 [N].

    `segIndices` must be a flat list of JSON integers: strings, floats or nested lists are a
    ScanNetFormatError (numpy would otherwise convert or flatten them silently)."""
    path = Path(path)
    data = _load_json(path, "segments file (JSON)")
    if "segIndices" not in data:
        raise ScanNetFormatError(f"{path}: no 'segIndices' key")
    values = data["segIndices"]
    if not isinstance(values, list):
        raise ScanNetFormatError(f"{path}: 'segIndices' is a {type(values).__name__}, not a list of integers")
    bad = next((k for k, v in enumerate(values) if not _is_int(v)), None)
    if bad is not None:
        raise ScanNetFormatError(
            f"{path}: 'segIndices' is not a list of integers (entry {bad} is {values[bad]!r})"
        )
    try:
        return np.array(values, dtype=np.int64).reshape(-1)
    except OverflowError as e:
        raise ScanNetFormatError(f"{path}: 'segIndices' holds an integer outside int64") from e


def write_segs_json(
    path: str | os.PathLike, scene_id: str, seg_indices: np.ndarray, params: dict[str, str] | None = None
) -> None:
    """Write `{"params", "sceneId", "segIndices"}`; `sceneId` is written as given."""
    data = {
        "params": dict(DEFAULT_SEGS_PARAMS if params is None else params),
        "sceneId": scene_id,
        "segIndices": np.asarray(seg_indices, dtype=np.int64).tolist(),
    }
    write_text_atomic(path, json.dumps(data))


@dataclass
class SegGroup:
    """One annotated object: the segments it covers and its raw category label."""

    id: int
    object_id: int
    segments: list[int]
    label: str


def _parse_seg_group(group: object, where: str) -> SegGroup:
    """One entry of `segGroups`: an object with integer `id` (and `objectId`), a list of integer
    `segments` and a string `label`; anything else is a ScanNetFormatError naming the entry."""
    if not isinstance(group, dict):
        raise ScanNetFormatError(f"{where} is malformed (a {type(group).__name__}, expected an object)")
    missing = [key for key in ("id", "segments", "label") if key not in group]
    if missing:
        raise ScanNetFormatError(f"{where} is malformed (KeyError: no {', '.join(map(repr, missing))})")
    object_id = group.get("objectId", group["id"])
    segments = group["segments"]
    problems = [
        f"{key} is {value!r}, not an integer"
        for key, value in (("id", group["id"]), ("objectId", object_id))
        if not _is_int(value)
    ]
    if not isinstance(segments, list) or not all(_is_int(s) for s in segments):
        problems.append(f"segments is {segments!r:.80}, not a list of integers")
    if not isinstance(group["label"], str):
        problems.append(f"label is {group['label']!r}, not a string")
    if problems:
        raise ScanNetFormatError(f"{where} is malformed ({'; '.join(problems)})")
    return SegGroup(id=group["id"], object_id=object_id, segments=list(segments), label=group["label"])


def read_aggregation_json(path: str | os.PathLike) -> list[SegGroup]:
    """The `segGroups` of an aggregation file, in file order.

    `segGroups` must be a list of objects, each with an integer `id` (and `objectId`, default
    `id`), a list of integer `segments` and a string `label`; anything else is a
    ScanNetFormatError naming the file and the entry."""
    path = Path(path)
    data = _load_json(path, "aggregation file (JSON)")
    if "segGroups" not in data:
        raise ScanNetFormatError(f"{path}: no 'segGroups' key")
    if not isinstance(data["segGroups"], list):
        raise ScanNetFormatError(
            f"{path}: 'segGroups' is a {type(data['segGroups']).__name__}, expected a list of objects"
        )
    return [_parse_seg_group(group, f"{path}: segGroups[{k}]") for k, group in enumerate(data["segGroups"])]


def write_aggregation_json(
    path: str | os.PathLike,
    scene_id: str,
    groups: Sequence[SegGroup],
    segments_file: str | None = None,
    app_id: str = "Aggregator.v2",
) -> None:
    """Write `{"sceneId", "appId", "segGroups", "segmentsFile"}`.

    `sceneId` is written as `scannet.<scene_id>` and `segmentsFile` defaults to
    `scannet.<scene_id>_vh_clean_2.0.010000.segs.json`, following ScanNet's files (unverified).
    """
    data = {
        "sceneId": f"scannet.{scene_id}",
        "appId": app_id,
        "segGroups": [
            {"id": g.id, "objectId": g.object_id, "segments": [int(s) for s in g.segments], "label": g.label}
            for g in groups
        ],
        "segmentsFile": segments_file or f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json",
    }
    write_text_atomic(path, json.dumps(data))


def group_of_vertices(seg_indices: np.ndarray, groups: Sequence[SegGroup]) -> np.ndarray:
    """Per-vertex int64 [N]: the position in `groups` of the group holding the vertex's segment,
    -1 for vertices in no group; where groups share a segment the later group wins."""
    group_of_segment: dict[int, int] = {}
    for k, group in enumerate(groups):
        for segment in group.segments:
            group_of_segment[int(segment)] = k
    result = np.full(len(seg_indices), -1, dtype=np.int64)
    if not group_of_segment:
        return result
    segments = np.fromiter(group_of_segment.keys(), dtype=np.int64, count=len(group_of_segment))
    owners = np.fromiter(group_of_segment.values(), dtype=np.int64, count=len(group_of_segment))
    order = np.argsort(segments)
    segments, owners = segments[order], owners[order]
    seg_indices = np.asarray(seg_indices, dtype=np.int64)
    pos = np.clip(np.searchsorted(segments, seg_indices), 0, len(segments) - 1)
    found = segments[pos] == seg_indices
    result[found] = owners[pos[found]]
    return result


def instance_ids_from_groups(seg_indices: np.ndarray, groups: Sequence[SegGroup]) -> np.ndarray:
    """Per-vertex instance ids int64 [N]: the position of the vertex's group in `groups` (so ids are
    contiguous from 0 in file order), -1 for vertices in no group; where groups overlap the later
    group wins."""
    return group_of_vertices(seg_indices, groups)


def labels_from_groups(
    seg_indices: np.ndarray, groups: Sequence[SegGroup], label_of: dict[str, int]
) -> np.ndarray:
    """Per-vertex class int64 [N] from each group's raw label through `label_of` (raw label ->
    class, -1 for labels not in it); -1 for vertices in no group; the later group wins."""
    group = group_of_vertices(seg_indices, groups)
    label_of_group = np.array([label_of.get(g.label, -1) for g in groups] + [-1], dtype=np.int64)
    return label_of_group[group]  # group -1 picks the trailing -1


def read_scene_txt(path: str | os.PathLike) -> dict[str, str]:
    """The `key = value` lines of a `sceneXXXX_XX.txt` (LF or CRLF), values stripped."""
    path = Path(path)
    meta = {}
    for line in read_utf8_text(path, "scene .txt of key = value lines").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip()] = value.strip()
    return meta


def find_axis_alignment(path: str | os.PathLike) -> np.ndarray | None:
    """The `axisAlignment` of a scene `.txt` as float64 [4, 4] (applied as p' = M @ [p; 1]), or None
    when the file has no such key (ScanNet's test scans). A missing file is an error, and so is a
    value that is not 16 finite numbers."""
    path = Path(path)
    meta = read_scene_txt(path)
    if "axisAlignment" not in meta:
        return None
    try:
        values = [float(v) for v in meta["axisAlignment"].split()]
    except ValueError as e:
        raise ScanNetFormatError(f"{path}: axisAlignment is not a list of numbers ({e})") from e
    if len(values) != 16:
        raise ScanNetFormatError(f"{path}: axisAlignment has {len(values)} numbers, expected 16")
    matrix = np.array(values, dtype=np.float64).reshape(4, 4)
    if not np.isfinite(matrix).all():
        raise ScanNetFormatError(f"{path}: axisAlignment holds non-finite numbers (nan or inf)")
    return matrix


def read_axis_alignment(path: str | os.PathLike) -> np.ndarray:
    """`find_axis_alignment`, with the identity when the file has no `axisAlignment` key.
    Preprocessing uses `find_axis_alignment` so that it can record which it was."""
    matrix = find_axis_alignment(path)
    return np.eye(4) if matrix is None else matrix


def write_scene_txt(
    path: str | os.PathLike, axis_alignment: np.ndarray | None = None, extra: dict[str, str] | None = None
) -> None:
    """Write a scene `.txt`: `axisAlignment = <16 numbers>` (omitted when None) and then the
    `extra` keys, one `key = value` line each. Numbers are written with 17 significant digits so
    they read back exactly."""
    lines = []
    if axis_alignment is not None:
        matrix = np.asarray(axis_alignment, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"{path}: axis_alignment must be [4, 4], got {list(matrix.shape)}")
        lines.append("axisAlignment = " + " ".join(f"{v:.17g}" for v in matrix.ravel()))
    for key, value in (extra or {}).items():
        lines.append(f"{key} = {value}")
    write_text_atomic(path, "\n".join(lines) + "\n")
