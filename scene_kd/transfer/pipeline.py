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

from scene_kd.config import load_config
from scene_kd.data.subsets import make_data_efficient_subsets, point_subset_name, scene_subset_name
from scene_kd.scannet.atomic import write_text_atomic
from scene_kd.scannet.preprocess import format_summary, preprocess_dataset
from scene_kd.scannet.synthetic import write_synthetic_scannet
from scene_kd.transfer.frame_labels import load_labelled_frames
from scene_kd.transfer.frame_teacher import FRAME_ENCODER_STRIDE, train_frame_teacher

FRAME_ENCODER = "scene_kd.transfer.frame_teacher:frame_encoder"


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


DATA_FIELDS = ("num_scenes", "val_fraction", "num_frames", "frame_skip", "image_size", "scene_percents", "point_counts")
TEACHER_FIELDS = (*DATA_FIELDS, "teacher_steps", "teacher_width", "teacher_channels")
PRETRAIN_FIELDS = (*TEACHER_FIELDS, "student", "voxel_size", "pretrain_steps", "pretrain_batch", "pretrain_mode",
                   "pretrain_frames_per_sample", "pretrain_lr", "temperature")
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


def pretrain_overrides(processed: Path, teacher_weights: Path, run_dir: Path, settings: TransferSettings,
                       seed: int) -> list[str]:
    """`tools/pretrain.py` overrides of the experiment's pretraining (the frame teacher as an import teacher)."""
    return [
        f"data.root={processed}", "data.split=train", f"data.mode={settings.pretrain_mode}",
        f"data.voxel_size={settings.voxel_size}", f"data.image_size=[{settings.image_size[0]},{settings.image_size[1]}]",
        f"data.frames_per_sample={settings.pretrain_frames_per_sample if settings.pretrain_mode == 'scene' else 1}",
        f"data.batch_size={settings.pretrain_batch}", "data.num_workers=0", "data.min_pairs=50",
        f"student.name={settings.student}", "teacher.name=import", f"teacher.weights={teacher_weights}",
        f"teacher.options.target={FRAME_ENCODER}", f"teacher.options.out_channels={settings.teacher_channels}",
        f"teacher.options.stride={FRAME_ENCODER_STRIDE}",
        f"teacher.options.factory_kwargs.out_channels={settings.teacher_channels}",
        f"teacher.options.factory_kwargs.width={settings.teacher_width}",
        f"loss.temperature={settings.temperature}", f"optim.lr={settings.pretrain_lr}",
        f"schedule.warmup_steps={max(1, settings.pretrain_steps // 10)}",
        f"train.max_steps={settings.pretrain_steps}", f"train.checkpoint_every={settings.pretrain_steps}",
        "train.log_every=5", "train.device=cpu", "train.amp=none", f"train.seed={seed}", f"train.out_dir={run_dir}",
    ]


def pretrain_stage(processed: Path, teacher_weights: Path, out_dir: str | os.PathLike, settings: TransferSettings,
                   seed: int = 0, progress: bool = True) -> Path:
    """Pretrain the student by PPKT from the frame teacher; returns the final checkpoint
    (out_dir/checkpoints/last.pth). A finished run is reused; an interrupted one resumes."""
    from scene_kd.distill.pretrain import run_pretraining
    from scene_kd.distill.schema import PretrainConfig

    run_dir = Path(out_dir)
    checkpoint = run_dir / "checkpoints" / "last.pth"
    stamp = stage_stamp(settings, PRETRAIN_FIELDS, seed=seed, data=str(processed), teacher=str(teacher_weights))
    if not reuse_stage(run_dir / "done.json", stamp):
        overrides = pretrain_overrides(processed, teacher_weights, run_dir, settings, seed)
        overrides.append(f"train.progress={str(progress).lower()}")
        run_pretraining(load_config(PretrainConfig, None, overrides))
        _write_json(run_dir / "done.json", stamp)
    return checkpoint


def finetune_overrides(processed: Path, label_setting: str, init: Path | None, run_dir: Path,
                       settings: TransferSettings, seed: int, write_predictions: bool = False) -> list[str]:
    """`tools/finetune_seg.py` overrides of one limited-label finetune."""
    subsets = processed / "subsets"
    overrides = [
        f"data.root={processed}", "data.train_split=train", "data.val_split=val",
        f"data.voxel_size={settings.voxel_size}", "data.num_workers=0", f"data.batch_size={settings.finetune_batch}",
        f"data.max_voxels={settings.finetune_max_voxels}",
        f"model.student={settings.student}", f"model.init={init if init is not None else 'null'}",
        f"optim.lr={settings.finetune_lr}", f"train.max_steps={settings.finetune_steps}",
        f"train.checkpoint_every={settings.finetune_steps}", "train.log_every=5", "train.device=cpu",
        "train.amp=none", f"train.seed={seed}", f"train.out_dir={run_dir}",
        f"eval.write_predictions={str(write_predictions).lower()}",
    ]
    if label_setting.startswith("scenes_"):
        overrides.append(f"data.scene_subset={subsets / (label_setting + '.txt')}")
    elif label_setting.startswith("points_"):
        overrides.append(f"data.labelled_points={subsets / (label_setting + '.json')}")
    elif label_setting != "full":
        raise ValueError(f"unknown label setting {label_setting!r}: scenes_<p>pct | points_<n> | full")
    return overrides


def finetune_stage(processed: Path, label_setting: str, init: Path | None, out_dir: str | os.PathLike,
                   settings: TransferSettings, seed: int = 0, progress: bool = True,
                   write_predictions: bool = False) -> dict:
    """Finetune segmentation with `label_setting`'s labels from `init` (None: from scratch) and
    return the final val metrics (out_dir/eval/metrics.json); a finished run is reused."""
    from scene_kd.finetune.schema import FinetuneSegConfig
    from scene_kd.finetune.seg import run_finetune_seg

    run_dir = Path(out_dir)
    metrics_path = run_dir / "eval" / "metrics.json"
    stamp = stage_stamp(settings, FINETUNE_FIELDS, seed=seed, data=str(processed), labels=label_setting,
                        init=None if init is None else str(init), write_predictions=write_predictions)
    if not reuse_stage(run_dir / "done.json", stamp):
        overrides = finetune_overrides(processed, label_setting, init, run_dir, settings, seed, write_predictions)
        overrides.append(f"train.progress={str(progress).lower()}")
        run_finetune_seg(load_config(FinetuneSegConfig, None, overrides))
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
