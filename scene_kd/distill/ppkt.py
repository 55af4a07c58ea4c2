"""PPKT: the student (with a 3D projection head) learns to match the frozen teacher's pixel features
(through the upsampling projection head) at the pixel-point pairs of a batch."""

from __future__ import annotations

import torch
from torch import nn

from scene_kd.data.collate import sample_pairs
from scene_kd.distill.infonce import pixel_point_infonce
from scene_kd.models.heads import PointProjection, UpsamplingProjection
from scene_kd.sparse.backend import SparseBackend


class PPKTTrainable(nn.Module):
    """What PPKT trains: the student and both projection heads. DDP wraps this module alone."""

    def __init__(self, student: nn.Module, head2d: UpsamplingProjection, head3d: PointProjection,
                 temperature: float, backend: SparseBackend) -> None:
        super().__init__()
        self.student, self.head2d, self.head3d = student, head2d, head3d
        self.temperature = temperature
        self.backend = backend

    def forward(self, features: torch.Tensor, coordinates: torch.Tensor, teacher_map: torch.Tensor,
                pairs: torch.Tensor, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """features [N, 3], coordinates int32 [N, 4], teacher_map [B_img, C, h, w] of images of
        `image_size` (H, W), pairs int64 [M, 4] (voxel row, image row, pixel row, pixel column)
        -> {"loss_ppkt": scalar}."""
        if pairs.shape[0] == 0:  # every sample of the batch was dropped: a zero step, same graph in every process
            return {"loss_ppkt": sum(p.sum() for p in self.parameters()) * 0.0}
        voxel_features = self.student(self.backend.sparse_tensor(features, coordinates)).F
        return {"loss_ppkt": ppkt_loss(voxel_features, self.head2d, self.head3d, teacher_map, pairs, image_size,
                                       self.temperature)}


def ppkt_loss(voxel_features: torch.Tensor, head2d: UpsamplingProjection, head3d: PointProjection,
              teacher_map: torch.Tensor, pairs: torch.Tensor, image_size: tuple[int, int],
              temperature: float) -> torch.Tensor:
    """PPKT's InfoNCE at `pairs` [M, 4]: the 3D head's embedding of each pair's voxel (rows of
    voxel_features [N, C]) against the 2D head's embedding of its pixel (teacher_map [B_img, C', h, w]
    upsampled to image_size (H, W))."""
    # index_select, not advanced indexing: its backward (index_add_) sums repeated voxels in a fixed
    # order, where advanced indexing's (index_put_ with accumulate) does not on CPU with several threads.
    points = head3d(voxel_features.index_select(0, pairs[:, 0]))
    pixels = head2d.sample(teacher_map, pairs[:, 1], pairs[:, 2], pairs[:, 3], image_size)
    return pixel_point_infonce(points, pixels, temperature)


class PPKTObjective(nn.Module):
    """model(batch) -> {"loss_ppkt"}: runs the frozen teacher (outside DDP, no grad) on the batch's
    images, samples `num_pairs` pairs, and calls the trainable part.

    batch: coordinates int32 [N, 4], features [N, 3], images [B_img, 3, H, W] in [0, 1],
    pairs int64 [M, 4] (`collate_pretrain`).
    """

    def __init__(self, trainable: nn.Module, teacher: nn.Module, num_pairs: int = 4096) -> None:
        super().__init__()
        self.trainable = trainable
        self.teacher = teacher
        self.num_pairs = num_pairs

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """generator: draws the pair sample (None: torch's global state)."""
        pairs = sample_pairs(batch["pairs"], self.num_pairs, generator=generator)
        images = batch["images"]
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        if pairs.shape[0]:
            with torch.no_grad():
                teacher_map = self.teacher(images)
        else:
            teacher_map = images.new_zeros(0, 1, 1, 1)  # unused: the trainable part returns a zero loss
        return self.trainable(batch["features"], batch["coordinates"], teacher_map, pairs, image_size)
