"""Frozen 2D teachers by name: `build_teacher("resnet50" | "clip" | "import", **kwargs)`.

Every teacher maps RGB images float32 [B, 3, H, W] in [0, 1] to features float32 [B, C, h, w] and has
`out_channels`, `stride` (input pixels per feature cell) and `embed_dim` (CLIP width when the features
are in CLIP space, else None). See docs/teachers.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from scene_kd.models.teachers_base import IMAGENET_MEAN, IMAGENET_STD, Teacher, freeze_teacher
from scene_kd.models.teachers_clip import build_clip_teacher, clip_text_embeddings
from scene_kd.models.teachers_resnet import build_resnet_teacher


class ImportedTeacher(Teacher):
    """Wraps a user module that maps normalized images [B, 3, H, W] to [B, out_channels, h, w]."""

    def __init__(
        self,
        module: nn.Module,
        out_channels: int,
        stride: int,
        embed_dim: int | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        name: str = "imported module",
    ):
        super().__init__(
            mean if mean is not None else (0.0, 0.0, 0.0), std if std is not None else (1.0, 1.0, 1.0)
        )
        self.module = module
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.embed_dim = embed_dim
        self.name = name

    def extract(self, images: Tensor) -> Tensor:
        features = self.module(images)
        if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[1] != self.out_channels:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"import teacher {self.name}: expected features [B, {self.out_channels}, h, w] "
                f"(out_channels={self.out_channels}), got {shape}"
            )
        return features


def resolve_import_target(target: str) -> Callable[..., nn.Module]:
    """`"package.module:factory"` (factory may be a dotted attribute path) -> the callable."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"import teacher: target must look like 'package.module:factory', got {target!r}")
    try:
        found = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"import teacher: cannot import module {module_name!r} of target {target!r}: {error}"
        ) from error
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise AttributeError(
                f"import teacher: {target!r}: {module_name!r} has no attribute {attribute!r}"
            )
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"import teacher: {target!r} is not callable")
    return found


def build_import_teacher(
    target: str,
    out_channels: int,
    stride: int,
    factory_kwargs: dict | None = None,
    embed_dim: int | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    weights: str | None = None,
    allow_random: bool = False,
) -> ImportedTeacher:
    """Frozen teacher from any `nn.Module` made by `target(**factory_kwargs)` ("package.module:factory").

    The module receives images normalized with `mean`/`std` (ImageNet by default; None keeps [0, 1])
    and must return [B, out_channels, h, w]; the factory loads its own weights (`weights`, when not
    None, is passed to it as `weights=`; `allow_random` is accepted for a uniform call and unused).
    """
    factory_kwargs = dict(factory_kwargs or {})
    if weights is not None:
        factory_kwargs.setdefault("weights", weights)
    module = resolve_import_target(target)(**factory_kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"import teacher: {target!r} returned a {type(module).__name__}, not an nn.Module")
    return freeze_teacher(ImportedTeacher(module, out_channels, stride, embed_dim, mean, std, name=target))


TEACHERS: dict[str, Callable[..., Teacher]] = {
    "resnet50": build_resnet_teacher,
    "clip": build_clip_teacher,
    "import": build_import_teacher,
}


def build_teacher(name: str, **kwargs) -> Teacher:
    """The frozen teacher `name` (a key of TEACHERS) built with `kwargs`."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return freeze_teacher(TEACHERS[name](**kwargs))


__all__ = [
    "TEACHERS",
    "ImportedTeacher",
    "Teacher",
    "build_clip_teacher",
    "build_import_teacher",
    "build_resnet_teacher",
    "build_teacher",
    "clip_text_embeddings",
    "freeze_teacher",
]
