r"""Export a student's weights to finetune them in another codebase.

    python tools/export_checkpoint.py runs/ppkt_spunet/checkpoints/last.pth --to pointcept-spunet \
        --out spunet_ppkt.pth --in-channels 6
    python tools/export_checkpoint.py runs/ppkt_resnet50/checkpoints/last.pth --to minkowski \
        --out res16unet34c.pth

CKPT is a scene_kd pretraining or segmentation checkpoint (or a bare state_dict of a student).

--to pointcept-spunet (a SpUNet-v1m1 student): writes {"state_dict": {"backbone.<Pointcept name>":
tensor}} in spconv 2.x's layout, which Pointcept's finetuning loads as its weight init (config key
`weight`, e.g. `sh scripts/train.sh ... -c semseg-spunet-v1m1-0-base -w FILE`); see docs/pointcept.md.

--to minkowski (a MinkUNet / Res16UNet student): writes {"state_dict": ..., "arch": name} in
MinkowskiEngine's layout for MinkowskiEngine code (SpatioTemporalSegmentation-style scripts).

MinkUNet and SpUNet are different networks: each is refused the other's format, with the reason.
The file is written atomically; an existing --out is kept unless --force. Exits with status 1 and a
one-line message naming the file on any such error (2 on a usage error).
"""

from __future__ import annotations

import argparse
import sys

from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.interop.export import FORMATS, export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="scene_kd pretraining (train.out_dir/checkpoints/last.pth) or segmentation "
                        "checkpoint, or a bare student state_dict")
    parser.add_argument("--to", required=True, choices=FORMATS,
                        help="pointcept-spunet: Pointcept's SpUNet-v1m1 (spconv 2.x layout, keys under "
                        "backbone.), for a SpUNet-v1m1 student; minkowski: MinkowskiEngine's layout, for a "
                        "MinkUNet / Res16UNet student")
    parser.add_argument("--out", required=True, help="the file to write (its directory must exist)")
    parser.add_argument("--force", action="store_true", help="replace --out when it exists (default: refuse)")
    parser.add_argument("--no-head", action="store_true",
                        help="leave out the segmentation layer final.* of a segmentation checkpoint "
                        "(finetuning for another number of classes; a pretraining checkpoint has none)")
    parser.add_argument("--in-channels", type=int, metavar="N",
                        help="widen the first convolution to N input channels with zero weights for the "
                        "added ones (e.g. 6 for Pointcept's colour + normal input from an RGB-pretrained "
                        "student): the network computes the same on the original channels "
                        "(default: unchanged)")
    add_debug_flag(parser)
    return parser


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.in_channels is not None and args.in_channels < 1:
        parser.error(f"--in-channels must be >= 1, got {args.in_channels}")
    print(export_checkpoint(args.checkpoint, args.to, args.out, force=args.force,
                            include_head=not args.no_head, in_channels=args.in_channels))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="export_checkpoint")


if __name__ == "__main__":
    sys.exit(main())
