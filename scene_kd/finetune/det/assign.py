"""Which voxels learn which box: FCAF3D's assignment, with the nearest-to-centre sampling of the brief.

For one scene, with voxels of several levels (finest first) and its ground-truth boxes:

1. Candidates of a box: voxels whose centre lies strictly inside it.
2. Level of a box: FCAF3D's rule. Let n_l be the number of candidates at level l. Walking from the
   finest level towards coarser ones, the box takes the last level of the run of levels that have
   n_l >= `min_voxels` (so: the coarsest level that still sees the box with enough voxels, when n_l
   shrinks with the stride as it does), and the finest level when already n_0 < `min_voxels`.
3. Positives of a box: of its candidates at its level, the `topk` whose centres are nearest (in
   Euclidean distance) to the box centre.
4. A voxel chosen by several boxes learns the one of smallest volume; voxels chosen by none are
   negatives (background for every class).
"""

from __future__ import annotations

import torch
from torch import Tensor

from scene_kd.box_geometry import box_centers, box_volume, points_inside_boxes


def box_levels(inside: Tensor, levels: Tensor, num_levels: int, min_voxels: int) -> Tensor:
    """int64 [G]: each box's level (rule 2 of the module docstring). inside: bool [N, G]; levels:
    int64 [N] level index of each voxel (0 = finest)."""
    counts = torch.stack([inside[levels == level].sum(0) for level in range(num_levels)])  # [L, G]
    enough_run = torch.cumprod((counts >= min_voxels).long(), dim=0)  # 1 while every finer level had enough
    return (enough_run.sum(0) - 1).clamp(min=0)


def assign_voxels(points: Tensor, levels: Tensor, boxes: Tensor, *, num_levels: int, min_voxels: int = 27,
                  topk: int = 18) -> Tensor:
    """int64 [N]: the ground-truth box (row of `boxes`) that each voxel learns, -1 for negatives.

    points: float [N, 3] voxel centres; levels: int64 [N] (0 = finest); boxes: float [G, 6] in the
    points' units. See the module docstring for the rules.
    """
    n, g = points.shape[0], boxes.shape[0]
    if n == 0 or g == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device)
    inside = points_inside_boxes(points, boxes)
    level_of_box = box_levels(inside, levels, num_levels, min_voxels)
    candidate = inside & (levels[:, None] == level_of_box[None, :])
    centres = box_centers(boxes)
    distance2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(2)
    distance2 = torch.where(candidate, distance2, torch.full_like(distance2, float("inf")))
    nearest_distance, nearest_row = torch.topk(distance2, min(topk, n), dim=0, largest=False)  # [k, G]
    chosen = torch.zeros_like(candidate)
    columns = torch.arange(g, device=points.device).expand_as(nearest_row)
    chosen[nearest_row[torch.isfinite(nearest_distance)], columns[torch.isfinite(nearest_distance)]] = True
    volumes = box_volume(boxes)
    cost = torch.where(chosen, volumes[None, :].expand(n, g), torch.full((n, g), float("inf"), device=points.device))
    smallest, box = cost.min(1)
    return torch.where(torch.isfinite(smallest), box, torch.full_like(box, -1))


def centerness_targets(distances: Tensor) -> Tensor:
    """float [N]: sqrt(prod over x, y, z of min(d_min, d_max) / max(d_min, d_max)) for face distances
    [N, 6] (to the min faces, then the max faces): 1 at a box centre, towards 0 near a face."""
    low, high = distances[:, :3], distances[:, 3:]
    ratio = torch.minimum(low, high) / torch.maximum(low, high).clamp(min=1e-12)
    return ratio.clamp(min=0).prod(1).sqrt()


__all__ = ["assign_voxels", "box_levels", "centerness_targets"]
