"""The small interface a model is built from, so one model definition runs on any engine.

`get_backend(name)` gives the layer constructors, `cat` and the tensor constructor of:
- "torch" (default, always available): pure PyTorch, CPU and CUDA;
- "minkowski": MinkowskiEngine 0.5.4, where installed;
- "spconv": spconv 2.x (CUDA; its CPU build is a forward-only reference), `spconv_backend.py`;
- "auto": per input device, the fastest proven one: spconv on CUDA where a CUDA build of spconv
  imports (and matches every layer of the model), else torch.
Layers of all backends have the same parameter names and shapes, so a `state_dict` moves between them
unchanged (docs/sparse_backends.md).
"""

from __future__ import annotations

from collections.abc import Callable

from scene_kd.sparse import modules, tensor
from scene_kd.sparse.interface import SparseBackend
from scene_kd.sparse.minkowski import make_minkowski_backend
from scene_kd.sparse.spconv_backend import make_auto_backend, make_spconv_backend


def torch_backend() -> SparseBackend:
    """The pure-PyTorch engine (CPU and CUDA)."""
    return SparseBackend(
        name="torch",
        conv=modules.SparseConvolution,
        conv_transpose=modules.SparseConvolutionTranspose,
        batch_norm=lambda num_features, momentum=0.1: modules.SparseBatchNorm(num_features, momentum=momentum),
        relu=modules.SparseReLU,
        global_avg_pool=modules.SparseGlobalAvgPooling,
        global_max_pool=modules.SparseGlobalMaxPooling,
        cat=tensor.cat,
        sparse_tensor=lambda features, coordinates: tensor.SparseTensor(features, coordinates),
        conv_types=(modules.SparseConvolution, modules.SparseConvolutionTranspose),
        batch_norm_types=(modules.SparseBatchNorm,),
    )


def minkowski_backend() -> SparseBackend:
    """MinkowskiEngine 0.5.4 (install with tools/install_minkowski_engine.sh); imported only now."""
    return make_minkowski_backend()


def spconv_backend() -> SparseBackend:
    """spconv 2.x (pip install spconv-cu126, or spconv for the CPU reference); imported only now."""
    return make_spconv_backend()


def auto_backend() -> SparseBackend:
    """spconv on CUDA inputs where a CUDA build of spconv imports, the torch backend otherwise
    (`spconv_backend.auto_backend_name`); one backend object per model."""
    return make_auto_backend()


BACKENDS: dict[str, Callable[[], SparseBackend]] = {
    "torch": torch_backend,
    "minkowski": minkowski_backend,
    "spconv": spconv_backend,
    "auto": auto_backend,
}


def get_backend(name: str | SparseBackend = "torch") -> SparseBackend:
    """The backend called `name` ("torch", "minkowski", "spconv" or "auto"); a SparseBackend passes
    through. Each call makes a new backend object ("auto" keeps per-model state in it)."""
    if isinstance(name, SparseBackend):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown sparse backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]()
