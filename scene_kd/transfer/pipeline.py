"""The stages of the transfer experiment as plain functions over directories:

synthetic scans -> processed scenes (+ limited-label subsets) -> a 2D teacher trained on the frames'
2D labels -> a student pretrained from it (PPKT) on the unlabelled training scans -> finetunes with
limited 3D labels, from the pretrained student and from scratch -> val mIoU.

Each stage writes into its own directory and records what it was made from (`done.json`: the
settings it depends on, seeds, inputs); a rerun reuses a stage whose record matches, runs one that
has none (an interrupted training resumes from its last checkpoint), and refuses one made with other
settings, so an interrupted benchmark or demo picks up where it stopped and never mixes experiments.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from scene_kd.atomic import write_text_atomic
from scene_kd.config import build_config
from scene_kd.data.subsets import make_data_efficient_subsets, point_subset_name, scene_subset_name
from scene_kd.scannet.preprocess import format_summary, preprocess_dataset
from scene_kd.synthetic import write_synthetic_scannet
from scene_kd.transfer.arms import ARMS, Arm, TeacherFiles, loss_section, teacher_section
from scene_kd.transfer.frame_labels import load_labelled_frames
from scene_kd.transfer.frame_teacher import train_frame_teacher


@dataclass
class TransferSettings:
    """Sizes of one transfer experiment (the defaults are the benchmark's; the demo shrinks them)."""

    num_scenes: int = 20  # synthetic scans; the last val_fraction are the validation split
    val_fraction: float = 0.2
    num_frames: int = 60  # frames per scan (every frame_skip-th is kept)
    frame_skip: int = 4
    image_size: tuple[int, int] = (160, 120)  # stored frames and teacher input (W, H)
    student: str = "MinkUNet14A"
    voxel_size: float = 0.1  # pretraining and finetuning, metres (coarse: CPU budget)
    teacher_steps: int = 600
    teacher_width: int = 48
    teacher_channels: int = 64
    pretrain_steps: int = 300
    pretrain_batch: int = 1  # scenes per step (scene mode): ~15k voxels at 10 cm
    pretrain_mode: str = "scene"  # scene | frame (PretrainDataset)
    pretrain_frames_per_sample: int = 4
    pretrain_lr: float = 0.3
    temperature: float = 0.07
    finetune_steps: int = 150
    finetune_batch: int = 2
    finetune_max_voxels: int = 6000  # training samples are cropped to this many voxels (CPU budget)
    finetune_lr: float = 0.1
    scene_percents: list[float] = field(default_factory=lambda: [10.0])
    point_counts: list[int] = field(default_factory=lambda: [20, 200])
    clip_steps: int = 1500  # in-world CLIP (transfer/world_clip.py)
    clip_batch: int = 128
    clip_image_size: int = 64  # its square input (crops); pretraining runs its dense tower on whole frames
    concept_num_concepts: int = 16  # concept head (concept arms)
    concept_width: int = 64
    concept_heads: int = 4


DATA_FIELDS = ("num_scenes", "val_fraction", "num_frames", "frame_skip", "image_size", "scene_percents", "point_counts")
TEACHER_FIELDS = (*DATA_FIELDS, "teacher_steps", "teacher_width", "teacher_channels")
PRETRAIN_FIELDS = (*TEACHER_FIELDS, "student", "voxel_size", "pretrain_steps", "pretrain_batch", "pretrain_mode",
                   "pretrain_frames_per_sample", "pretrain_lr", "temperature")
LINEAR_PROBE_LR = 0.5  # as configs/finetune_seg/linear_probe.yaml
CLIP_FIELDS = (*DATA_FIELDS, "clip_steps", "clip_batch", "clip_image_size")
CONCEPT_FIELDS = ("concept_num_concepts", "concept_width", "concept_heads")
FINETUNE_FIELDS = (*DATA_FIELDS, "student", "voxel_size", "finetune_steps", "finetune_batch", "finetune_max_voxels",
                   "finetune_lr")


def stage_stamp(settings: TransferSettings, fields: tuple[str, ...], **extra) -> dict:
    """What a stage's result depends on: the named settings and `extra` (seeds, paths), JSON-ready."""
    values = asdict(settings)
    stamp = {name: list(values[name]) if isinstance(values[name], tuple) else values[name] for name in fields}
    return json.loads(json.dumps({**stamp, **extra}, default=str))


def reuse_stage(stamp_path: Path, stamp: dict) -> bool:
    """True when `stamp_path` records exactly `stamp` (the stage is done and may be reused); False
    when it does not exist (run the stage); a ValueError naming the directory when it records other
    settings, so that results of different experiments are never mixed."""
    recorded = _read_json(stamp_path)
    if recorded is None:
        return False
    if recorded != stamp:
        changed = sorted(k for k in set(recorded) | set(stamp) if recorded.get(k) != stamp.get(k))
        raise ValueError(f"{stamp_path.parent}: made with other settings ({', '.join(changed)} differ); "
                         "use another work directory or delete this one")
    return True


def label_settings(settings: TransferSettings) -> list[str]:
    """Names of the limited-label settings: `scenes_10pct`, `points_20`, ... (the subset file stems)."""
    return ([Path(scene_subset_name(p)).stem for p in settings.scene_percents]
            + [Path(point_subset_name(n)).stem for n in settings.point_counts])


def prepare_synthetic_data(out_dir: str | os.PathLike, settings: TransferSettings, seed: int = 0,
                           progress: bool = True) -> Path:
    """Synthetic scans under out_dir/scannet, processed into out_dir/processed with the
    limited-label subsets of its training split in processed/subsets/. Returns the processed root."""
    out = Path(out_dir)
    raw, processed = out / "scannet", out / "processed"
    stamp = stage_stamp(settings, DATA_FIELDS, seed=seed)
    done = reuse_stage(out / "done.json", stamp)
    if not done:
        write_synthetic_scannet(raw, num_scenes=settings.num_scenes, seed=seed, num_frames=settings.num_frames,
                                color_size=(324, 242), depth_size=(160, 120), val_fraction=settings.val_fraction,
                                workers=1, progress=progress)
    summary = preprocess_dataset(raw, processed, frame_skip=settings.frame_skip, image_size=settings.image_size,
                                 workers=1, progress=progress)
    if summary.failed:
        raise RuntimeError(f"preprocessing failed:\n{format_summary(summary)}")
    if not done:
        make_data_efficient_subsets(processed, split="train", scene_percents=settings.scene_percents,
                                    point_counts=settings.point_counts, seed=seed)
        _write_json(out / "done.json", stamp)
    return processed


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def train_teacher_stage(processed: Path, out_dir: str | os.PathLike, settings: TransferSettings, seed: int = 0,
                        progress: bool = True) -> tuple[Path, dict]:
    """Train the 2D teacher on the training scans' frames (their 2D labels), measure it on the
    validation frames; out_dir/teacher.pth and teacher_metrics.json. Returns (weights, metrics)."""
    out = Path(out_dir)
    weights, metrics_path = out / "teacher.pth", out / "teacher_metrics.json"
    stamp = stage_stamp(settings, TEACHER_FIELDS, seed=seed, data=str(processed))
    if reuse_stage(out / "done.json", stamp):
        return weights, json.loads(metrics_path.read_text())
    train_frames = load_labelled_frames(processed, "train", settings.image_size, progress=progress)
    val_frames = load_labelled_frames(processed, "val", settings.image_size, progress=progress)
    metrics = train_frame_teacher(train_frames, weights, val_frames=val_frames, out_channels=settings.teacher_channels,
                                  width=settings.teacher_width, steps=settings.teacher_steps, seed=seed,
                                  progress=progress)
    metrics["labelled_pixel_fraction"] = float((train_frames["labels"] >= 0).mean())
    _write_json(metrics_path, metrics)
    _write_json(out / "done.json", stamp)
    return weights, metrics


def pretrain_config(processed: Path, teacher_weights: Path, run_dir: Path, settings: TransferSettings,
                    seed: int, progress: bool = True, arm: Arm = ARMS["ppkt_2d"],
                    files: TeacherFiles | None = None) -> DictConfig:
    """The experiment's pretraining config of `arm` (default: PPKT from the frame encoder,
    `teacher.name=frame_encoder` with `teacher_weights`): PretrainConfig's defaults with the
    experiment's sizes. files: the teachers' files (needed by the CLIP arms)."""
    from scene_kd.distill.schema import PretrainConfig

    files = files or TeacherFiles(frame_encoder=teacher_weights)
    frame_encoder = {"out_channels": settings.teacher_channels, "width": settings.teacher_width}
    frames_per_sample = settings.pretrain_frames_per_sample if settings.pretrain_mode == "scene" else 1
    width, height = settings.image_size
    return build_config(PretrainConfig, overrides={
        "data": {"root": str(processed), "split": "train", "mode": settings.pretrain_mode,
                 "voxel_size": settings.voxel_size, "image_size": list(settings.image_size),
                 "frames_per_sample": frames_per_sample, "batch_size": settings.pretrain_batch, "num_workers": 0,
                 "min_pairs": 50},
        "student": {"name": settings.student},
        "teacher": teacher_section(arm, files, frame_encoder, [height, width]),
        "loss": loss_section(arm, settings.temperature),
        "concept": {"num_concepts": settings.concept_num_concepts, "width": settings.concept_width,
                    "num_heads": settings.concept_heads},
        "optim": {"lr": settings.pretrain_lr},
        "schedule": {"warmup_steps": max(1, settings.pretrain_steps // 10)},
        "train": {"max_steps": settings.pretrain_steps, "checkpoint_every": settings.pretrain_steps, "log_every": 5,
                  "device": "cpu", "amp": "none", "seed": seed, "out_dir": str(run_dir), "progress": progress},
    })


def pretrain_stage(processed: Path, teacher_weights: Path, out_dir: str | os.PathLike, settings: TransferSettings,
                   seed: int = 0, progress: bool = True, arm: Arm = ARMS["ppkt_2d"],
                   files: TeacherFiles | None = None) -> Path:
    """Pretrain the student as `arm` says (default: PPKT from the frame teacher); returns the final
    checkpoint (out_dir/checkpoints/last.pth). A finished run is reused; an interrupted one resumes."""
    from scene_kd.distill.pretrain import run_pretraining

    run_dir = Path(out_dir)
    checkpoint = run_dir / "checkpoints" / "last.pth"
    extra = {} if arm.name == "ppkt_2d" else {"arm": arm.name, "clip": str(files.clip_weights if files else None),
                                                **stage_stamp(settings, CONCEPT_FIELDS)}
    stamp = stage_stamp(settings, PRETRAIN_FIELDS, seed=seed, data=str(processed), teacher=str(teacher_weights),
                        **extra)
    if not reuse_stage(run_dir / "done.json", stamp):
        run_pretraining(pretrain_config(processed, teacher_weights, run_dir, settings, seed, progress, arm, files))
        _write_json(run_dir / "done.json", stamp)
    return checkpoint


def world_clip_stage(processed: Path, out_dir: str | os.PathLike, settings: TransferSettings, seed: int = 0,
                     progress: bool = True) -> tuple[TeacherFiles, dict]:
    """Train the in-world CLIP on image-text pairs of the training scans' frames (captions from their
    2D labels) and measure it on the validation scans (2D zero-shot crop accuracy, dense pixel mIoU);
    out_dir/{world_clip.pt, model_config.json, clip_metrics.json}. Returns (files with the CLIP's
    weights and model config, metrics)."""
    from scene_kd.transfer.world_clip import evaluate_world_clip, tiny_clip_config, train_world_clip
    from scene_kd.transfer.world_clip_data import PairSettings, build_pair_set

    out = Path(out_dir)
    weights, config_path, metrics_path = out / "world_clip.pt", out / "model_config.json", out / "clip_metrics.json"
    model_config = tiny_clip_config(image_size=settings.clip_image_size)
    stamp = stage_stamp(settings, CLIP_FIELDS, seed=seed, data=str(processed), model_config=model_config)
    files = TeacherFiles(frame_encoder=Path(), clip_weights=weights, clip_model_config=config_path)
    if reuse_stage(out / "done.json", stamp):
        return files, json.loads(metrics_path.read_text())
    pair_settings = PairSettings(image_size=settings.clip_image_size, frame_size=tuple(settings.image_size))
    train_pairs, _ = build_pair_set(processed, "train", None, pair_settings, seed=seed, progress=progress)
    val_pairs, val_frames = build_pair_set(processed, "val", None, pair_settings, seed=seed, progress=progress)
    _, training = train_world_clip(train_pairs, out, model_config=model_config,
                                   steps=settings.clip_steps, batch_size=min(settings.clip_batch, len(train_pairs["texts"])),
                                   seed=seed, progress=progress)
    metrics = evaluate_world_clip(weights, config_path, val_pairs, val_frames)
    metrics.update(train_pairs=len(train_pairs["texts"]), train_seconds=training.get("seconds"),
                   loss_first=training["loss"][0], loss_last=training["loss"][-1])
    _write_json(metrics_path, metrics)
    _write_json(out / "done.json", stamp)
    return files, metrics


def label_subset(processed: Path, label_setting: str) -> dict:
    """The `data` entries that limit a finetune's labels to `label_setting` (scenes_<p>pct | points_<n> |
    full): the subset files of processed/subsets/."""
    subsets = processed / "subsets"
    if label_setting.startswith("scenes_"):
        return {"scene_subset": str(subsets / (label_setting + ".txt"))}
    if label_setting.startswith("points_"):
        return {"labelled_points": str(subsets / (label_setting + ".json"))}
    if label_setting != "full":
        raise ValueError(f"unknown label setting {label_setting!r}: scenes_<p>pct | points_<n> | full")
    return {}


def finetune_config(processed: Path, label_setting: str, init: Path | None, run_dir: Path,
                    settings: TransferSettings, seed: int, write_predictions: bool = False,
                    progress: bool = True, linear_probe: bool = False) -> DictConfig:
    """One limited-label finetune's config: FinetuneSegConfig's defaults with the experiment's sizes.
    linear_probe: the backbone frozen, only the final layer trained (lr as configs/finetune_seg/linear_probe.yaml)."""
    from scene_kd.finetune.schema import FinetuneSegConfig

    data = {"root": str(processed), "train_split": "train", "val_split": "val", "voxel_size": settings.voxel_size,
            "num_workers": 0, "batch_size": settings.finetune_batch, "max_voxels": settings.finetune_max_voxels,
            **label_subset(processed, label_setting)}
    return build_config(FinetuneSegConfig, overrides={
        "data": data,
        "model": {"student": settings.student, "init": None if init is None else str(init),
                  "freeze_backbone": linear_probe},
        "optim": {"lr": LINEAR_PROBE_LR if linear_probe else settings.finetune_lr},
        "train": {"max_steps": settings.finetune_steps, "checkpoint_every": settings.finetune_steps, "log_every": 5,
                  "device": "cpu", "amp": "none", "seed": seed, "out_dir": str(run_dir), "progress": progress},
        "eval": {"write_predictions": write_predictions},
    })


def finetune_stage(processed: Path, label_setting: str, init: Path | None, out_dir: str | os.PathLike,
                   settings: TransferSettings, seed: int = 0, progress: bool = True,
                   write_predictions: bool = False, linear_probe: bool = False) -> dict:
    """Finetune segmentation with `label_setting`'s labels from `init` (None: from scratch), or with
    `linear_probe` train only the final layer on the frozen `init`, and return the final val metrics
    (out_dir/eval/metrics.json); a finished run is reused."""
    from scene_kd.finetune.seg import run_finetune_seg

    run_dir = Path(out_dir)
    metrics_path = run_dir / "eval" / "metrics.json"
    stamp = stage_stamp(settings, FINETUNE_FIELDS, seed=seed, data=str(processed), labels=label_setting,
                        init=None if init is None else str(init), write_predictions=write_predictions,
                        **({"linear_probe": True} if linear_probe else {}))
    if not reuse_stage(run_dir / "done.json", stamp):
        run_finetune_seg(finetune_config(processed, label_setting, init, run_dir, settings, seed, write_predictions,
                                         progress, linear_probe))
        _write_json(run_dir / "done.json", stamp)
    return json.loads(metrics_path.read_text())


def summarize(results: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Rows {"setting", "init" (scratch | pretrained), "seed", "miou"} -> {setting: {init: {mean, std,
    n}}, plus "gain" {mean, std} of the per-seed pretrained - scratch differences}, mIoU in points."""
    table: dict[str, dict] = {}
    for setting in dict.fromkeys(r["setting"] for r in results):
        rows = [r for r in results if r["setting"] == setting]
        entry: dict[str, dict] = {}
        by_init = {}
        for init in ("scratch", "pretrained"):
            values = {r["seed"]: 100.0 * r["miou"] for r in rows if r["init"] == init}
            by_init[init] = values
            if values:
                v = np.array(list(values.values()))
                entry[init] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
        common = sorted(set(by_init["scratch"]) & set(by_init["pretrained"]))
        if common:
            gain = np.array([by_init["pretrained"][s] - by_init["scratch"][s] for s in common])
            entry["gain"] = {"mean": float(gain.mean()), "std": float(gain.std(ddof=1)) if len(gain) > 1 else 0.0,
                             "n": len(gain)}
        table[setting] = entry
    return table


def format_transfer_table(table: dict) -> str:
    """A markdown table of `summarize`'s result: val mIoU (%) mean ± std over seeds."""
    def cell(entry: dict | None) -> str:
        return "-" if not entry else f"{entry['mean']:.1f} ± {entry['std']:.1f}"

    lines = ["| labels | scratch | pretrained (PPKT) | gain | seeds |", "|---|---|---|---|---|"]
    for setting, entry in table.items():
        n = entry.get("gain", entry.get("scratch", {"n": 0}))["n"]
        gain = entry.get("gain")
        gain_text = "-" if gain is None else f"{gain['mean']:+.1f} ± {gain['std']:.1f}"
        lines.append(f"| {setting} | {cell(entry.get('scratch'))} | {cell(entry.get('pretrained'))} | {gain_text} | {n} |")
    return "\n".join(lines)


def settings_dict(settings: TransferSettings) -> dict:
    return asdict(settings)
