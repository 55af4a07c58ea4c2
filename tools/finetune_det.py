"""Finetune a (pretrained) sparse U-Net for ScanNet 18-class 3D object detection, or evaluate one.

    python tools/finetune_det.py --config configs/finetune_det/full_labels.yaml --init runs/ppkt_resnet50/checkpoints/last.pth
    python tools/finetune_det.py --config configs/finetune_det/scenes_5pct.yaml --init PRETRAINED.pth
    python tools/finetune_det.py --config configs/finetune_det/full_labels.yaml --freeze-backbone --init PRETRAINED.pth
    python tools/finetune_det.py --config configs/finetune_det/full_labels.yaml --eval-only runs/finetune_det/full_labels/checkpoints/best.pth
    torchrun --nproc_per_node 4 tools/finetune_det.py --config configs/finetune_det/full_labels.yaml --init PRETRAINED.pth

The model is the student U-Net with an FCAF3D-style anchor-free head (per-voxel class, centerness and
distances to the six box faces) on the decoder levels `model.strides` (docs/detection.md).
--init takes a scene_kd pretraining checkpoint (its student weights) or a MinkowskiEngine checkpoint of
the same architecture (a segmentation layer in it is left out); missing or unexpected backbone weights
are an error unless model.init_strict=false. Any config key can be overridden as key=value
(configs/finetune_det/default.yaml lists them). A run in an existing train.out_dir continues from its
checkpoints/last.pth (train.resume=true, the default). The run keeps checkpoints/best.pth by validation
mAP@0.25 and writes the final evaluation (det_results.json, det_table.txt, per-scene <scene>_boxes.json
and PLY wireframes of the predicted and ground-truth boxes) to train.out_dir/eval.
"""

from __future__ import annotations

import argparse
import sys

from scene_kd.config import ConfigError, load_config, to_yaml
from scene_kd.finetune.det import evaluate_checkpoint, run_finetune_det
from scene_kd.finetune.det_schema import FinetuneDetConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML (configs/finetune_det/*.yaml); without it, the schema defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.002")
    parser.add_argument("--init", help="pretraining or MinkowskiEngine checkpoint to start the backbone from (model.init)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="train only the detection head on a frozen backbone (model.freeze_backbone=true)")
    parser.add_argument("--eval-only", metavar="CHECKPOINT",
                        help="evaluate this finetuned detection checkpoint on data.val_split instead of training")
    parser.add_argument("--eval-out", help="output directory of --eval-only (default: train.out_dir/eval_only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.freeze_backbone:
        overrides.append("model.freeze_backbone=true")
    try:
        cfg = load_config(FinetuneDetConfig, args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.eval_only:
        evaluate_checkpoint(cfg, args.eval_only, args.eval_out or f"{cfg.train.out_dir}/eval_only")
        return 0
    run_finetune_det(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
