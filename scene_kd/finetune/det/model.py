"""The detection model: an FCAF3D-style anchor-free head on the sparse U-Net's decoder, and the
builders that make it from a config (fresh, or with a pretrained backbone).

Every voxel of each chosen decoder level (tensor strides from {1, 2, 4, 8}) predicts class logits,
a centerness logit and its distances to the six faces of an axis-aligned box. Per level a linear
projection (with batch norm and ReLU) brings the decoder width to a common `head_channels`; the
three predictors after it are shared by all levels (FCAF3D shares them the same way), and each
level has a learnable scale on its distances (FCOS's `Scale`).

Units are voxel-grid units of stride 1 (a point p in metres sits at p / voxel_size): a stride-s voxel
with coordinate c (a multiple of s) covers [c, c + s) on each axis and its centre is c + s / 2.
Distances are `exp(scale_l * raw) * s` (positive, and one voxel of the level when raw = 0), in the
order (x - x_min, y - y_min, z - z_min, x_max - x, y_max - y, z_max - z), so a box decodes as
`(centre - d[:3], centre + d[3:])`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from scene_kd.data.scenes import feature_channels
from scene_kd.finetune.init_weights import HEAD_PREFIX, load_backbone_weights, load_student_checkpoint
from scene_kd.models.students import build_student
from scene_kd.models.unet import DECODER_STRIDES, SparseUNet
from scene_kd.scannet.labels import DET18_NAMES
from scene_kd.sparse.backend import SparseBackend, get_backend

NUM_CLASSES = len(DET18_NAMES)
MAX_LOG_DISTANCE = 12.0  # exp(12) strides: far beyond any room, only guards exp from overflowing


@dataclass
class LevelOutput:
    """Predictions at one decoder level, one row per voxel of the level (all scenes of the batch).

    stride: the level's tensor stride. coordinates: int [N, 4] (batch index, x, y, z; multiples of
    stride). centres: float32 [N, 3] voxel centres (grid units). cls_logits: float32 [N, K].
    centerness_logits: float32 [N]. distances: float32 [N, 6] (grid units, positive).
    """

    stride: int
    coordinates: Tensor
    centres: Tensor
    cls_logits: Tensor
    centerness_logits: Tensor
    distances: Tensor


def decode_boxes(centres: Tensor, distances: Tensor) -> Tensor:
    """Boxes [N, 6] (x_min, y_min, z_min, x_max, y_max, z_max) from points [N, 3] and their face
    distances [N, 6] (to the min faces, then to the max faces)."""
    return torch.cat([centres - distances[:, :3], centres + distances[:, 3:]], dim=1)


def encode_boxes(centres: Tensor, boxes: Tensor) -> Tensor:
    """Face distances [N, 6] of points [N, 3] to boxes [N, 6] (the inverse of `decode_boxes`);
    all positive exactly when each point is strictly inside its box."""
    return torch.cat([centres - boxes[:, :3], boxes[:, 3:] - centres], dim=1)


class DetectionHead(nn.Module):
    """Class, centerness and face-distance predictors over decoder levels.

    in_channels: the decoder width of each level, in the order of `strides`. num_classes: K.
    head_channels: the common width after each level's projection. prior_probability: the initial
    foreground probability of every class logit (focal-loss initialisation, 0.01 as in RetinaNet).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int = 18,
                 head_channels: int = 128, prior_probability: float = 0.01) -> None:
        super().__init__()
        if len(in_channels) != len(strides) or not strides:
            raise ValueError(f"one input width per stride needed, got {list(in_channels)} for {list(strides)}")
        self.strides = tuple(int(s) for s in strides)
        self.num_classes = num_classes
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(c, head_channels, bias=False), nn.BatchNorm1d(head_channels), nn.ReLU())
            for c in in_channels)
        self.cls = nn.Linear(head_channels, num_classes)
        self.centerness = nn.Linear(head_channels, 1)
        self.regression = nn.Linear(head_channels, 6)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for layer in (self.cls, self.centerness, self.regression):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: Sequence[Tensor], coordinates: Sequence[Tensor]) -> list[LevelOutput]:
        """features[l]: [N_l, in_channels[l]] voxel features of level l; coordinates[l]: int [N_l, 4]
        (batch, x, y, z). Returns one `LevelOutput` per level (float32, whatever the autocast)."""
        outputs = []
        for level, (feats, coords) in enumerate(zip(features, coordinates, strict=True)):
            stride = self.strides[level]
            hidden = self.projections[level](feats)
            raw = self.regression(hidden).float() * self.scales[level]
            distances = torch.exp(raw.clamp(max=MAX_LOG_DISTANCE)) * stride
            centres = coords[:, 1:].float() + stride / 2.0
            outputs.append(LevelOutput(stride=stride, coordinates=coords, centres=centres,
                                       cls_logits=self.cls(hidden).float(),
                                       centerness_logits=self.centerness(hidden).float().squeeze(1),
                                       distances=distances))
        return outputs


class SparseDetector(nn.Module):
    """A sparse U-Net `backbone` (built with out_channels=None) and a `DetectionHead` on its decoder
    outputs at `strides`. Decoder stages finer than the finest stride never run; their parameters are
    frozen (requires_grad False) so that optimizers and DDP leave them alone, and they keep whatever
    weights were loaded (a checkpoint still holds the whole U-Net)."""

    def __init__(self, backbone: SparseUNet, strides: Sequence[int], num_classes: int = 18,
                 head_channels: int = 128) -> None:
        super().__init__()
        if backbone.final is not None:
            raise ValueError("the detection backbone must be built with out_channels=None (no `final` layer)")
        self.strides = tuple(sorted(int(s) for s in strides))
        if len(set(self.strides)) != len(self.strides):
            raise ValueError(f"model.strides lists a stride twice: {list(strides)}")
        self.backbone = backbone
        self.head = DetectionHead([backbone.decoder_channels(s) for s in self.strides], self.strides,
                                  num_classes=num_classes, head_channels=head_channels)
        for name in self.unused_backbone_modules():
            self.backbone.get_submodule(name).requires_grad_(False)

    def unused_backbone_modules(self) -> list[str]:
        """Backbone module names that produce decoder outputs finer than the finest level."""
        return [name for stride in DECODER_STRIDES if stride < self.strides[0]
                for name in self.backbone.decoder_modules(stride)]

    def forward(self, x) -> list[LevelOutput]:
        """x: a sparse tensor of the backbone's backend. Returns one `LevelOutput` per stride,
        finest first."""
        levels = self.backbone.decoder_features(x, self.strides)
        return self.head([levels[s].F for s in self.strides], [levels[s].C for s in self.strides])


def new_det_model(cfg: DictConfig) -> tuple[SparseDetector, SparseBackend]:
    """The detector of `cfg.model` with fresh weights, and its sparse backend."""
    backend = get_backend(cfg.model.backend)
    backbone = build_student(cfg.model.student, in_channels=feature_channels(cfg.data.in_features), out_channels=None,
                             backend=backend)
    return SparseDetector(backbone, list(cfg.model.strides), num_classes=NUM_CLASSES,
                          head_channels=cfg.model.head_channels), backend


def init_backbone(model: SparseDetector, path: str | os.PathLike, strict: bool = True,
                  student: str | None = None, color_norm: str | None = None) -> str:
    """Load the student weights of a pretraining, segmentation or MinkowskiEngine checkpoint into
    `model.backbone` (a segmentation layer `final.*` in the checkpoint is left out); returns a one-line
    summary. strict: every backbone weight must be there, with its shape (`load_backbone_weights`).
    student: the backbone's student name, checked against the checkpoint's before loading (a
    detection checkpoint, or another student's, is a ValueError naming the file)."""
    state, _ = load_student_checkpoint(path, student, color_norm)
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
        summary = init_backbone(model, cfg.model.init, cfg.model.init_strict, cfg.model.student, cfg.data.color_norm)
        note = f"initialised from {cfg.model.init}: {summary}"
    if cfg.model.freeze_backbone:
        model.backbone.requires_grad_(False)
    return model, backend, note


__all__ = ["NUM_CLASSES", "DetectionHead", "LevelOutput", "SparseDetector", "build_det_model", "decode_boxes",
           "encode_boxes", "init_backbone", "new_det_model"]
