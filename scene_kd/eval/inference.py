"""Whole-scene inference, in overlapping blocks when a scene has more voxels than fit at once."""

from __future__ import annotations

import torch
from torch import nn

from scene_kd.sparse.backend import SparseBackend
from scene_kd.sparse.quantize import batched_coordinates


def _blocks(coords: torch.Tensor, index: torch.Tensor, limit: int, margin: int):
    """Yield (core rows, rows with context) covering `index` so that each context set has <= limit
    rows (where splitting horizontally can achieve it): recursive median splits along x or y."""
    lo = coords[index, :2].amin(0)
    hi = coords[index, :2].amax(0)
    context = index_in_box(coords, lo - margin, hi + margin)
    if context.numel() <= limit or index.numel() <= 1:
        yield index, context
        return
    axis = int(torch.argmax(hi - lo))
    values = coords[index, axis]
    cut = values.median()
    left, right = index[values <= cut], index[values > cut]
    if left.numel() == 0 or right.numel() == 0:  # cannot split further: run it whole
        yield index, context
        return
    yield from _blocks(coords, left, limit, margin)
    yield from _blocks(coords, right, limit, margin)


def index_in_box(coords: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    inside = ((coords[:, :2] >= lo) & (coords[:, :2] <= hi)).all(1)
    return inside.nonzero().flatten()


@torch.no_grad()
def predict_scene(model: nn.Module, backend: SparseBackend, coords: torch.Tensor, feats: torch.Tensor,
                  device: torch.device, chunk_voxels: int = 400_000, margin_voxels: int = 50) -> torch.Tensor:
    """Logits [V, K] (on the CPU) of one scene's voxels. coords int32 [V, 3], feats [V, C].

    Scenes with more than `chunk_voxels` voxels run in horizontal blocks, each with `margin_voxels`
    of surrounding context whose predictions are discarded; coordinates stay absolute, so every block
    sees the same voxel grid (and strides) as the whole scene would.
    """
    coords = torch.as_tensor(coords)
    feats = torch.as_tensor(feats)
    out = None
    for core, context in _blocks(coords, torch.arange(coords.shape[0]), chunk_voxels, margin_voxels):
        x = backend.sparse_tensor(feats[context].to(device), batched_coordinates([coords[context]]).to(device))
        logits = model(x)
        # Rows of the output follow the input's (stride-1 output keeps the coordinates), but match by
        # coordinates to be safe with engines that reorder.
        rows = _match_rows(logits.C[:, 1:].cpu(), coords[context])
        values = logits.F.float().cpu()[rows]
        if out is None:
            out = torch.empty(coords.shape[0], values.shape[1])
        position = torch.searchsorted(context, core)
        out[core] = values[position]
    return out if out is not None else torch.zeros(0, 0)


def _match_rows(output_coords: torch.Tensor, input_coords: torch.Tensor) -> torch.Tensor:
    """Row of `output_coords` holding each row of `input_coords` (same sets)."""
    if torch.equal(output_coords.int(), input_coords.int()):
        return torch.arange(input_coords.shape[0])
    def key(c):
        c = c.long() + (1 << 20)
        return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]
    out_keys = key(output_coords)
    order = torch.argsort(out_keys)
    return order[torch.searchsorted(out_keys[order], key(input_coords))]
