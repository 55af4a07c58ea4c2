"""The transfer benchmark: every arm (scratch, PPKT from the 2D-label teacher, PPKT from the in-world
CLIP, PPKT + concept distillation from it, and the ablations) in every limited-label setting, the
linear probes, the full-label finetunes and zero-shot 3D segmentation, over seeds, on one synthetic
world. Every run becomes a row {"world_seed", "seed", "arm", "setting", "miou"}; the rows are
written to `results.json` after every stage, so an interrupted run shows what it has and a rerun
resumes (each stage is reused when finished, see `pipeline.reuse_stage`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scene_kd.atomic import write_text_atomic
from scene_kd.transfer.arms import ARMS, TeacherFiles
from scene_kd.transfer.jobs import Job, run_jobs
from scene_kd.transfer.pipeline import (
    TransferSettings,
    finetune_stage,
    label_settings,
    prepare_synthetic_data,
    pretrain_stage,
    settings_dict,
    train_teacher_stage,
    world_clip_stage,
)

MAIN_ARMS = tuple(name for name, arm in ARMS.items() if arm.main)
ABLATION_ARMS = tuple(name for name, arm in ARMS.items() if not arm.main)
CONCEPT_ARMS = tuple(name for name, arm in ARMS.items() if "concept" in arm.objective)
FULL_LABEL_ARMS = ("scratch", "ppkt_concept_clip")  # the full-label finetunes zero-shot is compared with
FUSION_ARM = "clip_2d_fusion"  # the 2D-only zero-shot baseline (no 3D training)
NOT_FINETUNES = ("linear_probe_", "zeroshot_", FUSION_ARM)  # rows compared with scratch's finetunes by no gain


@dataclass
class BenchmarkPlan:
    """What runs: `seeds` for scratch and the main arms, the first seed alone for the ablations.
    pretrain_every_seed: each seed pretrains its own student (False: each arm is pretrained once,
    with the first seed, and every seed finetunes from that student, the papers' usual protocol:
    the spread over seeds is then the finetuning's)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pretrain_every_seed: bool = False
    world_seed: int = 0
    label_settings: list[str] = field(default_factory=list)  # default: every subset of the settings
    arms: list[str] = field(default_factory=lambda: list(MAIN_ARMS))
    ablations: list[str] = field(default_factory=lambda: list(ABLATION_ARMS))


def full_settings() -> TransferSettings:
    """The full run's sizes: 25 scans (20 training, 5 validation), so that 10 % and 20 % of the
    training scans are 2 and 4 scans; 500 pretraining steps per arm (each arm pretrained once) and 80
    steps per finetune, so that the 5 pretrainings and the 73 finetunes and probes of 3 seeds fit 150
    minutes on 2 cores (`--jobs 2 --threads 1`)."""
    return TransferSettings(num_scenes=25, scene_percents=[10.0, 20.0], point_counts=[20, 200], pretrain_steps=500,
                            finetune_steps=80)


def quick_settings() -> TransferSettings:
    """Every arm at reduced size: the plumbing, in minutes (the figures mean little). 10 scans (8
    training): 25 % and 50 % of the training scans are 2 and 4 scans."""
    return TransferSettings(num_scenes=10, num_frames=24, teacher_steps=40, pretrain_steps=20, finetune_steps=12,
                            clip_steps=30, clip_batch=64, scene_percents=[25.0, 50.0], point_counts=[20, 200])


@dataclass
class BenchmarkRecord:
    """The rows so far and the stage metrics, written to `path` after every change."""

    path: Path
    header: dict
    runs: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, **row) -> None:
        self.runs.append(row)
        self.save()

    def save(self) -> None:
        minutes = (time.perf_counter() - self.started) / 60
        data = {**self.header, "minutes_this_session": round(minutes, 2), "runs": self.runs}
        write_text_atomic(self.path, json.dumps(data, indent=2) + "\n")


def run_transfer_benchmark(work_dir: str | os.PathLike, settings: TransferSettings, plan: BenchmarkPlan,
                           progress: bool = True, say: Callable[[str], None] = print, jobs: int = 1,
                           threads_per_job: int = 1) -> BenchmarkRecord:
    """Run (or resume) the whole benchmark in `work_dir`; returns the record (also in results.json).
    jobs > 1: independent stages run side by side in that many worker processes of
    `threads_per_job` torch threads (`transfer/jobs.py`); the rows are the same in either case."""
    work = Path(work_dir)
    say("== data")
    processed = prepare_synthetic_data(work / "data", settings, seed=plan.world_seed, progress=progress)
    files = TeacherFiles(frame_encoder=work / "teacher" / "teacher.pth", clip_weights=work / "world_clip" / "world_clip.pt",
                         clip_model_config=work / "world_clip" / "model_config.json")
    record = BenchmarkRecord(work / "results.json", header={
        "settings": settings_dict(settings), "plan": vars(plan) | {"label_settings": plan.label_settings
                                                                   or label_settings(settings)}})
    job_list, rows = benchmark_jobs(work, processed, settings, plan, files, progress=progress and jobs <= 1)
    finished: dict[str, dict] = {}

    def on_done(job: Job, result) -> None:
        if job.key == "teacher":
            record.header["teacher_2d"] = result[1]
        elif job.key == "world_clip":
            record.header["world_clip"] = _scalars(result[1])
        elif job.key in rows:
            miou = result["miou"] if isinstance(result, dict) else result
            finished[job.key] = {**rows[job.key], "miou": miou}
            record.runs = [finished[key] for key in rows if key in finished]  # the job list's order
        record.save()

    run_jobs(job_list, workers=jobs, threads=threads_per_job, on_done=on_done,
             say=lambda line: say(f"== {line}"))
    return record


def benchmark_jobs(work: Path, processed: Path, settings: TransferSettings, plan: BenchmarkPlan,
                   files: TeacherFiles, progress: bool) -> tuple[list[Job], dict[str, dict]]:
    """Every stage after the data as a job (teachers, pretraining per seed and arm, finetunes, probes,
    full-label finetunes, zero-shot, the fusion baseline), and the record row (less its "miou") of
    each job that yields one, keyed by job key, in the record's order."""
    labels = plan.label_settings or label_settings(settings)
    common = {"processed": processed, "settings": settings}
    jobs = [Job("teacher", train_teacher_stage, {**common, "out_dir": work / "teacher", "seed": plan.world_seed,
                                                 "progress": progress}),
            Job("world_clip", world_clip_stage, {**common, "out_dir": work / "world_clip", "seed": plan.world_seed,
                                                 "progress": progress})]
    rows: dict[str, dict] = {}

    def add(key: str, fn: Callable, kwargs: dict, after: Sequence[str], seed: int | None, arm: str,
            setting: str | None = None) -> None:
        jobs.append(Job(key, fn, kwargs, tuple(after)))
        if setting is not None:
            rows[key] = {"world_seed": plan.world_seed, "seed": seed, "arm": arm, "setting": setting,
                         "ablation": arm.removeprefix("linear_probe_").removeprefix("zeroshot_") in plan.ablations}

    pretrain_seeds = plan.seeds if plan.pretrain_every_seed else plan.seeds[:1]
    for seed in pretrain_seeds:
        for arm in plan.arms + (plan.ablations if seed == plan.seeds[0] else []):
            teacher_job = "teacher" if ARMS[arm].teacher == "frame_encoder" else "world_clip"
            add(f"seed{seed}/pretrain_{arm}", pretrain_stage,
                {**common, "teacher_weights": files.frame_encoder, "out_dir": work / f"seed{seed}" / f"pretrain_{arm}",
                 "seed": seed, "progress": progress, "arm": ARMS[arm], "files": files},
                after=(teacher_job,), seed=seed, arm=arm)
    for seed in plan.seeds:
        seed_dir = work / f"seed{seed}"
        arms = plan.arms + (plan.ablations if seed == plan.seeds[0] else [])
        pretrained = f"seed{seed if plan.pretrain_every_seed else plan.seeds[0]}"
        init = {arm: work / pretrained / f"pretrain_{arm}" / "checkpoints" / "last.pth" for arm in arms}
        after = {arm: [f"{pretrained}/pretrain_{arm}"] for arm in arms}
        finetune = {**common, "seed": seed, "progress": progress}
        for setting in labels:
            for arm in ("scratch", *arms):
                add(f"seed{seed}/{setting}_{arm}", finetune_stage,
                    {**finetune, "label_setting": setting, "init": init.get(arm), "out_dir": seed_dir / f"{setting}_{arm}"},
                    after=after.get(arm, ()), seed=seed, arm=arm, setting=setting)
        for arm in arms:
            add(f"seed{seed}/probe_{arm}", finetune_stage,
                {**finetune, "label_setting": "full", "init": init[arm], "out_dir": seed_dir / f"probe_{arm}",
                 "linear_probe": True}, after=after[arm], seed=seed, arm=f"linear_probe_{arm}", setting="full_labels")
        for arm in (a for a in FULL_LABEL_ARMS if a == "scratch" or a in arms):
            add(f"seed{seed}/full_{arm}", finetune_stage,
                {**finetune, "label_setting": "full", "init": init.get(arm), "out_dir": seed_dir / f"full_{arm}"},
                after=after.get(arm, ()), seed=seed, arm=arm, setting="full_labels")
        for arm in (a for a in arms if a in CONCEPT_ARMS):
            add(f"seed{seed}/zeroshot_{arm}", zero_shot_miou, {"checkpoint": init[arm], "processed": processed},
                after=after[arm], seed=seed, arm=f"zeroshot_{arm}", setting="zero_shot")
    add(FUSION_ARM, fusion_baseline_miou, {**common, "files": files}, after=("world_clip",), seed=None, arm=FUSION_ARM,
        setting="zero_shot")
    return jobs, rows


def zero_shot_miou(checkpoint: Path, processed: Path) -> float:
    """Val mIoU of zero-shot 3D segmentation with a concept-pretrained student (`tools/zeroshot_seg.py`'s path)."""
    from scene_kd.eval.zeroshot import zeroshot_segmentation

    return zeroshot_segmentation(checkpoint, processed, "val").miou()


def fusion_baseline_miou(processed: Path, settings: TransferSettings, files: TeacherFiles) -> float:
    """Val mIoU of the 2D-only zero-shot baseline (the CLIP's dense features fused onto the points
    through the frames, as OpenScene does): deterministic, no 3D training."""
    from scene_kd.eval.fusion_zeroshot import fusion_zeroshot_segmentation
    from scene_kd.eval.zeroshot import SCANNET_TEMPLATES, seg20_prompt_names
    from scene_kd.models.teachers.clip import build_clip_teacher, clip_text_embeddings

    width, height = settings.image_size
    teacher = build_clip_teacher(str(files.clip_model_config), weights=files.clip_weights, image_size=(height, width))
    text = clip_text_embeddings(str(files.clip_model_config), files.clip_weights, seg20_prompt_names(),
                                SCANNET_TEMPLATES)
    return fusion_zeroshot_segmentation(processed, "val", teacher, text, settings.voxel_size, (width, height)).miou()


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}


def summarize_runs(runs: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """{setting: {arm: {"mean", "std", "n", "seeds"}, ...}} of val mIoU in points, and for each
    pretrained arm "gain_<arm>": {mean, std, n, positive} of its per-seed difference to scratch."""
    table: dict[str, dict[str, dict]] = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        rows = [r for r in runs if r["setting"] == setting]
        entry: dict[str, dict] = {}
        for arm in dict.fromkeys(r["arm"] for r in rows):
            by_seed = {r["seed"]: 100.0 * r["miou"] for r in rows if r["arm"] == arm}
            entry[arm] = _stats(list(by_seed.values())) | {"seeds": sorted(by_seed, key=str)}
            scratch = {r["seed"]: 100.0 * r["miou"] for r in rows if r["arm"] == "scratch"}
            common = [s for s in by_seed if s in scratch]
            if arm != "scratch" and common and not arm.startswith(NOT_FINETUNES):
                gains = [by_seed[s] - scratch[s] for s in common]
                entry[f"gain_{arm}"] = _stats(gains) | {"positive": int(sum(g > 0 for g in gains))}
        table[setting] = entry
    return table


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def format_benchmark_table(table: dict, arms: Sequence[str]) -> str:
    """Markdown: val mIoU (%) per arm (rows) and setting (columns), mean ± std over seeds (n runs);
    then, per setting, each pretrained arm's gain over scratch (mean ± std of the per-seed
    differences, and in how many seeds it is positive)."""
    settings = list(table)
    lines = ["| arm | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for arm in arms:
        cells = [f"{table[s][arm]['mean']:.1f} ± {table[s][arm]['std']:.1f} ({table[s][arm]['n']})"
                 if arm in table[s] else "-" for s in settings]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    gain_arms = [a for a in arms if any(f"gain_{a}" in table[s] for s in settings)]
    if gain_arms:
        lines += ["", "| gain over scratch | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        for arm in gain_arms:
            cells = []
            for s in settings:
                g = table[s].get(f"gain_{arm}")
                cells.append("-" if g is None else f"{g['mean']:+.1f} ± {g['std']:.1f} ({g['positive']}/{g['n']} > 0)")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
