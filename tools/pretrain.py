"""Pretrain a sparse U-Net student by distilling a frozen 2D teacher: PPKT pixel-to-point InfoNCE,
CLIP concept distillation, or both (loss.objective: ppkt | concept | ppkt+concept).

    python tools/pretrain.py --config configs/pretrain/ppkt_resnet50.yaml
    python tools/pretrain.py --config configs/pretrain/ppkt_concept_clip_vitb16.yaml loss.concept_weight=0.5
    python tools/pretrain.py --config configs/pretrain/ppkt_resnet50.yaml train.max_steps=1000 data.batch_size=4
    torchrun --nproc_per_node 4 tools/pretrain.py --config configs/pretrain/ppkt_clip_vitb16.yaml

Any config key can be overridden as key=value (see configs/pretrain/default.yaml for every key);
an unknown key is an error. The resolved config, checkpoints (every train.checkpoint_every steps,
written atomically), metrics.jsonl and TensorBoard logs go to train.out_dir; a run started again
with the same out_dir resumes from its last checkpoint (train.resume=false starts over). The concept
objectives need a CLIP teacher and keep the concept head in the checkpoint for tools/zeroshot_seg.py
(docs/concept_distillation.md).
"""

from __future__ import annotations

import argparse
import sys

from scene_kd.config import ConfigError, load_config, to_yaml
from scene_kd.distill.pretrain import run_pretraining
from scene_kd.distill.schema import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML (configs/pretrain/*.yaml); without it, the schema defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.1")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    run_pretraining(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
