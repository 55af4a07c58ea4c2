"""ScanNet 20-class semantic segmentation evaluation: the confusion matrix, IoU / mIoU, benchmark
submission files, colored label PLYs and a confusion-matrix picture.

The protocol is that of ScanNet's `BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py`,
in class-index space (0..19 = `SEG20_NAMES`, nyu40 ids `SEG20_NYU40_IDS`):

- a vertex whose ground truth is not one of the 20 classes (-1, or any value outside 0..19) is
  ignored;
- a prediction outside 0..19 (-1, or a nyu40 id that is not one of the 20 in a submission) is a
  false negative of the ground-truth class and a false positive of no class (it is kept in the
  matrix's last column);
- IoU_c = TP / (TP + FP + FN), FP counted only over vertices with valid ground truth;
- the confusion matrix is summed over all scenes before any IoU is taken;
- IoU_c is NaN when TP + FP + FN = 0 (the class is absent from both the ground truth and the
  predictions), exactly where the official script returns `float('nan')`. A class absent from the
  ground truth but predicted somewhere has IoU 0, as there. The official script prints per-class
  IoUs and computes no mean; mIoU here is the mean over the classes whose IoU is defined
  (NaN ones left out), which is the mean over all 20 on ScanNet val and test, where every class
  occurs. Pointcept instead counts such a class as 0 (`intersection / (union + 1e-10)`), which
  only differs on subsets that lack a class.

The official script counts in a 41 x 41 matrix indexed by nyu40 id: vertices whose ground truth
is not one of the 20 ids are skipped, and a prediction that is not one of them (0, 40 otherprop,
...) is mapped to `UNKNOWN_ID` = 40; a class's FN is its whole row (column 40 included), its FP
its column over the 20 valid rows. `SemanticConfusion` keeps the same counts in class-index
space: an int64 [20, 21] matrix (rows the ground-truth classes, columns the predicted ones) whose
last column plays the part of id 40. Every integer prediction is accepted.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.atomic import write_bytes_atomic, write_text_atomic
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.labels import SEG20_NAMES, SEG20_NYU40_IDS, SEG20_PALETTE, nyu40_to_seg20
from scene_kd.scannet.mesh import Mesh, write_mesh_ply
from scene_kd.scannet.splits import read_split

NUM_SEG20_CLASSES = len(SEG20_NAMES)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _tensor_kind(t: Any) -> str:
    """numpy's dtype.kind letter for a torch tensor (only the cases _check_integer tells apart)."""
    import torch

    if t.is_floating_point() or t.is_complex():
        return "f"
    return "b" if t.dtype == torch.bool else "i"


def _check_integer(dtype_kind: str, dtype: Any, name: str) -> None:
    if dtype_kind not in "iu":
        raise TypeError(
            f"{name} must hold integer class indices, got dtype {dtype}"
            + ("; take the argmax of the logits first" if dtype_kind == "f" else "")
        )


class SemanticConfusion:
    """Confusion matrix of the ScanNet semantic protocol, accumulated over batches and scenes.

    matrix: int64 [C, C + 1]; row = ground-truth class, column = predicted class, column C =
    predictions outside 0..C-1 ("invalid"). Only vertices with valid ground truth are counted.
    """

    def __init__(self, num_classes: int = NUM_SEG20_CLASSES, class_names: Sequence[str] | None = None):
        if class_names is None:
            class_names = (
                SEG20_NAMES
                if num_classes == NUM_SEG20_CLASSES
                else [f"class_{i}" for i in range(num_classes)]
            )
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, class_names: Sequence[str] | None = None) -> SemanticConfusion:
        """Wrap an existing int [C, C + 1] matrix (e.g. one all-reduced across processes)."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != matrix.shape[0] + 1:
            raise ValueError(f"confusion matrix must be [C, C + 1], got {list(matrix.shape)}")
        confusion = cls(matrix.shape[0], class_names)
        confusion.matrix = matrix.astype(np.int64, copy=True)
        return confusion

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: Any, gt: Any) -> None:
        """Count one batch or scene. pred: int [P] class index (anything outside 0..C-1 = invalid);
        gt: int [P] class index, -1 (or anything outside 0..C-1) = ignore. numpy arrays or torch
        tensors; two tensors on one device are counted there and only the C x (C + 1) counts move.
        """
        c = self.num_classes
        if _is_tensor(pred) and _is_tensor(gt) and pred.device == gt.device:
            import torch

            _check_integer(_tensor_kind(pred), pred.dtype, "pred")
            _check_integer(_tensor_kind(gt), gt.dtype, "gt")
            if pred.shape != gt.shape:
                raise ValueError(f"pred {list(pred.shape)} and gt {list(gt.shape)} differ in shape")
            pred, gt = pred.reshape(-1).long(), gt.reshape(-1).long()
            valid = (gt >= 0) & (gt < c)
            p, g = pred[valid], gt[valid]
            p = torch.where((p >= 0) & (p < c), p, torch.full_like(p, c))
            counts = torch.bincount(g * (c + 1) + p, minlength=c * (c + 1)).cpu().numpy()
        else:
            pred = np.asarray(pred.detach().cpu()) if _is_tensor(pred) else np.asarray(pred)
            gt = np.asarray(gt.detach().cpu()) if _is_tensor(gt) else np.asarray(gt)
            _check_integer(pred.dtype.kind, pred.dtype, "pred")
            _check_integer(gt.dtype.kind, gt.dtype, "gt")
            if pred.shape != gt.shape:
                raise ValueError(f"pred {list(pred.shape)} and gt {list(gt.shape)} differ in shape")
            pred, gt = pred.reshape(-1).astype(np.int64), gt.reshape(-1).astype(np.int64)
            valid = (gt >= 0) & (gt < c)
            p, g = pred[valid], gt[valid]
            p = np.where((p >= 0) & (p < c), p, c)
            counts = np.bincount(g * (c + 1) + p, minlength=c * (c + 1))
        self.matrix += counts.reshape(c, c + 1).astype(np.int64)

    def merge(self, other: SemanticConfusion) -> SemanticConfusion:
        """Add `other`'s counts to this one (in place) and return self."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(
                f"cannot merge confusion {list(other.matrix.shape)} into {list(self.matrix.shape)}"
            )
        self.matrix += other.matrix
        return self

    def true_positives(self) -> np.ndarray:
        """int64 [C]."""
        return np.diagonal(self.matrix[:, : self.num_classes]).copy()

    def false_positives(self) -> np.ndarray:
        """int64 [C]: vertices of another valid class predicted as this one."""
        return self.matrix[:, : self.num_classes].sum(axis=0) - self.true_positives()

    def false_negatives(self) -> np.ndarray:
        """int64 [C]: vertices of this class predicted as anything else, invalid predictions included."""
        return self.matrix.sum(axis=1) - self.true_positives()

    def gt_counts(self) -> np.ndarray:
        """int64 [C]: vertices with ground truth c."""
        return self.matrix.sum(axis=1)

    def iou(self) -> np.ndarray:
        """float64 [C]: TP / (TP + FP + FN), NaN where that denominator is 0."""
        tp = self.true_positives()
        denom = tp + self.false_positives() + self.false_negatives()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (NaN if none is)."""
        iou = self.iou()
        return float(np.mean(iou[~np.isnan(iou)])) if not np.all(np.isnan(iou)) else float("nan")

    def accuracy(self) -> float:
        """Overall vertex accuracy: TP summed / vertices with valid ground truth (invalid predictions
        are wrong); NaN when there is no valid ground truth."""
        total = int(self.matrix.sum())
        return float(self.true_positives().sum() / total) if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """float64 [C]: per-class recall TP / gt count, NaN for a class without ground truth."""
        gt = self.gt_counts()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gt > 0, self.true_positives() / np.maximum(gt, 1), np.nan)

    def mean_class_accuracy(self) -> float:
        """Mean of class_accuracy over the classes with ground truth (mAcc)."""
        acc = self.class_accuracy()
        return float(np.mean(acc[~np.isnan(acc)])) if not np.all(np.isnan(acc)) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics; NaN is written as None. Keys: `miou`, `accuracy`,
        `mean_class_accuracy`, `iou` {name: IoU}, `class_accuracy` {name: recall},
        `num_points` (vertices with valid ground truth), `num_invalid_predictions`,
        `num_classes_evaluated` (classes with defined IoU), `counts` {name: {gt, tp, fp, fn}},
        `class_names`, `confusion` (the [C, C + 1] matrix as lists)."""

        def clean(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        iou, acc = self.iou(), self.class_accuracy()
        tp, fp, fn, gt = (
            self.true_positives(),
            self.false_positives(),
            self.false_negatives(),
            self.gt_counts(),
        )
        names = self.class_names
        return {
            "miou": clean(self.miou()),
            "accuracy": clean(self.accuracy()),
            "mean_class_accuracy": clean(self.mean_class_accuracy()),
            "iou": {n: clean(v) for n, v in zip(names, iou, strict=True)},
            "class_accuracy": {n: clean(v) for n, v in zip(names, acc, strict=True)},
            "num_points": int(self.matrix.sum()),
            "num_invalid_predictions": int(self.matrix[:, -1].sum()),
            "num_classes_evaluated": int((~np.isnan(iou)).sum()),
            "counts": {
                n: {"gt": int(gt[i]), "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i])}
                for i, n in enumerate(names)
            },
            "class_names": list(names),
            "confusion": self.matrix.tolist(),
        }


def _percent(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.1f}"


def format_iou_table(confusion: SemanticConfusion) -> str:
    """A Markdown table: one row per class (IoU and accuracy in %, '-' where undefined, gt vertex
    count), then the mean row (mIoU, mAcc, total), then overall accuracy and invalid predictions."""
    iou, acc, gt = confusion.iou(), confusion.class_accuracy(), confusion.gt_counts()
    lines = ["| class | IoU (%) | acc (%) | gt points |", "|---|---:|---:|---:|"]
    for i, name in enumerate(confusion.class_names):
        lines.append(f"| {name} | {_percent(iou[i])} | {_percent(acc[i])} | {gt[i]} |")
    lines.append(
        f"| **mean** | **{_percent(confusion.miou())}** | {_percent(confusion.mean_class_accuracy())} "
        f"| {int(gt.sum())} |"
    )
    lines.append("")
    lines.append(
        f"overall accuracy {_percent(confusion.accuracy())} %; "
        f"invalid predictions {int(confusion.matrix[:, -1].sum())}; "
        f"classes with defined IoU {int((~np.isnan(iou)).sum())} / {confusion.num_classes}"
    )
    return "\n".join(lines) + "\n"


# ---- submission files --------------------------------------------------------------------------


def classes_to_nyu40(classes: Any) -> np.ndarray:
    """20-class indices [P] -> nyu40 ids int64 [P]; anything outside 0..19 -> 0 (unannotated)."""
    classes = np.asarray(classes.detach().cpu()) if _is_tensor(classes) else np.asarray(classes)
    _check_integer(classes.dtype.kind, classes.dtype, "classes")
    classes = classes.astype(np.int64)
    ids = np.asarray(SEG20_NYU40_IDS, dtype=np.int64)
    valid = (classes >= 0) & (classes < len(ids))
    return np.where(valid, ids[np.where(valid, classes, 0)], 0)


def write_submission(out_dir: str | os.PathLike, scene_id: str, classes: Any) -> Path:
    """Write `{out_dir}/{scene_id}.txt` in ScanNet's benchmark format: one nyu40 id a line, one line
    per vh_clean_2 vertex (classes: int [P] 20-class indices, invalid -> 0). Atomic; returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{scene_id}.txt"
    ids = classes_to_nyu40(classes).reshape(-1)
    write_text_atomic(path, "".join(f"{i}\n" for i in ids.tolist()))
    return path


def read_submission(path: str | os.PathLike) -> np.ndarray:
    """The nyu40 ids of a submission file, int64 [P]. A line that is not one integer is a
    ScanNetFormatError naming the file and line (a final newline is optional)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        return np.array([int(line) for line in lines], dtype=np.int64)
    except ValueError:
        for number, line in enumerate(lines, start=1):
            try:
                int(line)
            except ValueError:
                raise ScanNetFormatError(
                    f"{path}: line {number} is {line!r}, expected one integer nyu40 id"
                ) from None
        raise


# ---- evaluating a directory of submissions -----------------------------------------------------


def select_eval_scenes(
    pred_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    split: str | None = None,
    scenes: Iterable[str] | None = None,
) -> list[str]:
    """The scenes to evaluate, sorted. `split` is "train"/"val"/"test" (the processed root's
    `splits/<split>.txt`) or a split file's path; `scenes` lists ids; both given = intersection.
    With neither, every `.txt` in `pred_dir` is a scene (as the official script does)."""
    selected: set[str] | None = None
    if split is not None:
        split_path = Path(split) if Path(split).is_file() else Path(data_root) / "splits" / f"{split}.txt"
        if not split_path.is_file():
            raise FileNotFoundError(f"split {split!r}: no file {split_path}")
        selected = set(read_split(split_path))
    if scenes is not None:
        scenes = set(scenes)
        selected = scenes if selected is None else selected & scenes
    if selected is None:
        selected = {p.stem for p in Path(pred_dir).glob("*.txt")}
        if not selected:
            raise FileNotFoundError(f"{pred_dir}: no prediction .txt files")
    return sorted(selected)


def evaluate_scene_submission(pred_path: str | os.PathLike, gt_classes: np.ndarray) -> SemanticConfusion:
    """The confusion of one submission file against ground truth int [N] (20-class, -1 ignore)."""
    pred_path = Path(pred_path)
    if not pred_path.is_file():
        raise FileNotFoundError(f"{pred_path}: prediction file missing")
    pred = nyu40_to_seg20(read_submission(pred_path))
    if len(pred) != len(gt_classes):
        raise ScanNetFormatError(
            f"{pred_path}: {len(pred)} predicted labels but the scene has {len(gt_classes)} vertices"
        )
    confusion = SemanticConfusion()
    confusion.update(pred, gt_classes)
    return confusion


def evaluate_submission_dir(
    pred_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    scene_ids: Sequence[str],
) -> SemanticConfusion:
    """Sum the confusion of `{pred_dir}/{scene}.txt` against `{data_root}/{scene}/segment20.npy`
    over `scene_ids`. A missing prediction or ground-truth file, or a line count that is not the
    scene's vertex count, raises an error naming the file."""
    total = SemanticConfusion()
    for scene_id in scene_ids:
        gt_path = Path(data_root) / scene_id / "segment20.npy"
        if not gt_path.is_file():
            raise FileNotFoundError(f"{gt_path}: ground truth missing for scene {scene_id}")
        gt = np.load(gt_path)
        total.merge(evaluate_scene_submission(Path(pred_dir) / f"{scene_id}.txt", gt))
    return total


# ---- pictures and meshes -----------------------------------------------------------------------


def label_colors(classes: Any) -> np.ndarray:
    """uint8 [P, 3]: SEG20_PALETTE color of each class index, black for anything outside 0..19."""
    classes = np.asarray(classes.detach().cpu()) if _is_tensor(classes) else np.asarray(classes)
    classes = classes.reshape(-1).astype(np.int64)
    valid = (classes >= 0) & (classes < len(SEG20_PALETTE))
    colors = np.zeros((len(classes), 3), dtype=np.uint8)
    colors[valid] = SEG20_PALETTE[classes[valid]]
    return colors


def write_label_ply(
    path: str | os.PathLike, coords: np.ndarray, classes: Any, faces: np.ndarray | None = None
) -> None:
    """Write a PLY of points coords float [P, 3] colored by class (SEG20_PALETTE; ignore / invalid =
    black), for viewing predictions or ground truth. Vertices only unless `faces` int [F, 3] (the
    vh_clean_2 faces) are given. Atomic (scene_kd.scannet.mesh layout)."""
    colors = label_colors(classes)
    if len(colors) != len(coords):
        raise ValueError(f"{path}: {len(colors)} labels for {len(coords)} points")
    faces = np.zeros((0, 3), dtype=np.int32) if faces is None else faces
    write_mesh_ply(path, Mesh(vertices=coords, colors=colors, faces=faces))


# Layout of save_confusion_png, in pixels: the image is
# (LEFT + (C + 1) * CELL + PAD) wide and (TOP + C * CELL + PAD) high (716 x 688 for 20 classes).
CONFUSION_CELL = 28
CONFUSION_LEFT = 120
CONFUSION_TOP = 120
CONFUSION_PAD = 8


def confusion_png_size(num_classes: int = NUM_SEG20_CLASSES) -> tuple[int, int]:
    """(width, height) of save_confusion_png's image."""
    return (
        CONFUSION_LEFT + (num_classes + 1) * CONFUSION_CELL + CONFUSION_PAD,
        CONFUSION_TOP + num_classes * CONFUSION_CELL + CONFUSION_PAD,
    )


def render_confusion(confusion: SemanticConfusion):
    """A PIL RGB image of the row-normalized confusion matrix: rows = ground truth, columns =
    prediction plus a last "invalid" column; white (0) to dark blue (1), each cell's percentage
    written when >= 1 %; rows without ground truth are gray."""
    from PIL import Image, ImageDraw, ImageFont

    c, cell = confusion.num_classes, CONFUSION_CELL
    image = Image.new("RGB", confusion_png_size(c), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    rows = confusion.matrix.astype(np.float64)
    totals = rows.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, rows / np.maximum(totals, 1), np.nan)
    low, high = np.array([255, 255, 255]), np.array([8, 48, 107])
    for r in range(c):
        for k in range(c + 1):
            x0, y0 = CONFUSION_LEFT + k * cell, CONFUSION_TOP + r * cell
            value = norm[r, k]
            fill = (
                (200, 200, 200)
                if np.isnan(value)
                else tuple(int(v) for v in np.round(low + (high - low) * value))
            )
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=fill)
            if not np.isnan(value) and value >= 0.01:
                text = f"{round(100 * value)}"
                draw.text(
                    (x0 + cell / 2, y0 + cell / 2), text, fill="white" if value > 0.5 else "black",
                    font=font, anchor="mm",
                )  # fmt: skip
    names = list(confusion.class_names)
    for r, name in enumerate(names):
        y = CONFUSION_TOP + r * cell + cell / 2
        draw.text((CONFUSION_LEFT - 4, y), name, fill="black", font=font, anchor="rm")
    for k, name in enumerate([*names, "invalid"]):
        # Column names run bottom-up: draw on a strip, rotate it, paste it above the column.
        strip = Image.new("RGB", (CONFUSION_TOP - 4, cell), "white")
        ImageDraw.Draw(strip).text((2, cell / 2), name, fill="black", font=font, anchor="lm")
        image.paste(strip.rotate(90, expand=True), (CONFUSION_LEFT + k * cell, 0))
    draw.text((4, 4), "rows: ground truth", fill="black", font=font)
    draw.text((4, 18), "columns: prediction", fill="black", font=font)
    return image


def save_confusion_png(path: str | os.PathLike, confusion: SemanticConfusion) -> None:
    """Write render_confusion's picture as a PNG (atomic); size confusion_png_size(C)."""
    buffer = io.BytesIO()
    render_confusion(confusion).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_evaluation_outputs(out_dir: str | os.PathLike, confusion: SemanticConfusion, **extra: Any) -> dict:
    """Write `metrics.json` (to_dict() plus `extra`, e.g. scene ids), `table.md` and
    `confusion.png` into `out_dir` (created); returns the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**confusion.to_dict(), **extra}
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(out_dir / "table.md", format_iou_table(confusion))
    save_confusion_png(out_dir / "confusion.png", confusion)
    return metrics
