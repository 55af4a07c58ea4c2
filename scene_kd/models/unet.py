"""The sparse U-Net students: MinkowskiEngine's MinkUNet and the Res16UNet of
SpatioTemporalSegmentation / PointContrast / CSC, one class with their module names.

Both share one layout (an encoder of four stride-2 stages and a decoder of four transposed
convolutions with skip connections); they differ in the first kernel size (5 for MinkUNet, 3 for
Res16UNet), the batch-norm momentum and the widths. Module names (`conv0p1s1`, `bn0`, `block1`,
`convtr4p16s2`, `bntr4`, ..., `final`) equal those codebases', so their `state_dict`s load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from scene_kd.models.blocks import BLOCKS
from scene_kd.sparse.backend import SparseBackend, get_backend

DECODER_STRIDES = (8, 4, 2, 1)  # tensor strides of the decoder's outputs (block5, block6, block7, block8)


def decoder_width(widths: dict[int, int], stride: int) -> int:
    """Channels of a U-Net decoder's output at `stride` from its {stride: channels}; a ValueError
    naming the strides there are for any other stride."""
    if stride not in DECODER_STRIDES:
        raise ValueError(f"the decoder has outputs at strides {DECODER_STRIDES}, not {stride}")
    return widths[stride]


def unit_batch_norms(model: nn.Module, batch_norm_types: tuple[type, ...]) -> None:
    """Every sparse batch norm of `model` to weight 1, bias 0 (both U-Nets' initialization)."""
    for m in model.modules():
        if isinstance(m, batch_norm_types):
            nn.init.constant_(m.bn.weight, 1.0)
            nn.init.constant_(m.bn.bias, 0.0)


class SparseUNet(nn.Module):
    """A sparse residual U-Net returning per-voxel features at stride 1.

    Input: a sparse tensor (features [N, in_channels], coordinates [N, 4]) of the chosen backend.
    Output: a sparse tensor on the same coordinates with `out_channels` features, or, with
    `out_channels=None`, the decoder's last features (`planes[7] * expansion` channels, `final`
    omitted) for a head to use. `decoder_features(x, strides)` returns the decoder's outputs at
    several strides (8, 4, 2, 1) for multi-level heads (detection).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = 20,
        *,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2, 2, 2, 2, 2),
        planes: Sequence[int] = (32, 64, 128, 256, 128, 128, 96, 96),
        init_dim: int = 32,
        conv0_kernel_size: int = 5,
        bn_momentum: float = 0.1,
        dilations: Sequence[int] = (1, 1, 1, 1, 1, 1, 1, 1),
        backend: str | SparseBackend = "torch",
    ) -> None:
        super().__init__()
        if len(layers) != 8 or len(planes) != 8 or len(dilations) != 8:
            raise ValueError(f"layers, planes and dilations need 8 entries each, got {len(layers)}, "
                             f"{len(planes)}, {len(dilations)}")
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        self.backend = get_backend(backend)
        self.block_type = BLOCKS[block]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.bn_momentum = bn_momentum
        expansion = self.block_type.expansion
        b = self.backend

        self.inplanes = init_dim
        self.conv0p1s1 = b.conv(in_channels, init_dim, kernel_size=conv0_kernel_size)
        self.bn0 = b.batch_norm(init_dim, momentum=bn_momentum)
        self.conv1p1s2 = b.conv(init_dim, init_dim, kernel_size=2, stride=2)
        self.bn1 = b.batch_norm(init_dim, momentum=bn_momentum)
        self.block1 = self._make_layer(planes[0], layers[0], dilations[0])
        self.conv2p2s2 = b.conv(self.inplanes, self.inplanes, kernel_size=2, stride=2)
        self.bn2 = b.batch_norm(self.inplanes, momentum=bn_momentum)
        self.block2 = self._make_layer(planes[1], layers[1], dilations[1])
        self.conv3p4s2 = b.conv(self.inplanes, self.inplanes, kernel_size=2, stride=2)
        self.bn3 = b.batch_norm(self.inplanes, momentum=bn_momentum)
        self.block3 = self._make_layer(planes[2], layers[2], dilations[2])
        self.conv4p8s2 = b.conv(self.inplanes, self.inplanes, kernel_size=2, stride=2)
        self.bn4 = b.batch_norm(self.inplanes, momentum=bn_momentum)
        self.block4 = self._make_layer(planes[3], layers[3], dilations[3])

        self.convtr4p16s2 = b.conv_transpose(self.inplanes, planes[4], kernel_size=2, stride=2)
        self.bntr4 = b.batch_norm(planes[4], momentum=bn_momentum)
        self.inplanes = planes[4] + planes[2] * expansion
        self.block5 = self._make_layer(planes[4], layers[4], dilations[4])
        self.convtr5p8s2 = b.conv_transpose(self.inplanes, planes[5], kernel_size=2, stride=2)
        self.bntr5 = b.batch_norm(planes[5], momentum=bn_momentum)
        self.inplanes = planes[5] + planes[1] * expansion
        self.block6 = self._make_layer(planes[5], layers[5], dilations[5])
        self.convtr6p4s2 = b.conv_transpose(self.inplanes, planes[6], kernel_size=2, stride=2)
        self.bntr6 = b.batch_norm(planes[6], momentum=bn_momentum)
        self.inplanes = planes[6] + planes[0] * expansion
        self.block7 = self._make_layer(planes[6], layers[6], dilations[6])
        self.convtr7p2s2 = b.conv_transpose(self.inplanes, planes[7], kernel_size=2, stride=2)
        self.bntr7 = b.batch_norm(planes[7], momentum=bn_momentum)
        self.inplanes = planes[7] + init_dim
        self.block8 = self._make_layer(planes[7], layers[7], dilations[7])

        self.feature_channels = planes[7] * expansion
        self._decoder_widths = {stride: planes[4 + i] * expansion for i, stride in enumerate(DECODER_STRIDES)}
        self.final = (b.conv(self.feature_channels, out_channels, kernel_size=1, bias=True)
                      if out_channels is not None else None)
        self.relu = b.relu()
        self.weight_initialization()

    def _make_layer(self, planes: int, blocks: int, dilation: int) -> nn.Sequential:
        downsample = None
        expansion = self.block_type.expansion
        if self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                self.backend.conv(self.inplanes, planes * expansion, kernel_size=1),
                self.backend.batch_norm(planes * expansion, momentum=self.bn_momentum),
            )
        layers = [self.block_type(self.backend, self.inplanes, planes, dilation=dilation, downsample=downsample,
                                  bn_momentum=self.bn_momentum)]
        self.inplanes = planes * expansion
        layers += [self.block_type(self.backend, self.inplanes, planes, dilation=dilation,
                                   bn_momentum=self.bn_momentum) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def weight_initialization(self) -> None:
        """As MinkowskiEngine's ResNetBase: kaiming-normal kernels (fan-out, ReLU), unit batch norms."""
        for m in self.modules():
            if isinstance(m, self.backend.conv_types):
                kernel = m.kernel
                # MinkowskiEngine's fan-out: out x volume for [K, in, out]; size(0) for a 2D [in, out] kernel.
                fan_out = kernel.shape[2] * kernel.shape[0] if kernel.dim() == 3 else kernel.shape[0]
                with torch.no_grad():
                    kernel.normal_(0.0, math.sqrt(2.0) / math.sqrt(fan_out))
        unit_batch_norms(self, self.backend.batch_norm_types)

    def decoder_channels(self, stride: int) -> int:
        """Feature channels of the decoder's output at `stride` (8, 4, 2 or 1)."""
        return decoder_width(self._decoder_widths, stride)

    def decoder_modules(self, stride: int) -> list[str]:
        """Names of the modules that produce the decoder output at `stride` from the next coarser one
        (`convtr*`, `bntr*`, `block*`): unused when no output at `stride` or finer is asked for."""
        step = DECODER_STRIDES.index(stride)
        return [f"convtr{4 + step}p{2 * stride}s2", f"bntr{4 + step}", f"block{5 + step}"]

    def decoder_features(self, x, strides: Sequence[int] = (1,)) -> dict:
        """The decoder's outputs (after block5 / 6 / 7 / 8: strides 8 / 4 / 2 / 1, `final` not applied)
        at `strides`, as {stride: sparse tensor}. The decoder stops at the finest stride asked for, so
        asking for (2, 4, 8) never runs the stride-1 stage."""
        wanted = set(int(s) for s in strides)
        if not wanted or not wanted <= set(DECODER_STRIDES):
            raise ValueError(f"strides must be a non-empty subset of {DECODER_STRIDES}, got {list(strides)}")
        finest = min(wanted)
        outputs = {}
        out = self.conv0p1s1(x)
        out_p1 = self.relu(self.bn0(out))  # stride 1

        out = self.relu(self.bn1(self.conv1p1s2(out_p1)))
        out_b1p2 = self.block1(out)  # stride 2
        out = self.relu(self.bn2(self.conv2p2s2(out_b1p2)))
        out_b2p4 = self.block2(out)  # stride 4
        out = self.relu(self.bn3(self.conv3p4s2(out_b2p4)))
        out_b3p8 = self.block3(out)  # stride 8
        out = self.relu(self.bn4(self.conv4p8s2(out_b3p8)))
        out = self.block4(out)  # stride 16

        out = self.relu(self.bntr4(self.convtr4p16s2(out)))  # stride 8
        out = self.block5(self.backend.cat(out, out_b3p8))
        outputs[8] = out
        if finest <= 4:
            out = self.relu(self.bntr5(self.convtr5p8s2(out)))  # stride 4
            out = self.block6(self.backend.cat(out, out_b2p4))
            outputs[4] = out
        if finest <= 2:
            out = self.relu(self.bntr6(self.convtr6p4s2(out)))  # stride 2
            out = self.block7(self.backend.cat(out, out_b1p2))
            outputs[2] = out
        if finest <= 1:
            out = self.relu(self.bntr7(self.convtr7p2s2(out)))  # stride 1
            out = self.block8(self.backend.cat(out, out_p1))
            outputs[1] = out
        return {s: outputs[s] for s in sorted(wanted)}

    def forward(self, x):
        out = self.decoder_features(x, (1,))[1]
        return out if self.final is None else self.final(out)
