"""Does Pointcept, as checked out, finetune from scene_kd's output? (tools/check_pointcept.py)

Runs Pointcept's own code (`pointcept_checkout`) on a scene_kd checkpoint and processed data, as a
SpUNet finetune on ScanNet would, and compares with scene_kd:
1. weights: the checkpoint, exported as `tools/export_checkpoint.py --to pointcept-spunet` would (the
   stem widened to the config's `in_channels`; the head kept when its classes match `num_classes`), or
   an already exported file as it is, is loaded by CheckpointLoader's rule into the network that
   Pointcept builds from the config's `model.backbone`: every tensor must land, shapes must match, and
   only `backbone.final.*` may stay Pointcept's fresh initialisation;
2. data: Pointcept's ScanNetDataset, built from the config's `data.train` / `data.val` with
   `data_root` set to the processed output, finds the scenes of `splits/{train,val}.txt`; with
   `tasks/` (make_data_efficient_subsets.py --pointcept-tasks), each `lr_file` gives the scenes of
   scene_kd's `subsets/scenes_{pct}pct.txt` and each `la_file` the labelled points of
   `subsets/points_{n}.json`;
3. inputs: the features Pointcept's val pipeline feeds (the config's NormalizeColor and feat_keys)
   are the features scene_kd fed the student (its recorded data.in_features and data.color_norm);
4. outputs: on validation scenes as Pointcept's val pipeline voxelises and normalises them, Pointcept's
   network and scene_kd's SpUNet (the same weights, head included) give the same outputs, in eval mode
   and in training mode (batch statistics).

spconv's CPU forward is correct only with one torch thread and has no backward (docs/sparse_backends.md):
the comparison sets one thread and runs forward passes only.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scene_kd.cpu_threads import one_torch_thread
from scene_kd.data.scenes import (
    input_features,
    load_scene,
    read_point_subset,
    read_scene_subset,
    recorded_feature_settings,
    resolve_scene_ids,
)
from scene_kd.data.subsets import point_subset_name, scene_subset_name
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.checkpoint_checks import load_weights
from scene_kd.interop.export import prepare_export, read_student
from scene_kd.interop.pointcept import SPUNET_STEM_KERNEL, from_pointcept, pointcept_backbone_state
from scene_kd.interop.pointcept_checkout import PointceptCode, pointcept_weight_keys, read_pointcept_config
from scene_kd.models.spunet import SPUNET_NAME, SpUNet, spunet_kwargs_from_state
from scene_kd.sparse import SparseTensor

DEFAULT_CONFIG = "configs/scannet/semseg-spunet-v1m1-0-base.py"
HEAD_PREFIX = "backbone.final."
# Largest |difference| allowed, relative to the largest |output|: rounding, not another function.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


@dataclass(frozen=True)
class CheckRow:
    """One line of the check's table."""

    what: str
    result: str
    ok: bool = True


def backbone_config(config: Mapping, path: str | os.PathLike) -> dict:
    """The config's `model.backbone` (a copy), which must be SpUNet-v1m1; else a ValueError naming the key."""
    backbone = config.get("model", {}).get("backbone") if isinstance(config.get("model"), Mapping) else None
    if not isinstance(backbone, Mapping):
        raise ValueError(f"{path}: no model.backbone in the config")
    if backbone.get("type") != SPUNET_NAME:
        raise ValueError(f"{path}: model.backbone.type is {backbone.get('type')!r}; scene_kd exports "
                         f"{SPUNET_NAME} only (docs/pointcept.md)")
    return copy.deepcopy(dict(backbone))


def data_config(config: Mapping, path: str | os.PathLike, split: str, data_root: Path) -> dict:
    """The config's `data.<split>` data set with `data_root` replaced."""
    data = config.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get(split), Mapping):
        raise ValueError(f"{path}: no data.{split} in the config")
    return {**copy.deepcopy(dict(data[split])), "data_root": str(data_root)}


def _export_choices(state: Mapping[str, torch.Tensor], backbone: Mapping) -> tuple[bool, int | None]:
    """(keep the head, stem width to export to) for a scene_kd student and the config's backbone (a
    student without SpUNet's stem is refused by the export itself, with its reason)."""
    final = state.get("final.kernel")
    keep_head = final is not None and int(final.shape[1]) == int(backbone.get("num_classes", -1))
    stem = state.get(SPUNET_STEM_KERNEL)
    if stem is None:
        return keep_head, None
    wanted = int(backbone.get("in_channels", stem.shape[1]))
    return keep_head, (wanted if wanted > stem.shape[1] else None)


@dataclass(frozen=True)
class Weights:
    """A checkpoint as Pointcept receives it and as scene_kd runs it."""

    for_pointcept: dict  # what Pointcept's `weight=` file holds: {"state_dict": {"backbone.<name>": ...}}
    state: dict[str, torch.Tensor]  # the same weights in scene_kd's layout
    source: str  # in words
    features: dict[str, str] | None  # {"in_features", "color_norm"} the student was trained on; None: unknown


def weights_for_pointcept(path: str | os.PathLike, backbone: Mapping) -> Weights:
    """The checkpoint at `path` for the config's `backbone`: an exported Pointcept file is taken as it is
    (it records no input settings); a scene_kd checkpoint is exported in memory."""
    checkpoint = load_checkpoint(path)
    found = pointcept_backbone_state(checkpoint)
    if found is not None:
        return Weights(checkpoint, from_pointcept(found[0]), "an exported Pointcept file, loaded as it is", None)
    keep_head, in_channels = _export_choices(read_student(path, checkpoint)[0], backbone)
    exported, state, _, _ = prepare_export(path, "pointcept-spunet", include_head=keep_head, in_channels=in_channels,
                                           checkpoint=checkpoint)
    how = [f"stem widened to {in_channels} channels" if in_channels else "stem as trained",
           "head kept" if keep_head else "no head exported"]
    return Weights(exported, state, f"a scene_kd checkpoint exported in memory ({', '.join(how)})",
                   recorded_feature_settings(checkpoint.get("config")))


def _shape_advice(key: str) -> str:
    if key.startswith("backbone.conv_input."):
        return "the config's in_channels differs: export with --in-channels, or set in_channels and feat_keys"
    if key.startswith(HEAD_PREFIX):
        return "the config's num_classes differs: export with --no-head"
    return "another network width or depth than the config's channels / layers"


def load_like_pointcept(code: PointceptCode, backbone: Mapping, weights: Mapping, path) -> tuple[nn.Module, list[str]]:
    """(Pointcept's segmentor-shaped module with the weights loaded by CheckpointLoader's rule, the keys
    left at Pointcept's initialisation). DefaultSegmentor's state is its backbone's under `backbone.`
    (its criteria hold no tensors); the wrapper here has exactly that. Shapes that differ, tensors the
    network does not use, and missing tensors other than the head are ValueErrors naming `path`."""
    model = nn.Module()
    model.backbone = code.build_model(copy.deepcopy(dict(backbone)))
    state = weights.get("state_dict") if isinstance(weights.get("state_dict"), Mapping) else None
    if state is None:
        raise ValueError(f"{path}: no state_dict, which Pointcept's CheckpointLoader reads")
    state = pointcept_weight_keys(state)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the config's network "
                             f"{tuple(own[key].shape)} ({_shape_advice(key)})")
    info = model.load_state_dict(state, strict=False)
    if info.unexpected_keys:
        raise ValueError(f"{path}: {len(info.unexpected_keys)} tensor(s) Pointcept's network does not have and "
                         f"would drop silently, e.g. {info.unexpected_keys[0]}")
    lost = [k for k in info.missing_keys if not k.startswith(HEAD_PREFIX)]
    if lost:
        raise ValueError(f"{path}: {len(lost)} tensor(s) of Pointcept's network missing from the weights, "
                         f"e.g. {lost[0]}")
    return model, list(info.missing_keys)


def scene_kd_network(state: Mapping[str, torch.Tensor], pointcept_model: nn.Module, path) -> SpUNet:
    """scene_kd's SpUNet with `state`; a head the weights lack is taken from Pointcept's initialisation,
    so that both networks compute the whole function."""
    state = dict(state)
    if "final.kernel" not in state:
        head = {k[len("backbone."):]: v for k, v in pointcept_model.state_dict().items() if k.startswith(HEAD_PREFIX)}
        state.update(from_pointcept(head))
    net = SpUNet(**spunet_kwargs_from_state(state))
    load_weights(net, state, path, f"a {SPUNET_NAME} student")
    return net


@contextmanager
def quiet_pointcept_logger() -> Iterator[None]:
    """Pointcept's data sets log a line each ("Totally N x 1 samples"); the table says it instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded (Pointcept's transforms draw from it), restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def check_split(code: PointceptCode, config: Mapping, config_path, data_root: Path, split: str):
    """(row, Pointcept's data set of the split): its scenes against splits/<split>.txt."""
    with quiet_pointcept_logger():
        dataset = code.build_dataset(data_config(config, config_path, split, data_root))
    found = sorted(os.path.basename(p) for p in dataset.data_list)
    listed = sorted(resolve_scene_ids(data_root, split))
    ok = found == listed and bool(found)
    hint = "" if ok else f" (run preprocess_scannet.py with --pointcept-layout; missing e.g. {sorted(set(listed) - set(found))[:2]})"
    return CheckRow(f"data {split}", f"ScanNetDataset finds {len(found)} scenes, splits/{split}.txt lists "
                    f"{len(listed)}{hint}", ok), dataset


def _network_input(item: Mapping, dtype: torch.dtype) -> tuple[dict, SparseTensor]:
    """(Pointcept's input dict, scene_kd's SparseTensor) of one data set item (one scene, batch index 0)."""
    grid = torch.as_tensor(item["grid_coord"]).long()
    feat = torch.as_tensor(item["feat"]).to(dtype)
    coords = torch.cat([torch.zeros(len(grid), 1, dtype=torch.int32), grid.int()], 1)
    return ({"grid_coord": grid, "feat": feat, "offset": torch.tensor([len(grid)])}, SparseTensor(feat, coords))


def compare_outputs(pointcept_model: nn.Module, ours: SpUNet, dataset, scenes: int, dtype: torch.dtype,
                    features: Mapping | None, progress: Callable[[str], None] = print) -> list[CheckRow]:
    """Per validation scene: its input features (`check_input_features`), and one row per mode with the
    largest |difference| of the outputs relative to the largest |output|, against TOLERANCE[dtype]."""
    theirs_net, ours = copy.deepcopy(pointcept_model.backbone).to(dtype), copy.deepcopy(ours).to(dtype)
    rows = []
    for index in range(min(scenes, len(dataset))):
        # Pointcept's GridSample(mode="train") picks a random point per voxel
        with quiet_pointcept_logger(), seeded_numpy(index):
            item = dataset[index]
        name = os.path.basename(dataset.data_list[index])
        rows.append(check_input_features(torch.as_tensor(item["feat"]), Path(dataset.data_root), name, features))
        progress(f"  {rows[-1].what}: {rows[-1].result}")
        their_input, our_input = _network_input(item, dtype)
        for mode in ("eval", "train"):
            theirs_net.train(mode == "train")
            ours.train(mode == "train")
            start = time.perf_counter()
            with torch.no_grad(), one_torch_thread():
                theirs = theirs_net(their_input)
                mine = ours(our_input).F
            scale = float(theirs.abs().max())
            diff = float((theirs - mine).abs().max()) / max(scale, 1e-30)
            ok = diff <= TOLERANCE[dtype] and scale > 0
            rows.append(CheckRow(f"outputs {name} ({mode})",
                                 f"{len(mine):,} voxels x {mine.shape[1]}, max |diff| / max |output| = {diff:.1e} "
                                 f"({str(dtype).replace('torch.', '')}, bound {TOLERANCE[dtype]:.0e}; "
                                 f"{time.perf_counter() - start:.0f} s)", ok))
            progress(f"  {rows[-1].what}: {rows[-1].result}")
    return rows


def check_input_features(feat: torch.Tensor, data_root: Path, scene: str, features: Mapping | None) -> CheckRow:
    """Pointcept's `feat` of one val item against the features scene_kd fed the student (its recorded
    `data.in_features` / `data.color_norm`) for the same scene: every row Pointcept feeds must be the
    features of one of the scene's points (Pointcept's GridSample keeps one point per voxel). Columns
    past scene_kd's (normals Pointcept appends to a colour-only student) meet the stem's zero weights of
    an `--in-channels` export, so only scene_kd's columns are compared."""
    what = f"input features {scene}"
    if features is None:
        return CheckRow(what, "not compared: an exported file records no input settings (pass the scene_kd checkpoint)")
    arrays = load_scene(data_root, scene, ("color", "normal"))
    normals = arrays["normal"] if features["in_features"] == "rgb+normal" else None
    ours = input_features(arrays["color"], normals, features["color_norm"])
    theirs = np.ascontiguousarray(feat.numpy()[:, : ours.shape[1]], dtype=np.float32)
    if theirs.shape[1] < ours.shape[1]:
        return CheckRow(what, f"Pointcept feeds {theirs.shape[1]} channels, the student was trained on "
                        f"{ours.shape[1]} ({features['in_features']}): set feat_keys and in_channels", False)
    known = {row.tobytes() for row in np.ascontiguousarray(ours)}
    found = sum(row.tobytes() in known for row in theirs)
    ok = found == len(theirs)
    settings = f"data.in_features={features['in_features']}, data.color_norm={features['color_norm']}"
    advice = "" if ok else ("; the student saw other values: pretrain with data.color_norm=unit, Pointcept's "
                            "NormalizeColor (docs/pointcept.md)")
    return CheckRow(what, f"{found:,} of {len(theirs):,} rows Pointcept feeds are the student's inputs "
                    f"({settings}){advice}", ok)


def _train_dataset(code: PointceptCode, data_root: Path, **subset_file: str):
    """Pointcept's ScanNetDataset of the train split with an `lr_file` or `la_file`."""
    with quiet_pointcept_logger():
        return code.build_dataset({"type": "ScanNetDataset", "split": "train", "data_root": str(data_root),
                                   **subset_file})


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _scene_list_rows(code, data_root: Path, tasks: Path, subsets: Path) -> list[CheckRow]:
    rows = []
    for lr_file in sorted((tasks / "scenes").glob("*.txt")):
        dataset = _train_dataset(code, data_root, lr_file=str(lr_file))
        found = sorted(os.path.basename(p) for p in dataset.data_list)
        percent = _number(lr_file.stem)
        ours = subsets / (scene_subset_name(percent) if percent is not None else f"{lr_file.stem} (not scene_kd's)")
        listed = sorted(read_scene_subset(ours)) if ours.is_file() else None
        ok = listed is None or found == listed
        against = f"{ours.name} lists {len(listed)}" if listed is not None else f"no {ours.name} to compare"
        rows.append(CheckRow(f"lr_file {lr_file.relative_to(data_root)}", f"{len(found)} scenes; {against}", ok))
    return rows


def _labelled_points(dataset, index: int) -> np.ndarray:
    with quiet_pointcept_logger():
        data = dataset.get_data(index)
    return np.flatnonzero(data["segment"] != dataset.ignore_index)


def _point_file_rows(code, data_root: Path, tasks: Path, subsets: Path) -> list[CheckRow]:
    rows = []
    for la_file in sorted((tasks / "points").glob("points*")):
        dataset = _train_dataset(code, data_root, la_file=str(la_file))
        count = _number(la_file.name[len("points"):])
        ours_path = subsets / (point_subset_name(int(count)) if count is not None else f"{la_file.name} (not scene_kd's)")
        ours = read_point_subset(ours_path) if ours_path.is_file() else None
        total, differ = 0, []
        for index, path in enumerate(dataset.data_list):
            name = os.path.basename(path)
            theirs = _labelled_points(dataset, index)
            total += len(theirs)
            if ours is not None:
                labels = load_scene(data_root, name, ("segment20",))["segment20"]
                mine = np.intersect1d(ours.get(name, np.zeros(0, np.int64)), np.flatnonzero(labels >= 0))
                if not np.array_equal(np.sort(theirs), mine):
                    differ.append(name)
        against = (f"no {ours_path.name} to compare" if ours is None else
                   f"the same points as {ours_path.name}" if not differ else
                   f"other points than {ours_path.name} in {len(differ)} scenes, e.g. {differ[0]}")
        rows.append(CheckRow(f"la_file {la_file.relative_to(data_root)}",
                             f"{total:,} labelled points in {len(dataset.data_list)} scenes; {against}", not differ))
    return rows


def check_tasks(code: PointceptCode, data_root: Path) -> list[CheckRow]:
    """The data-efficient files under <data_root>/tasks read by Pointcept's ScanNetDataset, against
    scene_kd's <data_root>/subsets; no row when there is no tasks/ directory."""
    tasks, subsets = data_root / "tasks", data_root / "subsets"
    if not tasks.is_dir():
        return []
    return _scene_list_rows(code, data_root, tasks, subsets) + _point_file_rows(code, data_root, tasks, subsets)


def run_pointcept_check(code: PointceptCode, checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                        config_path: str | os.PathLike, *, scenes: int = 2, dtype: torch.dtype = torch.float64,
                        progress: Callable[[str], None] = print) -> list[CheckRow]:
    """Every row of the check (see the module text), in order; `progress` gets each as it is measured."""
    data_root = Path(data_root).expanduser().resolve()
    if not data_root.is_dir():
        raise FileNotFoundError(f"{data_root}: no such processed-data directory")
    config = read_pointcept_config(config_path)
    backbone = backbone_config(config, config_path)
    weights = weights_for_pointcept(checkpoint, backbone)
    model, fresh = load_like_pointcept(code, backbone, weights.for_pointcept, checkpoint)
    rows = [CheckRow("weights", f"{weights.source}: {len(weights.for_pointcept['state_dict'])} tensors loaded by "
                     "CheckpointLoader's rule; "
                     + (f"fresh head: {', '.join(fresh)}" if fresh else "no tensor left fresh"))]
    ours = scene_kd_network(weights.state, model, checkpoint)
    (train_row, _), (val_row, val_set) = (check_split(code, config, config_path, data_root, s) for s in ("train", "val"))
    rows += [train_row, val_row, *check_tasks(code, data_root)]
    for row in rows:
        progress(f"  {row.what}: {row.result}")
    return rows + compare_outputs(model, ours, val_set, scenes, dtype, weights.features, progress)
