"""The small interface a model is built from, so one model definition runs on either engine.

`get_backend("torch")` (default, always available) or `get_backend("minkowski")` (MinkowskiEngine,
where installed) gives the layer constructors, `cat` and the tensor constructor. Layers of both
backends have the same parameter names and shapes, so a `state_dict` moves between them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from scene_kd.sparse import modules, tensor
from scene_kd.sparse.interface import SparseBackend
from scene_kd.sparse.minkowski import make_minkowski_backend


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


BACKENDS: dict[str, Callable[[], SparseBackend]] = {
    "torch": torch_backend,
    "minkowski": minkowski_backend,
}


def get_backend(name: str | SparseBackend = "torch") -> SparseBackend:
    """The backend called `name` ("torch" or "minkowski"); a SparseBackend passes through."""
    if isinstance(name, SparseBackend):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown sparse backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]()
