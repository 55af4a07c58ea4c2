r"""The papers' data-efficient table in miniature, for PPKT and for CLIP concept distillation alike.

    python benchmarks/transfer_synthetic.py --work-dir /tmp/transfer                  # the full run
    python benchmarks/transfer_synthetic.py --work-dir /tmp/transfer_quick --quick    # every arm, reduced
    python benchmarks/transfer_synthetic.py --work-dir /tmp/transfer_w1 --world-seed 1   # another world

1. A synthetic world (`--world-seed`): 25 scans (20 training, 5 validation; `--quick`: 8), processed,
   with the limited-label subsets of the training split: limited scenes (10 % and 20 % of the training
   scans, i.e. 2 and 4 scans, all their labels) and limited points (20 and 200 labelled points per scan).
2. Two teachers, both trained on the training scans' frames only:
   - the 2D-label teacher (`frame_encoder`): a small CNN trained on the frames' 2D labels;
   - the in-world CLIP (`scene_kd/transfer/world_clip.py`): open_clip's CLIP (a tiny ViT and a small
     text transformer) trained with open_clip's ClipLoss on image-text pairs made from the frames
     (object crops captioned with their class names, whole frames captioned with the classes they
     show), then loaded as `teacher.name=clip` exactly as real CLIP weights are.
3. Arms, each pretraining MinkUNet14A on the unlabelled training scans (scene mode, 500 steps): `ppkt_2d`,
   `ppkt_clip`, `ppkt_concept_clip`; ablations `concept_clip` and `ppkt_concept_nofit_clip` (the
   paper's two concept terms without the fit term). Each arm is pretrained once, with the first seed,
   and every seed finetunes from it (`--pretrain-every-seed`: one pretraining per seed and arm).
4. Per seed (scratch and the main arms; the ablations with the first seed only): finetunes in every
   limited-label setting from scratch and from each arm (80 steps; the same seed, data order and
   schedule for all), a linear probe of each arm (full labels, frozen backbone), full-label
   finetunes (scratch, `ppkt_concept_clip`), zero-shot 3D segmentation of the concept arms
   (`tools/zeroshot_seg.py`'s path); once: the 2D-only zero-shot baseline (CLIP dense features fused
   onto the points through the frames, as OpenScene does).

Writes into --work-dir: results.json (every run: {"world_seed", "seed", "arm", "setting", "miou"}),
table.md, transfer_arms.png (bars with error bars over seeds), pretrain_curves.png (the InfoNCE
curves), features.png / zeroshot.png (pictures of a validation scan) and the PLYs beside them;
`--record FILE` also copies results.json there (the committed record is
docs/results/transfer_synthetic.json). Every stage is reused when finished and resumed when
interrupted: rerun the same command. Torch threads: --threads; independent stages side by side in
worker processes: --jobs (the full run on 2 cores: --jobs 2 --threads 1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from scene_kd import cli_types
from scene_kd.atomic import write_text_atomic
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.transfer.arms import ARMS
from scene_kd.transfer.benchmark import (
    ABLATION_ARMS,
    MAIN_ARMS,
    BenchmarkPlan,
    format_benchmark_table,
    full_settings,
    quick_settings,
    run_transfer_benchmark,
    summarize_runs,
)
from scene_kd.transfer.benchmark_pictures import benchmark_pictures
from scene_kd.transfer.pipeline import label_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="data, teachers, runs and results go here (reruns resume)")
    parser.add_argument("--quick", action="store_true",
                        help="every arm and setting at reduced size (8 scans, few steps): the plumbing in minutes")
    parser.add_argument("--world-seed", type=cli_types.seed, default=0,
                        help="seed of the synthetic world, its teachers and label subsets (default 0)")
    parser.add_argument("--seeds", type=cli_types.seed, nargs="+", default=[0, 1, 2],
                        help="training seeds of scratch and the main arms; ablations run the first (default 0 1 2)")
    parser.add_argument("--pretrain-every-seed", action="store_true",
                        help="pretrain every arm once per seed (default: once, with the first seed, and every seed "
                        "finetunes from that student)")
    parser.add_argument("--arms", nargs="+", default=list(MAIN_ARMS), choices=list(MAIN_ARMS),
                        help=f"main arms (default: all: {' '.join(MAIN_ARMS)})")
    parser.add_argument("--ablations", nargs="*", default=list(ABLATION_ARMS), choices=list(ABLATION_ARMS),
                        help=f"ablation arms, first seed only (default: {' '.join(ABLATION_ARMS)}; none: --ablations)")
    parser.add_argument("--settings", nargs="+", metavar="SETTING",
                        help="limited-label settings to run (default: all of the mode: scenes_10pct scenes_20pct "
                        "points_20 points_200; --quick: scenes_25pct scenes_50pct points_20 points_200)")
    for flag, what in (("teacher-steps", "2D teacher training"), ("clip-steps", "in-world CLIP training"),
                       ("pretrain-steps", "pretraining of every arm"), ("finetune-steps", "every finetune")):
        parser.add_argument(f"--{flag}", type=cli_types.count, help=f"override the steps of {what}")
    parser.add_argument("--jobs", type=cli_types.count, default=1,
                        help="stages run side by side in this many worker processes (default 1: in this process, "
                        "in order); on 2 cores, --jobs 2 --threads 1 does about twice the work of one process")
    parser.add_argument("--threads", type=cli_types.count, default=2,
                        help="torch CPU threads of this process, and of each worker with --jobs > 1 (default 2)")
    parser.add_argument("--record", help="also copy results.json to this file (e.g. docs/results/transfer_synthetic.json)")
    parser.add_argument("--pictures-dir", help="write the PNG pictures here too (e.g. docs/results/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    return parser


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = quick_settings() if args.quick else full_settings()
    for name in ("teacher_steps", "clip_steps", "pretrain_steps", "finetune_steps"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    known = label_settings(settings)
    if args.settings and set(args.settings) - set(known):
        raise ValueError(f"--settings {sorted(set(args.settings) - set(known))}: not settings of this mode; "
                         f"choose from {known}")
    plan = BenchmarkPlan(seeds=args.seeds, world_seed=args.world_seed, pretrain_every_seed=args.pretrain_every_seed,
                         label_settings=args.settings or [],
                         arms=args.arms, ablations=args.ablations)
    work = Path(args.work_dir)
    record = run_transfer_benchmark(work, settings, plan, progress=not args.no_progress, jobs=args.jobs,
                                    threads_per_job=args.threads)
    arms = ["scratch", *plan.arms, *plan.ablations]
    table = summarize_runs(record.runs)
    columns = [*arms, *(f"linear_probe_{a}" for a in plan.arms + plan.ablations),
               *(f"zeroshot_{a}" for a in plan.arms + plan.ablations if "concept" in ARMS[a].objective),
               "clip_2d_fusion"]
    columns = [c for c in columns if any(c in entry for entry in table.values())]
    text = format_benchmark_table(table, columns)
    write_text_atomic(work / "table.md", text + "\n")
    benchmark_pictures(work, record, settings, plan, table, arms, progress=not args.no_progress)
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "results.json", args.record)
    if args.pictures_dir:
        Path(args.pictures_dir).mkdir(parents=True, exist_ok=True)
        for name in ("transfer_arms.png", "pretrain_curves.png", "features.png", "zeroshot.png"):
            if (work / name).exists():
                shutil.copyfile(work / name, Path(args.pictures_dir) / name)
    print(text)
    print(f"results.json, table.md and the pictures in {work}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The tool: its exit code, the project's expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="transfer_synthetic")


if __name__ == "__main__":
    sys.exit(main())
