"""Write a synthetic ScanNet scan set (every raw ScanNet format) for tests and demos.

Example: python tools/make_synthetic_scannet.py --out data/synthetic_scannet --scenes 4 --frames 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scene_kd import cli_types
from scene_kd.cli import add_debug_flag, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="ScanNet root to write (scans/, label tsv, split files)"
    )
    parser.add_argument(
        "--scenes", type=int, default=2, help="number of scans, named scene0000_00, scene0001_00, ..."
    )
    parser.add_argument(
        "--seed", type=cli_types.seed, default=0, help="random seed; the same seed writes the same bytes"
    )
    parser.add_argument("--frames", type=int, default=300, help="RGB-D frames per scan (30 Hz)")
    parser.add_argument(
        "--color-size",
        type=cli_types.image_size,
        default=(1296, 968),
        help="color image size WxH (ScanNet: 1296x968)",
    )
    parser.add_argument(
        "--depth-size",
        type=cli_types.image_size,
        default=(640, 480),
        help="depth image size WxH (ScanNet: 640x480)",
    )
    parser.add_argument(
        "--vertex-spacing", type=float, default=0.06, help="largest distance between mesh vertices, metres"
    )
    parser.add_argument(
        "--color-render-scale",
        type=float,
        default=None,
        help="cast separate color rays at this fraction of the color size (1 = every pixel) and resize up; "
        "by default color is shaded on the depth rays and resampled to the color intrinsics (one cast a frame)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.25, help="fraction of the scans listed in scannetv2_val.txt"
    )
    parser.add_argument(
        "--workers",
        type=cli_types.count,
        default=2,
        help="threads rendering and encoding frames (the output does not depend on it)",
    )
    add_debug_flag(parser)
    return parser


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from scene_kd.synthetic import write_synthetic_scannet

    start = time.perf_counter()
    try:
        scene_ids = write_synthetic_scannet(
            args.out,
            num_scenes=args.scenes,
            seed=args.seed,
            num_frames=args.frames,
            color_size=args.color_size,
            depth_size=args.depth_size,
            vertex_spacing=args.vertex_spacing,
            color_render_scale=args.color_render_scale,
            val_fraction=args.val_fraction,
            workers=args.workers,
            progress=True,
        )
    except ValueError as e:  # bad argument values: report them like argparse does
        parser.error(str(e))
    print(f"wrote {len(scene_ids)} scans to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="make_synthetic_scannet")


if __name__ == "__main__":
    sys.exit(main())
