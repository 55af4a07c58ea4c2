"""Evaluate ScanNet 3D object detection (18 classes, VoteNet's protocol; see docs/detection_evaluation.md).

    python tools/evaluate_det.py --data-root PROCESSED_ROOT --split val --pred-dir PRED_DIR --out-dir EVAL_DIR

PRED_DIR holds `<scene>_boxes.json` per scene: a JSON list of {"label", "label_index", "score",
"box": [x_min, y_min, z_min, x_max, y_max, z_max], "center", "size"} in the scene's axis-aligned
frame (an empty list for a scene with no detections). The ground truth is one box per annotated
instance of the 18 detection classes, computed from each processed scene's coord.npy,
segment20.npy, instance.npy and axis_align.npy. Prints the per-class AP table; with --out-dir
also writes det_results.json, det_table.txt and per-scene box JSON / PLY wireframes. Exits with
status 1, naming the file, when a prediction or scene file is missing or malformed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scene_kd import cli_types
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.config_ranges import FROM_0_BELOW_1
from scene_kd.data.scenes import resolve_scene_ids
from scene_kd.eval.detection import (
    DEFAULT_IOU_THRESHOLDS,
    evaluate_detection,
    format_ap_table,
    prediction_scene_ids,
    read_prediction_dir,
    write_detection_outputs,
)
from scene_kd.scannet.boxes import load_ground_truth
from scene_kd.scannet.labels import DET18_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-root",
        required=True,
        help="processed root (<data-root>/<scene>/manifest.json, coord.npy, segment20.npy, instance.npy, "
        "axis_align.npy)",
    )
    parser.add_argument(
        "--split",
        help="evaluate a split: train, val, test (<data-root>/splits/<split>.txt) or a split file's path",
    )
    parser.add_argument(
        "--scenes",
        nargs="+",
        metavar="SCENE_ID",
        help="evaluate these scene ids (with --split: those of them in the split); with neither "
        "--split nor --scenes, every scene with a <scene>_boxes.json in --pred-dir",
    )
    parser.add_argument(
        "--pred-dir", required=True, help="directory of <scene>_boxes.json prediction files (one per scene)"
    )
    parser.add_argument(
        "--out-dir",
        help="write det_results.json, det_table.txt, <scene>_boxes.json and <scene>_boxes.ply here",
    )
    parser.add_argument(
        "--iou-thresholds",
        nargs="+",
        type=cli_types.checked(float, FROM_0_BELOW_1),
        default=list(DEFAULT_IOU_THRESHOLDS),
        metavar="IOU",
        help="IoU thresholds of the APs (default: 0.25 0.5); a match needs IoU strictly above",
    )
    parser.add_argument(
        "--gt-wireframes",
        action="store_true",
        help="with --out-dir, also write the ground-truth boxes as <scene>_gt_boxes.ply",
    )
    add_debug_flag(parser)
    return parser  # fmt: skip


def select_scenes(data_root: Path, pred_dir: Path, split: str | None, scenes: list[str] | None) -> list[str]:
    """The scene ids to evaluate, sorted (see the --split / --scenes help)."""
    if split is None and scenes is None:
        selected = prediction_scene_ids(pred_dir)
        if not selected:
            raise FileNotFoundError(f"{pred_dir}: no <scene>_boxes.json prediction files")
        return resolve_scene_ids(data_root, selected)
    selected = resolve_scene_ids(data_root, split if split is not None else scenes)
    if split is not None and scenes is not None:
        selected = [s for s in selected if s in set(scenes)]
    return sorted(selected)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_root, pred_dir = Path(args.data_root), Path(args.pred_dir)
    if not data_root.is_dir():
        raise FileNotFoundError(f"{data_root}: processed data root not found")
    scene_ids = select_scenes(data_root, pred_dir, args.split, args.scenes)
    if not scene_ids:
        raise ValueError("no scenes selected (empty split, or --scenes outside the split)")
    predictions = read_prediction_dir(pred_dir, scene_ids, DET18_NAMES)
    ground_truth = load_ground_truth(data_root, scene_ids)
    results = evaluate_detection(predictions, ground_truth, DET18_NAMES, args.iou_thresholds)
    print(f"{len(scene_ids)} scenes")
    print(format_ap_table(results, DET18_NAMES), end="")
    if args.out_dir:
        gt = ground_truth if args.gt_wireframes else None
        write_detection_outputs(results, predictions, args.out_dir, DET18_NAMES, ground_truth=gt)
        print(f"wrote {args.out_dir}/det_results.json, det_table.txt and per-scene boxes")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="evaluate_det")


if __name__ == "__main__":
    sys.exit(main())
