"""The sparse tensor of the pure-PyTorch backend, with MinkowskiEngine's attribute names."""

from __future__ import annotations

import torch

from scene_kd.sparse.kernel_map import CoordinateManager, CoordinateSet


class SparseTensor:
    """Features on unique integer coordinates at one tensor stride.

    features: [N, C]; coordinates: int32 [N, 4] (batch, x, y, z), multiples of `tensor_stride`.
    `F`, `C`, `tensor_stride` and `coordinate_manager` behave as in MinkowskiEngine. Tensors derived
    from one input share its coordinate manager, which caches coordinate sets and kernel maps.
    """

    def __init__(
        self,
        features: torch.Tensor,
        coordinates: torch.Tensor | None = None,
        tensor_stride: int = 1,
        *,
        coordinate_manager: CoordinateManager | None = None,
        coordinate_set: CoordinateSet | None = None,
    ) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must be a [N, C] tensor, got {shape}")
        if coordinate_set is None:
            if coordinates is None:
                raise ValueError("SparseTensor needs coordinates (or a coordinate_set)")
            if isinstance(coordinates, torch.Tensor) and coordinates.dim() >= 1 and coordinates.shape[0] != features.shape[0]:
                raise ValueError(
                    f"features and coordinates differ in length: {features.shape[0]} feature rows, "
                    f"{coordinates.shape[0]} coordinate rows")
            if isinstance(coordinates, torch.Tensor) and coordinates.device != features.device:
                raise ValueError(f"features are on {features.device} but coordinates on {coordinates.device}")
            coordinate_manager = coordinate_manager or CoordinateManager()
            coordinate_set = coordinate_manager.insert(coordinates, int(tensor_stride))
        elif coordinate_manager is None:
            raise ValueError("a coordinate_set must come with its coordinate_manager")
        if len(coordinate_set) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows for {len(coordinate_set)} coordinates")
        self.features = features
        self.coordinate_set = coordinate_set
        self.coordinate_manager = coordinate_manager

    # MinkowskiEngine-style accessors -------------------------------------------------------------
    @property
    def F(self) -> torch.Tensor:  # noqa: N802 (MinkowskiEngine's name)
        return self.features

    @property
    def C(self) -> torch.Tensor:  # noqa: N802
        return self.coordinate_set.coordinates

    @property
    def coordinates(self) -> torch.Tensor:
        return self.coordinate_set.coordinates

    @property
    def stride(self) -> int:
        return self.coordinate_set.tensor_stride

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
        return f"SparseTensor(n={len(self)}, channels={self.features.shape[1]}, tensor_stride={self.stride})"

    # Derived tensors -----------------------------------------------------------------------------
    def replace_features(self, features: torch.Tensor) -> SparseTensor:
        """A tensor on the same coordinates with new features `[N, C']`."""
        return SparseTensor(features, coordinate_manager=self.coordinate_manager, coordinate_set=self.coordinate_set)

    def _check_same_coordinates(self, other: SparseTensor, op: str) -> None:
        if other.coordinate_set is not self.coordinate_set:
            raise ValueError(
                f"{op} needs tensors on the same coordinate set (same input and tensor stride); "
                f"got strides {self.stride} and {other.stride}"
                + ("" if other.coordinate_manager is self.coordinate_manager else " from different inputs"))

    def __add__(self, other: SparseTensor | torch.Tensor | float) -> SparseTensor:
        if isinstance(other, SparseTensor):
            self._check_same_coordinates(other, "addition")
            return self.replace_features(self.features + other.features)
        return self.replace_features(self.features + other)

    __iadd__ = __add__  # never in place on the features: autograd may still need them

    def __mul__(self, other: SparseTensor | torch.Tensor | float) -> SparseTensor:
        if isinstance(other, SparseTensor):
            self._check_same_coordinates(other, "multiplication")
            return self.replace_features(self.features * other.features)
        return self.replace_features(self.features * other)

    def features_at(self, inverse_map: torch.Tensor) -> torch.Tensor:
        """Features `[P, C]` of the original points, `inverse_map` `[P]` giving each point's row
        (the inverse map of `sparse_quantize`; MinkowskiEngine's `slice`)."""
        if inverse_map.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"inverse_map must be an integer tensor, got {inverse_map.dtype}")
        if inverse_map.numel() and (int(inverse_map.min()) < 0 or int(inverse_map.max()) >= len(self)):
            raise ValueError(f"inverse_map indexes rows outside [0, {len(self)})")
        return self.features[inverse_map.long()]

    def to(self, device: torch.device | str) -> SparseTensor:
        """The same tensor on another device (a new coordinate manager there)."""
        return SparseTensor(self.features.to(device), self.coordinates.to(device), self.stride)


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate features of tensors on the same coordinates along channels (skip connections)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    first = tensors[0]
    for t in tensors[1:]:
        first._check_same_coordinates(t, "cat")
    return first.replace_features(torch.cat([t.features for t in tensors], dim=1))
