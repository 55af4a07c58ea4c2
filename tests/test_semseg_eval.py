"""scene_kd.eval.semseg and tools/evaluate_seg.py: the ScanNet semantic protocol against
hand-computed confusion matrices, submission files, the PLY / PNG outputs and the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import plyfile
import pytest
from PIL import Image

from scene_kd.eval.semseg import (
    SemanticConfusion,
    classes_to_nyu40,
    confusion_png_size,
    evaluate_submission_dir,
    format_iou_table,
    read_submission,
    save_confusion_png,
    write_label_ply,
    write_submission,
)
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.labels import SEG20_NAMES, SEG20_NYU40_IDS, SEG20_PALETTE, nyu40_to_seg20

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "evaluate_seg.py"


# ---- the metric on a 3-class toy, by hand --------------------------------------------------------
#   gt   = [0, 0, 0, 1, 1, 2, -1, -1,  0, 2]
#   pred = [0, 0, 1, 1, 0, 2,  1,  5, -1, 7]
# Vertices 6, 7 are ignored (their predictions count nowhere). 5, -1, 7 are invalid predictions.
# Confusion (rows gt 0..2; columns pred 0..2, invalid):
#   gt 0: [2, 1, 0, 1]    gt 1: [1, 1, 0, 0]    gt 2: [0, 0, 1, 1]
# TP = [2, 1, 1]; FP = column sums - TP = [1, 1, 0]; FN = row sums - TP = [2, 1, 1]
# IoU = [2/5, 1/3, 1/2]; mIoU = (0.4 + 1/3 + 0.5) / 3; accuracy = 4 / 8.
TOY_GT = np.array([0, 0, 0, 1, 1, 2, -1, -1, 0, 2])
TOY_PRED = np.array([0, 0, 1, 1, 0, 2, 1, 5, -1, 7])
TOY_MATRIX = np.array([[2, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]])


def toy_confusion() -> SemanticConfusion:
    confusion = SemanticConfusion(num_classes=3, class_names=["a", "b", "c"])
    confusion.update(TOY_PRED, TOY_GT)
    return confusion


def test_toy_confusion_matrix_by_hand():
    confusion = toy_confusion()
    assert confusion.matrix.dtype == np.int64 and confusion.matrix.shape == (3, 4)
    np.testing.assert_array_equal(confusion.matrix, TOY_MATRIX)
    np.testing.assert_array_equal(confusion.true_positives(), [2, 1, 1])
    np.testing.assert_array_equal(confusion.false_positives(), [1, 1, 0])
    np.testing.assert_array_equal(confusion.false_negatives(), [2, 1, 1])
    np.testing.assert_allclose(confusion.iou(), [2 / 5, 1 / 3, 1 / 2])
    assert confusion.miou() == pytest.approx((2 / 5 + 1 / 3 + 1 / 2) / 3)
    assert confusion.accuracy() == pytest.approx(4 / 8)
    np.testing.assert_allclose(confusion.class_accuracy(), [2 / 4, 1 / 2, 1 / 2])


def test_ignored_ground_truth_adds_no_false_positive():
    # Without the ignore rule, vertex 6 (gt -1, pred 1) would be a false positive of class 1.
    confusion = toy_confusion()
    assert confusion.false_positives()[1] == 1
    assert confusion.matrix.sum() == 8  # the 8 vertices with valid ground truth


def test_invalid_prediction_is_false_negative_not_false_positive():
    confusion = SemanticConfusion(num_classes=3)
    confusion.update(np.array([-1, 3, 255]), np.array([0, 0, 0]))
    np.testing.assert_array_equal(confusion.matrix, [[0, 0, 0, 3], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion.false_negatives(), [3, 0, 0])
    np.testing.assert_array_equal(confusion.false_positives(), [0, 0, 0])
    iou = confusion.iou()
    assert iou[0] == 0 and math.isnan(iou[1]) and math.isnan(iou[2])


def test_matrix_summed_over_scenes_before_iou():
    # scene A: gt [0, 0] pred [0, 0]; scene B: gt [0, 1, 1, 1] pred [1, 1, 1, 1].
    # Summed: gt 0 -> [2, 1, 0]; gt 1 -> [0, 3, 0]. IoU = [2/3, 3/4].
    # (Averaging per-scene mIoU would give (1 + (0 + 3/4) / 2) / 2 = 0.6875 instead.)
    scene_a, scene_b = SemanticConfusion(num_classes=2), SemanticConfusion(num_classes=2)
    scene_a.update(np.array([0, 0]), np.array([0, 0]))
    scene_b.update(np.array([1, 1, 1, 1]), np.array([0, 1, 1, 1]))
    assert scene_a.miou() == 1.0 and scene_b.miou() == pytest.approx(0.375)
    total = SemanticConfusion(num_classes=2).merge(scene_a).merge(scene_b)
    np.testing.assert_array_equal(total.matrix, [[2, 1, 0], [0, 3, 0]])
    np.testing.assert_allclose(total.iou(), [2 / 3, 3 / 4])
    assert total.miou() == pytest.approx((2 / 3 + 3 / 4) / 2)
    # One update over the concatenation is the same thing.
    joint = SemanticConfusion(num_classes=2)
    joint.update(np.array([0, 0, 1, 1, 1, 1]), np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_array_equal(joint.matrix, total.matrix)


def test_class_absent_everywhere_is_nan_and_left_out_of_miou():
    # Class 2 appears neither in gt nor in pred: IoU NaN, mIoU over classes 0 and 1.
    confusion = SemanticConfusion(num_classes=3)
    confusion.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    iou = confusion.iou()
    np.testing.assert_allclose(iou[:2], [1 / 2, 1 / 2])
    assert math.isnan(iou[2])
    assert confusion.miou() == pytest.approx(0.5)
    assert confusion.to_dict()["iou"]["class_2"] is None
    assert confusion.to_dict()["num_classes_evaluated"] == 2
    # Predicted but absent from gt: defined, IoU 0, and it pulls the mean down (official script).
    confusion.update(np.array([2]), np.array([1]))
    assert confusion.iou()[2] == 0.0
    assert confusion.miou() == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)


def test_empty_confusion_is_nan():
    confusion = SemanticConfusion()
    assert np.isnan(confusion.iou()).all() and math.isnan(confusion.miou())
    assert math.isnan(confusion.accuracy())
    assert json.loads(json.dumps(confusion.to_dict()))["miou"] is None


# ---- the 20-class case, from nyu40 ids ----------------------------------------------------------
#   gt nyu40   [1, 1, 2, 39, 13, 0, 36, 36]  -> class [0, 0, 1, 19, -1, -1, 18, 18]
#   pred nyu40 [1, 2, 2, 39,  1, 1, 40, 13]  -> class [0, 1, 1, 19,  0,  0, -1, -1]
# wall: TP 1, FN 1 (-> floor), FP 0 (vertices 4, 5 are ignored) -> 1/2
# floor: TP 1, FP 1 -> 1/2; otherfurniture: 1; bathtub: both predicted as ids outside the 20
# (otherprop 40, blinds 13) -> TP 0, FN 2, FP 0 -> 0. The other 16 classes: NaN.
# mIoU = (1/2 + 1/2 + 1 + 0) / 4; accuracy = 3 / 6.
def test_twenty_classes_by_hand():
    gt = nyu40_to_seg20(np.array([1, 1, 2, 39, 13, 0, 36, 36]))
    pred = nyu40_to_seg20(np.array([1, 2, 2, 39, 1, 1, 40, 13]))
    confusion = SemanticConfusion()
    confusion.update(pred, gt)
    expected = np.zeros((20, 21), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[19, 19] = 1
    expected[18, 20] = 2
    np.testing.assert_array_equal(confusion.matrix, expected)
    iou = confusion.iou()
    defined = {0: 0.5, 1: 0.5, 18: 0.0, 19: 1.0}
    for c in range(20):
        if c in defined:
            assert iou[c] == pytest.approx(defined[c]), SEG20_NAMES[c]
        else:
            assert math.isnan(iou[c]), SEG20_NAMES[c]
    assert confusion.miou() == pytest.approx(0.5)
    assert confusion.accuracy() == pytest.approx(0.5)
    metrics = confusion.to_dict()
    assert metrics["iou"]["bathtub"] == 0.0 and metrics["iou"]["sofa"] is None
    assert metrics["counts"]["bathtub"] == {"gt": 2, "tp": 0, "fp": 0, "fn": 2}
    assert metrics["num_points"] == 6 and metrics["num_invalid_predictions"] == 2
    table = format_iou_table(confusion)
    assert "| wall | 50.0 | 50.0 | 2 |" in table
    assert "| sofa | - | - | 0 |" in table
    assert "| **mean** | **50.0** |" in table


def official_script_iou(pred_nyu40: np.ndarray, gt_nyu40: np.ndarray) -> np.ndarray:
    """ScanNet's evaluate_semantic_label.py get_iou (confusion indexed by nyu40 id; made 41 wide
    so that a predicted 40 does not overflow it)."""
    valid_ids = np.array(SEG20_NYU40_IDS)
    confusion = np.zeros((41, 41), dtype=np.int64)
    keep = np.isin(gt_nyu40, valid_ids)
    np.add.at(confusion, (gt_nyu40[keep], pred_nyu40[keep]), 1)
    ious = []
    for label in valid_ids:
        tp = confusion[label, label]
        fn = confusion[label, :].sum() - tp
        fp = confusion[[v for v in valid_ids if v != label], label].sum()
        ious.append(np.nan if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return np.array(ious)


def test_matches_official_script_on_random_scenes():
    rng = np.random.default_rng(0)
    confusion = SemanticConfusion()
    all_gt, all_pred = [], []
    for _ in range(3):
        gt = rng.integers(0, 41, size=500)
        pred = np.where(rng.random(500) < 0.6, gt, rng.integers(0, 41, size=500))
        confusion.update(nyu40_to_seg20(pred), nyu40_to_seg20(gt))
        all_gt.append(gt)
        all_pred.append(pred)
    expected = official_script_iou(np.concatenate(all_pred), np.concatenate(all_gt))
    np.testing.assert_allclose(confusion.iou(), expected)


def test_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    numpy_confusion = toy_confusion()
    torch_confusion = SemanticConfusion(num_classes=3)
    torch_confusion.update(torch.from_numpy(TOY_PRED), torch.from_numpy(TOY_GT))
    np.testing.assert_array_equal(torch_confusion.matrix, numpy_confusion.matrix)
    mixed = SemanticConfusion(num_classes=3)
    mixed.update(torch.from_numpy(TOY_PRED).int(), TOY_GT)
    np.testing.assert_array_equal(mixed.matrix, numpy_confusion.matrix)
    with pytest.raises(TypeError, match="argmax"):
        torch_confusion.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_update_rejects_float_and_mismatched_shapes():
    confusion = SemanticConfusion()
    with pytest.raises(TypeError, match="integer"):
        confusion.update(np.zeros(3), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        confusion.update(np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="merge"):
        confusion.merge(SemanticConfusion(num_classes=3))


# ---- submission files ---------------------------------------------------------------------------


def test_classes_to_nyu40():
    np.testing.assert_array_equal(classes_to_nyu40(np.array([0, 19, -1, 12, 20, 255])), [1, 39, 0, 14, 0, 0])


def test_submission_round_trip(tmp_path):
    path = write_submission(tmp_path / "sub", "scene0000_00", np.array([0, 19, -1, 12]))
    assert path == tmp_path / "sub" / "scene0000_00.txt"
    assert path.read_text() == "1\n39\n0\n14\n"
    np.testing.assert_array_equal(read_submission(path), [1, 39, 0, 14])
    classes = np.random.default_rng(1).integers(-1, 20, size=1000)
    write_submission(tmp_path / "sub", "scene0001_00", classes)
    back = nyu40_to_seg20(read_submission(tmp_path / "sub" / "scene0001_00.txt"))
    np.testing.assert_array_equal(back, classes)
    assert not list((tmp_path / "sub").glob(".*tmp*"))  # no temporary file left behind


def test_read_submission_reports_bad_line(tmp_path):
    path = tmp_path / "scene0000_00.txt"
    path.write_text("1\n2\nchair\n3\n")
    with pytest.raises(ScanNetFormatError, match=r"scene0000_00\.txt: line 3"):
        read_submission(path)


def make_processed_root(root: Path) -> dict[str, np.ndarray]:
    """Three scenes (coord.npy, segment20.npy) and splits/val.txt naming the first two."""
    scenes = {
        "scene0000_00": np.array([0, 0, 1, -1, 2]),
        "scene0001_00": np.array([1, 1, 19]),
        "scene0002_00": np.array([3, 3]),
    }
    for scene_id, segment in scenes.items():
        (root / scene_id).mkdir(parents=True)
        np.save(root / scene_id / "coord.npy", np.zeros((len(segment), 3), dtype=np.float32))
        np.save(root / scene_id / "segment20.npy", segment.astype(np.int64))
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("scene0000_00\nscene0001_00\n")
    return scenes


# Predictions for the val scenes, nyu40 ids:
#   scene0000_00 gt [0, 0, 1, -1, 2] pred nyu40 [1, 2, 2, 1, 40] -> class [0, 1, 1, 0, -1]
#   scene0001_00 gt [1, 1, 19]       pred nyu40 [2, 1, 39]       -> class [1, 0, 19]
# Summed: wall TP 1 FP 1 FN 1 -> 1/3; floor TP 2 FP 1 FN 1 -> 1/2; cabinet TP 0 FN 1 -> 0;
# otherfurniture 1. mIoU = (1/3 + 1/2 + 0 + 1) / 4 = 11/24; accuracy 4/7.
VAL_PREDICTIONS = {"scene0000_00": [1, 2, 2, 1, 40], "scene0001_00": [2, 1, 39]}


def write_predictions(pred_dir: Path) -> None:
    pred_dir.mkdir(parents=True, exist_ok=True)
    for scene_id, ids in VAL_PREDICTIONS.items():
        (pred_dir / f"{scene_id}.txt").write_text("".join(f"{i}\n" for i in ids))


def test_evaluate_submission_dir(tmp_path):
    make_processed_root(tmp_path / "data")
    write_predictions(tmp_path / "pred")
    confusion = evaluate_submission_dir(tmp_path / "pred", tmp_path / "data", list(VAL_PREDICTIONS))
    assert confusion.miou() == pytest.approx(11 / 24)
    assert confusion.accuracy() == pytest.approx(4 / 7)


def test_submission_line_count_mismatch_names_file(tmp_path):
    make_processed_root(tmp_path / "data")
    write_predictions(tmp_path / "pred")
    (tmp_path / "pred" / "scene0001_00.txt").write_text("2\n1\n")
    with pytest.raises(
        ScanNetFormatError, match=r"scene0001_00\.txt: 2 predicted labels but the scene has 3"
    ):
        evaluate_submission_dir(tmp_path / "pred", tmp_path / "data", list(VAL_PREDICTIONS))
    with pytest.raises(FileNotFoundError, match=r"scene0002_00\.txt"):
        evaluate_submission_dir(tmp_path / "pred", tmp_path / "data", ["scene0002_00"])


# ---- PLY and PNG ---------------------------------------------------------------------------------


def test_write_label_ply_colors(tmp_path):
    coords = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_label_ply(tmp_path / "pred.ply", coords, np.array([0, 19, -1, 25]))
    vertex = plyfile.PlyData.read(str(tmp_path / "pred.ply"))["vertex"].data
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1), coords)
    colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1)
    np.testing.assert_array_equal(colors, [SEG20_PALETTE[0], SEG20_PALETTE[19], [0, 0, 0], [0, 0, 0]])


def test_confusion_png_size_and_cells(tmp_path):
    confusion = SemanticConfusion()
    confusion.update(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))  # wall, floor perfect
    save_confusion_png(tmp_path / "confusion.png", confusion)
    image = Image.open(tmp_path / "confusion.png")
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    # 120 + 21 * 28 + 8 wide, 120 + 20 * 28 + 8 high.
    assert image.size == confusion_png_size(20) == (716, 688)
    # Cell corners (away from the printed percentage): a perfect diagonal cell is the darkest
    # color, an off-diagonal cell of a labelled row white, a row without ground truth gray.
    assert image.getpixel((120 + 2, 120 + 2)) == (8, 48, 107)
    assert image.getpixel((120 + 28 + 2, 120 + 2)) == (255, 255, 255)
    assert image.getpixel((120 + 2, 120 + 2 * 28 + 2)) == (200, 200, 200)


# ---- the CLI -------------------------------------------------------------------------------------


def load_tool():
    spec = importlib.util.spec_from_file_location("evaluate_seg_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_on_tiny_processed_root(tmp_path):
    make_processed_root(tmp_path / "data")
    write_predictions(tmp_path / "pred")
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "data"),
         "--split", "val", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| wall | 33.3 |" in result.stdout
    assert "| **mean** | **45.8** |" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(11 / 24)
    assert metrics["scenes"] == ["scene0000_00", "scene0001_00"]
    assert (out / "table.md").read_text() in result.stdout
    assert Image.open(out / "confusion.png").size == (716, 688)


def test_cli_errors_name_the_file(tmp_path, capsys):
    tool = load_tool()
    make_processed_root(tmp_path / "data")
    write_predictions(tmp_path / "pred")
    args = ["--pred", str(tmp_path / "pred"), "--data", str(tmp_path / "data")]
    # Without --split / --scenes the prediction files choose the scenes.
    assert tool.main(args) == 0
    assert "2 scenes" in capsys.readouterr().out
    # scene0002_00 selected but not predicted.
    assert tool.main([*args, "--scenes", "scene0001_00", "scene0002_00"]) == 1
    assert "scene0002_00.txt" in capsys.readouterr().err
    (tmp_path / "pred" / "scene0000_00.txt").write_text("1\n2\n")
    assert tool.main([*args, "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "scene0000_00.txt" in err and "2 predicted labels but the scene has 5 vertices" in err
