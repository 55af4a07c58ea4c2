"""Residual blocks of MinkowskiEngine's `resnet_block.py` (module names `conv1`, `norm1`, `conv2`,
`norm2`, `downsample`, ...), built from a sparse backend."""

from __future__ import annotations

from torch import nn

from scene_kd.sparse.backend import SparseBackend


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, backend: SparseBackend, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = backend.conv(inplanes, planes, kernel_size=3, stride=stride, dilation=dilation)
        self.norm1 = backend.batch_norm(planes, momentum=bn_momentum)
        self.conv2 = backend.conv(planes, planes, kernel_size=3, stride=1, dilation=dilation)
        self.norm2 = backend.batch_norm(planes, momentum=bn_momentum)
        self.relu = backend.relu()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1x1 - 3x3x3 - 1x1x1 convolutions with a residual connection, 4x channel expansion."""

    expansion = 4

    def __init__(self, backend: SparseBackend, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = backend.conv(inplanes, planes, kernel_size=1)
        self.norm1 = backend.batch_norm(planes, momentum=bn_momentum)
        self.conv2 = backend.conv(planes, planes, kernel_size=3, stride=stride, dilation=dilation)
        self.norm2 = backend.batch_norm(planes, momentum=bn_momentum)
        self.conv3 = backend.conv(planes, planes * self.expansion, kernel_size=1)
        self.norm3 = backend.batch_norm(planes * self.expansion, momentum=bn_momentum)
        self.relu = backend.relu()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
