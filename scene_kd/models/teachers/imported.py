"""The `import` teacher: any user module `package.module:factory` wrapped as a frozen teacher, so a lab's
own network needs no change to scene_kd (docs/teachers.md, "Adding a teacher")."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from scene_kd.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, freeze_teacher


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
