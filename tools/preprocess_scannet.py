"""Preprocess a ScanNet download into processed scene directories (see docs/data_format.md).

    python tools/preprocess_scannet.py --scannet-root RAW --out DATA --workers 8

Resumable (finished scenes are skipped) and safe to kill, even with kill -9 (the worker processes
die with it); exits with status 1 if any scene failed, after printing each failure's reason.
Refuses to start (status 1, one line) when another run holds the lock of --out, or when a scene
in --out was processed with other settings (--frame-skip, --image-size, --jpeg-quality,
--depth-png, label tsv): use another --out or delete those scenes. --pointcept-layout also links
the scenes into Pointcept's <out>/{train,val,test}/<scene> layout (by the split files), so that
Pointcept's ScanNet configs read --out unchanged. See docs/data_format.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scene_kd import cli_types
from scene_kd.atomic import write_text_atomic
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.scannet.codecs import PNG16_COMPRESSIONS
from scene_kd.scannet.preprocess import (
    DEFAULT_DEPTH_PNG,
    DEFAULT_FRAME_SKIP,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_JPEG_QUALITY,
    format_summary,
    preprocess_dataset,
    summary_to_json,
)


def parse_shard(text: str) -> tuple[int, int]:
    """ "2/8" -> (2, 8)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scannet-root",
        required=True,
        help="ScanNet root holding scans/ (and/or scans_test/), the label tsv and split files",
    )
    parser.add_argument("--out", required=True, help="output root: one directory per processed scene")
    parser.add_argument(
        "--frame-skip",
        type=cli_types.count,
        default=DEFAULT_FRAME_SKIP,
        help="keep frames whose index is a multiple of this (and whose pose is valid)",
    )
    parser.add_argument(
        "--image-size",
        type=cli_types.image_size,
        default="x".join(map(str, DEFAULT_IMAGE_SIZE)),
        help="stored color size WIDTHxHEIGHT (default %(default)s); depth keeps its resolution",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=cli_types.checked(int, (lambda v: 1 <= v <= 100, "in [1, 100]")),
        default=DEFAULT_JPEG_QUALITY,
        help="JPEG quality of the stored color images",
    )
    parser.add_argument(
        "--depth-png",
        choices=PNG16_COMPRESSIONS,
        default=DEFAULT_DEPTH_PNG,
        help="depth PNG compression: none (default: fastest to write and read), rle (~40%% smaller, "
        "~1.6x the preprocessing time), deflate (smallest on smooth depth, ~10x slower to write)",
    )
    parser.add_argument("--workers", type=cli_types.count, default=1, help="parallel worker processes (one scene each)")
    parser.add_argument("--scenes", nargs="+", metavar="SCENE_ID", help="process only these scene ids")
    parser.add_argument("--split", help="process only a split: train, val, test, or the path of a split file")
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=(0, 1),
        help="i/n: process every n-th selected scene starting at the i-th (for array jobs)",
    )
    parser.add_argument(
        "--label-tsv", help="raw-category tsv (default: <scannet-root>/scannetv2-labels.combined.tsv)"
    )
    parser.add_argument(
        "--pointcept-layout", action="store_true",
        help="also link each scene into <out>/{train,val,test}/<scene> (relative symbolic links, by the "
        "split files; copies where links are impossible): Pointcept's ScanNet data_root layout",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--summary-json", help="also write the per-scene outcomes to this JSON file")
    add_debug_flag(parser)
    return parser  # fmt: skip


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = preprocess_dataset(
        args.scannet_root,
        args.out,
        scene_ids=args.scenes,
        split=args.split,
        shard=args.shard,
        workers=args.workers,
        frame_skip=args.frame_skip,
        image_size=args.image_size,
        label_tsv=args.label_tsv,
        jpeg_quality=args.jpeg_quality,
        depth_png=args.depth_png,
        pointcept_layout=args.pointcept_layout,
        progress=not args.no_progress,
    )
    print(format_summary(summary))
    if args.summary_json:
        write_text_atomic(Path(args.summary_json), summary_to_json(summary))
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="preprocess_scannet")


if __name__ == "__main__":
    sys.exit(main())
