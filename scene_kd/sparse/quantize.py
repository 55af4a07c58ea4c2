"""Voxelization with MinkowskiEngine's `sparse_quantize` semantics, and batching of coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scene_kd.sparse.coords import coordinate_keys, unique_keys


def sparse_quantize(
    points: torch.Tensor | np.ndarray, voxel_size: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxelize points: `floor(point / voxel_size)`, one point kept per voxel.

    points: float [P, 3] (x, y, z).
    Returns voxel coordinates int32 [V, 3], `unique_map` int64 [V] (the lowest index of a point in
    each voxel, so `voxel_coords == floor(points[unique_map] / voxel_size)`), and `inverse_map` int64
    [P] (each point's voxel row, so `voxel_features[inverse_map]` carries voxel features back to the
    points). Voxels are ordered by (x, y, z).
    """
    pts = torch.as_tensor(points)
    if pts.dim() != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [P, 3], got {list(pts.shape)}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if pts.is_floating_point() and not bool(torch.isfinite(pts).all()):
        raise ValueError("points contain NaN or infinite values")
    voxels = torch.floor(pts.double() / voxel_size).long()
    padded = torch.cat([torch.zeros_like(voxels[:, :1]), voxels], dim=1)
    keys = coordinate_keys(padded)
    voxel_keys, inverse_map = unique_keys(keys, return_inverse=True)
    # The lowest point index of every voxel: scatter-min of the point indices over voxels.
    index = torch.arange(keys.shape[0], device=keys.device)
    unique_map = torch.full((voxel_keys.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
    unique_map = unique_map.scatter_reduce(0, inverse_map, index, reduce="amin", include_self=True)
    return voxels[unique_map].int(), unique_map, inverse_map


def batched_coordinates(coordinates: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """Stack per-sample integer coordinates `[N_i, 3]` into `[sum N_i, 4]` with the batch index first
    (MinkowskiEngine's `batched_coordinates`)."""
    rows = []
    for b, c in enumerate(coordinates):
        c = torch.as_tensor(c)
        if c.dim() != 2 or c.shape[1] != 3:
            raise ValueError(f"sample {b}: coordinates must have shape [N, 3], got {list(c.shape)}")
        if c.is_floating_point():
            raise ValueError(f"sample {b}: coordinates must be integers, got {c.dtype}")
        rows.append(torch.cat([torch.full_like(c[:, :1], b), c], dim=1).int())
    if not rows:
        return torch.zeros(0, 4, dtype=torch.int32)
    return torch.cat(rows, dim=0)
