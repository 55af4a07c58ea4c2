"""ScanNet 3D detection evaluation (VoteNet's protocol): per-class AP at IoU thresholds, mAP,
recall, and the box files (JSON, PLY wireframes) that go with it.

The protocol is that of VoteNet's `utils/eval_det.py` (`eval_det_cls`, `voc_ap`) with
axis-aligned IoU (`metric_util.calc_iou`), evaluated per class:

- the predictions of that class from all scenes are sorted by descending score (a stable sort:
  ties keep scene-id order, then the order within the scene; VoteNet's `np.argsort` leaves tie
  order unspecified);
- each prediction takes the ground-truth box of its scene and class with the highest IoU (the
  first on ties), whether or not that box is already matched. It is a true positive when that IoU
  is strictly above the threshold (`ovmax > ovthresh`) and the box is not yet matched, which
  then becomes matched; otherwise it is a false positive. So a duplicate of a matched box is a
  false positive even when it also overlaps another, unmatched box above the threshold: that is
  VOC's and VoteNet's rule;
- recall = cumulative TP / number of ground-truth boxes, precision = cumulative TP / cumulative
  detections; AP = VOC all-point interpolated area (`voc_ap(use_07_metric=False)`);
- a class with ground truth but no prediction has AP 0 and recall 0, as in VoteNet's
  `eval_det_multiprocessing`;
- a class with no ground-truth box in any evaluated scene has AP and recall NaN and is left out
  of mAP. VoteNet leaves a class out when it has neither ground truth nor predictions; with
  predictions but no ground truth its `tp / npos` is 0 / 0 and its mAP becomes NaN. On ScanNet
  val every class has ground truth, so the two agree there.

mAP is the mean of the defined per-class APs, mAR (the mean final recall) likewise.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.atomic import write_text_atomic
from scene_kd.box_geometry import BOX_EDGES, box_corner_points, box_iou_3d, corners_to_center_size
from scene_kd.scannet.labels import DET18_NAMES, DET18_NYU40_IDS, NYU40_PALETTE

DEFAULT_IOU_THRESHOLDS = (0.25, 0.5)
RESULTS_JSON = "det_results.json"
TABLE_TXT = "det_table.txt"
BOXES_JSON_SUFFIX = "_boxes.json"
BOXES_PLY_SUFFIX = "_boxes.ply"
GT_BOXES_PLY_SUFFIX = "_gt_boxes.ply"


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _threshold_key(threshold: float) -> str:
    return f"{float(threshold):g}"


# ---- AP -----------------------------------------------------------------------------------------


def average_precision(recall: Any, precision: Any) -> float:
    """VOC all-point interpolated AP (VoteNet's `voc_ap(use_07_metric=False)`).

    recall, precision: [K] at each detection in score order. Precision is replaced by its
    running maximum from the right (the envelope) and integrated over the recall steps, with
    sentinels (0, 0) before and (1, 0) after. Empty arrays give 0.
    """
    recall = _to_numpy(recall).astype(np.float64).reshape(-1)
    precision = _to_numpy(precision).astype(np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(
            f"recall and precision must have the same length, got {len(recall)} and {len(precision)}"
        )
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _check_scene(entry: Any, scene_id: str, kind: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    if not isinstance(entry, Mapping):
        raise TypeError(
            f"{kind}[{scene_id!r}] must be a dict with keys {list(keys)}, got {type(entry).__name__}"
        )
    missing = [k for k in keys if k not in entry]
    if missing:
        raise KeyError(f"{kind}[{scene_id!r}] lacks key(s) {missing}")
    boxes = _to_numpy(entry["boxes"]).astype(np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 6)
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(f"{kind}[{scene_id!r}]['boxes'] must have shape [N, 6], got {list(boxes.shape)}")
    out = {"boxes": boxes}
    for key in keys:
        if key == "boxes":
            continue
        value = _to_numpy(entry[key]).reshape(-1)
        if len(value) != len(boxes):
            raise ValueError(f"{kind}[{scene_id!r}][{key!r}] has {len(value)} entries for {len(boxes)} boxes")
        out[key] = value
    labels = out["labels"]
    if labels.size and labels.dtype.kind not in "iu":
        raise TypeError(
            f"{kind}[{scene_id!r}]['labels'] must be integer class indices, got dtype {labels.dtype}"
        )
    out["labels"] = labels.astype(np.int64)
    if "scores" in out:
        out["scores"] = out["scores"].astype(np.float64)
    return out


def _best_matches(pred: dict[str, np.ndarray], gt: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each prediction of a scene: the index of the same-class ground-truth box with the
    highest IoU (first on ties; -1 when the class has none in the scene) and that IoU (-inf)."""
    num_pred = len(pred["boxes"])
    best_gt = np.full(num_pred, -1, dtype=np.int64)
    best_iou = np.full(num_pred, -np.inf)
    if num_pred == 0 or len(gt["boxes"]) == 0:
        return best_gt, best_iou
    iou = box_iou_3d(pred["boxes"], gt["boxes"]).numpy()
    same = pred["labels"][:, None] == gt["labels"][None, :]
    iou = np.where(same, iou, -np.inf)
    has = same.any(axis=1)
    best_gt[has] = iou[has].argmax(axis=1)
    best_iou[has] = iou[has].max(axis=1)
    return best_gt, best_iou


def evaluate_detection(
    predictions: Mapping[str, Mapping[str, Any]],
    ground_truth: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str] = DET18_NAMES,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Per-class AP, recall, mAP at each IoU threshold (VoteNet's protocol, module docstring).

    predictions[scene_id] = {"boxes": [P, 6] corners, "scores": [P], "labels": int [P]};
    ground_truth[scene_id] = {"boxes": [G, 6], "labels": int [G]}; numpy or torch. The scenes
    evaluated are those of `ground_truth`: a scene missing from `predictions` has no detections,
    a scene of `predictions` absent from `ground_truth` is a KeyError (a likely mix-up), and a
    label outside 0..C-1 (C = len(class_names)) is a ValueError.

    Returns {"ap": {thr: {class: AP}}, "recall": {thr: {class: final recall}}, "map": {thr: mAP},
    "mar": {thr: mean recall}, "num_gt": {class: n}, "num_pred": {class: n}, "num_scenes": S,
    "iou_thresholds": [thr, ...], "class_names": [...], plus flat floats "map@0.25", "map@0.5",
    "mar@0.25", ... (thr formatted with `:g`)}; thr keys are floats. NaN marks undefined values.
    """
    class_names = list(class_names)
    num_classes = len(class_names)
    thresholds = [float(t) for t in iou_thresholds]
    extra = sorted(set(predictions) - set(ground_truth))
    if extra:
        raise KeyError(
            f"predictions for {len(extra)} scene(s) without ground truth: {', '.join(extra[:5])}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    scene_ids = sorted(ground_truth)
    gt_labels, pred_labels, pred_scores, best_gt, best_iou = [], [], [], [], []
    gt_offset = 0
    for scene_id in scene_ids:
        gt = _check_scene(ground_truth[scene_id], scene_id, "ground_truth", ("boxes", "labels"))
        if scene_id in predictions:
            pred = _check_scene(predictions[scene_id], scene_id, "predictions", ("boxes", "scores", "labels"))
        else:
            pred = {"boxes": np.zeros((0, 6)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}
        for kind, labels in (("ground_truth", gt["labels"]), ("predictions", pred["labels"])):
            bad = (labels < 0) | (labels >= num_classes)
            if bad.any():
                raise ValueError(
                    f"{kind}[{scene_id!r}]['labels'] holds {int(labels[bad][0])}, outside 0..{num_classes - 1}"
                )
        matched, iou = _best_matches(pred, gt)
        best_gt.append(np.where(matched >= 0, matched + gt_offset, -1))  # a global ground-truth id
        best_iou.append(iou)
        gt_offset += len(gt["boxes"])
        gt_labels.append(gt["labels"])
        pred_labels.append(pred["labels"])
        pred_scores.append(pred["scores"])
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    gt_labels, pred_labels = cat(gt_labels, np.int64), cat(pred_labels, np.int64)
    pred_scores, best_gt, best_iou = (
        cat(pred_scores, np.float64),
        cat(best_gt, np.int64),
        cat(best_iou, np.float64),
    )
    num_gt = np.bincount(gt_labels, minlength=num_classes)
    num_pred = np.bincount(pred_labels, minlength=num_classes)

    results: dict[str, Any] = {"ap": {}, "recall": {}, "map": {}, "mar": {}}
    for thr in thresholds:
        ap, recall = {}, {}
        for c, name in enumerate(class_names):
            members = np.flatnonzero(pred_labels == c)
            order = members[np.argsort(-pred_scores[members], kind="stable")]
            ap[name], recall[name] = _class_ap(best_gt[order], best_iou[order], int(num_gt[c]), thr)
        results["ap"][thr], results["recall"][thr] = ap, recall
        results["map"][thr] = _nanmean(list(ap.values()))
        results["mar"][thr] = _nanmean(list(recall.values()))
    results["num_gt"] = {name: int(num_gt[c]) for c, name in enumerate(class_names)}
    results["num_pred"] = {name: int(num_pred[c]) for c, name in enumerate(class_names)}
    results["num_scenes"] = len(scene_ids)
    results["iou_thresholds"] = thresholds
    results["class_names"] = class_names
    for thr in thresholds:
        results[f"map@{_threshold_key(thr)}"] = results["map"][thr]
        results[f"mar@{_threshold_key(thr)}"] = results["mar"][thr]
    return results


def _class_ap(
    best_gt: np.ndarray, best_iou: np.ndarray, num_gt: int, threshold: float
) -> tuple[float, float]:
    """(AP, final recall) of one class's predictions in score order. A prediction is a TP when
    its best box's IoU exceeds the threshold and no earlier prediction took that box: among the
    predictions above the threshold, the first one per box."""
    if num_gt == 0:
        return math.nan, math.nan
    tp = np.zeros(len(best_gt))
    above = np.flatnonzero(best_iou > threshold)
    _, first = np.unique(best_gt[above], return_index=True)
    tp[above[first]] = 1.0
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    recall = tp_cum / num_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return average_precision(recall, precision), float(recall[-1]) if len(recall) else 0.0


def _nanmean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


# ---- tables and files ---------------------------------------------------------------------------


def _percent(x: float | None) -> str:
    """AP as a percentage; '-' for NaN (or None, its JSON form)."""
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def format_ap_table(results: Mapping[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per class (AP in % at each threshold, '-' where undefined,
    ground-truth and prediction counts), then the mAP row and a mean-recall line."""
    class_names = list(class_names if class_names is not None else results["class_names"])
    thresholds = list(results["ap"])
    head = " | ".join(f"AP@{_threshold_key(t)} (%)" for t in thresholds)
    lines = [f"| class | {head} | gt boxes | predictions |", "|---|" + "---:|" * (len(thresholds) + 2)]
    for name in class_names:
        aps = " | ".join(_percent(results["ap"][t][name]) for t in thresholds)
        lines.append(f"| {name} | {aps} | {results['num_gt'][name]} | {results['num_pred'][name]} |")
    maps = " | ".join(f"**{_percent(results['map'][t])}**" for t in thresholds)
    total_gt = sum(results["num_gt"][n] for n in class_names)
    total_pred = sum(results["num_pred"][n] for n in class_names)
    lines.append(f"| **mAP** | {maps} | {total_gt} | {total_pred} |")
    lines.append("")
    recalls = ", ".join(f"@{_threshold_key(t)} {_percent(results['mar'][t])} %" for t in thresholds)
    defined = sum(results["num_gt"][n] > 0 for n in class_names)
    lines.append(
        f"mean recall {recalls}; {results.get('num_scenes', '?')} scenes; "
        f"classes with ground truth {defined} / {len(class_names)}"
    )
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """Floats keys as `:g` text, NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {
            (_threshold_key(k) if isinstance(k, float) else str(k)): _json_safe(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def results_to_json(results: Mapping[str, Any]) -> str:
    """`evaluate_detection`'s results as JSON text (threshold keys "0.25", NaN as null)."""
    return json.dumps(_json_safe(results), indent=2) + "\n"


def class_colors(num_classes: int) -> np.ndarray:
    """uint8 [C, 3]: ScanNet's nyu40 colors for the 18 detection classes, else a fixed spread of hues."""
    if num_classes == len(DET18_NYU40_IDS):
        return NYU40_PALETTE[list(DET18_NYU40_IDS)]
    import colorsys

    hues = [colorsys.hsv_to_rgb((0.618034 * i) % 1.0, 0.75, 0.9) for i in range(num_classes)]
    return np.round(np.array(hues).reshape(-1, 3) * 255).astype(np.uint8)


def write_boxes_ply(path: str | os.PathLike, boxes: Any, labels: Any, num_classes: int) -> Path:
    """Write corner boxes [N, 6] as an ASCII PLY line set: 8 `vertex` (x y z) and 12 `edge`
    (vertex1 vertex2 red green blue, colored by label) per box; open3d's `read_line_set` reads
    it. Atomic; returns the path."""
    path = Path(path)
    corners = box_corner_points(boxes).reshape(-1, 3)
    labels = _to_numpy(labels).astype(np.int64).reshape(-1)
    colors = class_colors(num_classes)
    lines = [
        "ply", "format ascii 1.0", f"element vertex {len(corners)}",
        "property float x", "property float y", "property float z",
        f"element edge {12 * len(labels)}", "property int vertex1", "property int vertex2",
        "property uchar red", "property uchar green", "property uchar blue", "end_header",
    ]  # fmt: skip
    lines += [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in corners.tolist()]
    for k, label in enumerate(labels.tolist()):
        r, g, b = colors[label].tolist() if 0 <= label < num_classes else (128, 128, 128)
        lines += [f"{8 * k + i} {8 * k + j} {r} {g} {b}" for i, j in BOX_EDGES]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def boxes_to_records(boxes: Any, labels: Any, scores: Any, class_names: Sequence[str]) -> list[dict]:
    """One JSON-ready dict per box: {"label": name, "label_index", "score", "box": 6 corners,
    "center", "size"}."""
    boxes = _to_numpy(boxes).astype(np.float64).reshape(-1, 6)
    labels = _to_numpy(labels).astype(np.int64).reshape(-1)
    scores = _to_numpy(scores).astype(np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"boxes, labels and scores differ in length: {len(boxes)}, {len(labels)}, {len(scores)}"
        )
    center_size = corners_to_center_size(boxes).numpy()
    records = []
    for box, label, score, cs in zip(boxes.tolist(), labels.tolist(), scores.tolist(), center_size.tolist(),
                                     strict=True):
        if not 0 <= label < len(class_names):
            raise ValueError(f"label {label} outside 0..{len(class_names) - 1}")
        records.append(
            {
                "label": class_names[label],
                "label_index": label,
                "score": score,
                "box": box,
                "center": cs[:3],
                "size": cs[3:],
            }
        )
    return records


def write_boxes_json(
    path: str | os.PathLike, boxes: Any, labels: Any, scores: Any, class_names: Sequence[str] = DET18_NAMES
) -> Path:
    """Write `boxes_to_records` as a JSON list (the `<scene>_boxes.json` format). Atomic."""
    path = Path(path)
    write_text_atomic(path, json.dumps(boxes_to_records(boxes, labels, scores, class_names), indent=1) + "\n")
    return path


def read_boxes_json(
    path: str | os.PathLike, class_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Read a `<scene>_boxes.json` file: {"boxes": float64 [P, 6], "scores": float64 [P],
    "labels": int64 [P]}. "box" and "label_index" are authoritative ("center" and "size" are
    ignored); with `class_names`, "label" (when present) must name class label_index. A malformed
    file is a ValueError naming it and the entry."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of boxes, got {type(records).__name__}")
    boxes, scores, labels = [], [], []
    for k, record in enumerate(records):
        try:
            box = [float(v) for v in record["box"]]
            label = record["label_index"]
            score = float(record["score"])
            if len(box) != 6:
                raise ValueError(f"'box' has {len(box)} numbers, expected 6")
            if not isinstance(label, int) or isinstance(label, bool):
                raise ValueError(f"'label_index' is {label!r}, not an integer")
            if class_names is not None:
                if not 0 <= label < len(class_names):
                    raise ValueError(f"'label_index' {label} outside 0..{len(class_names) - 1}")
                if "label" in record and record["label"] != class_names[label]:
                    raise ValueError(
                        f"'label' {record['label']!r} is not class {label} ({class_names[label]!r})"
                    )
        except (KeyError, TypeError, ValueError) as e:
            detail = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"{path}: entry {k}: {detail}") from None
        boxes.append(box)
        scores.append(score)
        labels.append(label)
    return {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 6),
        "scores": np.array(scores, dtype=np.float64),
        "labels": np.array(labels, dtype=np.int64),
    }


def write_detection_outputs(
    results: Mapping[str, Any],
    predictions: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    class_names: Sequence[str] = DET18_NAMES,
    ground_truth: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write into `out_dir` (created): `det_results.json` (`results_to_json`), `det_table.txt`
    (`format_ap_table`), and per predicted scene `<scene>_boxes.json` and `<scene>_boxes.ply`;
    with `ground_truth`, also `<scene>_gt_boxes.ply` per ground-truth scene. Every file is
    written atomically. Returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = list(class_names)
    write_text_atomic(out_dir / RESULTS_JSON, results_to_json(results))
    write_text_atomic(out_dir / TABLE_TXT, format_ap_table(results, class_names))
    for scene_id in sorted(predictions):
        pred = _check_scene(predictions[scene_id], scene_id, "predictions", ("boxes", "scores", "labels"))
        write_boxes_json(
            out_dir / f"{scene_id}{BOXES_JSON_SUFFIX}",
            pred["boxes"],
            pred["labels"],
            pred["scores"],
            class_names,
        )
        write_boxes_ply(
            out_dir / f"{scene_id}{BOXES_PLY_SUFFIX}", pred["boxes"], pred["labels"], len(class_names)
        )
    for scene_id in sorted(ground_truth or {}):
        gt = _check_scene(ground_truth[scene_id], scene_id, "ground_truth", ("boxes", "labels"))
        write_boxes_ply(
            out_dir / f"{scene_id}{GT_BOXES_PLY_SUFFIX}", gt["boxes"], gt["labels"], len(class_names)
        )
    return out_dir


def read_prediction_dir(
    pred_dir: str | os.PathLike, scene_ids: Sequence[str], class_names: Sequence[str] = DET18_NAMES
) -> dict[str, dict[str, np.ndarray]]:
    """`read_boxes_json` of `<pred_dir>/<scene>_boxes.json` for each scene id. Missing files are
    one FileNotFoundError that names them (the first five) and says how many there are."""
    pred_dir = Path(pred_dir)
    paths = {scene_id: pred_dir / f"{scene_id}{BOXES_JSON_SUFFIX}" for scene_id in scene_ids}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} prediction file(s) missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return {scene_id: read_boxes_json(path, class_names) for scene_id, path in paths.items()}


def prediction_scene_ids(pred_dir: str | os.PathLike) -> list[str]:
    """The scene ids of the `<scene>_boxes.json` files in `pred_dir`, sorted."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction directory not found")
    return sorted(p.name[: -len(BOXES_JSON_SUFFIX)] for p in pred_dir.glob(f"*{BOXES_JSON_SUFFIX}"))
