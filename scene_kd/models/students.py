"""One factory per student variant and the dict from name to factory.

MinkUNet widths are those of MinkowskiEngine's examples/minkunet.py (which defines 14A-D, 18A/B/D and
34A-C; there is no 18C or 34D there); Res16UNet34C is the student of SpatioTemporalSegmentation,
PointContrast and CSC (first kernel 3, batch-norm momentum 0.02 as in their configs). SpUNet-v1m1 is
Pointcept's sparse U-Net with Pointcept's module names (`scene_kd/models/spunet.py`, docs/pointcept.md).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from scene_kd.models.spunet import spunet_v1m1
from scene_kd.models.unet import SparseUNet

LAYERS_14 = (1, 1, 1, 1, 1, 1, 1, 1)
LAYERS_18 = (2, 2, 2, 2, 2, 2, 2, 2)
LAYERS_34 = (2, 3, 4, 6, 2, 2, 2, 2)

PLANES_A = (32, 64, 128, 256, 128, 128, 96, 96)
PLANES_B = (32, 64, 128, 256, 128, 128, 128, 128)
PLANES_C = (32, 64, 128, 256, 192, 192, 128, 128)
PLANES_D = (32, 64, 128, 256, 384, 384, 384, 384)
PLANES_34A = (32, 64, 128, 256, 256, 128, 64, 64)
PLANES_34B = (32, 64, 128, 256, 256, 128, 64, 32)
PLANES_34C = (32, 64, 128, 256, 256, 128, 96, 96)


def _minkunet(layers, planes, **kwargs) -> SparseUNet:
    kwargs.setdefault("conv0_kernel_size", 5)
    return SparseUNet(layers=layers, planes=planes, **kwargs)


def _res16unet(layers, planes, **kwargs) -> SparseUNet:
    kwargs.setdefault("conv0_kernel_size", 3)
    kwargs.setdefault("bn_momentum", 0.02)
    return SparseUNet(layers=layers, planes=planes, **kwargs)


def minkunet14a(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_14, PLANES_A, **kwargs)


def minkunet14b(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_14, PLANES_B, **kwargs)


def minkunet14c(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_14, PLANES_C, **kwargs)


def minkunet14d(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_14, PLANES_D, **kwargs)


def minkunet18a(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_18, PLANES_A, **kwargs)


def minkunet18b(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_18, PLANES_B, **kwargs)


def minkunet18d(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_18, PLANES_D, **kwargs)


def minkunet34a(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_34, PLANES_34A, **kwargs)


def minkunet34b(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_34, PLANES_34B, **kwargs)


def minkunet34c(**kwargs) -> SparseUNet:
    return _minkunet(LAYERS_34, PLANES_34C, **kwargs)


def res16unet34c(**kwargs) -> SparseUNet:
    return _res16unet(LAYERS_34, PLANES_34C, **kwargs)


STUDENTS: dict[str, Callable[..., nn.Module]] = {
    "MinkUNet14A": minkunet14a,
    "MinkUNet14B": minkunet14b,
    "MinkUNet14C": minkunet14c,
    "MinkUNet14D": minkunet14d,
    "MinkUNet18A": minkunet18a,
    "MinkUNet18B": minkunet18b,
    "MinkUNet18D": minkunet18d,
    "MinkUNet34A": minkunet34a,
    "MinkUNet34B": minkunet34b,
    "MinkUNet34C": minkunet34c,
    "Res16UNet34C": res16unet34c,
    "SpUNet-v1m1": spunet_v1m1,
}


def build_student(name: str, **kwargs) -> nn.Module:
    """The student called `name` (a key of STUDENTS), e.g. `build_student("MinkUNet18A", in_channels=3,
    out_channels=20, backend="torch")`: a `SparseUNet`, or for "SpUNet-v1m1" a `SpUNet`, with the same
    interface (forward, decoder_features, decoder_channels, decoder_modules, feature_channels, final)."""
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; choose one of {sorted(STUDENTS)}")
    return STUDENTS[name](**kwargs)
