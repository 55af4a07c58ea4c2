"""scene_kd.eval.detection and tools/evaluate_det.py: VoteNet's detection protocol against
hand-computed APs, an independent per-prediction re-implementation, the box JSON / PLY files and
the CLI on a tiny processed set."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from pair_checks import make_processed_scans

from scene_kd.box_geometry import box_corner_points
from scene_kd.eval.detection import (
    average_precision,
    class_colors,
    evaluate_detection,
    format_ap_table,
    read_boxes_json,
    write_boxes_json,
    write_boxes_ply,
    write_detection_outputs,
)
from scene_kd.scannet.boxes import load_scene_boxes
from scene_kd.scannet.labels import DET18_NAMES, DET18_NYU40_IDS, NYU40_PALETTE

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "evaluate_det.py"
NAMES = ("a", "b", "c")
UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
FAR = [5.0, 5.0, 5.0, 6.0, 6.0, 6.0]


def gt_entry(boxes, labels):
    return {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 6),
        "labels": np.array(labels, dtype=np.int64),
    }


def pred_entry(boxes, scores, labels):
    return {**gt_entry(boxes, labels), "scores": np.array(scores, dtype=np.float64)}


def evaluate(predictions, ground_truth, thresholds=(0.25, 0.5)):
    return evaluate_detection(predictions, ground_truth, NAMES, thresholds)


# ---- voc_ap ------------------------------------------------------------------------------------


def test_average_precision_hand_worked():
    # rec [.5, .5, 1], prec [1, .5, 2/3]: envelope [1, 2/3, 2/3]; area .5 * 1 + .5 * 2/3
    assert average_precision([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 1 / 3)
    # TP, FP, FP, TP, TP with 3 boxes: rec [1/3, 1/3, 1/3, 2/3, 1], prec [1, 1/2, 1/3, 1/2, 3/5];
    # the envelope lifts the 1/3 -> 2/3 step from 1/2 to 3/5: AP = 1/3 * (1 + 3/5 + 3/5)
    rec, prec = [1 / 3, 1 / 3, 1 / 3, 2 / 3, 1.0], [1.0, 1 / 2, 1 / 3, 1 / 2, 3 / 5]
    assert average_precision(rec, prec) == pytest.approx((1 + 0.6 + 0.6) / 3)
    # recall stops at .5: the rest of the axis has precision 0
    assert average_precision([0.5], [1.0]) == pytest.approx(0.5)
    assert average_precision([], []) == 0.0
    assert average_precision(torch.tensor([1.0]), torch.tensor([1.0])) == 1.0
    with pytest.raises(ValueError, match="same length"):
        average_precision([0.5, 1.0], [1.0])


# ---- evaluate_detection on hand-worked cases -----------------------------------------------------


def test_perfect_detections_give_ap_one():
    gt = {
        "s0": gt_entry([UNIT, [2, 0, 0, 3, 1, 2]], [0, 1]),
        "s1": gt_entry([[0, 0, 0, 0.5, 0.5, 0.5], FAR, UNIT], [0, 0, 2]),
    }
    pred = {s: {**g, "scores": np.linspace(0.9, 0.5, len(g["labels"]))} for s, g in gt.items()}
    r = evaluate(pred, gt)
    for thr in (0.25, 0.5):
        assert r["ap"][thr] == {"a": 1.0, "b": 1.0, "c": 1.0}
        assert r["recall"][thr] == {"a": 1.0, "b": 1.0, "c": 1.0}
        assert r["map"][thr] == 1.0
    assert r["map@0.25"] == r["map@0.5"] == r["mar@0.5"] == 1.0
    assert r["num_gt"] == {"a": 3, "b": 1, "c": 1}
    assert r["num_pred"] == {"a": 3, "b": 1, "c": 1}
    assert r["num_scenes"] == 2 and r["iou_thresholds"] == [0.25, 0.5]


def test_shifted_box_counts_at_025_not_at_05():
    # shifted by 0.5 along x: IoU = 0.5 / (1 + 1 - 0.5) = 1/3, between 0.25 and 0.5
    r = evaluate({"s": pred_entry([[0.5, 0, 0, 1.5, 1, 1]], [0.9], [0])}, {"s": gt_entry([UNIT], [0])})
    assert r["ap"][0.25]["a"] == 1.0 and r["ap"][0.5]["a"] == 0.0
    assert r["recall"][0.25]["a"] == 1.0 and r["recall"][0.5]["a"] == 0.0


def test_iou_equal_to_the_threshold_is_a_miss():
    # the lower half of the cube: IoU exactly 0.5; VoteNet's test is `ovmax > ovthresh`
    r = evaluate({"s": pred_entry([[0, 0, 0, 1, 1, 0.5]], [0.9], [0])}, {"s": gt_entry([UNIT], [0])})
    assert r["ap"][0.25]["a"] == 1.0 and r["ap"][0.5]["a"] == 0.0


def test_duplicate_detection_is_a_false_positive():
    gt = {"s": gt_entry([UNIT], [0])}
    # 0.9 TP, 0.8 duplicate FP: rec [1, 1], prec [1, .5] -> AP 1
    r = evaluate({"s": pred_entry([UNIT, UNIT], [0.9, 0.8], [0, 0])}, gt)
    assert r["ap"][0.5]["a"] == 1.0
    # the duplicate ranks first: it is the TP, the later one the FP -> still AP 1
    r = evaluate({"s": pred_entry([UNIT, [0, 0, 0, 1, 1, 0.9]], [0.8, 0.9], [0, 0])}, gt)
    assert r["ap"][0.5]["a"] == 1.0


def test_false_positive_ranked_first():
    # 0.9 FP (far), 0.8 TP: rec [0, 1], prec [0, .5]; envelope .5 over the whole recall -> AP .5
    r = evaluate({"s": pred_entry([FAR, UNIT], [0.9, 0.8], [0, 0])}, {"s": gt_entry([UNIT], [0])})
    assert r["ap"][0.25]["a"] == pytest.approx(0.5)
    assert r["recall"][0.25]["a"] == 1.0


def test_missing_detections_and_mixed_ranking():
    # 3 ground-truth boxes in two scenes; predictions by score: TP, FP, TP, FP.
    # tp cum [1, 1, 2, 2], fp cum [0, 1, 1, 2]; rec [1/3, 1/3, 2/3, 2/3], prec [1, 1/2, 2/3, 1/2]
    # envelope at the recall steps: 1 (0 -> 1/3), 2/3 (1/3 -> 2/3), 0 (2/3 -> 1): AP = 1/3 + 2/9
    g1, g2, g3 = UNIT, [2, 0, 0, 3, 1, 1], [0, 2, 0, 1, 3, 1]
    gt = {"s0": gt_entry([g1, g2], [1, 1]), "s1": gt_entry([g3], [1])}
    pred = {
        "s0": pred_entry([g1, FAR, [2, 0, 0, 3, 1, 0.8]], [0.9, 0.8, 0.7], [1, 1, 1]),
        "s1": pred_entry([FAR], [0.6], [1]),
    }
    r = evaluate(pred, gt)
    assert r["ap"][0.5]["b"] == pytest.approx(1 / 3 + 2 / 9)
    assert r["recall"][0.5]["b"] == pytest.approx(2 / 3)
    # the same three boxes found as TP, FP, FP, TP, TP: AP = (1 + 3/5 + 3/5) / 3 (see above)
    ranked = {
        "s0": pred_entry([g1, FAR, FAR, g2], [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1]),
        "s1": pred_entry([g3], [0.5], [1]),
    }
    assert evaluate(ranked, gt)["ap"][0.5]["b"] == pytest.approx(2.2 / 3)
    # only the first two: rec [1/3, 1/3], prec [1, 1/2] -> AP 1/3
    pred["s0"] = pred_entry([g1, FAR], [0.9, 0.8], [1, 1])
    del pred["s1"]  # a scene with no predictions: its box is simply missed
    r = evaluate(pred, gt)
    assert r["ap"][0.5]["b"] == pytest.approx(1 / 3)
    assert r["recall"][0.5]["b"] == pytest.approx(1 / 3)


def test_duplicate_of_a_matched_box_is_fp_even_if_it_overlaps_another():
    # VoteNet takes the best-IoU box whether or not it is matched already. g1 = unit cube, g2 =
    # shifted by 0.6 in x. p2 = shifted by 0.2: IoU(p2, g1) = .8 / 1.2 = 2/3, IoU(p2, g2) =
    # .6 / 1.4 = 0.43; its best box g1 was taken by p1, so p2 is a FP although it overlaps the
    # unmatched g2 above 0.25. rec [.5, .5], prec [1, .5] -> AP .5
    gt = {"s": gt_entry([UNIT, [0.6, 0, 0, 1.6, 1, 1]], [0, 0])}
    r = evaluate({"s": pred_entry([UNIT, [0.2, 0, 0, 1.2, 1, 1]], [0.9, 0.8], [0, 0])}, gt)
    assert r["ap"][0.25]["a"] == pytest.approx(0.5)
    assert r["recall"][0.25]["a"] == pytest.approx(0.5)


def test_class_and_scene_must_match():
    gt = {"s0": gt_entry([UNIT], [0]), "s1": gt_entry([UNIT], [1])}
    # right box, wrong class in s0 (a FP of class b, a miss of a); right class, wrong scene in s1
    pred = {"s0": pred_entry([UNIT, UNIT], [0.9, 0.5], [1, 1]), "s1": pred_entry([], [], [])}
    r = evaluate(pred, gt)
    assert r["ap"][0.25] == {"a": 0.0, "b": 0.0, "c": r["ap"][0.25]["c"]}
    assert r["num_pred"] == {"a": 0, "b": 2, "c": 0}


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    gt = {"s": gt_entry([UNIT, FAR], [0, 1])}
    # a: perfect; b: missed (AP 0, no prediction); c: predicted but no ground truth anywhere
    pred = {"s": pred_entry([UNIT, [9, 9, 9, 10, 10, 10]], [0.9, 0.8], [0, 2])}
    r = evaluate(pred, gt)
    ap = r["ap"][0.5]
    assert ap["a"] == 1.0 and ap["b"] == 0.0 and math.isnan(ap["c"])
    assert math.isnan(r["recall"][0.5]["c"]) and r["recall"][0.5]["b"] == 0.0
    assert r["map"][0.5] == pytest.approx(0.5) and r["map@0.5"] == pytest.approx(0.5)
    assert r["num_pred"]["c"] == 1 and r["num_gt"]["c"] == 0
    table = format_ap_table(r, NAMES)
    assert "| c | - | - | 0 | 1 |" in table
    assert "| **mAP** | **50.00** | **50.00** | 2 | 2 |" in table
    assert "classes with ground truth 2 / 3" in table


def test_no_ground_truth_at_all_gives_nan_map():
    r = evaluate({"s": pred_entry([UNIT], [0.5], [0])}, {"s": gt_entry([], [])})
    assert math.isnan(r["map@0.25"])


def test_torch_inputs_and_input_errors():
    gt = {"s": {"boxes": torch.tensor([UNIT]), "labels": torch.tensor([0])}}
    pred = {"s": {"boxes": torch.tensor([UNIT]), "scores": torch.tensor([0.3]), "labels": torch.tensor([0])}}
    assert evaluate(pred, gt)["map@0.5"] == 1.0
    with pytest.raises(KeyError, match="without ground truth: t"):
        evaluate({**pred, "t": pred["s"]}, gt)
    with pytest.raises(ValueError, match=r"predictions\['s'\]\['labels'\] holds 3, outside 0..2"):
        evaluate({"s": pred_entry([UNIT], [0.3], [3])}, gt)
    with pytest.raises(ValueError, match=r"\['scores'\] has 2 entries for 1 boxes"):
        evaluate({"s": pred_entry([UNIT], [0.3, 0.2], [0])}, gt)
    with pytest.raises(KeyError, match="lacks key"):
        evaluate({"s": {"boxes": [UNIT], "labels": [0]}}, gt)
    with pytest.raises(TypeError, match="integer class indices"):
        evaluate({"s": pred_entry([UNIT], [0.3], [0]) | {"labels": np.array([0.0])}}, gt)


def reference_ap(predictions, ground_truth, num_classes, threshold):
    """VoteNet's eval_det_cls written out prediction by prediction (plain Python IoU)."""

    def iou(a, b):
        inter = math.prod(max(0.0, min(a[k + 3], b[k + 3]) - max(a[k], b[k])) for k in range(3))
        vol = lambda c: math.prod(c[k + 3] - c[k] for k in range(3))  # noqa: E731
        return inter / (vol(a) + vol(b) - inter)

    aps = []
    for c in range(num_classes):
        gts = {
            s: [b for b, lab in zip(g["boxes"].tolist(), g["labels"].tolist(), strict=True) if lab == c]
            for s, g in ground_truth.items()
        }
        npos = sum(len(v) for v in gts.values())
        taken = {s: [False] * len(v) for s, v in gts.items()}
        dets = [
            (score, s, box)
            for s, p in predictions.items()
            for box, score, label in zip(
                p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
            )
            if label == c
        ]
        dets.sort(key=lambda d: -d[0])
        tp, fp = [], []
        for _, s, box in dets:
            best, best_j = -math.inf, -1
            for j, g in enumerate(gts[s]):
                if iou(box, g) > best:
                    best, best_j = iou(box, g), j
            hit = best > threshold and not taken[s][best_j]
            if hit:
                taken[s][best_j] = True
            tp.append(float(hit))
            fp.append(float(not hit))
        if npos == 0:
            aps.append(math.nan)
            continue
        tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
        aps.append(average_precision(tp_cum / npos, tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)))
    return aps


def test_matches_a_per_prediction_reference_on_random_scenes():
    rng = np.random.default_rng(7)
    gt, pred = {}, {}
    for s in range(6):
        n = int(rng.integers(0, 8))
        lo = rng.uniform(0, 4, (n, 3))
        boxes = np.concatenate([lo, lo + rng.uniform(0.3, 1.5, (n, 3))], axis=1)
        gt[f"s{s}"] = gt_entry(boxes, rng.integers(0, 3, n))
        # noisy copies, some relabelled, some extra random boxes
        noisy = boxes + rng.normal(0, 0.15, boxes.shape)
        lo_x = rng.uniform(0, 4, (4, 3))
        extra = np.concatenate([lo_x, lo_x + rng.uniform(0.3, 1.5, (4, 3))], axis=1)
        both = np.concatenate([noisy, noisy[: n // 2], extra])
        both = np.concatenate(
            [np.minimum(both[:, :3], both[:, 3:]), np.maximum(both[:, :3], both[:, 3:])], axis=1
        )
        labels = np.concatenate(
            [gt[f"s{s}"]["labels"], gt[f"s{s}"]["labels"][: n // 2], rng.integers(0, 3, 4)]
        )
        flip = rng.random(len(labels)) < 0.15
        labels[flip] = rng.integers(0, 3, flip.sum())
        pred[f"s{s}"] = pred_entry(both, rng.random(len(labels)), labels)
    for thr in (0.25, 0.5):
        expected = reference_ap(pred, gt, 3, thr)
        got = evaluate(pred, gt, (thr,))["ap"][thr]
        np.testing.assert_allclose([got[n] for n in NAMES], expected, atol=1e-12)
        assert 0 < np.nanmean(expected) < 1  # a case with both hits and misses


# ---- files ---------------------------------------------------------------------------------------


def test_boxes_json_round_trip_and_errors(tmp_path):
    boxes = np.array([[0.1, 0.2, 0.3, 1.1, 2.2, 3.3], FAR])
    path = write_boxes_json(tmp_path / "s_boxes.json", boxes, [2, 17], [0.75, 0.25], DET18_NAMES)
    records = json.loads(path.read_text())
    assert records[0]["label"] == "chair" and records[1]["label"] == "garbage bin"
    assert records[0]["label_index"] == 2 and records[0]["score"] == 0.75
    np.testing.assert_allclose(records[0]["center"], [0.6, 1.2, 1.8])
    np.testing.assert_allclose(records[0]["size"], [1.0, 2.0, 3.0])
    back = read_boxes_json(path, DET18_NAMES)
    np.testing.assert_array_equal(back["boxes"], boxes)
    assert back["labels"].tolist() == [2, 17] and back["scores"].tolist() == [0.75, 0.25]
    empty = read_boxes_json(write_boxes_json(tmp_path / "e_boxes.json", np.zeros((0, 6)), [], []))
    assert empty["boxes"].shape == (0, 6) and empty["labels"].dtype == np.int64
    bad = tmp_path / "bad_boxes.json"
    bad.write_text(json.dumps([records[0], {"box": [0, 0, 0, 1, 1], "label_index": 0, "score": 1}]))
    with pytest.raises(ValueError, match=r"bad_boxes\.json: entry 1: 'box' has 5 numbers"):
        read_boxes_json(bad)
    bad.write_text(json.dumps([{"box": UNIT, "score": 1}]))
    with pytest.raises(ValueError, match=r"entry 0: missing key 'label_index'"):
        read_boxes_json(bad)
    bad.write_text(json.dumps([{**records[0], "label": "sofa"}]))
    with pytest.raises(ValueError, match="'sofa' is not class 2"):
        read_boxes_json(bad, DET18_NAMES)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad_boxes\.json: not valid JSON"):
        read_boxes_json(bad)


def test_wireframe_ply_reads_in_open3d(tmp_path):
    boxes = np.array([[0, 0, 0, 1, 2, 3], [5, 5, 5, 5.5, 6, 8]], dtype=np.float64)
    path = write_boxes_ply(tmp_path / "w.ply", boxes, [2, 17], len(DET18_NAMES))
    lines = o3d.io.read_line_set(str(path))
    points, edges, colors = np.asarray(lines.points), np.asarray(lines.lines), np.asarray(lines.colors)
    assert points.shape == (16, 3) and edges.shape == (24, 2) and colors.shape == (24, 3)
    np.testing.assert_allclose(points, box_corner_points(boxes).reshape(-1, 3), atol=1e-6)
    for k, box in enumerate(boxes):
        mine = edges[12 * k : 12 * k + 12]
        assert ((mine >= 8 * k) & (mine < 8 * k + 8)).all()
        lengths = np.linalg.norm(points[mine[:, 0]] - points[mine[:, 1]], axis=1)
        # 4 edges along each axis, each as long as the box along it
        np.testing.assert_allclose(np.sort(lengths), np.sort(np.repeat(box[3:] - box[:3], 4)), atol=1e-6)
    palette = NYU40_PALETTE[[DET18_NYU40_IDS[2], DET18_NYU40_IDS[17]]] / 255.0
    np.testing.assert_allclose(colors[:12], np.tile(palette[0], (12, 1)), atol=1e-6)
    np.testing.assert_allclose(colors[12:], np.tile(palette[1], (12, 1)), atol=1e-6)
    assert class_colors(5).shape == (5, 3) and len({tuple(c) for c in class_colors(5).tolist()}) == 5


def test_write_detection_outputs(tmp_path):
    gt = {"s0": gt_entry([UNIT], [0]), "s1": gt_entry([FAR], [1])}
    pred = {"s0": pred_entry([UNIT], [0.9], [0]), "s1": pred_entry([], [], [])}
    r = evaluate(pred, gt)
    out = write_detection_outputs(r, pred, tmp_path / "out", NAMES, ground_truth=gt)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "det_results.json",
        "det_table.txt",
        "s0_boxes.json",
        "s0_boxes.ply",
        "s0_gt_boxes.ply",
        "s1_boxes.json",
        "s1_boxes.ply",
        "s1_gt_boxes.ply",
    ]  # fmt: skip  (no temporary files left behind)
    saved = json.loads((out / "det_results.json").read_text())
    assert saved["ap"]["0.25"] == {"a": 1.0, "b": 0.0, "c": None}
    assert saved["map@0.25"] == 0.5 and saved["num_gt"] == {"a": 1, "b": 1, "c": 0}
    assert (out / "det_table.txt").read_text() == format_ap_table(r, NAMES)
    assert format_ap_table(saved, NAMES) == format_ap_table(r, NAMES)  # the JSON form prints alike
    assert read_boxes_json(out / "s0_boxes.json", NAMES)["boxes"].tolist() == [UNIT]
    assert len(np.asarray(o3d.io.read_line_set(str(out / "s1_gt_boxes.ply")).lines)) == 12
    assert len(np.asarray(o3d.io.read_line_set(str(out / "s1_boxes.ply")).lines)) == 0


# ---- the CLI on processed synthetic scans --------------------------------------------------------


def load_tool():
    spec = importlib.util.spec_from_file_location("evaluate_det_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def processed_root(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("det_eval"), num_scenes=2, num_frames=4)


def test_cli_predictions_equal_to_ground_truth(processed_root, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for scene in ("scene0000_00", "scene0001_00"):
        gt = load_scene_boxes(processed_root / scene)
        write_boxes_json(
            pred_dir / f"{scene}_boxes.json", gt["boxes"], gt["labels"], np.ones(len(gt["labels"]))
        )
    tool = load_tool()
    out = tmp_path / "eval"
    args = ["--data-root", str(processed_root), "--pred-dir", str(pred_dir), "--out-dir", str(out)]
    assert tool.main(args + ["--gt-wireframes"]) == 0
    stdout = capsys.readouterr().out
    assert "2 scenes" in stdout and "| **mAP** | **100.00** | **100.00** |" in stdout
    saved = json.loads((out / "det_results.json").read_text())
    assert saved["map@0.25"] == 1.0 and saved["map@0.5"] == 1.0
    assert (out / "scene0001_00_gt_boxes.ply").is_file() and (out / "scene0000_00_boxes.ply").is_file()
    # --split val is scene0001_00 only
    assert tool.main(args[:4] + ["--split", "val"]) == 0
    assert "1 scenes" in capsys.readouterr().out
    # a missing prediction file is an error naming it
    (pred_dir / "scene0001_00_boxes.json").unlink()
    assert tool.main(args[:4] + ["--scenes", "scene0000_00", "scene0001_00"]) == 1
    err = capsys.readouterr().err
    assert "evaluate_det: error: 1 prediction file(s) missing" in err and "scene0001_00_boxes.json" in err
    assert tool.main(["--data-root", str(tmp_path / "nowhere"), "--pred-dir", str(pred_dir)]) == 1
    assert "nowhere: processed data root not found" in capsys.readouterr().err


def test_cli_help_explains_every_flag(capsys):
    tool = load_tool()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--data-root",
        "--split",
        "--scenes",
        "--pred-dir",
        "--out-dir",
        "--iou-thresholds",
        "--gt-wireframes",
    ):
        assert flag in text
    assert "<scene>_boxes.json" in text
