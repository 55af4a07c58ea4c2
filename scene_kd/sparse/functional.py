"""Sparse convolution as gather - matmul - scatter per kernel offset, and global pooling.

The autograd function keeps only the input features, the kernel and the kernel map for backward
(as MinkowskiEngine does), instead of one gathered copy of the input per offset.
"""

from __future__ import annotations

import torch

from scene_kd.sparse.kernel_map import KernelMap


def _scatter_add_unique(target: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """`target[rows] += values` for rows without repeats (true within one kernel offset: each output
    has at most one input there, and each input at most one output). Gather - add - copy is several
    times faster than `index_add_` on CPU."""
    target.index_copy_(0, rows, target.index_select(0, rows).add_(values))


def _offset_slices(kmap: KernelMap):
    start = 0
    for k, n in enumerate(kmap.counts):
        if n:
            yield k, kmap.in_rows[start:start + n], kmap.out_rows[start:start + n]
        start += n


class _SparseConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap, num_out: int) -> torch.Tensor:
        ctx.kmap = kmap
        ctx.save_for_backward(features, kernel)
        out = features.new_zeros(num_out, kernel.shape[-1])
        for k, in_rows, out_rows in _offset_slices(kmap):
            if k == kmap.identity_offset:
                out += features @ kernel[k]
            else:
                _scatter_add_unique(out, out_rows, features.index_select(0, in_rows) @ kernel[k])
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        features, kernel = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        need_in, need_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_in = torch.zeros_like(features) if need_in else None
        grad_kernel = torch.zeros_like(kernel) if need_kernel else None
        for k, in_rows, out_rows in _offset_slices(kmap):
            if k == kmap.identity_offset:
                g, x = grad_out, features
            else:
                g = grad_out.index_select(0, out_rows)
                x = features.index_select(0, in_rows) if need_kernel else None
            if need_in:
                if k == kmap.identity_offset:
                    grad_in += g @ kernel[k].t()
                else:
                    _scatter_add_unique(grad_in, in_rows, g @ kernel[k].t())
            if need_kernel:
                grad_kernel[k] = x.t() @ g
        return grad_in, grad_kernel, None, None


def sparse_convolution(features: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap, num_out: int) -> torch.Tensor:
    """Output features `[num_out, C_out]` = sum over offsets k of `features[in_k] @ kernel[k]`
    scattered to `out_k`. features: [N_in, C_in]; kernel: [K, C_in, C_out]."""
    if kernel.dtype != features.dtype:
        kernel = kernel.to(features.dtype)
    return _SparseConvolution.apply(features, kernel, kmap, num_out)


def segment_ids(batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Present batch indices `[B']` (sorted) and each row's position among them `[N]`."""
    present, rows = torch.unique(batch_index.long(), return_inverse=True)
    return present, rows


def global_average(features: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean features `[B', C]` per present batch item, and those batch indices `[B']`."""
    present, rows = segment_ids(batch_index)
    total = features.new_zeros(present.shape[0], features.shape[1]).index_add_(0, rows, features)
    count = torch.bincount(rows, minlength=present.shape[0]).to(features.dtype).clamp_(min=1)
    return total / count[:, None], present


def global_max(features: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max features `[B', C]` per present batch item, and those batch indices `[B']`."""
    present, rows = segment_ids(batch_index)
    out = features.new_full((present.shape[0], features.shape[1]), float("-inf"))
    out = out.scatter_reduce(0, rows[:, None].expand_as(features), features, reduce="amax", include_self=True)
    return out, present
