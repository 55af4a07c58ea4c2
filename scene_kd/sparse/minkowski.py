"""The MinkowskiEngine backend: the same constructors as the torch backend, built from ME's layers.

MinkowskiEngine is imported only when this backend is asked for; `minkowski_available()` tells
whether it can be. Its layers' parameters (`kernel`, `bias`, `bn.*`) are named and shaped as the
torch backend's, so models and checkpoints move between the two unchanged.
"""

from __future__ import annotations

import importlib.util

from scene_kd.sparse.interface import SparseBackend


def minkowski_available() -> bool:
    """True when MinkowskiEngine is installed (without importing it)."""
    return importlib.util.find_spec("MinkowskiEngine") is not None


def import_minkowski():
    """Import MinkowskiEngine, or raise ImportError saying how to install it."""
    try:
        import MinkowskiEngine as ME  # noqa: N814
    except ImportError as err:
        raise ImportError(
            "the 'minkowski' sparse backend needs MinkowskiEngine 0.5.4, which does not install from the "
            "registry on current PyTorch; build it with `bash tools/install_minkowski_engine.sh` "
            f"(docs/sparse_backends.md), or use backend='torch'. ({err})") from err
    return ME


def make_minkowski_backend() -> SparseBackend:
    ME = import_minkowski()  # noqa: N806

    def conv(in_channels, out_channels, kernel_size=3, stride=1, dilation=1, bias=False, dimension=3):
        return ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                       dilation=dilation, bias=bias, dimension=dimension)

    def conv_transpose(in_channels, out_channels, kernel_size=3, stride=1, dilation=1, bias=False, dimension=3):
        return ME.MinkowskiConvolutionTranspose(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                                dilation=dilation, bias=bias, dimension=dimension)

    def sparse_tensor(features, coordinates):
        return ME.SparseTensor(features, coordinates=coordinates)

    def cat(*tensors):
        if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
            tensors = tuple(tensors[0])
        return ME.cat(*tensors)

    return SparseBackend(
        name="minkowski",
        conv=conv,
        conv_transpose=conv_transpose,
        batch_norm=lambda num_features, momentum=0.1: ME.MinkowskiBatchNorm(num_features, momentum=momentum),
        relu=lambda: ME.MinkowskiReLU(),
        global_avg_pool=lambda: ME.MinkowskiGlobalAvgPooling(),
        global_max_pool=lambda: ME.MinkowskiGlobalMaxPooling(),
        cat=cat,
        sparse_tensor=sparse_tensor,
        conv_types=(ME.MinkowskiConvolution, ME.MinkowskiConvolutionTranspose),
        batch_norm_types=(ME.MinkowskiBatchNorm,),
    )
