r"""Check that Pointcept, as you have it checked out, finetunes from scene_kd's output.

    python tools/check_pointcept.py runs/ppkt_spunet/checkpoints/last.pth \
        --pointcept-root ~/Pointcept --data data/processed

Runs Pointcept's own code (its SpUNet-v1m1, model builder, ScanNetDataset and transforms, imported
from --pointcept-root without its package-wide imports) the way a SpUNet finetune on ScanNet does,
and compares with scene_kd:
- weights: CKPT (a scene_kd SpUNet-v1m1 checkpoint, exported in memory as export_checkpoint.py
  would, the stem widened to the config's in_channels; or a file export_checkpoint.py wrote) loads by
  Pointcept's CheckpointLoader rule into the network built from the config's model.backbone; every
  tensor must land, only backbone.final.* may stay freshly initialised;
- data: ScanNetDataset from the config's data.train / data.val with data_root=--data finds the scenes
  of splits/{train,val}.txt (preprocess_scannet.py --pointcept-layout), and, where <data>/tasks exists
  (make_data_efficient_subsets.py --pointcept-tasks), reads the same scenes and labelled points as
  scene_kd's subsets/;
- inputs: on --scenes validation scenes through the config's val pipeline, every feature row Pointcept
  feeds (NormalizeColor, feat_keys) is what scene_kd fed the student (the checkpoint's data.in_features
  and data.color_norm) for one of the scene's points;
- outputs: on the same scenes, Pointcept's network and scene_kd's give the same outputs in eval and
  training mode (float64 by default).

Needs what Pointcept's SpUNet and ScanNet code import: spconv, torch_geometric, timm, termcolor,
scipy (pip install -e .[pointcept-check]). The comparison uses one torch thread
(spconv's CPU forward is wrong with more). Prints a table; exits 1 when a check fails (one line
saying which) or on bad input (one line naming the file), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scene_kd.cli import add_debug_flag, run_tool

DTYPES = ("float64", "float32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="a scene_kd pretraining or segmentation checkpoint of a SpUNet-v1m1 student, or a "
                        "file tools/export_checkpoint.py --to pointcept-spunet wrote")
    parser.add_argument("--pointcept-root", required=True, metavar="DIR",
                        help="the Pointcept checkout (the directory holding pointcept/ and configs/)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="scene_kd's processed output, as Pointcept's data_root (with --pointcept-layout)")
    parser.add_argument("--config", metavar="FILE",
                        help="the Pointcept config to check against (default: <DIR>/configs/scannet/"
                        "semseg-spunet-v1m1-0-base.py)")
    parser.add_argument("--scenes", type=int, default=2, metavar="N",
                        help="validation scenes whose outputs are compared (default: 2)")
    parser.add_argument("--dtype", choices=DTYPES, default="float64",
                        help="precision of the output comparison: float64 (bound 1e-9 of the largest output, "
                        "default) or float32 (bound 1e-4)")
    add_debug_flag(parser)
    return parser


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {args.scenes}")
    import torch

    from scene_kd.interop.pointcept_check import DEFAULT_CONFIG, run_pointcept_check
    from scene_kd.interop.pointcept_checkout import import_pointcept

    code = import_pointcept(args.pointcept_root)
    config = Path(args.config) if args.config else code.root / DEFAULT_CONFIG
    print(f"Pointcept {code.root} (commit {code.commit}), config {config}")
    rows = run_pointcept_check(code, args.checkpoint, args.data, config, scenes=args.scenes,
                               dtype=getattr(torch, args.dtype))
    width = max(len(r.what) for r in rows)
    print()
    for row in rows:
        print(f"{'ok  ' if row.ok else 'FAIL'} {row.what:<{width}}  {row.result}")
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"check_pointcept: {len(failed)} of {len(rows)} checks failed, first: {failed[0].what}: "
              f"{failed[0].result}", file=sys.stderr)
        return 1
    print(f"\nall {len(rows)} checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="check_pointcept")


if __name__ == "__main__":
    sys.exit(main())
