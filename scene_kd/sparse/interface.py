"""`SparseBackend`: the constructors a model is built from, whichever engine provides them.

Its own module so that the engines (`backend.torch_backend`, `minkowski.make_minkowski_backend`)
and the code choosing between them (`backend.get_backend`) depend on it and not on each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class SparseBackend:
    """Constructors of one sparse-convolution engine.

    conv(in, out, kernel_size, stride=1, dilation=1, bias=False); conv_transpose(same);
    batch_norm(num_features, momentum=0.1); relu(); global_avg_pool(); global_max_pool();
    cat(*tensors); sparse_tensor(features [N, C], coordinates int32 [N, 4]).
    """

    name: str
    conv: Callable[..., nn.Module]
    conv_transpose: Callable[..., nn.Module]
    batch_norm: Callable[..., nn.Module]
    relu: Callable[[], nn.Module]
    global_avg_pool: Callable[[], nn.Module]
    global_max_pool: Callable[[], nn.Module]
    cat: Callable
    sparse_tensor: Callable
    conv_types: tuple[type, ...]
    batch_norm_types: tuple[type, ...]
