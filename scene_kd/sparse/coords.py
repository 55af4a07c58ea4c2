"""Integer coordinate keys, validation and downsampling for sparse tensors.

A coordinate row is `(batch, x, y, z)`. Rows are packed into one int64 key so that sets of coordinates
can be sorted and searched with `torch.sort` / `torch.searchsorted` instead of Python loops or hash
maps. The packing is linear in every field, so adding a kernel offset to a coordinate is adding a
constant to its key, as long as no field leaves its range (checked on construction).
"""

from __future__ import annotations

import numpy as np
import torch

SPATIAL_BITS = 18
SPATIAL_RANGE = 1 << SPATIAL_BITS
SPATIAL_BIAS = SPATIAL_RANGE // 2
# Keep a margin so that `coordinate + offset` of any supported kernel stays inside the field.
MAX_ABS_COORDINATE = SPATIAL_BIAS - 1024
BATCH_BITS = 63 - 3 * SPATIAL_BITS
MAX_BATCH_INDEX = (1 << BATCH_BITS) - 1


def validate_coordinates(coordinates: torch.Tensor, tensor_stride: int = 1) -> None:
    """Raise ValueError unless `coordinates` is an integer `[N, 4]` (batch, x, y, z) tensor whose
    spatial values are multiples of `tensor_stride` and within the packable range."""
    if not isinstance(coordinates, torch.Tensor):
        raise ValueError(f"coordinates must be a torch.Tensor, got {type(coordinates).__name__}")
    if coordinates.is_floating_point() or coordinates.is_complex() or coordinates.dtype == torch.bool:
        raise ValueError(
            f"coordinates must be integer voxel indices, got dtype {coordinates.dtype}; "
            "quantize points first (scene_kd.sparse.sparse_quantize) or call .int() on integral values"
        )
    if coordinates.dim() != 2 or coordinates.shape[1] != 4:
        hint = " (a missing batch column? use scene_kd.sparse.batched_coordinates)" if (
            coordinates.dim() == 2 and coordinates.shape[1] == 3) else ""
        raise ValueError(f"coordinates must have shape [N, 4] (batch, x, y, z), got {list(coordinates.shape)}{hint}")
    if coordinates.shape[0] == 0:
        return
    batch = coordinates[:, 0]
    if int(batch.min()) < 0 or int(batch.max()) > MAX_BATCH_INDEX:
        raise ValueError(f"batch indices must lie in [0, {MAX_BATCH_INDEX}], got [{int(batch.min())}, {int(batch.max())}]")
    spatial = coordinates[:, 1:]
    lo, hi = int(spatial.min()), int(spatial.max())
    if lo < -MAX_ABS_COORDINATE or hi > MAX_ABS_COORDINATE:
        raise ValueError(
            f"spatial coordinates must lie in [-{MAX_ABS_COORDINATE}, {MAX_ABS_COORDINATE}] voxels, got [{lo}, {hi}]")
    if tensor_stride > 1 and bool((spatial % tensor_stride != 0).any()):
        raise ValueError(f"coordinates of a tensor with stride {tensor_stride} must be multiples of {tensor_stride}")


def coordinate_keys(coordinates: torch.Tensor) -> torch.Tensor:
    """Pack `[N, 4]` integer coordinates into int64 keys `[N]` (batch most significant, z least)."""
    c = coordinates.long()
    key = c[:, 0]
    for axis in (1, 2, 3):
        key = key * SPATIAL_RANGE + (c[:, axis] + SPATIAL_BIAS)
    return key


def offset_key_delta(offsets: torch.Tensor) -> torch.Tensor:
    """Key difference `[K]` produced by adding spatial offsets `[K, 3]` (x, y, z) to a coordinate."""
    o = offsets.long()
    return (o[:, 0] * SPATIAL_RANGE + o[:, 1]) * SPATIAL_RANGE + o[:, 2]


def sort_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted keys, order) of int64 keys `[N]`. On CPU through numpy: torch's CPU sort of int64 was
    measured 20x slower than `np.argsort` (195 ms against 10 ms for 400k keys)."""
    if keys.device.type == "cpu":
        order = torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
        return keys[order], order
    return torch.sort(keys, stable=True)


def unique_keys(keys: torch.Tensor, return_inverse: bool = False):
    """Sorted unique keys (and each key's row among them), numpy on CPU as in `sort_keys`."""
    if keys.device.type == "cpu":
        if return_inverse:
            unique, inverse = np.unique(keys.numpy(), return_inverse=True)
            return torch.from_numpy(unique), torch.from_numpy(inverse.reshape(-1)).long()
        return torch.from_numpy(np.unique(keys.numpy()))
    return torch.unique(keys, return_inverse=return_inverse)


def downsample_coordinates(coordinates: torch.Tensor, new_stride: int) -> torch.Tensor:
    """Unique coordinates at `new_stride`: `floor(c / new_stride) * new_stride` per spatial axis.

    Returns int32 `[M, 4]` sorted by key (batch, then x, y, z), MinkowskiEngine's stride rule.
    """
    c = coordinates.long().clone()
    c[:, 1:] = torch.div(c[:, 1:], new_stride, rounding_mode="floor") * new_stride
    return keys_to_coordinates(unique_keys(coordinate_keys(c)))


def keys_to_coordinates(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of `coordinate_keys`: int64 keys `[N]` to int32 coordinates `[N, 4]`."""
    out = torch.empty(keys.shape[0], 4, dtype=torch.long, device=keys.device)
    rest = keys
    for axis in (3, 2, 1):
        out[:, axis] = rest % SPATIAL_RANGE - SPATIAL_BIAS
        rest = torch.div(rest, SPATIAL_RANGE, rounding_mode="floor")
    out[:, 0] = rest
    return out.int()


def kernel_offsets(kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Kernel offsets `[K, 3]` (x, y, z) in MinkowskiEngine's order: x fastest, then y, then z.

    Odd sizes are centred (`-k//2 .. k//2`); even sizes start at 0 (`0 .. k-1`), as in
    MinkowskiEngine, so kernel size 3 gives `k = (dx+1) + 3 (dy+1) + 9 (dz+1)` and kernel size 2 gives
    `k = dx + 2 dy + 4 dz`.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    start = -(kernel_size // 2) if kernel_size % 2 == 1 else 0
    r = torch.arange(start, start + kernel_size, device=device)
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), z.reshape(-1)], dim=1)
