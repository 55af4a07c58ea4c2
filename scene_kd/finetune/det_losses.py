"""Detection losses as small pure functions: sigmoid focal loss, axis-aligned IoU / DIoU loss,
centerness binary cross-entropy. Boxes are [N, 6] (x_min, y_min, z_min, x_max, y_max, z_max)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise focal loss [N, K] (RetinaNet): with p = sigmoid(logit), p_t = p where the target
    is 1 and 1 - p where it is 0, and alpha_t = alpha resp. 1 - alpha,
    loss = -alpha_t * (1 - p_t) ** gamma * log(p_t). targets: float {0, 1} [N, K]."""
    p = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * cross_entropy


def box_overlap(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(intersection volume [N], union volume [N]) of paired axis-aligned boxes [N, 6]."""
    extent = (torch.minimum(pred[:, 3:], target[:, 3:]) - torch.maximum(pred[:, :3], target[:, :3])).clamp(min=0)
    intersection = extent.prod(1)
    volume_pred = (pred[:, 3:] - pred[:, :3]).clamp(min=0).prod(1)
    volume_target = (target[:, 3:] - target[:, :3]).clamp(min=0).prod(1)
    return intersection, volume_pred + volume_target - intersection


def axis_aligned_iou_loss(pred: Tensor, target: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """Elementwise loss [N] of paired boxes [N, 6]: "iou": 1 - IoU; "diou": 1 - IoU + |c_p - c_t|^2 / s^2,
    with c the box centres and s the diagonal of the smallest box enclosing both (Distance-IoU)."""
    if mode not in ("iou", "diou"):
        raise ValueError(f"box loss must be 'iou' or 'diou', got {mode!r}")
    intersection, union = box_overlap(pred, target)
    loss = 1.0 - intersection / union.clamp(min=eps)
    if mode == "diou":
        centre_gap = (((pred[:, :3] + pred[:, 3:]) - (target[:, :3] + target[:, 3:])) / 2).pow(2).sum(1)
        enclosing = torch.maximum(pred[:, 3:], target[:, 3:]) - torch.minimum(pred[:, :3], target[:, :3])
        loss = loss + centre_gap / enclosing.pow(2).sum(1).clamp(min=eps)
    return loss


def centerness_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Elementwise binary cross-entropy [N] of centerness logits [N] against targets in [0, 1] [N]."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


__all__ = ["axis_aligned_iou_loss", "box_overlap", "centerness_loss", "sigmoid_focal_loss"]
