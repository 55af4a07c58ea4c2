"""The spconv 2.x backend (`backend="spconv"`) and the device-dependent choice (`backend="auto"`).

The layers are the torch backend's (same parameters: `kernel` `[volume, in, out]` or `[in, out]`,
`bias` `[1, out]`, a batch norm's `.bn`), so state_dicts and checkpoints are unchanged; only the
convolutions run on spconv, which gets its weight `[out, k, k, k, in]` at each call from the stored
kernel (`scene_kd.interop.spconv_layout`, applied through an index map so that autograd reaches the
kernel). spconv imports only when a layer or tensor needs it.

spconv computes on non-negative voxel indices per stride. A tensor here keeps spconv's indices
`(b, (c - origin) / s)` at tensor stride `s`, with `origin` per axis a multiple of ORIGIN_ALIGN at or
below the smallest coordinate, so that spconv's kernel-2 stride-2 output index `floor(i / 2)` is
MinkowskiEngine's output coordinate `floor(c / 2s) * 2s`. What runs on spconv, with MinkowskiEngine's
semantics exactly (tests/test_spconv_backend.py):
- stride-1 convolution, odd kernel, any dilation: `SubMConv3d` (same coordinates, same row order);
  a 1x1x1 kernel is the matrix product `features @ kernel`, as spconv itself computes it;
- kernel-2 stride-2 convolution: `SparseConv3d` (output at `floor(c / 2s) * 2s`, in spconv's row order);
- kernel-2 stride-2 transposed convolution back onto the stride an earlier kernel-2 stride-2
  convolution of the same input came from: `SparseInverseConv3d` with that convolution's indice_key
  (the encoder's coordinates, in their row order).
Every other convolution (an even kernel at stride 1, an odd or size-1 kernel with stride 2, other
strides, other transposed convolutions) has no exact spconv counterpart: `backend="spconv"` refuses it
with a ValueError when the layer is built, and `backend="auto"` keeps such a model on the torch backend.

spconv's CPU build is a reference, not a training path: its forward is correct only with one torch
thread and it has no backward, so on CPU a call with more threads, or one that needs gradients, is a
RuntimeError. Under CUDA autocast spconv computes in float16 (it has no bfloat16 kernels, whatever the
autocast dtype); each convolution's output takes its input's dtype, as the torch backend's does.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

import torch

from scene_kd.interop.spconv_layout import kernel_to_spconv
from scene_kd.sparse import modules
from scene_kd.sparse import tensor as torch_tensor
from scene_kd.sparse.interface import SparseBackend
from scene_kd.sparse.kernel_map import CoordinateSet
from scene_kd.sparse.tensor import SparseTensor

# spconv's origin per axis is a multiple of this, so kernel-2 stride-2 convolutions keep
# MinkowskiEngine's floor(c / 2s) * 2s up to an output stride of ORIGIN_ALIGN.
ORIGIN_ALIGN = 64
SPCONV_INSTALL_HINT = ("pip install spconv-cu126 (drivers of CUDA 12.6 and newer; spconv-cu118/120/121/124 "
                       "for older ones), or the CPU reference build: pip install spconv")


# ---------------------------------------------------------------------------------- availability


def spconv_available() -> bool:
    """True when spconv is installed (without importing it)."""
    return importlib.util.find_spec("spconv") is not None


def spconv_cuda_available() -> bool:
    """True when an spconv build with CUDA kernels imports here and torch sees a GPU."""
    if not (spconv_available() and torch.cuda.is_available()):
        return False
    try:
        from spconv.cppconstants import CPU_ONLY_BUILD
    except ImportError:
        return False
    return not CPU_ONLY_BUILD


def import_spconv():
    """`spconv.pytorch`, or an ImportError saying how to install it."""
    try:
        import spconv.pytorch as spconv
    except ImportError as err:
        raise ImportError(
            f"the 'spconv' sparse backend needs spconv 2.x: {SPCONV_INSTALL_HINT}. ({err})") from err
    return spconv


def auto_backend_name(device: torch.device | str) -> str:
    """The backend `backend="auto"` runs on `device`: "spconv" on CUDA where a CUDA build of spconv
    imports, else "torch" (on CPU always: the torch backend is the fastest proven one there)."""
    device = torch.device(device)
    return "spconv" if device.type == "cuda" and spconv_cuda_available() else "torch"


def unsupported_reason(kernel_size: int, stride: int, dilation: int, transpose: bool) -> str | None:
    """Why spconv cannot compute this convolution with MinkowskiEngine's semantics; None if it can."""
    if transpose:
        if kernel_size == 2 and stride == 2:
            return None
        return (f"a transposed convolution with kernel_size={kernel_size}, stride={stride} (only kernel 2 "
                "stride 2, spconv's inverse of the kernel-2 stride-2 convolution, matches)")
    if stride == 1:
        if kernel_size % 2 == 1:
            return None
        return (f"an even kernel (kernel_size={kernel_size}) at stride 1 (MinkowskiEngine gathers offsets "
                "0..k-1, spconv's submanifold convolution centres them)")
    if kernel_size == 2 and stride == 2:
        return None
    return (f"kernel_size={kernel_size} with stride={stride} (only kernel 2 stride 2 places outputs at "
            "MinkowskiEngine's floor(c / 2s) * 2s)")


# --------------------------------------------------------------------------------------- tensors


@dataclass(eq=False)
class _Level:
    """spconv's voxels at one tensor stride. indices: int32 [N, 4] (batch, (c - origin) / stride)."""

    indices: torch.Tensor
    spatial_shape: list[int]
    stride: int
    coordinates: torch.Tensor | None = None  # int32 [N, 4] (batch, x, y, z), made on first use


@dataclass(eq=False)
class _SpconvInput:
    """What every tensor derived from one input shares: the index origin, the batch size, spconv's
    indice pairs by key, the voxels of each stride and the key of the convolution that made it."""

    origin: tuple[int, int, int]
    batch_size: int
    indice_dict: dict = field(default_factory=dict)
    levels: dict[int, _Level] = field(default_factory=dict)
    downsample_keys: dict[int, str] = field(default_factory=dict)


class SpconvTensor:
    """Features on the voxels of one tensor stride of an spconv input, with the torch backend's
    accessors (`F`, `C`, `features`, `coordinates`, `stride`, `tensor_stride`, `replace_features`,
    `features_at`, `+`, `*`, `to`). `C` is in MinkowskiEngine's convention: (batch, x, y, z),
    multiples of the tensor stride; at stride 1 exactly the coordinates given, in their order."""

    def __init__(self, features: torch.Tensor, level: _Level, source: _SpconvInput) -> None:
        if features.dim() != 2 or features.shape[0] != level.indices.shape[0]:
            raise ValueError(f"{list(features.shape)} features for {level.indices.shape[0]} voxels")
        self.features, self.level, self.source = features, level, source

    @property
    def F(self) -> torch.Tensor:  # noqa: N802 (MinkowskiEngine's name)
        return self.features

    @property
    def coordinates(self) -> torch.Tensor:
        level = self.level
        if level.coordinates is None:
            scale = torch.tensor([1, level.stride, level.stride, level.stride], device=level.indices.device)
            shift = torch.tensor([0, *self.source.origin], device=level.indices.device)
            level.coordinates = (level.indices.long() * scale + shift).int()
        return level.coordinates

    C = coordinates  # MinkowskiEngine's name

    @property
    def stride(self) -> int:
        return self.level.stride

    @property
    def tensor_stride(self) -> list[int]:
        return [self.stride] * 3

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    def __len__(self) -> int:
        return self.features.shape[0]

    def __repr__(self) -> str:
        return f"SpconvTensor(n={len(self)}, channels={self.features.shape[1]}, tensor_stride={self.stride})"

    def replace_features(self, features: torch.Tensor) -> SpconvTensor:
        """A tensor on the same voxels with new features `[N, C']`."""
        return SpconvTensor(features, self.level, self.source)

    def check_same_voxels(self, other, op: str) -> None:
        if not isinstance(other, SpconvTensor) or other.level is not self.level:
            raise ValueError(f"{op} needs tensors on the same voxels (same input and tensor stride); got "
                             f"{self!r} and {other!r}")

    def __add__(self, other) -> SpconvTensor:
        if isinstance(other, (SpconvTensor, SparseTensor)):
            self.check_same_voxels(other, "addition")
            other = other.features
        return self.replace_features(self.features + other)

    __iadd__ = __add__  # never in place on the features: autograd may still need them

    def __mul__(self, other) -> SpconvTensor:
        if isinstance(other, (SpconvTensor, SparseTensor)):
            self.check_same_voxels(other, "multiplication")
            other = other.features
        return self.replace_features(self.features * other)

    def features_at(self, inverse_map: torch.Tensor) -> torch.Tensor:
        """Features `[P, C]` of the original points (`inverse_map` `[P]`: each point's row)."""
        if inverse_map.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"inverse_map must be an integer tensor, got {inverse_map.dtype}")
        if inverse_map.numel() and (int(inverse_map.min()) < 0 or int(inverse_map.max()) >= len(self)):
            raise ValueError(f"inverse_map indexes rows outside [0, {len(self)})")
        return self.features[inverse_map.long()]

    def to(self, device: torch.device | str) -> SpconvTensor:
        """The same tensor on another device (a new input there, at stride 1 only)."""
        if self.stride != 1:
            raise ValueError(f"only a stride-1 tensor can move devices, this one has stride {self.stride}")
        return spconv_sparse_tensor(self.features.to(device), self.coordinates.to(device))

    def spconv_input(self):
        """This tensor as spconv's `SparseConvTensor`, sharing the input's indice pairs."""
        spconv = import_spconv()
        return spconv.SparseConvTensor(self.features, self.level.indices, self.level.spatial_shape,
                                       self.source.batch_size, indice_dict=self.source.indice_dict)


def spconv_sparse_tensor(features: torch.Tensor, coordinates: torch.Tensor) -> SpconvTensor:
    """The spconv backend's tensor: features `[N, C]` on int coordinates `[N, 4]` (batch, x, y, z),
    checked as the torch backend checks them (ValueError naming the problem)."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a [N, C] tensor, got {shape}")
    rows = coordinates.shape[0] if isinstance(coordinates, torch.Tensor) and coordinates.dim() >= 1 else None
    if rows is not None and rows != features.shape[0]:
        raise ValueError(f"features and coordinates differ in length: {features.shape[0]} feature rows, "
                         f"{coordinates.shape[0]} coordinate rows")
    if isinstance(coordinates, torch.Tensor) and coordinates.device != features.device:
        raise ValueError(f"features are on {features.device} but coordinates on {coordinates.device}")
    CoordinateSet.from_coordinates(coordinates, 1)  # dtype, shape, range, duplicates
    if coordinates.shape[0] == 0:
        raise ValueError("the spconv backend needs at least one voxel")
    if features.is_cuda and not spconv_cuda_available():
        raise RuntimeError(f"features are on {features.device} but spconv here has no CUDA kernels: "
                           f"{SPCONV_INSTALL_HINT.split(',')[0]}")
    coords = coordinates.int()
    lo_hi = torch.cat([coords[:, 1:].min(0).values, coords[:, 1:].max(0).values, coords[:, 0].max()[None]])
    *lo, hx, hy, hz, last_batch = lo_hi.tolist()
    origin = tuple(math.floor(v / ORIGIN_ALIGN) * ORIGIN_ALIGN for v in lo)
    shape = [math.ceil((h - o + 1) / ORIGIN_ALIGN) * ORIGIN_ALIGN
             for h, o in zip((hx, hy, hz), origin, strict=True)]
    indices = (coords - torch.tensor([0, *origin], dtype=torch.int32, device=coords.device)).contiguous()
    source = _SpconvInput(origin, int(last_batch) + 1)
    level = source.levels[1] = _Level(indices, shape, 1, coordinates=coords)
    return SpconvTensor(features, level, source)


def spconv_cat(*tensors):
    """Concatenate features of tensors on the same voxels along channels (skip connections)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    if isinstance(tensors[0], SparseTensor):
        return torch_tensor.cat(*tensors)
    for t in tensors[1:]:
        tensors[0].check_same_voxels(t, "cat")
    return tensors[0].replace_features(torch.cat([t.features for t in tensors], dim=1))


# ---------------------------------------------------------------------------------------- layers

_WEIGHT_INDEX: dict[tuple, torch.Tensor] = {}


def spconv_weight(kernel: torch.Tensor) -> torch.Tensor:
    """spconv's weight `[out, k, k, k, in]` of a scene_kd kernel `[k^3, in, out]`, differentiable: the
    kernel gathered through `kernel_to_spconv` applied to the kernel's element positions."""
    key = (tuple(kernel.shape), kernel.device)
    index = _WEIGHT_INDEX.get(key)
    if index is None:
        positions = torch.arange(kernel.numel(), device=kernel.device).reshape(kernel.shape)
        index = _WEIGHT_INDEX[key] = kernel_to_spconv(positions)
    return torch.take(kernel, index)


def _check_cpu_call(features: torch.Tensor, kernel: torch.Tensor) -> None:
    if features.device.type != "cpu":
        return
    if torch.get_num_threads() != 1:
        raise RuntimeError(f"spconv's CPU forward is correct only with one torch thread, and "
                           f"{torch.get_num_threads()} are set: call torch.set_num_threads(1), or use "
                           "backend='torch' (or 'auto') on CPU")
    if torch.is_grad_enabled() and (features.requires_grad or kernel.requires_grad):
        raise RuntimeError("spconv has no CPU backward: run the spconv backend on CPU under torch.no_grad() "
                           "(or with requires_grad off), or use backend='torch' (or 'auto') on CPU")


class _SpconvConvolutionMixin:
    """The spconv path of a convolution that keeps the torch backend's parameters. A scene_kd
    SparseTensor input takes the torch backend's path (`backend="auto"` on CPU)."""

    def _spconv_layer(self, device: torch.device):
        """spconv's layer of this convolution, without a weight of its own; made on first use."""
        from spconv.core import ConvAlgo

        layer = self.__dict__.get("_spconv")
        if layer is None:
            spconv = import_spconv()
            k, d, cin, cout = self.kernel_size, self.dilation, self.in_channels, self.out_channels
            if self.is_transpose:
                layer = spconv.SparseInverseConv3d(cin, cout, k, indice_key="unset", bias=False)
            elif self.stride == 1:
                layer = spconv.SubMConv3d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=False)
            else:
                layer = spconv.SparseConv3d(cin, cout, k, stride=self.stride, bias=False)
            layer.weight = None  # the weight comes from self.kernel at each call
            self.__dict__["_spconv"] = layer  # not a submodule: no parameters, not in the state_dict
            self.__dict__["_spconv_algo"] = layer.algo  # spconv's choice for CUDA
        # spconv's CPU code is its native algorithm, also in a CUDA build
        layer.algo = ConvAlgo.Native if device.type == "cpu" else self.__dict__["_spconv_algo"]
        return layer

    def _output_level(self, x: SpconvTensor) -> tuple[str, _Level | None]:
        """(indice_key, output level or None when the convolution makes it) of this call."""
        source, s = x.source, x.stride
        if self.is_transpose:
            if source.levels.get(s) is not x.level or s not in source.downsample_keys:
                raise ValueError(f"a transposed convolution from stride {s} needs the kernel-2 stride-2 "
                                 f"convolution that made stride {s} from stride {s // 2} of the same input")
            return source.downsample_keys[s], source.levels[s // 2]
        if self.stride == 1:
            return f"subm_k{self.kernel_size}_d{self.dilation}_s{s}", x.level
        out = s * self.stride
        if any(o % out for o in source.origin):
            raise ValueError(f"the spconv backend places stride-{out} outputs as MinkowskiEngine does only "
                             f"up to stride {ORIGIN_ALIGN}")
        if out in source.levels:
            raise ValueError(f"the spconv backend downsamples stride {s} once per input; stride {out} exists")
        return f"down_s{s}", None

    def _spconv_forward(self, x: SpconvTensor) -> SpconvTensor:
        reason = unsupported_reason(self.kernel_size, self.stride, self.dilation, self.is_transpose)
        if reason:
            raise ValueError(f"the spconv backend cannot compute {reason}; use backend='torch'")
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, "
                             f"got {x.features.shape[1]}")
        _check_cpu_call(x.features, self.kernel)
        if self.kernel.dim() == 2:  # 1x1x1, stride 1: spconv's conv1x1 is this matrix product too
            features, level = x.features @ self.kernel.to(x.dtype), x.level
        else:
            key, level = self._output_level(x)
            layer = self._spconv_layer(x.device)
            layer.indice_key = key
            out = layer._conv_forward(torch.is_grad_enabled(), x.spconv_input(),
                                      spconv_weight(self.kernel).to(x.dtype), None)
            x.source.indice_dict = out.indice_dict
            features = out.features
            if level is None:
                level = x.source.levels[x.stride * self.stride] = _Level(out.indices, list(out.spatial_shape),
                                                                          x.stride * self.stride)
                x.source.downsample_keys[level.stride] = key
        # spconv computes in float16 under autocast; the torch backend's output keeps the input's dtype
        features = features.to(x.dtype)
        if self.bias is not None:
            features = features + self.bias.to(features.dtype)
        return SpconvTensor(features, level, x.source)


class SpconvConvolution(_SpconvConvolutionMixin, modules.SparseConvolution):
    """MinkowskiConvolution on spconv (the torch backend's `SparseConvolution` parameters)."""

    def forward(self, x):
        return super().forward(x) if isinstance(x, SparseTensor) else self._spconv_forward(x)


class SpconvConvolutionTranspose(_SpconvConvolutionMixin, modules.SparseConvolutionTranspose):
    """MinkowskiConvolutionTranspose on spconv: kernel 2, stride 2, back onto the encoder's voxels."""

    def forward(self, x):
        return super().forward(x) if isinstance(x, SparseTensor) else self._spconv_forward(x)


def _pool(module, x):
    pooled, present = module.reduce(x.features, x.level.indices[:, 0])
    coords = torch.zeros(present.shape[0], 4, dtype=torch.int32, device=x.device)
    coords[:, 0] = present.int()
    return spconv_sparse_tensor(pooled, coords)


class SpconvGlobalAvgPooling(modules.SparseGlobalAvgPooling):
    """MinkowskiGlobalAvgPooling: one row per present batch item at (b, 0, 0, 0), sorted by b."""

    def forward(self, x):
        return super().forward(x) if isinstance(x, SparseTensor) else _pool(self, x)


class SpconvGlobalMaxPooling(modules.SparseGlobalMaxPooling):
    """MinkowskiGlobalMaxPooling: one row per present batch item at (b, 0, 0, 0), sorted by b."""

    def forward(self, x):
        return super().forward(x) if isinstance(x, SparseTensor) else _pool(self, x)


# -------------------------------------------------------------------------------------- backends


def _backend(name: str, conv, conv_transpose, sparse_tensor) -> SparseBackend:
    return SparseBackend(
        name=name,
        conv=conv,
        conv_transpose=conv_transpose,
        batch_norm=lambda num_features, momentum=0.1: modules.SparseBatchNorm(num_features,
                                                                              momentum=momentum),
        relu=modules.SparseReLU,
        global_avg_pool=SpconvGlobalAvgPooling,
        global_max_pool=SpconvGlobalMaxPooling,
        cat=spconv_cat,
        sparse_tensor=sparse_tensor,
        conv_types=(SpconvConvolution, SpconvConvolutionTranspose),
        batch_norm_types=(modules.SparseBatchNorm,),
    )


def _checked(cls, transpose: bool):
    """The layer constructor of `backend="spconv"`: a layer spconv cannot match is a ValueError now."""
    def make(in_channels, out_channels, kernel_size=3, stride=1, dilation=1, bias=False, dimension=3):
        reason = unsupported_reason(kernel_size, stride, dilation, transpose)
        if reason:
            raise ValueError(f"the spconv backend cannot compute {reason}; use backend='torch' "
                             "(docs/sparse_backends.md)")
        return cls(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension)
    return make


def make_spconv_backend() -> SparseBackend:
    """spconv 2.x for every layer (CUDA; on CPU a forward-only, one-thread reference)."""
    import_spconv()
    return _backend("spconv", _checked(SpconvConvolution, False), _checked(SpconvConvolutionTranspose, True),
                    spconv_sparse_tensor)


def make_auto_backend() -> SparseBackend:
    """The fastest proven engine for the input's device, chosen when the input tensor is made: spconv on
    CUDA (where a CUDA build imports and every convolution built by this backend is one spconv matches),
    else the torch backend. One backend object per model: it remembers that model's layers."""
    unmatched: list[str] = []

    def layer(cls, transpose: bool):
        def make(in_channels, out_channels, kernel_size=3, stride=1, dilation=1, bias=False, dimension=3):
            reason = unsupported_reason(kernel_size, stride, dilation, transpose)
            if reason:
                unmatched.append(reason)
            return cls(in_channels, out_channels, kernel_size, stride, dilation, bias, dimension)
        return make

    def sparse_tensor(features, coordinates):
        on_spconv = isinstance(features, torch.Tensor) and auto_backend_name(features.device) == "spconv"
        if on_spconv and not unmatched:
            return spconv_sparse_tensor(features, coordinates)
        return SparseTensor(features, coordinates)

    return _backend("auto", layer(SpconvConvolution, False), layer(SpconvConvolutionTranspose, True),
                    sparse_tensor)
