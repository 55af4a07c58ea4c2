"""Detection losses: small pure functions (sigmoid focal loss, axis-aligned IoU / DIoU loss,
centerness binary cross-entropy), `detection_losses` of a batch (docs/detection.md) and
`DetectionObjective`, the module the training loop calls. Boxes are [N, 6] (x_min, y_min, z_min,
x_max, y_max, z_max)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from scene_kd.box_geometry import box_centers, box_overlap
from scene_kd.finetune.det.assign import assign_voxels, centerness_targets
from scene_kd.finetune.det.model import LevelOutput, decode_boxes, encode_boxes
from scene_kd.sparse.backend import SparseBackend


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise focal loss [N, K] (RetinaNet): with p = sigmoid(logit), p_t = p where the target
    is 1 and 1 - p where it is 0, and alpha_t = alpha resp. 1 - alpha,
    loss = -alpha_t * (1 - p_t) ** gamma * log(p_t). targets: float {0, 1} [N, K]."""
    p = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * cross_entropy


def axis_aligned_iou_loss(pred: Tensor, target: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """Elementwise loss [N] of paired boxes [N, 6]: "iou": 1 - IoU; "diou": 1 - IoU + |c_p - c_t|^2 / s^2,
    with c the box centres and s the diagonal of the smallest box enclosing both (Distance-IoU)."""
    if mode not in ("iou", "diou"):
        raise ValueError(f"box loss must be 'iou' or 'diou', got {mode!r}")
    intersection, union = box_overlap(pred, target, aligned=True)
    loss = 1.0 - intersection / union.clamp(min=eps)
    if mode == "diou":
        centre_gap = (box_centers(pred) - box_centers(target)).pow(2).sum(1)
        enclosing = torch.maximum(pred[:, 3:], target[:, 3:]) - torch.minimum(pred[:, :3], target[:, :3])
        loss = loss + centre_gap / enclosing.pow(2).sum(1).clamp(min=eps)
    return loss


def centerness_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Elementwise binary cross-entropy [N] of centerness logits [N] against targets in [0, 1] [N]."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


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


__all__ = ["DetectionObjective", "axis_aligned_iou_loss", "centerness_loss", "detection_losses",
           "sigmoid_focal_loss"]
