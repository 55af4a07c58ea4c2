"""Axis-aligned 3D box geometry, the one place for it: format conversions, centres, volume, overlap,
IoU, non-maximum suppression, the corners of boxes, the points inside them and the boxes enclosing
groups of points. Ground truth (`scene_kd.scannet.boxes`), evaluation (`scene_kd.eval.detection`) and
detection finetuning (`scene_kd.finetune.det`) use it.

Boxes are float `[N, 6]` rows `(x_min, y_min, z_min, x_max, y_max, z_max)` ("corners") unless a
function says `(cx, cy, cz, dx, dy, dz)` ("center-size"). The torch functions take torch tensors,
numpy arrays or nested lists (lists and integer input become float64) and return torch tensors
(differentiable where the input is); `box_corner_points` and `enclosing_boxes` are numpy
(data and file writing). A box with `max < min` on some axis is degenerate: its volume is 0 and
its IoU with anything is 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_boxes(boxes: Any, name: str = "boxes") -> Tensor:
    if not isinstance(boxes, Tensor):
        array = np.asarray(boxes)  # lists become float64, not torch's default float32
        boxes = torch.as_tensor(array if array.dtype.kind == "f" else array.astype(np.float64))
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.float64)
    if boxes.dim() != 2 or boxes.shape[1] != 6:
        raise ValueError(f"{name} must have shape [N, 6], got {tuple(boxes.shape)}")
    return boxes


def center_size_to_corners(boxes: Any) -> Tensor:
    """(cx, cy, cz, dx, dy, dz) [N, 6] -> (x_min, y_min, z_min, x_max, y_max, z_max) [N, 6]."""
    boxes = _as_boxes(boxes)
    center, half = boxes[:, :3], boxes[:, 3:] / 2
    return torch.cat([center - half, center + half], dim=1)


def corners_to_center_size(boxes: Any) -> Tensor:
    """(x_min, y_min, z_min, x_max, y_max, z_max) [N, 6] -> (cx, cy, cz, dx, dy, dz) [N, 6]."""
    boxes = _as_boxes(boxes)
    lo, hi = boxes[:, :3], boxes[:, 3:]
    return torch.cat([(lo + hi) / 2, hi - lo], dim=1)


def _volume(boxes: Tensor) -> Tensor:
    return (boxes[..., 3:] - boxes[..., :3]).clamp(min=0).prod(dim=-1)


def box_volume(boxes: Any) -> Tensor:
    """Volumes [N] of corner boxes [N, 6]; 0 for a degenerate box (max < min on some axis)."""
    return _volume(_as_boxes(boxes))


def box_centers(boxes: Any) -> Tensor:
    """Centres [N, 3] of corner boxes [N, 6]."""
    boxes = _as_boxes(boxes)
    return (boxes[:, :3] + boxes[:, 3:]) / 2


def box_overlap(a: Any, b: Any, aligned: bool = False) -> tuple[Tensor, Tensor]:
    """(intersection volume, union volume) of corner boxes a [N, 6] and b [M, 6]: [N, M] for every
    pair, or [N] for the pairs (a[i], b[i]) when `aligned` (N == M). Degenerate boxes have volume 0."""
    a, b = _as_boxes(a, "a"), _as_boxes(b, "b")
    if aligned and len(a) != len(b):
        raise ValueError(f"aligned overlap needs as many boxes in a as in b, got {len(a)} and {len(b)}")
    if not aligned:
        a, b = a[:, None, :], b[None, :, :]
    lo = torch.maximum(a[..., :3], b[..., :3])
    hi = torch.minimum(a[..., 3:], b[..., 3:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    return inter, _volume(a) + _volume(b) - inter


def box_iou_3d(a: Any, b: Any) -> Tensor:
    """Axis-aligned IoU [N, M] of corner boxes a [N, 6] and b [M, 6].

    IoU = intersection volume / union volume; 0 where the union is 0 (two empty boxes), so a
    degenerate or zero-volume box has IoU 0 with everything, itself included. Computed in the
    wider of the two dtypes (float64 for numpy float64 input).
    """
    a, b = _as_boxes(a, "a"), _as_boxes(b, "b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    inter, union = box_overlap(a.to(dtype), b.to(dtype))
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(inter))


def nms_3d(boxes: Any, scores: Any, iou_threshold: float, labels: Any | None = None) -> Tensor:
    """Greedy non-maximum suppression of corner boxes [N, 6] with scores [N].

    Returns int64 [K]: indices into the input of the kept boxes, by descending score (ties keep
    input order). A box is dropped when its IoU with a kept box of higher score is strictly above
    `iou_threshold` (as torchvision's `nms` and VoteNet's `nms_3d_faster`). With `labels` [N]
    (class-aware NMS, VoteNet's `nms_3d_faster_samecls`) boxes of different labels never
    suppress each other. The IoU matrix is computed once; the greedy pass runs over its rows.
    """
    boxes = _as_boxes(boxes)
    scores = torch.as_tensor(scores, device=boxes.device)
    if scores.shape != (len(boxes),):
        raise ValueError(f"scores must have shape [{len(boxes)}] (one per box), got {tuple(scores.shape)}")
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlap = box_iou_3d(boxes[order], boxes[order]) > iou_threshold
    if labels is not None:
        labels = torch.as_tensor(labels, device=boxes.device)
        if labels.shape != (len(boxes),):
            raise ValueError(
                f"labels must have shape [{len(boxes)}] (one per box), got {tuple(labels.shape)}"
            )
        sorted_labels = labels[order]
        overlap &= sorted_labels[:, None] == sorted_labels[None, :]
    overlap = overlap.cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlap[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def points_inside_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """bool [N, G]: point n [N, 3] lies strictly inside corner box g [G, 6]."""
    return ((points[:, None, :] > boxes[None, :, :3]) & (points[:, None, :] < boxes[None, :, 3:])).all(2)


# Edges of a box whose 8 corners are numbered by bits (x: bit 0, y: bit 1, z: bit 2): the corner
# pairs that differ in exactly one bit.
BOX_EDGES = tuple((i, i | bit) for bit in (1, 2, 4) for i in range(8) if not i & bit)


def box_corner_points(boxes: Any) -> np.ndarray:
    """float64 [N, 8, 3]: the corners of corner boxes [N, 6]; corner k takes max x if bit 0 of k
    is set, max y if bit 1, max z if bit 2 (the numbering BOX_EDGES uses)."""
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    bits = (np.arange(8)[:, None] >> np.arange(3)[None, :]) & 1  # [8, 3]
    return np.where(bits[None] == 1, boxes[:, None, 3:], boxes[:, None, :3])


def enclosing_boxes(points: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """float64 [G, 6]: the min/max box of the points [N, 3] of each group, groups int [N] in
    0..G-1 (G = num_groups); a group without points gets (inf, inf, inf, -inf, -inf, -inf)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    lo = np.full((num_groups, 3), np.inf)
    hi = np.full((num_groups, 3), -np.inf)
    np.minimum.at(lo, groups, points)
    np.maximum.at(hi, groups, points)
    return np.concatenate([lo, hi], axis=1)
