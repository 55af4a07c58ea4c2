"""From the detector's per-level outputs to a scene's detections: scores, box decoding and
class-wise 3D NMS."""

from __future__ import annotations

import torch

from scene_kd.box_geometry import nms_3d
from scene_kd.finetune.det.model import LevelOutput, decode_boxes


@torch.no_grad()
def predict_boxes(levels: list[LevelOutput], batch_index: int, *, score_threshold: float, nms_iou: float,
                  nms_pre: int, max_boxes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of scene `batch_index` of a batch: (boxes float32 [P, 6] in grid units, scores [P],
    labels int64 [P]), by descending score.

    Per level: score = sigmoid(class logit) x sigmoid(centerness logit); the `nms_pre` voxels of
    highest best-class score are kept; every (voxel, class) pair with score > `score_threshold`
    becomes a box decoded from the voxel's face distances. Then per class, the `nms_pre` best boxes
    go through greedy NMS at IoU `nms_iou` (`scene_kd.box_geometry.nms_3d`), and the `max_boxes` best
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
