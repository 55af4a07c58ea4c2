"""Semantic-segmentation finetuning: a student with its 1x1x1 `final` layer as the linear head
(MinkowskiEngine's segmentation model of the same name), cross-entropy on the labelled voxels, the
shared loop, and ScanNet-protocol evaluation on whole validation scenes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from scene_kd.config import as_dict, save_config
from scene_kd.data.seg_dataset import SegmentationDataset, collate_segmentation
from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.optim import build_optimizer, build_scheduler
from scene_kd.engine.trainer import LoopResult, resolve_device, seed_everything, train
from scene_kd.eval.semseg import (
    SemanticConfusion,
    format_iou_table,
    write_evaluation_outputs,
    write_label_ply,
    write_submission,
)
from scene_kd.finetune.inference import predict_scene
from scene_kd.finetune.init_weights import HEAD_PREFIX, init_from_checkpoint
from scene_kd.models.students import build_student
from scene_kd.sparse.backend import SparseBackend, get_backend


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def in_channels_of(in_features: str) -> int:
    if in_features not in ("rgb", "rgb+normal"):
        raise ValueError(f"data.in_features must be 'rgb' or 'rgb+normal', got {in_features!r}")
    return 3 if in_features == "rgb" else 6


def build_seg_datasets(cfg: DictConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    d = cfg.data
    train_set = SegmentationDataset(d.root, _plain(d.train_split), voxel_size=d.voxel_size, augment=_plain(d.augment),
                                    max_voxels=d.max_voxels, labelled_points=d.labelled_points,
                                    scene_subset=d.scene_subset, in_features=d.in_features, seed=cfg.train.seed)
    val_set = SegmentationDataset(d.root, _plain(d.val_split), voxel_size=d.voxel_size, augment=False, max_voxels=None,
                                  in_features=d.in_features, seed=cfg.train.seed)
    return train_set, val_set


def build_seg_model(cfg: DictConfig) -> tuple[nn.Module, SparseBackend, str]:
    """The segmentation network (student + `final` head), its backend, and a line about its init."""
    backend = get_backend(cfg.model.backend)
    model = build_student(cfg.model.student, in_channels=in_channels_of(cfg.data.in_features),
                          out_channels=cfg.model.num_classes, backend=backend)
    note = "random initialisation"
    if cfg.model.init:
        report = init_from_checkpoint(model, cfg.model.init, strict=cfg.model.init_strict)
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


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, backend: SparseBackend, dataset: SegmentationDataset,
                          device: torch.device, chunk_voxels: int, chunk_margin: float,
                          out_dir: str | os.PathLike | None = None) -> SemanticConfusion:
    """Predict every scene of `dataset` whole (in blocks when large), carry the voxel predictions to
    every vertex and sum the ScanNet confusion matrix over scenes (across processes under DDP).
    With `out_dir`: ScanNet submission files (`submission/{scene}.txt`) and coloured PLYs of the
    prediction and the ground truth (`ply/`)."""
    was_training = model.training
    model.eval()
    confusion = SemanticConfusion(num_classes=20)
    margin = max(1, int(round(chunk_margin / dataset.voxel_size)))
    for index in range(dist_utils.rank(), len(dataset), dist_utils.world_size()):
        sample = dataset[index]
        logits = predict_scene(model, backend, torch.as_tensor(sample["coords"]), torch.as_tensor(sample["feats"]),
                               device, chunk_voxels=chunk_voxels, margin_voxels=margin)
        point_pred = logits.argmax(1)[torch.as_tensor(sample["inverse_map"])].numpy()
        point_labels = np.asarray(sample["point_labels"])
        confusion.update(point_pred, point_labels)
        if out_dir is not None:
            out = Path(out_dir)
            (out / "ply").mkdir(parents=True, exist_ok=True)
            write_submission(out / "submission", sample["scene_id"], point_pred)
            coord = np.load(Path(dataset.root) / sample["scene_id"] / "coord.npy")
            write_label_ply(out / "ply" / f"{sample['scene_id']}_pred.ply", coord, point_pred)
            write_label_ply(out / "ply" / f"{sample['scene_id']}_gt.ply", coord, point_labels)
    if dist_utils.world_size() > 1:
        matrix = torch.as_tensor(confusion.matrix, device=device)
        torch.distributed.all_reduce(matrix)
        confusion.matrix[...] = matrix.cpu().numpy()
    model.train(was_training)
    return confusion


def run_finetune_seg(cfg: DictConfig) -> LoopResult:
    """Finetune for semantic segmentation as `cfg` says; the best checkpoint by val mIoU is kept and the
    final model is evaluated into `train.out_dir/eval/`."""
    device = resolve_device(cfg.train.device)
    distributed = dist_utils.init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives (the loop's counters) use the current device
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.train.out_dir)
    train_set, val_set = build_seg_datasets(cfg)
    model, backend, note = build_seg_model(cfg)
    model = model.to(device)
    wrapped: nn.Module = model
    if distributed:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    objective = SegmentationObjective(wrapped, backend, freeze_backbone=cfg.model.freeze_backbone)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
    main = dist_utils.is_main_process()
    if main:
        save_config(cfg, run_dir / "config.yaml")
        print(f"finetuning {cfg.model.student} ({note}) on {len(train_set)} training scenes, "
              f"{len(val_set)} validation scenes -> {run_dir}")

    def evaluate(step: int) -> dict[str, float]:
        confusion = evaluate_segmentation(model, backend, val_set, device, cfg.eval.chunk_voxels, cfg.eval.chunk_margin)
        return {"val_miou": confusion.miou(), "val_acc": confusion.accuracy()}

    def checkpoint_extra() -> dict:
        return {"student_name": cfg.model.student, "num_classes": cfg.model.num_classes, "config": as_dict(cfg)}

    try:
        result = train(model=objective, trainable=wrapped, dataset=train_set, collate_fn=collate_segmentation,
                       batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, optimizer=optimizer,
                       scheduler=scheduler, cfg=cfg.train, run_dir=run_dir, checkpoint_extra=checkpoint_extra,
                       samples_in=lambda batch: len(batch["scene_ids"]), evaluate=evaluate if len(val_set) else None,
                       device=device)
        if len(val_set):
            # Every process writes the files of the scenes it evaluated; the main one writes the metrics.
            out = run_dir / "eval" if cfg.eval.write_predictions else None
            confusion = evaluate_segmentation(model, backend, val_set, device, cfg.eval.chunk_voxels,
                                              cfg.eval.chunk_margin, out_dir=out)
            if main:
                write_evaluation_outputs(run_dir / "eval", confusion)
                print(format_iou_table(confusion))
        return result
    finally:
        dist_utils.cleanup_distributed()


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Evaluate a finetuned checkpoint on `cfg.data.val_split` into `out_dir` (metrics, table,
    confusion matrix, submission files, coloured PLYs)."""
    device = resolve_device(cfg.train.device)
    _, val_set = build_seg_datasets(cfg)
    backend = get_backend(cfg.model.backend)
    model = build_student(cfg.model.student, in_channels=in_channels_of(cfg.data.in_features),
                          out_channels=cfg.model.num_classes, backend=backend)
    state = load_checkpoint(checkpoint)
    model.load_state_dict(state["model"] if "model" in state else state, strict=True)
    confusion = evaluate_segmentation(model.to(device), backend, val_set, device, cfg.eval.chunk_voxels,
                                      cfg.eval.chunk_margin, out_dir=out_dir)
    metrics = write_evaluation_outputs(out_dir, confusion)
    print(format_iou_table(confusion))
    return metrics
