"""Pointcept's `SpUNet-v1m1` (`SpUNetBase`, pointcept/models/sparse_unet/spconv_unet_v1m1_base.py) on
scene_kd's sparse engine, with Pointcept's module names and defaults.

Its `state_dict` maps one to one onto Pointcept's: every module has Pointcept's name (`conv_input.0`,
`down.<s>.0`, `enc.<s>.block<i>.conv1`, `up.<s>.0`, `dec.<s>.block<i>.proj.0`, `final`, ...); only the
leaves differ, a convolution's `kernel` in MinkowskiEngine's layout where spconv has `weight`, and a
batch norm's tensors under `.bn`. `scene_kd.interop.pointcept` converts between the two.

SpUNet is not MinkUNet34C (docs/pointcept.md): its stride-2 convolutions change the width and its
encoder blocks keep identity shortcuts; only the first block of each decoder stage narrows the
concatenated features, through a 1x1 convolution `proj`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from scene_kd.models.unet import DECODER_STRIDES, decoder_width, unit_batch_norms
from scene_kd.sparse.backend import SparseBackend, get_backend

SPUNET_NAME = "SpUNet-v1m1"
SPUNET_CHANNELS = (32, 64, 128, 256, 256, 128, 96, 96)
SPUNET_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
NUM_STAGES = 4
# DECODER_STRIDES (8, 4, 2, 1): tensor strides of dec[3], dec[2], dec[1], dec[0]


class SpUNetBlock(nn.Module):
    """Pointcept's `BasicBlock`: two 3x3x3 convolutions (`conv1`, `bn1`, `conv2`, `bn2`) and a
    shortcut, the identity when the widths agree, else `proj` (1x1 convolution + batch norm)."""

    def __init__(self, backend: SparseBackend, in_channels: int, channels: int, batch_norm) -> None:
        super().__init__()
        self.proj = (nn.Sequential(backend.conv(in_channels, channels, kernel_size=1), batch_norm(channels))
                     if in_channels != channels else None)
        self.conv1 = backend.conv(in_channels, channels, kernel_size=3)
        self.bn1 = batch_norm(channels)
        self.conv2 = backend.conv(channels, channels, kernel_size=3)
        self.bn2 = batch_norm(channels)
        self.relu = backend.relu()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.proj is None else self.proj(x)
        return self.relu(out + residual)


class SpUNet(nn.Module):
    """Pointcept's SpUNet-v1m1 returning per-voxel features at stride 1.

    Input: a sparse tensor (features [N, in_channels], coordinates [N, 4]) of the chosen backend.
    Output: a sparse tensor on the same coordinates with `out_channels` features, or, with
    `out_channels=None` (Pointcept's num_classes=0), the last decoder stage's `channels[7]` features
    for a head to use. `decoder_features(x, strides)` gives the decoder's outputs at strides 8, 4, 2, 1.
    Batch norms: eps 1e-3, momentum 0.01 (Pointcept's `norm_fn`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = 20,
        *,
        base_channels: int = 32,
        channels: Sequence[int] = SPUNET_CHANNELS,
        layers: Sequence[int] = SPUNET_LAYERS,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        backend: str | SparseBackend = "torch",
    ) -> None:
        super().__init__()
        if len(channels) != 2 * NUM_STAGES or len(layers) != 2 * NUM_STAGES:
            raise ValueError(f"channels and layers need {2 * NUM_STAGES} entries each (4 encoder and 4 "
                             f"decoder stages), got {len(channels)} and {len(layers)}")
        self.backend = b = get_backend(backend)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels, self.layers = tuple(channels), tuple(layers)
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum

        self.conv_input = nn.Sequential(b.conv(in_channels, base_channels, kernel_size=5),
                                        self._batch_norm(base_channels), b.relu())
        self.down, self.enc = nn.ModuleList(), nn.ModuleList()
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        # Stage s's encoder runs at stride 2^(s+1); its decoder (up[s], dec[s]) brings stride 2^(s+1)
        # back to 2^s and concatenates the encoder's features of that stride (upsampled ones first).
        enc_channels, dec_channels = base_channels, channels[-1]
        for s in range(NUM_STAGES):
            self.down.append(nn.Sequential(b.conv(enc_channels, channels[s], kernel_size=2, stride=2),
                                           self._batch_norm(channels[s]), b.relu()))
            self.enc.append(self._stage(channels[s], channels[s], layers[s]))
            coarse = channels[len(channels) - s - 2]
            self.up.append(nn.Sequential(b.conv_transpose(coarse, dec_channels, kernel_size=2, stride=2),
                                         self._batch_norm(dec_channels), b.relu()))
            dec_layers = layers[len(channels) - s - 1]
            self.dec.append(self._stage(dec_channels + enc_channels, dec_channels, dec_layers))
            enc_channels, dec_channels = channels[s], coarse

        self.feature_channels = channels[-1]
        self._decoder_widths = {2**s: channels[len(channels) - s - 1] for s in range(NUM_STAGES)}
        self.final = (b.conv(self.feature_channels, out_channels, kernel_size=1, bias=True)
                      if out_channels is not None else None)
        self.weight_initialization()

    def _batch_norm(self, num_features: int) -> nn.Module:
        norm = self.backend.batch_norm(num_features, momentum=self.bn_momentum)
        norm.bn.eps = self.bn_eps  # the backends' constructors take no eps; both keep BatchNorm1d under .bn
        return norm

    def _stage(self, in_channels: int, channels: int, blocks: int) -> nn.Sequential:
        widths = [in_channels] + [channels] * (blocks - 1)
        return nn.Sequential(OrderedDict(
            (f"block{i}", SpUNetBlock(self.backend, width, channels, self._batch_norm))
            for i, width in enumerate(widths)))

    def weight_initialization(self) -> None:
        """As Pointcept: truncated normal (std 0.02) kernels and zero biases for the submanifold
        (stride-1) convolutions, spconv's default uniform(+-1/sqrt(in x volume)) for the stride-2 and
        inverse ones, unit batch norms."""
        strided = {id(stage[0]) for stage in (*self.down, *self.up)}
        for m in self.modules():
            if isinstance(m, self.backend.conv_types):
                with torch.no_grad():
                    if id(m) in strided:
                        fan_in = m.kernel.shape[0] * m.kernel.shape[1]  # [volume, in, out]
                        m.kernel.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
                    else:
                        nn.init.trunc_normal_(m.kernel, std=0.02, a=-2.0, b=2.0)
                    if m.bias is not None:
                        m.bias.zero_()
        unit_batch_norms(self, self.backend.batch_norm_types)

    def decoder_channels(self, stride: int) -> int:
        """Feature channels of the decoder's output at `stride` (8, 4, 2 or 1)."""
        return decoder_width(self._decoder_widths, stride)

    def decoder_modules(self, stride: int) -> list[str]:
        """Names (for `get_submodule`) of the modules that produce the decoder output at `stride` from
        the next coarser one: unused when no output at `stride` or finer is asked for."""
        if stride not in DECODER_STRIDES:
            raise ValueError(f"the decoder has outputs at strides {DECODER_STRIDES}, not {stride}")
        s = int(math.log2(stride))
        return [f"up.{s}", f"dec.{s}"]

    def decoder_features(self, x, strides: Sequence[int] = (1,)) -> dict:
        """The decoder's outputs (after dec[3] / dec[2] / dec[1] / dec[0]: strides 8 / 4 / 2 / 1, `final`
        not applied) at `strides`, as {stride: sparse tensor}; the decoder stops at the finest one."""
        wanted = set(int(s) for s in strides)
        if not wanted or not wanted <= set(DECODER_STRIDES):
            raise ValueError(f"strides must be a non-empty subset of {DECODER_STRIDES}, got {list(strides)}")
        finest = min(wanted)
        out = self.conv_input(x)  # stride 1
        skips = [out]
        for s in range(NUM_STAGES):
            out = self.enc[s](self.down[s](out))  # stride 2^(s+1): 2, 4, 8, 16
            skips.append(out)
        out = skips.pop()
        outputs = {}
        for s in reversed(range(NUM_STAGES)):
            if 2**s < finest:
                break
            out = self.up[s](out)  # stride 2^s: 8, 4, 2, 1
            out = self.dec[s](self.backend.cat(out, skips.pop()))
            outputs[2**s] = out
        return {s: outputs[s] for s in sorted(wanted)}

    def forward(self, x):
        out = self.decoder_features(x, (1,))[1]
        return out if self.final is None else self.final(out)


def spunet_v1m1(**kwargs) -> SpUNet:
    """Pointcept's SpUNet-v1m1 with its default widths and depths (as in Pointcept's
    configs/scannet/semseg-spunet-v1m1-0-base.py)."""
    return SpUNet(channels=SPUNET_CHANNELS, layers=SPUNET_LAYERS, **kwargs)


def spunet_kwargs_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """The `SpUNet` arguments (in_channels, out_channels, base_channels, channels, layers) of the network
    whose state_dict is `state`, read from its shapes; a ValueError names a missing tensor."""
    def kernel(name: str) -> torch.Tensor:
        if f"{name}.kernel" not in state:
            raise ValueError(f"not a SpUNet state_dict: it has no {name}.kernel")
        return state[f"{name}.kernel"]

    def depth(stage: str) -> int:
        # keys like enc.0.block1.conv1.kernel: count the distinct block names of the stage
        return len({k.split(".")[2] for k in state if k.startswith(f"{stage}.block")})

    stem = kernel("conv_input.0")  # [125, in, base]
    channels = ([int(kernel(f"down.{s}.0").shape[2]) for s in range(NUM_STAGES)]
                + [int(kernel(f"up.{s}.0").shape[2]) for s in reversed(range(NUM_STAGES))])
    layers = ([depth(f"enc.{s}") for s in range(NUM_STAGES)]
              + [depth(f"dec.{s}") for s in reversed(range(NUM_STAGES))])
    final = state.get("final.kernel")  # [in, out]
    return {"in_channels": int(stem.shape[1]), "out_channels": None if final is None else int(final.shape[1]),
            "base_channels": int(stem.shape[2]), "channels": tuple(channels), "layers": tuple(layers)}
