"""Layers of the pure-PyTorch backend, with MinkowskiEngine 0.5.4's parameter names and shapes.

A convolution owns `kernel` `[kernel_volume, in, out]` (`[in, out]` for kernel size 1, stride 1) and,
with `bias=True`, `bias` `[1, out]`; a batch norm keeps `torch.nn.BatchNorm1d` under `.bn`. So a
`state_dict` moves between this backend and MinkowskiEngine with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scene_kd.sparse.functional import global_average, global_max, sparse_convolution
from scene_kd.sparse.kernel_map import KernelMap
from scene_kd.sparse.tensor import SparseTensor


def _check_dimension(dimension: int) -> None:
    if dimension != 3:
        raise ValueError(f"only 3D sparse tensors are supported, got dimension={dimension}")


class _ConvolutionBase(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        dimension: int = 3,
        is_transpose: bool = False,
    ) -> None:
        super().__init__()
        _check_dimension(dimension)
        for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int (isotropic), got {value!r}; per-axis values are not supported")
        if stride > 1 and dilation > 1:
            raise ValueError(f"a strided convolution cannot be dilated (stride={stride}, dilation={dilation})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.is_transpose = is_transpose
        self.kernel_volume = kernel_size**3
        # MinkowskiEngine stores a 1x1x1 stride-1 kernel as [in, out] (a plain matmul), every other one
        # (a 1x1x1 stride-2 kernel too) as [kernel_volume, in, out].
        plain_matmul = self.kernel_volume == 1 and stride == 1
        shape = (in_channels, out_channels) if plain_matmul else (self.kernel_volume, in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(1, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MinkowskiEngine's default: uniform in +-1/sqrt(fan), fan = channels x kernel volume."""
        fan = (self.out_channels if self.is_transpose else self.in_channels) * self.kernel_volume
        bound = 1.0 / math.sqrt(fan)
        with torch.no_grad():
            self.kernel.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def _apply_kernel(self, x: SparseTensor, kmap: KernelMap, out_set) -> SparseTensor:
        kernel = self.kernel if self.kernel.dim() == 3 else self.kernel[None]
        features = sparse_convolution(x.features, kernel, kmap, len(out_set))
        if self.bias is not None:
            features = features + self.bias.to(features.dtype)
        return SparseTensor(features, coordinate_manager=x.coordinate_manager, coordinate_set=out_set)

    def _check_input(self, x: SparseTensor) -> None:
        if not isinstance(x, SparseTensor):
            raise ValueError(f"{type(self).__name__} takes a scene_kd.sparse.SparseTensor, got {type(x).__name__}")
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, got {x.features.shape[1]}")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")


class SparseConvolution(_ConvolutionBase):
    """MinkowskiConvolution: output at stride `s * stride`; output p gathers `p + o_k * s * dilation`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, bias: bool = False, dimension: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension, is_transpose=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        manager = x.coordinate_manager
        out_set = x.coordinate_set if self.stride == 1 else manager.strided(x.coordinate_set, x.stride * self.stride)
        kmap = manager.kernel_map(x.coordinate_set, out_set, self.kernel_size, self.dilation)
        return self._apply_kernel(x, kmap, out_set)


class SparseConvolutionTranspose(_ConvolutionBase):
    """MinkowskiConvolutionTranspose onto existing finer coordinates: input p writes
    `input[p] @ kernel[k]` to `p + o_k * (s / stride)` wherever that coordinate exists."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, bias: bool = False, dimension: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension, is_transpose=True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        if x.stride % self.stride != 0:
            raise ValueError(f"cannot upsample a tensor of stride {x.stride} by {self.stride}")
        out_stride = x.stride // self.stride
        out_set = x.coordinate_manager.sets.get(out_stride)
        if out_set is None:
            raise ValueError(
                f"transposed convolution to stride {out_stride} needs that stride's coordinates from the encoder; "
                f"this input only has strides {sorted(x.coordinate_manager.sets)}")
        kmap = x.coordinate_manager.kernel_map(out_set, x.coordinate_set, self.kernel_size, self.dilation)
        return self._apply_kernel(x, kmap.transposed(), out_set)


class SparseBatchNorm(nn.Module):
    """MinkowskiBatchNorm: `torch.nn.BatchNorm1d` over the rows, kept under `.bn`."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine,
                                 track_running_stats=track_running_stats)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(self.bn(x.features))


class SparseReLU(nn.Module):
    """MinkowskiReLU (never in place: the input's features may be needed by autograd)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(torch.relu(x.features))


class SparseLinear(nn.Module):
    """MinkowskiLinear: `torch.nn.Linear` on the features, kept under `.linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(self.linear(x.features))


class _GlobalPooling(nn.Module):
    reduce = staticmethod(global_average)

    def __init__(self, dimension: int = 3) -> None:
        super().__init__()
        _check_dimension(dimension)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """One row per present batch item, at coordinates (b, 0, 0, 0), sorted by b."""
        pooled, present = self.reduce(x.features, x.coordinates[:, 0])
        coords = torch.zeros(present.shape[0], 4, dtype=torch.int32, device=x.device)
        coords[:, 0] = present.int()
        return SparseTensor(pooled, coords)


class SparseGlobalAvgPooling(_GlobalPooling):
    """MinkowskiGlobalAvgPooling."""

    reduce = staticmethod(global_average)


class SparseGlobalMaxPooling(_GlobalPooling):
    """MinkowskiGlobalMaxPooling."""

    reduce = staticmethod(global_max)
