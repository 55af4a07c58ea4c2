"""Test oracle: Pointcept's SpUNet-v1m1 (`SpUNetBase`) on spconv 2.x, written for these tests from the
network's description (docs/pointcept.md's table), with Pointcept's parameter names so that its
`state_dict` is Pointcept's key for key.

The network: a 5x5x5 submanifold stem (no bias) + BN + ReLU; per encoder stage a 2x2x2 stride-2
convolution to `channels[s]` + BN + ReLU and `layers[s]` residual blocks; per decoder stage (deepest
first) a 2x2x2 inverse convolution back onto the encoder's coordinates + BN + ReLU, the upsampled
features concatenated *before* the skip, and residual blocks (the first narrows through a 1x1x1
projection + BN); a 1x1x1 submanifold head with bias. A residual block is two 3x3x3 submanifold
convolutions (no bias), BN after each, ReLU after the first and after the sum with the shortcut.
Batch norms: eps 1e-3, momentum 0.01. Input: Pointcept's dict of `grid_coord` [N, 3], `feat` [N, C] and
`offset` [B] (cumulative point counts); output: the head's features [N, num_classes].

Checked against Pointcept's own module by `check_against_pointcept.py` (by hand: Pointcept is not
installable in CI): on 2026-12-03 with Pointcept d74c646, the same keys, shapes and key order, and
bit-identical float64 outputs and running statistics for random weights.
Not part of scene_kd.
"""

from collections import OrderedDict

import spconv.pytorch as spconv
import torch
from torch import nn
from torch.nn import functional as F


def batch_norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def conv_bn_relu(conv: nn.Module, channels: int) -> spconv.SparseSequential:
    """Indices 0, 1, 2 as Pointcept's `conv_input`, `down[s]` and `up[s]`."""
    return spconv.SparseSequential(conv, batch_norm(channels), nn.ReLU())


class ResidualBlock(spconv.SparseModule):
    """Pointcept's BasicBlock: attributes conv1, bn1, conv2, bn2, proj (identity or 1x1x1 conv + BN)."""

    def __init__(self, in_channels: int, out_channels: int, indice_key: str):
        super().__init__()
        if in_channels == out_channels:
            self.proj = spconv.SparseSequential(nn.Identity())
        else:
            self.proj = spconv.SparseSequential(spconv.SubMConv3d(in_channels, out_channels, 1, bias=False),
                                                batch_norm(out_channels))
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = batch_norm(out_channels)

    def forward(self, x):
        hidden = self.conv1(x)
        hidden = hidden.replace_feature(F.relu(self.bn1(hidden.features)))
        hidden = self.conv2(hidden)
        return hidden.replace_feature(F.relu(self.bn2(hidden.features) + self.proj(x).features))


def residual_stage(in_channels: int, out_channels: int, depth: int, indice_key: str) -> spconv.SparseSequential:
    """`depth` blocks named block0, block1, ...; only the first changes the width."""
    blocks = [(f"block{i}", ResidualBlock(in_channels if i == 0 else out_channels, out_channels, indice_key))
              for i in range(depth)]
    return spconv.SparseSequential(OrderedDict(blocks))


class SpUNetBase(nn.Module):
    def __init__(self, in_channels, num_classes, base_channels=32,
                 channels=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2)):
        super().__init__()
        stages = len(channels) // 2
        self.conv_input = conv_bn_relu(
            spconv.SubMConv3d(in_channels, base_channels, 5, padding=2, bias=False, indice_key="stem"), base_channels)
        widths = [base_channels] + list(channels[:stages])  # the encoder's width at each stride
        self.down, self.up, self.enc, self.dec = (nn.ModuleList() for _ in range(4))  # Pointcept's key order
        for s in range(stages):
            self.down.append(conv_bn_relu(
                spconv.SparseConv3d(widths[s], widths[s + 1], 2, stride=2, bias=False, indice_key=f"spconv{s + 1}"),
                widths[s + 1]))
            self.enc.append(residual_stage(widths[s + 1], widths[s + 1], layers[s], f"subm{s + 1}"))
            # decoder stage s brings stride 2^(s+1) back to 2^s: from channels[-2 - s] to channels[-1 - s]
            coarse, width = channels[len(channels) - s - 2], channels[len(channels) - s - 1]
            self.up.append(conv_bn_relu(
                spconv.SparseInverseConv3d(coarse, width, 2, bias=False, indice_key=f"spconv{s + 1}"), width))
            self.dec.append(residual_stage(width + widths[s], width, layers[len(channels) - s - 1], f"subm{s}"))
        self.final = (spconv.SubMConv3d(channels[-1], num_classes, 1, bias=True) if num_classes > 0
                      else spconv.Identity())

    def forward(self, input_dict):
        grid, offset = input_dict["grid_coord"], input_dict["offset"]
        counts = torch.diff(offset, prepend=offset.new_zeros(1))
        batch = torch.repeat_interleave(torch.arange(len(offset)), counts)
        x = spconv.SparseConvTensor(
            input_dict["feat"], torch.cat([batch[:, None], grid], 1).int().contiguous(),
            (grid.max(0).values + 96).tolist(), len(offset))
        x = self.conv_input(x)
        skips = []
        for down, enc in zip(self.down, self.enc, strict=True):
            skips.append(x)
            x = enc(down(x))
        for s in reversed(range(len(self.up))):
            x = self.up[s](x)
            x = x.replace_feature(torch.cat([x.features, skips[s].features], 1))
            x = self.dec[s](x)
        return self.final(x).features
