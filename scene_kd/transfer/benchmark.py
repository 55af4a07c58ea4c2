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
    """What runs: `seeds` for scratch and the main arms, the first seed alone for the ablations."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    world_seed: int = 0
    label_settings: list[str] = field(default_factory=list)  # default: every subset of the settings
    arms: list[str] = field(default_factory=lambda: list(MAIN_ARMS))
    ablations: list[str] = field(default_factory=lambda: list(ABLATION_ARMS))


def full_settings() -> TransferSettings:
    """The full run's sizes: 25 scans (20 training, 5 validation), so that 10 % and 20 % of the
    training scans are 2 and 4 scans."""
    return TransferSettings(num_scenes=25, scene_percents=[10.0, 20.0], point_counts=[20, 200])


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
                           progress: bool = True, say: Callable[[str], None] = print) -> BenchmarkRecord:
    """Run (or resume) the whole benchmark in `work_dir`; returns the record (also in results.json)."""
    work = Path(work_dir)
    labels = plan.label_settings or label_settings(settings)
    say("== data")
    processed = prepare_synthetic_data(work / "data", settings, seed=plan.world_seed, progress=progress)
    say("== 2D teacher (from the frames' 2D labels)")
    teacher, teacher_metrics = train_teacher_stage(processed, work / "teacher", settings, seed=plan.world_seed,
                                                   progress=progress)
    say("== in-world CLIP (image-text pairs of the training frames)")
    clip_files, clip_metrics = world_clip_stage(processed, work / "world_clip", settings, seed=plan.world_seed,
                                                progress=progress)
    files = TeacherFiles(frame_encoder=teacher, clip_weights=clip_files.clip_weights,
                         clip_model_config=clip_files.clip_model_config)
    record = BenchmarkRecord(work / "results.json", header={
        "settings": settings_dict(settings), "plan": vars(plan) | {"label_settings": labels},
        "teacher_2d": teacher_metrics, "world_clip": _scalars(clip_metrics)})
    for seed in plan.seeds:
        arms = plan.arms + (plan.ablations if seed == plan.seeds[0] else [])
        checkpoints = {}
        for arm in arms:
            say(f"== seed {seed}: pretraining {arm}")
            checkpoints[arm] = pretrain_stage(processed, teacher, work / f"seed{seed}" / f"pretrain_{arm}", settings,
                                              seed=seed, progress=progress, arm=ARMS[arm], files=files)
        _finetunes(record, processed, work / f"seed{seed}", settings, plan, seed, labels, checkpoints, progress, say)
        _zero_shot(record, processed, settings, plan, seed, checkpoints, say)
    _fusion_baseline(record, processed, settings, plan, files, say)
    return record


def _finetunes(record: BenchmarkRecord, processed: Path, seed_dir: Path, settings: TransferSettings,
               plan: BenchmarkPlan, seed: int, labels: Sequence[str], checkpoints: dict[str, Path], progress: bool,
               say: Callable[[str], None]) -> None:
    """Limited-label finetunes of scratch and every arm, linear probes, full-label finetunes."""
    def row(arm: str, setting: str, metrics: dict) -> None:
        record.add(world_seed=plan.world_seed, seed=seed, arm=arm, setting=setting, miou=metrics["miou"],
                   ablation=arm.removeprefix("linear_probe_") in plan.ablations)

    for setting in labels:
        for arm, init in (("scratch", None), *checkpoints.items()):
            say(f"== seed {seed}: finetune {setting} from {arm}")
            row(arm, setting, finetune_stage(processed, setting, init, seed_dir / f"{setting}_{arm}", settings,
                                             seed=seed, progress=progress))
    for arm, init in checkpoints.items():
        say(f"== seed {seed}: linear probe of {arm}")
        row(f"linear_probe_{arm}", "full_labels", finetune_stage(processed, "full", init, seed_dir / f"probe_{arm}",
                                                                 settings, seed=seed, progress=progress,
                                                                 linear_probe=True))
    for arm in FULL_LABEL_ARMS:
        if arm == "scratch" or arm in checkpoints:
            say(f"== seed {seed}: full-label finetune from {arm}")
            row(arm, "full_labels", finetune_stage(processed, "full", checkpoints.get(arm), seed_dir / f"full_{arm}",
                                                   settings, seed=seed, progress=progress))


def _zero_shot(record: BenchmarkRecord, processed: Path, settings: TransferSettings, plan: BenchmarkPlan, seed: int,
               checkpoints: dict[str, Path], say: Callable[[str], None]) -> None:
    from scene_kd.eval.zeroshot import zeroshot_segmentation

    for arm in (a for a in checkpoints if a in CONCEPT_ARMS):
        say(f"== seed {seed}: zero-shot 3D segmentation with {arm}")
        confusion = zeroshot_segmentation(checkpoints[arm], processed, "val")
        record.add(world_seed=plan.world_seed, seed=seed, arm=f"zeroshot_{arm}", setting="zero_shot",
                   miou=confusion.miou(), ablation=arm in plan.ablations)


def _fusion_baseline(record: BenchmarkRecord, processed: Path, settings: TransferSettings, plan: BenchmarkPlan,
                     files: TeacherFiles, say: Callable[[str], None]) -> None:
    """The 2D-only zero-shot baseline: deterministic (no training), one row with seed None."""
    if any(r["arm"] == FUSION_ARM for r in record.runs):
        return
    from scene_kd.eval.fusion_zeroshot import fusion_zeroshot_segmentation
    from scene_kd.eval.zeroshot import SCANNET_TEMPLATES, seg20_prompt_names
    from scene_kd.models.teachers.clip import build_clip_teacher, clip_text_embeddings

    say("== zero-shot 2D fusion baseline (CLIP dense features carried onto the points)")
    width, height = settings.image_size
    teacher = build_clip_teacher(str(files.clip_model_config), weights=files.clip_weights, image_size=(height, width))
    text = clip_text_embeddings(str(files.clip_model_config), files.clip_weights, seg20_prompt_names(),
                                SCANNET_TEMPLATES)
    confusion = fusion_zeroshot_segmentation(processed, "val", teacher, text, settings.voxel_size, (width, height))
    record.add(world_seed=plan.world_seed, seed=None, arm=FUSION_ARM, setting="zero_shot", miou=confusion.miou(),
               ablation=False)


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
