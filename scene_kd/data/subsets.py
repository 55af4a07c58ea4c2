"""Data-efficient benchmark subsets: limited scene reconstructions (a percentage of the training
scenes) and limited annotations (a number of labelled points per scene).

Both are nested by construction: one random permutation is drawn (of the scenes; of each scene's
labelled points) and every subset is a prefix of it, so the 5 % scene list contains the 1 % list
and the 50 points of a scene contain its 20. The permutation depends only on the seed (and, for
points, on the scene id), never on which sizes are asked for or on the other scenes listed.

Files (written atomically): `scenes_{pct}pct.txt`, one scene id a line (sorted);
`points_{n}.json`, `{scene_id: [point indices, sorted]}` (indices into the scene's per-point
arrays, all with a valid `segment20` label); `subsets.json`, the seed, the split and the sizes (not `manifest.json`,
which would make `subsets/` look like a processed scene). `scene_kd.data.scenes` reads them back
(`read_scene_subset`, `read_point_subset`).

The same draw can also be written in Pointcept's own files (`write_pointcept_tasks`), under a
`tasks/` directory laid out as ScanNet's data-efficient download: `scenes/{pct}.txt` (the `lr_file`
of Pointcept's ScanNetDataset, read with `np.loadtxt(lr_file, dtype=str)`) and `points/points{n}`
(the `la_file`, read with `torch.load`: a dict scene id -> int64 tensor of labelled point indices),
so both pipelines train on the same scenes and the same labelled points.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from scene_kd.atomic import write_bytes_atomic, write_text_atomic
from scene_kd.data.scenes import load_scene, resolve_scene_ids
from scene_kd.scannet.splits import write_split

SCENE_PERCENTS = (1, 5, 10, 20)
POINT_COUNTS = (20, 50, 100, 200)
# What identifies the draw written into a Pointcept tasks directory (refusing to mix two draws there).
POINTCEPT_TASKS_RECORD = "scene_kd_subsets.json"


def _percent_name(percent: float) -> str:
    return f"{int(percent)}" if float(percent).is_integer() else f"{percent:g}"


def scene_subset_name(percent: float) -> str:
    """`scenes_{pct}pct.txt` (1 -> scenes_1pct.txt, 0.5 -> scenes_0.5pct.txt)."""
    return f"scenes_{_percent_name(percent)}pct.txt"


def point_subset_name(count: int) -> str:
    """`points_{n}.json`."""
    return f"points_{int(count)}.json"


def pointcept_scene_list_name(percent: float) -> str:
    """Pointcept's `lr_file` name under its tasks directory: `scenes/{pct}.txt` (1 -> scenes/1.txt)."""
    return f"scenes/{_percent_name(percent)}.txt"


def pointcept_point_file_name(count: int) -> str:
    """Pointcept's `la_file` name under its tasks directory: `points/points{n}` (no extension)."""
    return f"points/points{int(count)}"


def scene_subset_size(num_scenes: int, percent: float) -> int:
    """round(percent % of num_scenes), at least 1 (for a non-empty list), at most num_scenes."""
    if not 0 < percent <= 100:
        raise ValueError(f"a scene percentage must be in (0, 100], got {percent}")
    if num_scenes == 0:
        return 0
    return min(num_scenes, max(1, int(round(num_scenes * percent / 100.0))))


def draw_scene_subsets(
    scene_ids: Sequence[str], percents: Iterable[float] = SCENE_PERCENTS, seed: int = 0
) -> dict[float, list[str]]:
    """{percent: sorted scene ids}: prefixes of one permutation of the sorted `scene_ids` drawn
    with `default_rng(seed)`, of `scene_subset_size` scenes each (nested)."""
    ids = sorted(set(scene_ids))
    if len(ids) != len(scene_ids):
        raise ValueError("scene_ids contains duplicates")
    order = np.random.default_rng(seed).permutation(len(ids))
    return {p: sorted(ids[i] for i in order[: scene_subset_size(len(ids), p)]) for p in percents}


def _scene_seed(seed: int, scene_id: str) -> list[int]:
    digest = hashlib.sha256(scene_id.encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def labelled_point_order(labels: np.ndarray, seed: int, scene_id: str) -> np.ndarray:
    """int64 [M]: the indices of the points with a valid label (>= 0) in a random order drawn from
    (seed, scene id); the first n are the scene's n labelled points."""
    valid = np.flatnonzero(np.asarray(labels) >= 0)
    return np.random.default_rng(_scene_seed(seed, scene_id)).permutation(valid).astype(np.int64)


def draw_point_subsets(
    labels_by_scene: Mapping[str, np.ndarray], counts: Iterable[int] = POINT_COUNTS, seed: int = 0
) -> dict[int, dict[str, list[int]]]:
    """{n: {scene_id: sorted point indices}}: the first n of each scene's `labelled_point_order`
    (all of them when the scene has fewer valid points), so the sets are nested in n."""
    counts = [int(n) for n in counts]
    if any(n < 1 for n in counts):
        raise ValueError(f"point counts must be >= 1, got {counts}")
    orders = {s: labelled_point_order(labels, seed, s) for s, labels in sorted(labels_by_scene.items())}
    return {n: {s: sorted(order[:n].tolist()) for s, order in orders.items()} for n in counts}


def write_point_subset(path: str | os.PathLike, points: Mapping[str, Iterable[int]]) -> None:
    """Write `{scene_id: [indices]}` as JSON (one scene a line, sorted by id), atomically."""
    lines = [f"  {json.dumps(s)}: {json.dumps([int(i) for i in points[s]])}" for s in sorted(points)]
    write_text_atomic(path, "{\n" + ",\n".join(lines) + ("\n" if lines else "") + "}\n")


def write_pointcept_point_subset(path: str | os.PathLike, points: Mapping[str, Iterable[int]]) -> None:
    """`torch.save` of {scene_id: int64 tensor of point indices} (sorted by id), atomically. Tensors
    (not numpy arrays) so that `torch.load` reads the file with weights_only=True, the default since
    torch 2.6 and what Pointcept's `torch.load(la_file)` gets; numpy indexes with them as with arrays."""
    import torch

    buffer = io.BytesIO()  # saved to memory first: the archive is then named "archive", not after a temp file
    torch.save({s: torch.tensor([int(i) for i in points[s]], dtype=torch.int64) for s in sorted(points)}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _draw_record(seed: int, scene_ids: Sequence[str]) -> dict:
    ids = json.dumps(sorted(scene_ids))
    return {"seed": int(seed), "num_scenes": len(scene_ids),
            "scene_ids_sha256": hashlib.sha256(ids.encode("utf-8")).hexdigest()}


def _pointcept_names(percents: Iterable[float], counts: Iterable[int]) -> list[str]:
    return [pointcept_scene_list_name(p) for p in percents] + [pointcept_point_file_name(n) for n in counts]


def _check_pointcept_tasks(tasks: Path, names: list[str], record: dict) -> None:
    """Refuse to write into `tasks` files of another draw, or files not written by scene_kd (e.g.
    ScanNet's official data-efficient files): one ValueError naming the file."""
    record_path = tasks / POINTCEPT_TASKS_RECORD
    if record_path.is_file():
        try:
            recorded = json.loads(record_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{record_path}: unreadable ({e}); delete {tasks} to write new task files") from e
        differs = [f"{k} {recorded.get(k)!r} (this draw: {v!r})" for k, v in record.items() if recorded.get(k) != v]
        if differs:
            raise ValueError(f"{record_path}: the task files there come from another draw: {'; '.join(differs)}; "
                             "use another Pointcept tasks directory, or delete that one")
        return
    existing = [tasks / n for n in names if (tasks / n).exists()]
    if existing:
        raise ValueError(f"{existing[0]}: exists and was not written by scene_kd (no {record_path}); it may be "
                         "ScanNet's official data-efficient file: use another Pointcept tasks directory")


def write_pointcept_tasks(
    tasks: str | os.PathLike,
    scene_subsets: Mapping[float, Sequence[str]],
    point_subsets: Mapping[int, Mapping[str, Iterable[int]]],
    record: dict,
) -> dict[str, Path]:
    """Write one draw (`draw_scene_subsets`, `draw_point_subsets`) in Pointcept's files under `tasks`:
    `scenes/{pct}.txt` and `points/points{n}`, plus `scene_kd_subsets.json` (`record`: the seed and the
    split's scenes). Refused when `tasks` holds files of another draw or not written by scene_kd.
    Returns {"tasks/<name>": path}. A scene list of one scene is written with a warning: Pointcept's
    `np.loadtxt` reads it as a 0-d array, over which `get_data_list` cannot iterate."""
    tasks = Path(tasks)
    _check_pointcept_tasks(tasks, _pointcept_names(scene_subsets, point_subsets), record)
    (tasks / "scenes").mkdir(parents=True, exist_ok=True)
    (tasks / "points").mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for percent, ids in scene_subsets.items():
        path = tasks / pointcept_scene_list_name(percent)
        write_split(path, sorted(ids))
        written[f"tasks/{pointcept_scene_list_name(percent)}"] = path
        if len(ids) == 1:
            warnings.warn(f"{path}: one scene: Pointcept's np.loadtxt reads a one-line lr_file as a 0-d array, "
                          "which its ScanNetDataset cannot iterate; use a larger percentage", stacklevel=2)
    for count, points in point_subsets.items():
        path = tasks / pointcept_point_file_name(count)
        write_pointcept_point_subset(path, points)
        written[f"tasks/{pointcept_point_file_name(count)}"] = path
    write_text_atomic(tasks / POINTCEPT_TASKS_RECORD, json.dumps(record, indent=2) + "\n")
    written[f"tasks/{POINTCEPT_TASKS_RECORD}"] = tasks / POINTCEPT_TASKS_RECORD
    return written


def make_data_efficient_subsets(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    split: str | os.PathLike | Sequence[str] = "train",
    scene_percents: Iterable[float] = SCENE_PERCENTS,
    point_counts: Iterable[int] = POINT_COUNTS,
    seed: int = 0,
    pointcept_tasks: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Draw both kinds of subset of the processed scenes of `split` under `root` and write them
    under `out` (default `<root>/subsets/`). Returns {file name: path}, subsets.json included.

    pointcept_tasks: also write the same draw in Pointcept's files under this directory (usually
    `<root>/tasks`, see `write_pointcept_tasks`); needs split "train", the only split Pointcept's
    `lr_file` reads scenes from. Limited annotations read every scene's `segment20.npy`; a missing or
    ill-shaped one is an error naming the file.
    """
    root = Path(root)
    out = root / "subsets" if out is None else Path(out)
    if pointcept_tasks is not None and split != "train":
        raise ValueError(f"Pointcept task files need split 'train', got {split!r}: Pointcept's ScanNetDataset "
                         "reads the lr_file's scenes from <data_root>/train/")
    scene_ids = resolve_scene_ids(root, split)
    scene_percents, point_counts = list(scene_percents), [int(n) for n in point_counts]
    labels = {s: load_scene(root, s, ("segment20",))["segment20"] for s in (scene_ids if point_counts else ())}
    scene_subsets = draw_scene_subsets(scene_ids, scene_percents, seed)
    point_subsets = draw_point_subsets(labels, point_counts, seed)
    if pointcept_tasks is not None:  # checked before anything is written
        _check_pointcept_tasks(Path(pointcept_tasks), _pointcept_names(scene_subsets, point_subsets),
                               _draw_record(seed, scene_ids))
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for percent, ids in scene_subsets.items():
        written[scene_subset_name(percent)] = out / scene_subset_name(percent)
        write_split(out / scene_subset_name(percent), ids)
    for count, points in point_subsets.items():
        written[point_subset_name(count)] = out / point_subset_name(count)
        write_point_subset(out / point_subset_name(count), points)
    summary = {
        "seed": int(seed),
        "split": split if isinstance(split, str) else (os.fspath(split) if isinstance(split, os.PathLike) else None),
        "num_scenes": len(scene_ids),
        "scene_percents": {scene_subset_name(p): scene_subset_size(len(scene_ids), p) for p in scene_percents},
        "point_counts": {
            point_subset_name(n): {"per_scene": n, "scenes_with_fewer_valid_points": sorted(
                s for s, a in labels.items() if int((a >= 0).sum()) < n
            )}
            for n in point_counts
        },
    }
    written["subsets.json"] = out / "subsets.json"
    write_text_atomic(out / "subsets.json", json.dumps(summary, indent=2) + "\n")
    if pointcept_tasks is not None:
        written.update(write_pointcept_tasks(pointcept_tasks, scene_subsets, point_subsets,
                                             _draw_record(seed, scene_ids)))
    return written


__all__ = [
    "POINTCEPT_TASKS_RECORD",
    "POINT_COUNTS",
    "SCENE_PERCENTS",
    "draw_point_subsets",
    "draw_scene_subsets",
    "labelled_point_order",
    "make_data_efficient_subsets",
    "point_subset_name",
    "pointcept_point_file_name",
    "pointcept_scene_list_name",
    "scene_subset_name",
    "scene_subset_size",
    "write_point_subset",
    "write_pointcept_point_subset",
    "write_pointcept_tasks",
]
