"""The allowed range of every numeric config key and the allowed values of the named choices, checked
when a config is loaded, so that a bad value is refused up front with its key named (`train.max_steps
must be >= 1, got 0`, `data.color_norm must be one of ['symmetric', 'unit'], got 'rgb01'`) instead of
failing later, or silently, inside the run. Keys a schema does not have are skipped."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from scene_kd.data.scenes import COLOR_NORMS, FEATURE_CHANNELS

Check = tuple[Callable[[Any], bool], str]

POSITIVE: Check = (lambda v: v > 0, "> 0")
AT_LEAST_1: Check = (lambda v: v >= 1, ">= 1")
NON_NEGATIVE: Check = (lambda v: v >= 0, ">= 0")
UNIT_INTERVAL: Check = (lambda v: 0 <= v <= 1, "in [0, 1]")
OPEN_UNIT_INTERVAL: Check = (lambda v: 0 < v < 1, "in (0, 1)")
FROM_0_BELOW_1: Check = (lambda v: 0 <= v < 1, "in [0, 1)")
POSITIVE_OR_NULL: Check = (lambda v: v is None or v > 0, "> 0 or null")
ALL_POSITIVE: Check = (lambda v: len(v) > 0 and all(x > 0 for x in v), "a non-empty list of values > 0")
ALL_OPEN_UNIT: Check = (lambda v: len(v) > 0 and all(0 < x < 1 for x in v), "a non-empty list of values in (0, 1)")

RANGES: dict[str, Check] = {
    "train.max_steps": AT_LEAST_1,
    "train.grad_accum": AT_LEAST_1,
    "train.grad_clip": NON_NEGATIVE,
    "train.seed": NON_NEGATIVE,
    "train.log_every": AT_LEAST_1,
    "train.checkpoint_every": AT_LEAST_1,
    "train.eval_every": NON_NEGATIVE,
    "train.keep_checkpoints": NON_NEGATIVE,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": FROM_0_BELOW_1,
    "optim.betas": (lambda v: len(v) == 2 and all(0 <= x < 1 for x in v), "two values in [0, 1)"),
    "schedule.warmup_steps": NON_NEGATIVE,
    "schedule.warmup_start_factor": UNIT_INTERVAL,
    "schedule.min_lr_factor": UNIT_INTERVAL,
    "schedule.poly_power": POSITIVE,
    "data.voxel_size": POSITIVE,
    "data.batch_size": AT_LEAST_1,
    "data.num_workers": NON_NEGATIVE,
    "data.image_size": (lambda v: len(v) == 2 and all(x >= 8 for x in v), "[W, H], each >= 8"),
    "data.frames_per_sample": AT_LEAST_1,
    "data.min_pairs": NON_NEGATIVE,
    "data.depth_tolerance": POSITIVE,
    "data.max_voxels": POSITIVE_OR_NULL,
    "data.min_box_points": AT_LEAST_1,
    "student.in_channels": AT_LEAST_1,
    "head.embed_dim": AT_LEAST_1,
    "head.head3d_hidden": POSITIVE_OR_NULL,
    "loss.temperature": POSITIVE,
    "loss.num_pairs": AT_LEAST_1,
    "loss.ppkt_weight": NON_NEGATIVE,
    "loss.global_weight": NON_NEGATIVE,
    "loss.concept_weight": NON_NEGATIVE,
    "loss.concept_fit_weight": NON_NEGATIVE,
    "loss.global_temperature": POSITIVE,
    "loss.concept_temperature": POSITIVE,
    "loss.concept_teacher_temperature": POSITIVE,
    "loss.focal_alpha": UNIT_INTERVAL,
    "loss.focal_gamma": NON_NEGATIVE,
    "loss.cls_weight": NON_NEGATIVE,
    "loss.box_weight": NON_NEGATIVE,
    "loss.centerness_weight": NON_NEGATIVE,
    "loss.assign_min_voxels": AT_LEAST_1,
    "loss.assign_topk": AT_LEAST_1,
    "concept.num_concepts": AT_LEAST_1,
    "concept.num_heads": AT_LEAST_1,
    "concept.width": AT_LEAST_1,
    "concept.max_keys": AT_LEAST_1,
    "concept.point_hidden": POSITIVE_OR_NULL,
    "model.num_classes": AT_LEAST_1,
    "model.head_channels": AT_LEAST_1,
    "model.strides": ALL_POSITIVE,
    "eval.chunk_voxels": AT_LEAST_1,
    "eval.chunk_margin": NON_NEGATIVE,
    "eval.score_threshold": UNIT_INTERVAL,
    "eval.nms_iou": OPEN_UNIT_INTERVAL,
    "eval.nms_pre": AT_LEAST_1,
    "eval.max_boxes": AT_LEAST_1,
    "eval.iou_thresholds": ALL_OPEN_UNIT,
}


# String keys that take one of a few names (their single source is the module that interprets them).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.in_features": tuple(FEATURE_CHANNELS),
    "data.color_norm": tuple(COLOR_NORMS),
}


def _lookup(cfg: Any, key: str) -> tuple[bool, Any]:
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False, None
        node = node[part]
    return True, node


def range_errors(cfg: Any) -> list[str]:
    """One message per key of `cfg` (a DictConfig or nested dict) outside its range in `RANGES`."""
    errors = []
    for key, (ok, wanted) in RANGES.items():
        present, value = _lookup(cfg, key)
        if not present:
            continue
        values = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values) or not _safe(ok, value):
            errors.append(f"{key} must be {wanted}, got {value}")
    for key, allowed in CHOICES.items():
        present, value = _lookup(cfg, key)
        if present and value not in allowed:
            errors.append(f"{key} must be one of {list(allowed)}, got {value!r}")
    return errors + consistency_errors(cfg)


def consistency_errors(cfg: Any) -> list[str]:
    """Keys that must agree with each other (pretraining): the student's input channels with the input
    features it is fed, and normals only where the dataset has them (scene mode)."""
    has_features, in_features = _lookup(cfg, "data.in_features")
    has_channels, in_channels = _lookup(cfg, "student.in_channels")
    if not (has_features and has_channels) or in_features not in FEATURE_CHANNELS:
        return []
    errors = []
    if in_channels != FEATURE_CHANNELS[in_features]:
        errors.append(f"student.in_channels must be {FEATURE_CHANNELS[in_features]} for data.in_features="
                      f"{in_features}, got {in_channels}")
    has_mode, mode = _lookup(cfg, "data.mode")
    if has_mode and mode == "frame" and in_features != "rgb":
        errors.append(f"data.in_features={in_features} needs data.mode=scene (a frame's back-projected depth "
                      "has no mesh normals)")
    return errors


def _safe(ok: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(ok(value))
    except TypeError:
        return False
