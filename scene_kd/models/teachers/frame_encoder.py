"""The frame encoder: a small stride-4 CNN that the transfer experiment trains on the frames' 2D
labels (`scene_kd.transfer.frame_teacher.train_frame_teacher`) and then distills from, as the
named teacher `frame_encoder` (`teacher.name=frame_encoder teacher.weights=.../teacher.pth`).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scene_kd.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Teacher,
    freeze_teacher,
    require_weights,
)

FRAME_ENCODER_STRIDE = 4
FRAME_ENCODER_HOW_TO_GET = (
    "Train them with scene_kd.transfer.frame_teacher.train_frame_teacher (the transfer experiment's "
    "2D-teacher stage writes <work dir>/teacher/teacher.pth), or run benchmarks/transfer_synthetic.py."
)


class _Residual(nn.Module):
    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def frame_encoder(out_channels: int = 64, width: int = 48, weights: str | os.PathLike | None = None,
                  seed: int = 0) -> nn.Module:
    """Normalized images [B, 3, H, W] -> features [B, out_channels, H/4, W/4]: a stride-4 stem and four
    residual blocks dilated 1, 2, 4, 8 (a receptive field of about 130 input pixels, enough to see
    an object's surroundings at 160 x 120). Random weights from `seed`, or the `weights` file that
    `train_frame_teacher` writes (or a plain state_dict)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        *(_Residual(width, d) for d in (1, 2, 4, 8)),
        nn.Conv2d(width, out_channels, 1),
    )
    torch.random.set_rng_state(generator_state)
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights}: frame_encoder weights not found. {FRAME_ENCODER_HOW_TO_GET}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state["encoder"] if "encoder" in state else state)
        except RuntimeError as error:
            raise ValueError(f"{weights}: not a frame_encoder(out_channels={out_channels}, width={width}) "
                             f"state_dict: {error}") from error
    return net


class FrameEncoderTeacher(Teacher):
    """`frame_encoder` as a teacher: images [B, 3, H, W] in [0, 1], ImageNet-normalized here, ->
    features [B, out_channels, H/4, W/4] (not in CLIP space)."""

    def __init__(self, encoder: nn.Module, out_channels: int):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.encoder = encoder
        self.out_channels = int(out_channels)
        self.stride = FRAME_ENCODER_STRIDE
        self.embed_dim = None

    def extract(self, images: Tensor) -> Tensor:
        return self.encoder(images)


def build_frame_encoder_teacher(
    weights: str | os.PathLike | None = None,
    allow_random: bool = False,
    out_channels: int = 64,
    width: int = 48,
    seed: int = 0,
) -> FrameEncoderTeacher:
    """The frozen frame-encoder teacher from the checkpoint `weights` (what `train_frame_teacher`
    writes: its "encoder" entry is loaded); `out_channels` and `width` must be those it was trained
    with. A missing file is a FileNotFoundError naming the path; `weights=None` needs
    `allow_random=True` (random weights from `seed`)."""
    path = require_weights(weights, allow_random, "frame_encoder teacher", FRAME_ENCODER_HOW_TO_GET)
    encoder = frame_encoder(out_channels, width, weights=path, seed=seed)
    return freeze_teacher(FrameEncoderTeacher(encoder, out_channels))
