"""Evaluate ScanNet 20-class semantic segmentation submissions (see docs/evaluation.md).

    python tools/evaluate_seg.py --pred PRED_DIR --data PROCESSED_ROOT --split val --out EVAL_DIR

PRED_DIR holds `{scene}.txt`, one nyu40 id a line per vh_clean_2 vertex; the ground truth is each
processed scene's `segment20.npy`. Prints the per-class IoU table; with --out also writes
metrics.json, table.md and confusion.png. Exits with status 1, naming the file, when a prediction
file is missing or its line count differs from the scene's vertex count.
"""

from __future__ import annotations

import argparse
import sys

from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.eval.semseg import (
    evaluate_submission_dir,
    format_iou_table,
    select_eval_scenes,
    write_evaluation_outputs,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pred", required=True, help="directory of {scene}.txt submission files")
    parser.add_argument("--data", required=True, help="processed root (<data>/<scene>/segment20.npy)")
    parser.add_argument(
        "--split",
        help="evaluate a split: train, val, test (<data>/splits/<split>.txt) or a split file's path",
    )
    parser.add_argument("--scenes", nargs="+", metavar="SCENE_ID", help="evaluate these scene ids")
    parser.add_argument("--out", help="write metrics.json, table.md and confusion.png here")
    add_debug_flag(parser)
    return parser  # fmt: skip


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scene_ids = select_eval_scenes(args.pred, args.data, split=args.split, scenes=args.scenes)
    if not scene_ids:
        raise ValueError("no scenes selected (empty split, or --scenes outside the split)")
    confusion = evaluate_submission_dir(args.pred, args.data, scene_ids)
    print(f"{len(scene_ids)} scenes")
    print(format_iou_table(confusion), end="")
    if args.out:
        write_evaluation_outputs(args.out, confusion, scenes=scene_ids)
        print(f"wrote {args.out}/metrics.json, table.md, confusion.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="evaluate_seg")


if __name__ == "__main__":
    sys.exit(main())
