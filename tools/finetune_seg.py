"""Finetune a (pretrained) sparse U-Net for ScanNet 20-class semantic segmentation, or evaluate one.

    python tools/finetune_seg.py --config configs/finetune_seg/full_labels.yaml --init runs/ppkt_resnet50/checkpoints/last.pth
    python tools/finetune_seg.py --config configs/finetune_seg/points_20.yaml --init PRETRAINED.pth
    python tools/finetune_seg.py --config configs/finetune_seg/full_labels.yaml --freeze-backbone --init PRETRAINED.pth
    python tools/finetune_seg.py --config configs/finetune_seg/full_labels.yaml --eval-only runs/finetune_seg/checkpoints/best.pth
    torchrun --nproc_per_node 4 tools/finetune_seg.py --config configs/finetune_seg/full_labels.yaml --init PRETRAINED.pth

--init takes a scene_kd pretraining checkpoint (its student weights) or a MinkowskiEngine checkpoint of
the same architecture; missing or unexpected weights are reported, and are an error unless
model.init_strict=false. Any config key can be overridden as key=value (configs/finetune_seg/default.yaml
lists them). The run keeps checkpoints/best.pth by validation mIoU and writes the final evaluation
(metrics.json, table.md, confusion.png, ScanNet submission files, coloured PLYs) to train.out_dir/eval.
"""

from __future__ import annotations

import argparse
import sys

from scene_kd.config import ConfigError, load_config, to_yaml
from scene_kd.finetune.schema import FinetuneSegConfig
from scene_kd.finetune.seg import evaluate_checkpoint, run_finetune_seg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML (configs/finetune_seg/*.yaml); without it, the schema defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    parser.add_argument("--init", help="pretraining or MinkowskiEngine checkpoint to start from (model.init)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="linear probe: train only the final layer (model.freeze_backbone=true)")
    parser.add_argument("--eval-only", metavar="CHECKPOINT",
                        help="evaluate this finetuned checkpoint on data.val_split instead of training")
    parser.add_argument("--eval-out", help="output directory of --eval-only (default: train.out_dir/eval_only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.freeze_backbone:
        overrides.append("model.freeze_backbone=true")
    try:
        cfg = load_config(FinetuneSegConfig, args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.eval_only:
        evaluate_checkpoint(cfg, args.eval_only, args.eval_out or f"{cfg.train.out_dir}/eval_only")
        return 0
    run_finetune_seg(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
