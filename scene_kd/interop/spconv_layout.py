"""Convolution kernels between MinkowskiEngine's layout (scene_kd's) and spconv 2.x's.

MinkowskiEngine (and scene_kd) stores a kernel as `[volume, in, out]`, offsets x fastest, or as
`[in, out]` for a 1x1x1 stride-1 kernel. spconv 2.x stores `weight` as `[out, kx, ky, kz, in]` for
coordinates given as (batch, x, y, z), and applies it as that layout says, with one exception: a
kernel of volume 1 that spconv runs as a matrix product (`conv1x1`: every submanifold 1x1x1 kernel,
and a regular one of stride 1) is applied as `features @ weight.view(in, out)`, a reshape of the
`[out, 1, 1, 1, in]` tensor, not a transpose (spconv/pytorch/conv.py with FILTER_HWIO False, in
2.3.8 on CPU and CUDA alike). Measured with spconv 2.3.8 (tests/test_pointcept_spconv.py).
"""

from __future__ import annotations

import torch


def kernel_to_spconv(kernel: torch.Tensor) -> torch.Tensor:
    """spconv's `weight` `[out, k, k, k, in]` for a scene_kd `kernel`: `[in, out]` (a 1x1x1 stride-1
    kernel, which spconv applies as a plain matrix product: reshaped) or `[k^3, in, out]` (permuted)."""
    if kernel.dim() == 2:
        in_channels, out_channels = kernel.shape
        return kernel.detach().clone().reshape(out_channels, 1, 1, 1, in_channels)
    if kernel.dim() != 3:
        raise ValueError(f"a scene_kd kernel is [in, out] or [volume, in, out], got {list(kernel.shape)}")
    volume, in_channels, out_channels = kernel.shape
    k = round(volume ** (1 / 3))
    if k**3 != volume:
        raise ValueError(f"kernel volume {volume} is not a cube (an isotropic kernel size)")
    # [k, k, k, in, out] is indexed (z, y, x) because offsets run x fastest.
    return kernel.detach().reshape(k, k, k, in_channels, out_channels).permute(4, 2, 1, 0, 3).contiguous()


def kernel_from_spconv(weight: torch.Tensor, matrix_product: bool) -> torch.Tensor:
    """scene_kd's `kernel` for an spconv `weight` `[out, k, k, k, in]`. matrix_product: spconv applies
    this (volume-1) kernel as `features @ weight.view(in, out)` (submanifold 1x1x1, or stride 1), which
    scene_kd stores as `[in, out]`; otherwise the result is `[k^3, in, out]`."""
    if weight.dim() != 5 or len(set(weight.shape[1:4])) != 1:
        raise ValueError(f"an spconv weight is [out, k, k, k, in] (isotropic), got {list(weight.shape)}")
    out_channels, k, _, _, in_channels = weight.shape
    if matrix_product:
        if k != 1:
            raise ValueError(f"only a 1x1x1 kernel is applied as a matrix product, got kernel size {k}")
        return weight.detach().clone().reshape(in_channels, out_channels)
    return weight.detach().permute(3, 2, 1, 4, 0).reshape(k**3, in_channels, out_channels).contiguous()
