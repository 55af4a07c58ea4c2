"""Semantic-segmentation finetuning: a student with its 1x1x1 `final` layer as the linear head
(MinkowskiEngine's segmentation model of the same name), cross-entropy on the labelled voxels, the
shared loop, and ScanNet-protocol evaluation on whole validation scenes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from scene_kd.config import as_dict, plain
from scene_kd.data.scenes import check_checkpoint_features, feature_channels
from scene_kd.data.seg_dataset import SegmentationDataset, collate_segmentation
from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.checkpoint_checks import EVALUATION_ADVICE, check_checkpoint, load_weights
from scene_kd.engine.launch import Task, launch
from scene_kd.engine.trainer import LoopResult, resolve_device
from scene_kd.eval.segmentation import evaluate_segmentation
from scene_kd.eval.semseg import (
    format_iou_table,
    write_evaluation_outputs,
)
from scene_kd.finetune.init_weights import HEAD_PREFIX, init_from_checkpoint
from scene_kd.models.students import build_student
from scene_kd.sparse.backend import SparseBackend, get_backend


def in_channels_of(in_features: str) -> int:
    return feature_channels(in_features)


def build_seg_datasets(cfg: DictConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    d = cfg.data
    train_set = SegmentationDataset(d.root, plain(d.train_split), voxel_size=d.voxel_size, augment=plain(d.augment),
                                    max_voxels=d.max_voxels, labelled_points=d.labelled_points,
                                    scene_subset=d.scene_subset, in_features=d.in_features, color_norm=d.color_norm,
                                    seed=cfg.train.seed)
    val_set = SegmentationDataset(d.root, plain(d.val_split), voxel_size=d.voxel_size, augment=False, max_voxels=None,
                                  in_features=d.in_features, color_norm=d.color_norm, seed=cfg.train.seed)
    return train_set, val_set


def build_seg_model(cfg: DictConfig) -> tuple[nn.Module, SparseBackend, str]:
    """The segmentation network (student + `final` head), its backend, and a line about its init."""
    backend = get_backend(cfg.model.backend)
    model = build_student(cfg.model.student, in_channels=in_channels_of(cfg.data.in_features),
                          out_channels=cfg.model.num_classes, backend=backend)
    note = "random initialisation"
    if cfg.model.init:
        report = init_from_checkpoint(model, cfg.model.init, strict=cfg.model.init_strict,
                                      student=cfg.model.student, color_norm=cfg.data.color_norm)
        note = f"initialised from {cfg.model.init}: {report.summary()}"
    if cfg.model.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(HEAD_PREFIX))
    return model, backend, note


def set_backbone_eval(model: nn.Module) -> None:
    """Linear probe: the frozen backbone's batch norms keep their statistics (eval mode)."""
    for name, module in model.named_modules():
        if name and not name.startswith(HEAD_PREFIX.rstrip(".")):
            module.eval()


class SegmentationObjective(nn.Module):
    """model(batch) -> {"loss_seg", "acc_train"}: cross-entropy over voxels with a label (-1 = none)."""

    def __init__(self, model: nn.Module, backend: SparseBackend, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.model, self.backend, self.freeze_backbone = model, backend, freeze_backbone

    def train(self, mode: bool = True) -> SegmentationObjective:
        super().train(mode)
        if mode and self.freeze_backbone:
            inner = self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model
            set_backbone_eval(inner)
        return self

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.model(self.backend.sparse_tensor(batch["features"], batch["coordinates"])).F
        labels = batch["labels"]
        valid = labels >= 0
        if not bool(valid.any()):  # limited annotations: a batch may hold no labelled voxel
            return {"loss_seg": logits.sum() * 0.0, "acc_train": logits.new_zeros(())}
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-1)
        accuracy = (logits.detach().argmax(1)[valid] == labels[valid]).float().mean()
        return {"loss_seg": loss, "acc_train": accuracy}


def segmentation_task(cfg: DictConfig, device: torch.device) -> Task:
    """The launcher's task: the segmentation network, cross-entropy on the labelled voxels, val mIoU
    every `train.eval_every` steps and, at the end, the evaluation files in `train.out_dir/eval/`."""
    train_set, val_set = build_seg_datasets(cfg)
    model, backend, note = build_seg_model(cfg)
    model = model.to(device)
    run_dir = Path(cfg.train.out_dir)

    def evaluate(step: int) -> dict[str, float]:
        confusion = evaluate_segmentation(model, backend, val_set, device, cfg.eval.chunk_voxels, cfg.eval.chunk_margin)
        return {"val_miou": confusion.miou(), "val_acc": confusion.accuracy()}

    def finish(result: LoopResult) -> None:
        if not len(val_set):
            return
        # Every process writes the files of the scenes it evaluated; the main one writes the metrics.
        out = run_dir / "eval" if cfg.eval.write_predictions else None
        confusion = evaluate_segmentation(model, backend, val_set, device, cfg.eval.chunk_voxels,
                                          cfg.eval.chunk_margin, out_dir=out)
        if dist_utils.is_main_process():
            write_evaluation_outputs(run_dir / "eval", confusion)
            print(format_iou_table(confusion))

    return Task(
        trainable=model,
        objective=lambda wrapped: SegmentationObjective(wrapped, backend, freeze_backbone=cfg.model.freeze_backbone),
        dataset=train_set, collate_fn=collate_segmentation,
        description=(f"finetuning {cfg.model.student} ({note}) on {len(train_set)} training scenes, "
                     f"{len(val_set)} validation scenes"),
        samples_in=lambda batch: len(batch["scene_ids"]),
        evaluate=evaluate if len(val_set) else None,
        checkpoint_extra=lambda: {"student_name": cfg.model.student, "num_classes": cfg.model.num_classes,
                                  "config": as_dict(cfg)},
        finish=finish)


def run_finetune_seg(cfg: DictConfig) -> LoopResult:
    """Finetune for semantic segmentation as `cfg` says; the best checkpoint by val mIoU is kept and the
    final model is evaluated into `train.out_dir/eval/`."""
    return launch(cfg, segmentation_task)


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Evaluate a finetuned checkpoint on `cfg.data.val_split` into `out_dir` (metrics, table,
    confusion matrix, submission files, coloured PLYs)."""
    device = resolve_device(cfg.train.device)
    _, val_set = build_seg_datasets(cfg)
    backend = get_backend(cfg.model.backend)
    model = build_student(cfg.model.student, in_channels=in_channels_of(cfg.data.in_features),
                          out_channels=cfg.model.num_classes, backend=backend)
    state = load_checkpoint(checkpoint)
    check_checkpoint(state, checkpoint, kinds=("segmentation", None), purpose="segmentation evaluation",
                     kind_advice=EVALUATION_ADVICE, student_name=cfg.model.student, num_classes=cfg.model.num_classes)
    check_checkpoint_features(state, checkpoint, cfg.data.color_norm, cfg.data.in_features)
    load_weights(model, state["model"] if "model" in state else state, checkpoint,
                 f"a segmentation checkpoint of {cfg.model.student} with {cfg.model.num_classes} classes")
    confusion = evaluate_segmentation(model.to(device), backend, val_set, device, cfg.eval.chunk_voxels,
                                      cfg.eval.chunk_margin, out_dir=out_dir)
    metrics = write_evaluation_outputs(out_dir, confusion)
    print(format_iou_table(confusion))
    return metrics
