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
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from scene_kd.atomic import write_text_atomic
from scene_kd.data.scenes import load_scene, resolve_scene_ids
from scene_kd.scannet.splits import write_split

SCENE_PERCENTS = (1, 5, 10, 20)
POINT_COUNTS = (20, 50, 100, 200)


def _percent_name(percent: float) -> str:
    return f"{int(percent)}" if float(percent).is_integer() else f"{percent:g}"


def scene_subset_name(percent: float) -> str:
    """`scenes_{pct}pct.txt` (1 -> scenes_1pct.txt, 0.5 -> scenes_0.5pct.txt)."""
    return f"scenes_{_percent_name(percent)}pct.txt"


def point_subset_name(count: int) -> str:
    """`points_{n}.json`."""
    return f"points_{int(count)}.json"


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


def make_data_efficient_subsets(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    split: str | os.PathLike | Sequence[str] = "train",
    scene_percents: Iterable[float] = SCENE_PERCENTS,
    point_counts: Iterable[int] = POINT_COUNTS,
    seed: int = 0,
) -> dict[str, Path]:
    """Draw both kinds of subset of the processed scenes of `split` under `root` and write them
    under `out` (default `<root>/subsets/`). Returns {file name: path}, subsets.json included.

    Limited annotations read every scene's `segment20.npy`; a missing or ill-shaped one is an error
    naming the file.
    """
    root = Path(root)
    out = root / "subsets" if out is None else Path(out)
    scene_ids = resolve_scene_ids(root, split)
    scene_percents, point_counts = list(scene_percents), [int(n) for n in point_counts]
    labels = {s: load_scene(root, s, ("segment20",))["segment20"] for s in (scene_ids if point_counts else ())}
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for percent, ids in draw_scene_subsets(scene_ids, scene_percents, seed).items():
        written[scene_subset_name(percent)] = out / scene_subset_name(percent)
        write_split(out / scene_subset_name(percent), ids)
    for count, points in draw_point_subsets(labels, point_counts, seed).items():
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
    return written


__all__ = [
    "POINT_COUNTS",
    "SCENE_PERCENTS",
    "draw_point_subsets",
    "draw_scene_subsets",
    "labelled_point_order",
    "make_data_efficient_subsets",
    "point_subset_name",
    "scene_subset_name",
    "scene_subset_size",
    "write_point_subset",
]
