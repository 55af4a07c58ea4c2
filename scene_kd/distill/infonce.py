"""Pixel-to-point InfoNCE (PPKT): each matched voxel feature against its own pixel feature, the other
pairs of the batch serving as negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_point_infonce(point_features: torch.Tensor, pixel_features: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of `softmax(point_i . pixel_j / temperature)` over j with target i.

    point_features, pixel_features: [M, D], L2-normalized, row i of both is pair i.
    PPKT uses temperature 0.04 with 2.5 cm voxels.
    """
    if point_features.shape != pixel_features.shape or point_features.dim() != 2:
        raise ValueError(f"point and pixel features must both be [M, D], got {list(point_features.shape)} "
                         f"and {list(pixel_features.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = point_features.float() @ pixel_features.float().t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)
