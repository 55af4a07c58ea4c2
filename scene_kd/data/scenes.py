"""The one place that reads processed scene directories (docs/data_format.md): manifests, splits,
the data-efficient subset files, the per-scene arrays, and the input-feature spec. The datasets
(`pretrain_dataset`, `seg_dataset`, `det_dataset`) are siblings on top of it.

A processed root is flat: `<root>/<scene_id>/` per scene (with a `manifest.json` once complete),
`<root>/splits/{train,val,test}.txt` and, once drawn, `<root>/subsets/`. With `--pointcept-layout`
it also holds `<root>/{train,val,test}/<scene_id>` links for Pointcept; they have no manifest.json of
their own, so every reader here ignores them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scene_kd.scannet.splits import read_split

MANIFEST_NAME = "manifest.json"
SPLIT_NAMES = ("train", "val", "test")
# The stored arrays, as `tools/preprocess_scannet.py` writes them: field -> (integer dtype?, shape)
# with None for the per-point axis N (the point count, equal across the per-point fields).
SCENE_FIELDS: dict[str, tuple[bool, tuple[int | None, ...]]] = {
    "coord": (False, (None, 3)),
    "color": (True, (None, 3)),
    "normal": (False, (None, 3)),
    "segment20": (True, (None,)),
    "segment200": (True, (None,)),
    "instance": (True, (None,)),
    "axis_align": (False, (4, 4)),
}
# Channels of the student's input features per `data.in_features` value.
FEATURE_CHANNELS = {"rgb": 3, "rgb+normal": 6}
# How colours in [0, 255] become input features, per `data.color_norm` value (`normalize_colors`).
COLOR_NORMS = {
    "symmetric": "rgb / 127.5 - 1, in [-1, 1] (scene_kd's default, OpenScene)",
    "unit": "rgb / 255, in [0, 1] (Pointcept's NormalizeColor)",
}
DEFAULT_IN_FEATURES = "rgb"
DEFAULT_COLOR_NORM = "symmetric"


def read_manifest(scene_dir: str | os.PathLike) -> dict:
    """A processed scene's manifest.json; a malformed one is a ValueError naming the file."""
    path = Path(scene_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
        [int(i) for i in manifest["frame_ids"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid manifest ({type(e).__name__}: {e})") from e
    return manifest


def resolve_scene_ids(root: str | os.PathLike, split: str | os.PathLike | Sequence[str] | None) -> list[str]:
    """The scene ids a `split` names: None, every directory of `root` with a manifest.json (sorted;
    hidden temporary directories `.*` skipped); "train" / "val" / "test", `<root>/splits/<name>.txt`; a path, a split file; a
    sequence, those ids. A listed scene without a directory is a FileNotFoundError."""
    root = Path(root)
    if split is None:
        return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_NAME).is_file())
    if isinstance(split, (str, os.PathLike)):
        named = root / "splits" / f"{split}.txt"
        if str(split) in SPLIT_NAMES and named.is_file():
            ids = read_split(named)
        elif Path(split).is_file():
            ids = read_split(split)
        else:
            raise FileNotFoundError(
                f"split {str(split)!r}: neither {named} nor a split file at that path exists"
            )
    else:
        ids = [str(s) for s in split]
    missing = [s for s in ids if not (root / s / MANIFEST_NAME).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: {len(missing)} listed scene(s) not processed (no <scene>/manifest.json): "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return ids


def read_scene_subset(path: str | os.PathLike) -> list[str]:
    """`scenes_{pct}pct.txt` -> scene ids (a split file)."""
    return read_split(path)


def read_point_subset(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`points_{n}.json` -> {scene_id: int64 [K] point indices}; a malformed file is a ValueError
    naming it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError("expected an object {scene_id: [point indices]}")
        out = {}
        for scene_id, indices in raw.items():
            if not isinstance(indices, list) or not all(type(i) is int and i >= 0 for i in indices):
                raise TypeError(f"{scene_id}: expected a list of non-negative integers")
            out[str(scene_id)] = np.asarray(indices, dtype=np.int64)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a labelled-points file ({e})") from e
    return out


def select_scene_subset(
    scene_ids: list[str], scene_subset: str | os.PathLike | Sequence[str] | None, split
) -> list[str]:
    """The scenes of `scene_ids` listed in `scene_subset` (a scene-list file or a list; None: all),
    in split order; an id outside the split is a ValueError naming the file."""
    if scene_subset is None:
        return scene_ids
    from_file = isinstance(scene_subset, (str, os.PathLike))
    subset = read_scene_subset(scene_subset) if from_file else list(scene_subset)
    outside = sorted(set(subset) - set(scene_ids))
    if outside:
        raise ValueError(f"scene_subset {scene_subset if from_file else '(list)'}: {len(outside)} scene(s) not in "
                         f"split {split!r}: {', '.join(outside[:5])}")
    keep = set(subset)
    return [s for s in scene_ids if s in keep]


def _load_field(scene_dir: Path, field: str, num_points: int | None) -> np.ndarray:
    """`<scene_dir>/<field>.npy` checked against `SCENE_FIELDS[field]` (N = num_points if given)."""
    path = scene_dir / f"{field}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is the scene fully processed?)")
    try:
        array = np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from e
    integer, shape = SCENE_FIELDS[field]
    shape_ok = array.ndim == len(shape) and all(w is None or w == g for g, w in zip(array.shape, shape, strict=True))
    kind_ok = np.issubdtype(array.dtype, np.integer) if integer else np.issubdtype(array.dtype, np.number)
    length_ok = shape[0] is not None or num_points is None or len(array) == num_points
    if not (shape_ok and kind_ok and length_ok):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        expected = f"{'integer' if integer else 'numeric'} {want}"
        if shape[0] is None and num_points is not None:
            expected += f" with N = {num_points}"
        raise ValueError(f"{path}: expected {expected}, got {array.dtype} {list(array.shape)}")
    return array


def load_scene(
    root: str | os.PathLike, scene_id: str, fields: Sequence[str] = ("coord", "color")
) -> dict[str, np.ndarray]:
    """The arrays `fields` of `<root>/<scene_id>/` ({field: array as stored}), e.g. coord float32
    [N, 3], color uint8 [N, 3], normal float32 [N, 3], segment20 / segment200 / instance int64 [N],
    axis_align float64 [4, 4] (see `SCENE_FIELDS`). A missing file is a FileNotFoundError, an
    unreadable one or one of the wrong shape, kind or point count (N is the first per-point
    field's) a ValueError, each naming the file."""
    unknown = [f for f in fields if f not in SCENE_FIELDS]
    if unknown:
        raise ValueError(f"unknown scene field(s) {unknown}; known: {sorted(SCENE_FIELDS)}")
    scene_dir = Path(root) / scene_id
    arrays: dict[str, np.ndarray] = {}
    num_points = None
    for field in fields:
        arrays[field] = _load_field(scene_dir, field, num_points)
        if num_points is None and SCENE_FIELDS[field][1][0] is None:
            num_points = len(arrays[field])
    return arrays


def feature_channels(in_features: str) -> int:
    """Channels of the input features named `in_features` (`FEATURE_CHANNELS`): 3 for "rgb", 6 for
    "rgb+normal"; any other name is a ValueError naming `data.in_features`."""
    if in_features not in FEATURE_CHANNELS:
        raise ValueError(f"data.in_features must be one of {sorted(FEATURE_CHANNELS)}, got {in_features!r}")
    return FEATURE_CHANNELS[in_features]


def feature_fields(in_features: str) -> tuple[str, ...]:
    """The scene fields `input_features` needs for `in_features`: ("color",) or ("color", "normal")."""
    feature_channels(in_features)
    return ("color", "normal") if in_features == "rgb+normal" else ("color",)


def check_color_norm(color_norm: str) -> str:
    """`color_norm` when it is a key of `COLOR_NORMS`; any other value is a ValueError naming
    `data.color_norm`."""
    if color_norm not in COLOR_NORMS:
        raise ValueError(f"data.color_norm must be one of {sorted(COLOR_NORMS)}, got {color_norm!r}")
    return color_norm


def normalize_colors(colors: np.ndarray, color_norm: str = DEFAULT_COLOR_NORM) -> np.ndarray:
    """float32 [V, 3]: colors [V, 3] in [0, 255] as `color_norm` says: "symmetric" `rgb / 127.5 - 1`
    (in [-1, 1]), "unit" `rgb / 255` (in [0, 1], Pointcept's NormalizeColor)."""
    check_color_norm(color_norm)
    colors = np.asarray(colors).astype(np.float32)
    if color_norm == "unit":
        return colors / 255.0  # float32, as Pointcept's `color.astype(np.float32) / 255`
    return colors / 127.5 - 1.0


def input_features(
    colors: np.ndarray, normals: np.ndarray | None = None, color_norm: str = DEFAULT_COLOR_NORM
) -> np.ndarray:
    """The student's input features float32 [V, 3] or [V, 6]: colors [V, 3] in [0, 255] normalized
    by `color_norm` (`normalize_colors`; default "symmetric", `rgb / 127.5 - 1` as OpenScene), then
    the unit normals [V, 3] when given (Pointcept's `feat_keys=("color", "normal")` order)."""
    feats = [normalize_colors(colors, color_norm)]
    if normals is not None:
        feats.append(np.asarray(normals).astype(np.float32))
    return np.concatenate(feats, axis=1).astype(np.float32, copy=False)


def recorded_feature_settings(config: Mapping | None) -> dict[str, str]:
    """{"in_features", "color_norm"} that a checkpoint's saved `config` (its `data` section) records;
    a key it lacks takes the value every run had before the key existed ("rgb", "symmetric")."""
    data = config.get("data") if isinstance(config, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    return {"in_features": str(data.get("in_features", DEFAULT_IN_FEATURES)),
            "color_norm": str(data.get("color_norm", DEFAULT_COLOR_NORM))}


def check_checkpoint_features(
    checkpoint: Mapping, path: str | os.PathLike, color_norm: str, in_features: str | None = None
) -> None:
    """Refuse to feed a network from the checkpoint at `path` (its loaded entries) with colours
    normalized otherwise than it was trained with: a ValueError naming the checkpoint's
    `data.color_norm` and this run's. in_features (when given) is checked likewise. A checkpoint
    without a scene_kd `config` entry (MinkowskiEngine's, Pointcept's) records nothing and passes."""
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if not isinstance(config, Mapping):
        return
    recorded = recorded_feature_settings(config)
    wanted = {"color_norm": check_color_norm(color_norm)}
    if in_features is not None:
        feature_channels(in_features)
        wanted["in_features"] = in_features
    for key, value in wanted.items():
        if recorded[key] != value:
            raise ValueError(
                f"{path}: trained with data.{key}={recorded[key]} (its config), but this run has "
                f"data.{key}={value}; set data.{key}={recorded[key]} to feed the inputs it was trained on"
            )


__all__ = [
    "COLOR_NORMS",
    "DEFAULT_COLOR_NORM",
    "DEFAULT_IN_FEATURES",
    "FEATURE_CHANNELS",
    "MANIFEST_NAME",
    "SCENE_FIELDS",
    "SPLIT_NAMES",
    "check_checkpoint_features",
    "check_color_norm",
    "feature_channels",
    "feature_fields",
    "input_features",
    "load_scene",
    "normalize_colors",
    "read_manifest",
    "read_point_subset",
    "read_scene_subset",
    "recorded_feature_settings",
    "resolve_scene_ids",
    "select_scene_subset",
]
