"""3D object-detection finetuning: the student U-Net with an FCAF3D-style anchor-free head
(`scene_kd.models.det_head`), the assignment of `det_assigner`, the losses of `det_losses`, the
shared loop, and VoteNet-protocol evaluation (`scene_kd.eval.detection`) on whole validation scenes.
docs/detection.md describes the method."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from scene_kd.config import as_dict, save_config
from scene_kd.data.det_dataset import DetectionDataset, collate_detection, transform_boxes
from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.optim import build_optimizer, build_scheduler
from scene_kd.engine.trainer import LoopResult, resolve_device, seed_everything, train
from scene_kd.eval.boxes import nms_3d
from scene_kd.eval.detection import evaluate_detection, format_ap_table, write_detection_outputs
from scene_kd.finetune.det_assigner import assign_voxels, centerness_targets
from scene_kd.finetune.det_losses import axis_aligned_iou_loss, centerness_loss, sigmoid_focal_loss
from scene_kd.finetune.init_weights import HEAD_PREFIX, load_backbone_weights, student_state_dict
from scene_kd.finetune.seg import in_channels_of
from scene_kd.models.det_head import LevelOutput, SparseDetector, decode_boxes, encode_boxes
from scene_kd.models.students import build_student
from scene_kd.scannet.boxes import load_scene_boxes
from scene_kd.scannet.labels import DET18_NAMES
from scene_kd.sparse.backend import SparseBackend, get_backend

NUM_CLASSES = len(DET18_NAMES)


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def build_det_datasets(cfg: DictConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """(training set with augmentation and `data.scene_subset`, validation set without either)."""
    d = cfg.data
    train_set = DetectionDataset(d.root, _plain(d.train_split), voxel_size=d.voxel_size, augment=_plain(d.augment),
                                 scene_subset=_plain(d.scene_subset), in_features=d.in_features, seed=cfg.train.seed,
                                 min_box_points=d.min_box_points)
    val_set = DetectionDataset(d.root, _plain(d.val_split), voxel_size=d.voxel_size, augment=False,
                               in_features=d.in_features, seed=cfg.train.seed, min_box_points=d.min_box_points)
    return train_set, val_set


def new_det_model(cfg: DictConfig) -> tuple[SparseDetector, SparseBackend]:
    """The detector of `cfg.model` with fresh weights, and its sparse backend."""
    backend = get_backend(cfg.model.backend)
    backbone = build_student(cfg.model.student, in_channels=in_channels_of(cfg.data.in_features), out_channels=None,
                             backend=backend)
    return SparseDetector(backbone, list(cfg.model.strides), num_classes=NUM_CLASSES,
                          head_channels=cfg.model.head_channels), backend


def init_backbone(model: SparseDetector, path: str | os.PathLike, strict: bool = True) -> str:
    """Load the student weights of a pretraining or MinkowskiEngine checkpoint into `model.backbone`
    (a segmentation layer `final.*` in the checkpoint is left out); returns a one-line summary.
    strict: every backbone weight must be there, with its shape (`load_backbone_weights`)."""
    checkpoint = load_checkpoint(path)
    try:
        state = student_state_dict(checkpoint)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    dropped = [k for k in state if k.startswith(HEAD_PREFIX)]
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    report = load_backbone_weights(model.backbone, state, strict=strict, source=str(path))
    summary = f"{len(report.loaded)} backbone tensors loaded"
    if dropped:
        summary += f"; its segmentation layer ({len(dropped)} tensors) left out"
    for name, keys in (("missing", report.missing), ("unexpected", report.unexpected),
                       ("shape mismatch", report.shape_mismatch)):
        if keys:
            summary += f"; {len(keys)} {name} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
    return summary


def build_det_model(cfg: DictConfig) -> tuple[SparseDetector, SparseBackend, str]:
    """The detector, its backend, and a line about its initialisation (`model.init`,
    `model.freeze_backbone`)."""
    model, backend = new_det_model(cfg)
    note = "random initialisation"
    if cfg.model.init:
        note = f"initialised from {cfg.model.init}: {init_backbone(model, cfg.model.init, cfg.model.init_strict)}"
    if cfg.model.freeze_backbone:
        model.backbone.requires_grad_(False)
    return model, backend, note


def _flatten_levels(levels: list[LevelOutput]) -> dict[str, torch.Tensor]:
    return {
        "centres": torch.cat([lv.centres for lv in levels]),
        "level": torch.cat([torch.full((len(lv.centres),), i, dtype=torch.long, device=lv.centres.device)
                            for i, lv in enumerate(levels)]),
        "batch": torch.cat([lv.coordinates[:, 0].long() for lv in levels]),
        "cls": torch.cat([lv.cls_logits for lv in levels]),
        "ctr": torch.cat([lv.centerness_logits for lv in levels]),
        "dist": torch.cat([lv.distances for lv in levels]),
    }


def detection_losses(levels: list[LevelOutput], boxes: list[torch.Tensor], labels: list[torch.Tensor],
                     loss_cfg: DictConfig) -> dict[str, torch.Tensor]:
    """{"loss_cls", "loss_box", "loss_ctr", "positives"} of one batch (docs/detection.md).

    levels: the detector's output; boxes[b]: float [G_b, 6] scene b's boxes in grid units (metres /
    voxel_size, the frame of the voxel coordinates); labels[b]: int64 [G_b]. loss_cls: focal loss
    summed over voxels and classes / number of positives; loss_box: IoU loss of the positives weighted
    by their centerness targets (normalised by the targets' sum); loss_ctr: mean BCE of the
    positives' centerness; positives: mean positives per scene (a logged figure, not a loss).
    """
    flat = _flatten_levels(levels)
    rows, targets, classes = [], [], []
    for b, (scene_boxes, scene_labels) in enumerate(zip(boxes, labels, strict=True)):
        scene_rows = (flat["batch"] == b).nonzero().flatten()
        assigned = assign_voxels(flat["centres"][scene_rows], flat["level"][scene_rows], scene_boxes.float(),
                                 num_levels=len(levels), min_voxels=loss_cfg.assign_min_voxels,
                                 topk=loss_cfg.assign_topk)
        positive = assigned >= 0
        rows.append(scene_rows[positive])
        targets.append(scene_boxes.float()[assigned[positive]])
        classes.append(scene_labels[assigned[positive]])
    rows, targets, classes = torch.cat(rows), torch.cat(targets), torch.cat(classes)
    cls_targets = torch.zeros_like(flat["cls"])
    cls_targets[rows, classes] = 1.0
    num_pos = max(len(rows), 1)
    loss_cls = sigmoid_focal_loss(flat["cls"], cls_targets, loss_cfg.focal_alpha, loss_cfg.focal_gamma).sum() / num_pos
    if len(rows) == 0:  # keep every prediction in the graph (DDP) with a zero loss
        loss_box = flat["dist"].sum() * 0.0
        loss_ctr = flat["ctr"].sum() * 0.0
    else:
        centres = flat["centres"][rows]
        ctr_targets = centerness_targets(encode_boxes(centres, targets))
        box_loss = axis_aligned_iou_loss(decode_boxes(centres, flat["dist"][rows]), targets, mode=loss_cfg.box_loss)
        loss_box = (ctr_targets * box_loss).sum() / ctr_targets.sum().clamp(min=1e-6)
        loss_ctr = centerness_loss(flat["ctr"][rows], ctr_targets).mean()
    return {"loss_cls": loss_cfg.cls_weight * loss_cls, "loss_box": loss_cfg.box_weight * loss_box,
            "loss_ctr": loss_cfg.centerness_weight * loss_ctr,
            "positives": torch.tensor(len(rows) / max(len(boxes), 1), device=flat["cls"].device)}


class DetectionObjective(nn.Module):
    """model(batch) -> `detection_losses` of a `collate_detection` batch (boxes in metres)."""

    def __init__(self, model: nn.Module, backend: SparseBackend, voxel_size: float, loss_cfg: DictConfig,
                 freeze_backbone: bool = False) -> None:
        super().__init__()
        self.model, self.backend, self.voxel_size = model, backend, float(voxel_size)
        self.loss_cfg, self.freeze_backbone = loss_cfg, freeze_backbone

    def train(self, mode: bool = True) -> DetectionObjective:
        super().train(mode)
        if mode and self.freeze_backbone:  # the frozen backbone's batch norms keep their statistics
            inner = self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model
            inner.backbone.eval()
        return self

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        levels = self.model(self.backend.sparse_tensor(batch["features"], batch["coordinates"]))
        boxes = [b / self.voxel_size for b in batch["boxes"]]
        return detection_losses(levels, boxes, batch["labels"], self.loss_cfg)


@torch.no_grad()
def predict_boxes(levels: list[LevelOutput], batch_index: int, *, score_threshold: float, nms_iou: float,
                  nms_pre: int, max_boxes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of scene `batch_index` of a batch: (boxes float32 [P, 6] in grid units, scores [P],
    labels int64 [P]), by descending score.

    Per level: score = sigmoid(class logit) x sigmoid(centerness logit); the `nms_pre` voxels of
    highest best-class score are kept; every (voxel, class) pair with score > `score_threshold`
    becomes a box decoded from the voxel's face distances. Then per class, the `nms_pre` best boxes
    go through greedy NMS at IoU `nms_iou` (`scene_kd.eval.boxes.nms_3d`), and the `max_boxes` best
    boxes of the scene are returned.
    """
    boxes, scores, labels = [], [], []
    for level in levels:
        rows = (level.coordinates[:, 0] == batch_index).nonzero().flatten()
        score = torch.sigmoid(level.cls_logits[rows]) * torch.sigmoid(level.centerness_logits[rows])[:, None]
        if len(rows) > nms_pre:
            top = score.max(1).values.topk(nms_pre).indices
            rows, score = rows[top], score[top]
        voxel, cls = (score > score_threshold).nonzero(as_tuple=True)
        boxes.append(decode_boxes(level.centres[rows[voxel]], level.distances[rows[voxel]]))
        scores.append(score[voxel, cls])
        labels.append(cls)
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    kept = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[scores[members].topk(min(nms_pre, len(members))).indices]
        kept.append(members[nms_3d(boxes[members], scores[members], nms_iou)])
    if not kept:
        return boxes[:0], scores[:0], labels[:0]
    kept = torch.cat(kept)
    kept = kept[torch.sort(scores[kept], descending=True, stable=True).indices][:max_boxes]
    return boxes[kept], scores[kept], labels[kept]


@torch.no_grad()
def predict_dataset(model: nn.Module, backend: SparseBackend, dataset: DetectionDataset, device: torch.device,
                    eval_cfg: DictConfig) -> dict[str, dict[str, np.ndarray]]:
    """{scene_id: {"boxes": float64 [P, 6] in the aligned frame (metres), "scores", "labels"}} for the
    scenes of `dataset` that this process evaluates (every world_size-th, from its rank)."""
    was_training = model.training
    model.eval()
    predictions = {}
    for index in range(dist_utils.rank(), len(dataset), dist_utils.world_size()):
        batch = collate_detection([dataset[index]])
        levels = model(backend.sparse_tensor(batch["features"].to(device), batch["coordinates"].to(device)))
        boxes, scores, labels = predict_boxes(levels, 0, score_threshold=eval_cfg.score_threshold,
                                              nms_iou=eval_cfg.nms_iou, nms_pre=eval_cfg.nms_pre,
                                              max_boxes=eval_cfg.max_boxes)
        metres = boxes.double().cpu().numpy() * dataset.voxel_size
        predictions[batch["scene_ids"][0]] = {
            "boxes": transform_boxes(metres, batch["to_aligned"][0].numpy()),
            "scores": scores.double().cpu().numpy(), "labels": labels.cpu().numpy()}
    model.train(was_training)
    return predictions


def gather_predictions(predictions: dict) -> dict:
    """Every process's predictions, merged (identity without a process group)."""
    if dist_utils.world_size() == 1:
        return predictions
    parts: list[dict] = [{} for _ in range(dist_utils.world_size())]
    torch.distributed.all_gather_object(parts, predictions)
    return {scene: pred for part in parts for scene, pred in part.items()}


def ground_truth_of(dataset: DetectionDataset) -> dict[str, dict[str, np.ndarray]]:
    """{scene_id: load_scene_boxes(...)} of the dataset's scenes (aligned frame, metres)."""
    return {s: load_scene_boxes(dataset.root / s, dataset.min_box_points) for s in dataset.scene_ids}


def evaluate_detection_split(model: nn.Module, backend: SparseBackend, dataset: DetectionDataset,
                             device: torch.device, eval_cfg: DictConfig,
                             out_dir: str | os.PathLike | None = None) -> dict:
    """Predict every scene of `dataset` whole (split across processes under DDP) and evaluate them
    against `load_scene_boxes` with VoteNet's protocol (`evaluate_detection`). With `out_dir` the
    main process writes `write_detection_outputs` there (box JSON and PLYs only when
    `eval_cfg.write_predictions`). Returns the results dict, the same on every process."""
    predictions = gather_predictions(predict_dataset(model, backend, dataset, device, eval_cfg))
    ground_truth = ground_truth_of(dataset)
    results = evaluate_detection(predictions, ground_truth, DET18_NAMES, list(eval_cfg.iou_thresholds))
    if out_dir is not None and dist_utils.is_main_process():
        write_detection_outputs(results, predictions if eval_cfg.write_predictions else {}, out_dir, DET18_NAMES,
                                ground_truth=ground_truth if eval_cfg.write_predictions else None)
    return results


def flat_metrics(results: dict, prefix: str = "val_") -> dict[str, float]:
    """The flat float entries of `evaluate_detection`'s results ("map@0.25", "mar@0.5", ...), prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in results.items() if k.startswith(("map@", "mar@"))}


def run_finetune_det(cfg: DictConfig) -> LoopResult:
    """Finetune for 3D detection as `cfg` says; the best checkpoint by `train.best_metric` (val
    mAP@0.25) is kept and the final model is evaluated into `train.out_dir/eval/`."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":  # object collectives under NCCL use the current device: one per process
        torch.cuda.set_device(device)
    distributed = dist_utils.init_distributed(device)
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.train.out_dir)
    try:
        train_set, val_set = build_det_datasets(cfg)
        model, backend, note = build_det_model(cfg)
        model = model.to(device)
        wrapped: nn.Module = model
        if distributed:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        objective = DetectionObjective(wrapped, backend, cfg.data.voxel_size, cfg.loss,
                                       freeze_backbone=cfg.model.freeze_backbone)
        optimizer = build_optimizer(model.parameters(), cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
        main = dist_utils.is_main_process()
        if main:
            save_config(cfg, run_dir / "config.yaml")
            print(f"finetuning {cfg.model.student} for detection at strides {list(cfg.model.strides)} ({note}) on "
                  f"{len(train_set)} training scenes, {len(val_set)} validation scenes -> {run_dir}")

        def evaluate(step: int) -> dict[str, float]:
            return flat_metrics(evaluate_detection_split(model, backend, val_set, device, cfg.eval))

        def checkpoint_extra() -> dict:
            return {"student_name": cfg.model.student, "strides": list(cfg.model.strides), "config": as_dict(cfg)}

        result = train(model=objective, trainable=wrapped, dataset=train_set, collate_fn=collate_detection,
                       batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, optimizer=optimizer,
                       scheduler=scheduler, cfg=cfg.train, run_dir=run_dir, checkpoint_extra=checkpoint_extra,
                       samples_in=lambda batch: len(batch["scene_ids"]), evaluate=evaluate if len(val_set) else None,
                       device=device)
        if len(val_set):
            results = evaluate_detection_split(model, backend, val_set, device, cfg.eval, out_dir=run_dir / "eval")
            if main:
                print(format_ap_table(results, DET18_NAMES))
        return result
    finally:
        dist_utils.cleanup_distributed()


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, float]:
    """Evaluate a finetuned detection checkpoint on `cfg.data.val_split` into `out_dir` (det_results.json,
    det_table.txt, per-scene box JSON and PLY wireframes); returns the flat metrics."""
    device = resolve_device(cfg.train.device)
    _, val_set = build_det_datasets(cfg)
    model, backend = new_det_model(cfg)
    state = load_checkpoint(checkpoint)
    try:
        model.load_state_dict(state["model"] if "model" in state else state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: not a detection checkpoint of {cfg.model.student} at strides "
                         f"{list(cfg.model.strides)} ({str(err).splitlines()[0]})") from err
    results = evaluate_detection_split(model.to(device), backend, val_set, device, cfg.eval, out_dir=out_dir)
    print(format_ap_table(results, DET18_NAMES))
    return flat_metrics(results, prefix="")
