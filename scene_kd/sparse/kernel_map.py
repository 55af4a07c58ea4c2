"""Coordinate sets and kernel maps, cached per input like MinkowskiEngine's coordinate manager.

A kernel map lists, for every kernel offset `k`, the pairs `(input row, output row)` such that
`input coordinate = output coordinate + offset_k * tensor_stride * dilation`. It is built by sorting
the input keys once and running one `searchsorted` over all offsets: no Python loop over points. A
stride-1 odd kernel within one coordinate set searches only the offsets before the centre: offset
`K-1-k` is `-offset_k`, so its pairs are offset k's with input and output rows exchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scene_kd.sparse.coords import (
    coordinate_keys,
    downsample_coordinates,
    kernel_offsets,
    offset_key_delta,
    sort_keys,
    validate_coordinates,
)

_QUERY_BUDGET = 1 << 23  # keys searched at once when building a kernel map


@dataclass
class CoordinateSet:
    """Unique coordinates of one tensor stride.

    coordinates: int32 [N, 4] (batch, x, y, z), in row order of the features that live on them.
    sorted_keys: int64 [N] ascending; order: int64 [N] with `keys[order] == sorted_keys`.
    rows_in_key_order: whether `order` is `0 .. N-1` (the rows of quantized and strided coordinates
    are), so that a lookup's position is already the row.
    """

    coordinates: torch.Tensor
    tensor_stride: int
    sorted_keys: torch.Tensor = field(repr=False)
    order: torch.Tensor = field(repr=False)
    rows_in_key_order: bool = False

    @classmethod
    def from_coordinates(cls, coordinates: torch.Tensor, tensor_stride: int) -> CoordinateSet:
        validate_coordinates(coordinates, tensor_stride)
        keys = coordinate_keys(coordinates)
        sorted_keys, order = sort_keys(keys)
        if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            dup = int(order[1:][sorted_keys[1:] == sorted_keys[:-1]][0])
            raise ValueError(
                f"duplicate coordinates: row {dup} ({coordinates[dup].tolist()}) appears more than once; "
                "a sparse tensor needs unique coordinates (merge points with scene_kd.sparse.sparse_quantize)")
        in_key_order = bool((order == torch.arange(len(order), device=order.device)).all())
        return cls(coordinates.int(), tensor_stride, sorted_keys, order, in_key_order)

    def __len__(self) -> int:
        return self.coordinates.shape[0]

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Row index of each key `[...]` in this set, -1 where absent."""
        if len(self) == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=len(self) - 1)
        found = self.sorted_keys[pos] == keys
        return torch.where(found, pos if self.rows_in_key_order else self.order[pos], -1)


@dataclass
class KernelMap:
    """Pairs for a convolution, grouped by kernel offset.

    in_rows, out_rows: int64 [M], sorted by kernel index; counts: pairs per kernel offset (length K).
    identity_offset: index of an offset whose pairs are exactly (i, i) for every row (stride-1 odd
    kernels' centre), which the convolution computes with a plain matmul; None otherwise.
    """

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    counts: list[int]
    identity_offset: int | None = None

    def transposed(self) -> KernelMap:
        return KernelMap(self.out_rows, self.in_rows, self.counts, self.identity_offset)


class CoordinateManager:
    """Holds the coordinate set of every tensor stride and the kernel maps between them.

    One manager lives as long as one input (one forward pass); every tensor derived from that input
    shares it, so each kernel map is built once and reused by every layer that needs it.
    """

    def __init__(self) -> None:
        self.sets: dict[int, CoordinateSet] = {}
        self._kernel_maps: dict[tuple, KernelMap] = {}

    def insert(self, coordinates: torch.Tensor, tensor_stride: int) -> CoordinateSet:
        if tensor_stride in self.sets:
            raise ValueError(f"this coordinate manager already holds a coordinate set at stride {tensor_stride}")
        coordinate_set = CoordinateSet.from_coordinates(coordinates, tensor_stride)
        self.sets[tensor_stride] = coordinate_set
        return coordinate_set

    def strided(self, source: CoordinateSet, tensor_stride: int) -> CoordinateSet:
        """The set at `tensor_stride` (a multiple of the source's), made from `source` on first use."""
        if tensor_stride not in self.sets:
            coords = downsample_coordinates(source.coordinates, tensor_stride)
            self.sets[tensor_stride] = CoordinateSet.from_coordinates(coords, tensor_stride)
        return self.sets[tensor_stride]

    def kernel_map(self, fine: CoordinateSet, coarse: CoordinateSet, kernel_size: int, dilation: int) -> KernelMap:
        """Map of a convolution from `fine` (input) to `coarse` (output, same or larger stride).

        For output coordinate p and offset o_k, the input is `p + o_k * s * dilation`, where s is the
        input's tensor stride; the output set is `coarse`. A transposed convolution uses the same map
        with input and output exchanged.
        """
        key = (fine.tensor_stride, coarse.tensor_stride, kernel_size, dilation, id(fine), id(coarse))
        cached = self._kernel_maps.get(key)
        if cached is not None:
            return cached
        device = coarse.coordinates.device
        offsets = kernel_offsets(kernel_size, device) * (fine.tensor_stride * dilation)
        out_keys = coordinate_keys(coarse.coordinates)
        deltas = offset_key_delta(offsets)
        out_index = torch.arange(len(coarse), device=device)
        # A stride-1 odd kernel within one set is symmetric: offset K-1-k is -offset_k, and its pairs are
        # offset k's with input and output exchanged, so only the offsets before the centre are searched.
        symmetric = fine is coarse and kernel_size % 2 == 1
        searched = deltas[: deltas.shape[0] // 2] if symmetric else deltas
        # Offsets are processed in chunks so that a 5x5x5 kernel on a large scene stays within memory.
        chunk = max(1, _QUERY_BUDGET // max(1, len(coarse)))
        none = torch.zeros(0, dtype=torch.long, device=device)
        in_parts, out_parts, counts = [none], [none], []  # (a 1x1x1 symmetric kernel searches nothing)
        for start in range(0, searched.shape[0], chunk):
            in_rows = fine.lookup(out_keys[None, :] + searched[start:start + chunk, None])  # [k, N_out]
            hit = in_rows >= 0
            counts += hit.sum(dim=1).tolist()
            flat_hits = hit.view(-1).nonzero().squeeze(1)  # offset-major, output rows ascending
            in_parts.append(in_rows.view(-1)[flat_hits])
            out_parts.append(flat_hits % len(coarse))
        if not symmetric:
            kmap = KernelMap(torch.cat(in_parts), torch.cat(out_parts), counts, None)
        else:
            before_in, before_out = torch.cat(in_parts), torch.cat(out_parts)
            after_in = before_out.split(counts)[::-1]  # offset K-1-k: offset k's pairs, exchanged
            after_out = before_in.split(counts)[::-1]
            kmap = KernelMap(torch.cat([before_in, out_index, *after_in]),
                             torch.cat([before_out, out_index, *after_out]),
                             counts + [len(coarse)] + counts[::-1], len(counts))  # identity: the centre
        self._kernel_maps[key] = kmap
        return kmap
