"""3D object-detection finetuning, the run: the datasets, the shared training loop with the
detector (`model`), its losses (`losses`, after the assignment of `assign`) and validation by
VoteNet's protocol on whole scenes (`scene_kd.eval.detection_split`); and the evaluation of a
finetuned checkpoint. docs/detection.md describes the method."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from scene_kd.config import as_dict, plain
from scene_kd.data.det_dataset import DetectionDataset, collate_detection
from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.checkpoint_checks import EVALUATION_ADVICE, check_checkpoint, load_weights
from scene_kd.engine.launch import Task, launch
from scene_kd.engine.trainer import LoopResult, resolve_device
from scene_kd.eval.detection import format_ap_table
from scene_kd.eval.detection_split import evaluate_detection_split, flat_metrics
from scene_kd.finetune.det.losses import DetectionObjective
from scene_kd.finetune.det.model import build_det_model, new_det_model
from scene_kd.scannet.labels import DET18_NAMES


def build_det_datasets(cfg: DictConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """(training set with augmentation and `data.scene_subset`, validation set without either)."""
    d = cfg.data
    train_set = DetectionDataset(d.root, plain(d.train_split), voxel_size=d.voxel_size, augment=plain(d.augment),
                                 scene_subset=plain(d.scene_subset), in_features=d.in_features,
                                 color_norm=d.color_norm, seed=cfg.train.seed, min_box_points=d.min_box_points)
    val_set = DetectionDataset(d.root, plain(d.val_split), voxel_size=d.voxel_size, augment=False,
                               in_features=d.in_features, color_norm=d.color_norm, seed=cfg.train.seed,
                               min_box_points=d.min_box_points)
    return train_set, val_set


def detection_task(cfg: DictConfig, device: torch.device) -> Task:
    """The launcher's task: the detector, its losses, val mAP every `train.eval_every` steps and, at the
    end, the evaluation files in `train.out_dir/eval/`."""
    train_set, val_set = build_det_datasets(cfg)
    model, backend, note = build_det_model(cfg)
    model = model.to(device)

    def evaluate(step: int) -> dict[str, float]:
        return flat_metrics(evaluate_detection_split(model, backend, val_set, device, cfg.eval))

    def finish(result: LoopResult) -> None:
        if len(val_set):
            out = Path(cfg.train.out_dir) / "eval"
            results = evaluate_detection_split(model, backend, val_set, device, cfg.eval, out_dir=out)
            if dist_utils.is_main_process():
                print(format_ap_table(results, DET18_NAMES))

    return Task(
        trainable=model,
        objective=lambda wrapped: DetectionObjective(wrapped, backend, cfg.data.voxel_size, cfg.loss,
                                                     freeze_backbone=cfg.model.freeze_backbone),
        dataset=train_set, collate_fn=collate_detection,
        description=(f"finetuning {cfg.model.student} for detection at strides {list(cfg.model.strides)} ({note}) "
                     f"on {len(train_set)} training scenes, {len(val_set)} validation scenes"),
        samples_in=lambda batch: len(batch["scene_ids"]),
        evaluate=evaluate if len(val_set) else None,
        checkpoint_extra=lambda: {"student_name": cfg.model.student, "strides": list(cfg.model.strides),
                                  "config": as_dict(cfg)},
        finish=finish)


def run_finetune_det(cfg: DictConfig) -> LoopResult:
    """Finetune for 3D detection as `cfg` says; the best checkpoint by `train.best_metric` (val
    mAP@0.25) is kept and the final model is evaluated into `train.out_dir/eval/`."""
    return launch(cfg, detection_task)


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, float]:
    """Evaluate a finetuned detection checkpoint on `cfg.data.val_split` into `out_dir` (det_results.json,
    det_table.txt, per-scene box JSON and PLY wireframes); returns the flat metrics."""
    device = resolve_device(cfg.train.device)
    _, val_set = build_det_datasets(cfg)
    model, backend = new_det_model(cfg)
    state = load_checkpoint(checkpoint)
    check_checkpoint(state, checkpoint, kinds=("detection", None), purpose="detection evaluation",
                     kind_advice=EVALUATION_ADVICE, student_name=cfg.model.student, strides=list(cfg.model.strides))
    load_weights(model, state["model"] if "model" in state else state, checkpoint,
                 f"a detection checkpoint of {cfg.model.student} at strides {list(cfg.model.strides)}")
    results = evaluate_detection_split(model.to(device), backend, val_set, device, cfg.eval, out_dir=out_dir)
    print(format_ap_table(results, DET18_NAMES))
    return flat_metrics(results, prefix="")
