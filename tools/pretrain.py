"""Pretrain a sparse U-Net student by distilling a frozen 2D teacher: PPKT pixel-to-point InfoNCE,
CLIP concept distillation, or both (loss.objective: ppkt | concept | ppkt+concept).

    python tools/pretrain.py --config configs/pretrain/ppkt_resnet50.yaml
    python tools/pretrain.py --config configs/pretrain/ppkt_concept_clip_vitb16.yaml loss.concept_weight=0.5
    python tools/pretrain.py --config configs/pretrain/ppkt_resnet50.yaml train.max_steps=1000 data.batch_size=4
    torchrun --nproc_per_node 4 tools/pretrain.py --config configs/pretrain/ppkt_clip_vitb16.yaml

Any config key can be overridden as key=value (see configs/pretrain/default.yaml for every key);
an unknown key is an error. The resolved config, checkpoints (every train.checkpoint_every steps,
written atomically), metrics.jsonl and TensorBoard logs go to train.out_dir; a run started again
with the same out_dir resumes from its last checkpoint (with train.resume=false a directory that
holds checkpoints is refused: choose another train.out_dir to start over). The concept
objectives need a CLIP teacher and keep the concept head in the checkpoint for tools/zeroshot_seg.py
(docs/concept_distillation.md).
"""

from __future__ import annotations

import sys

from scene_kd.cli import JobCommand, job_main, run_tool
from scene_kd.distill.schema import PretrainConfig

COMMAND = JobCommand(schema=PretrainConfig, run="scene_kd.distill.pretrain:run_pretraining", recipe_dir="configs/pretrain",
                     override_example="optim.lr=0.1")


def run(argv: list[str] | None = None) -> int:
    return job_main(COMMAND, __doc__, argv)


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="pretrain")


if __name__ == "__main__":
    sys.exit(main())
