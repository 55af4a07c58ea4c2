"""A small convolutional image network for tests, smoke runs and synthetic benchmarks, where a
ResNet-50 or CLIP on CPU would be too slow. Use it as an import teacher:
`teacher.name=import teacher.options.target=scene_kd.models.small_teacher:small_cnn
teacher.options.out_channels=64 teacher.options.stride=4`."""

from __future__ import annotations

import os

import torch
from torch import nn


def small_cnn(out_channels: int = 64, width: int = 32, weights: str | os.PathLike | None = None,
              seed: int = 0) -> nn.Module:
    """Images [B, 3, H, W] -> features [B, out_channels, H/4, W/4]: three 3x3 convolutions (two of
    stride 2) with batch norm and ReLU. Random weights from `seed`, or a state_dict file `weights`."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, out_channels, 3, padding=1),
    )
    torch.random.set_rng_state(generator_state)
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights}: small_cnn weights not found (a state_dict saved with torch.save)")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return net
