r"""The papers' table in miniature: does pretraining from a 2D teacher help when 3D labels are few?

    python benchmarks/transfer_synthetic.py --work-dir /tmp/transfer              # 3 seeds, ~1.5 h on 2 CPU cores
    python benchmarks/transfer_synthetic.py --work-dir /tmp/transfer_smoke --seeds 0 --num-scenes 6 \
        --teacher-steps 20 --pretrain-steps 5 --finetune-steps 5 --settings points_20    # smoke, ~2 min

1. Data: `--num-scenes` synthetic scans (seed 0; the last 20 % are the validation split), processed
   (every 4th frame, 160 x 120), with the limited-label subsets of the training split
   (`make_data_efficient_subsets`, seed 0): `scenes_10pct` (10 % of the training scenes, all their
   labels) and `points_20` / `points_200` (that many labelled points per training scene).
2. A 2D teacher (`scene_kd.transfer.frame_teacher.frame_encoder`) is trained on the training scans'
   frames with their 2D labels (the 3D labels projected into the frames, as ScanNet's label images
   are made): 2D labels are plentiful, the premise of the method. Its pixel accuracy / mIoU on the
   validation frames is printed.
3. For each seed: the student is pretrained from that teacher by PPKT on the unlabelled training
   scans (scene mode, 4 frames per scene), then finetuned for 20-class segmentation in every label
   setting twice, from the pretrained weights and from random initialization (the baseline), with
   the same seed, data order and schedule. The metric is the final val mIoU (ScanNet protocol,
   every vertex of the validation scenes).

Prints a table (mean ± std over seeds, and the per-seed gain) after every seed, and writes
results.json, table.md and transfer.png into `--work-dir`. Every stage keeps its outputs in the work
directory and a rerun skips the finished ones (interrupt and rerun to resume). Torch threads:
`--threads` (default 2). Synthetic scenes are far simpler than ScanNet: the figures say whether the
pipeline transfers what the teacher knows, not what ScanNet numbers will be.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import torch

from scene_kd.scannet.atomic import write_text_atomic
from scene_kd.transfer.pipeline import (
    TransferSettings,
    finetune_stage,
    format_transfer_table,
    label_settings,
    prepare_synthetic_data,
    pretrain_stage,
    settings_dict,
    summarize,
    train_teacher_stage,
)
from scene_kd.transfer.plots import plot_transfer_table

SIZE_FLAGS = ("num_scenes", "num_frames", "student", "voxel_size", "teacher_steps", "pretrain_steps",
              "finetune_steps", "finetune_lr", "pretrain_lr", "temperature")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="data, runs and results go here (reused by reruns)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="label settings to run (default: scenes_10pct points_20 points_200)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    defaults = TransferSettings()
    help_of = {"num_scenes": "synthetic scans", "num_frames": "frames per scan", "student": "student network",
               "voxel_size": "voxel size in metres", "teacher_steps": "2D teacher training steps",
               "pretrain_steps": "PPKT pretraining steps per seed", "finetune_steps": "steps of each finetune",
               "finetune_lr": "finetuning SGD learning rate", "pretrain_lr": "pretraining SGD learning rate",
               "temperature": "InfoNCE temperature"}
    types = {f.name: f.type for f in fields(TransferSettings)}
    for name in SIZE_FLAGS:
        kind = {"int": int, "float": float, "str": str}[types[name]]
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name),
                            help=f"{help_of[name]} (default {getattr(defaults, name)})")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = TransferSettings(**{name: getattr(args, name) for name in SIZE_FLAGS})
    chosen = args.settings or label_settings(settings)
    unknown = sorted(set(chosen) - set(label_settings(settings)))
    if unknown:
        raise SystemExit(f"unknown --settings {unknown}; choose from {label_settings(settings)}")
    work = Path(args.work_dir)
    started = time.perf_counter()

    print("== data")
    processed = prepare_synthetic_data(work / "data", settings, seed=0)
    print("== 2D teacher")
    teacher, teacher_metrics = train_teacher_stage(processed, work / "teacher", settings, seed=0)
    print(f"2D teacher: {teacher_metrics['train_frames']} training frames, {teacher_metrics['steps']} steps; "
          f"validation frames: pixel accuracy {100 * teacher_metrics['val_pixel_accuracy']:.1f} %, "
          f"pixel mIoU {100 * teacher_metrics['val_pixel_miou']:.1f} %")

    results = []
    for seed in args.seeds:
        print(f"== seed {seed}: pretraining")
        checkpoint = pretrain_stage(processed, teacher, work / f"seed{seed}" / "pretrain", settings, seed=seed)
        for setting in chosen:
            for init_name, init in (("scratch", None), ("pretrained", checkpoint)):
                print(f"== seed {seed}: finetune {setting} from {init_name}")
                metrics = finetune_stage(processed, setting, init, work / f"seed{seed}" / f"{setting}_{init_name}",
                                         settings, seed=seed)
                results.append({"seed": seed, "setting": setting, "init": init_name, "miou": metrics["miou"]})
        table = summarize(results)
        print(f"\nafter seed {seed} ({(time.perf_counter() - started) / 60:.1f} min):\n{format_transfer_table(table)}\n")

    table = summarize(results)
    text = format_transfer_table(table)
    summary = {"settings": settings_dict(settings), "seeds": args.seeds, "label_settings": chosen,
               "teacher": teacher_metrics | {"loss": None}, "runs": results, "table": table,
               "minutes": (time.perf_counter() - started) / 60, "threads": args.threads}
    write_text_atomic(work / "results.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(work / "table.md", text + "\n")
    plot_transfer_table(table, work / "transfer.png")
    print(text)
    print(f"results.json, table.md, transfer.png in {work}; {summary['minutes']:.1f} min")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # e.g. a work directory made with other settings
        raise SystemExit(f"error: {error}") from None
