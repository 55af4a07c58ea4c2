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

import sys

from scene_kd.cli import JobCommand, job_main, run_tool
from scene_kd.finetune.det.schema import FinetuneDetConfig

COMMAND = JobCommand(
    schema=FinetuneDetConfig, run="scene_kd.finetune.det.run:run_finetune_det",
    evaluate="scene_kd.finetune.det.run:evaluate_checkpoint", recipe_dir="configs/finetune_det",
    override_example="optim.lr=0.002",
    init_help="pretraining or MinkowskiEngine checkpoint to start the backbone from (model.init)",
    freeze_help="train only the detection head on a frozen backbone (model.freeze_backbone=true)",
    eval_help="evaluate this finetuned detection checkpoint on data.val_split instead of training",
)


def run(argv: list[str] | None = None) -> int:
    return job_main(COMMAND, __doc__, argv)


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="finetune_det")


if __name__ == "__main__":
    sys.exit(main())
