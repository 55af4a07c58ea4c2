"""Sparse tensors and convolutions: a pure-PyTorch engine with MinkowskiEngine's semantics, and
MinkowskiEngine and spconv backends behind the same interface (`get_backend`; "auto" picks by device)."""

from scene_kd.sparse.backend import BACKENDS, get_backend
from scene_kd.sparse.coords import kernel_offsets
from scene_kd.sparse.interface import SparseBackend
from scene_kd.sparse.kernel_map import CoordinateManager, CoordinateSet, KernelMap
from scene_kd.sparse.minkowski import minkowski_available
from scene_kd.sparse.modules import (
    SparseBatchNorm,
    SparseConvolution,
    SparseConvolutionTranspose,
    SparseGlobalAvgPooling,
    SparseGlobalMaxPooling,
    SparseLinear,
    SparseReLU,
)
from scene_kd.sparse.quantize import batched_coordinates, sparse_quantize
from scene_kd.sparse.spconv_backend import SpconvTensor, auto_backend_name, spconv_available
from scene_kd.sparse.tensor import SparseTensor, cat

__all__ = [
    "BACKENDS", "CoordinateManager", "CoordinateSet", "KernelMap", "SparseBackend", "SparseBatchNorm",
    "SparseConvolution", "SparseConvolutionTranspose", "SparseGlobalAvgPooling", "SparseGlobalMaxPooling",
    "SparseLinear", "SparseReLU", "SparseTensor", "SpconvTensor", "auto_backend_name", "batched_coordinates", "cat",
    "get_backend", "kernel_offsets", "minkowski_available", "sparse_quantize", "spconv_available",
]
