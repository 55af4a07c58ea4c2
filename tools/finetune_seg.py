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

import sys

from scene_kd.cli import JobCommand, job_main, run_tool
from scene_kd.finetune.schema import FinetuneSegConfig

COMMAND = JobCommand(
    schema=FinetuneSegConfig, run="scene_kd.finetune.seg:run_finetune_seg",
    evaluate="scene_kd.finetune.seg:evaluate_checkpoint", recipe_dir="configs/finetune_seg",
    override_example="optim.lr=0.05",
    init_help="pretraining or MinkowskiEngine checkpoint to start from (model.init)",
    freeze_help="linear probe: train only the final layer (model.freeze_backbone=true)",
    eval_help="evaluate this finetuned checkpoint on data.val_split instead of training",
)


def run(argv: list[str] | None = None) -> int:
    return job_main(COMMAND, __doc__, argv)


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="finetune_seg")


if __name__ == "__main__":
    sys.exit(main())
