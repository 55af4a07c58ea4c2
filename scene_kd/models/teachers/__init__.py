"""Frozen 2D teachers by name: `build_teacher("resnet50" | "clip" | "dinov2" | "frame_encoder" | "import",
**kwargs)`.

Every teacher maps RGB images float32 [B, 3, H, W] in [0, 1] to features float32 [B, C, h, w] and has
`out_channels`, `stride` (input pixels per feature cell) and `embed_dim` (CLIP width when the features
are in CLIP space, else None). One module per teacher: `base` (the `Teacher` class and the weight
checks), `resnet`, `clip` (CLIP and SigLIP), `dinov2`, `frame_encoder`, `imported`. See docs/teachers.md.
"""

from __future__ import annotations

from collections.abc import Callable

from scene_kd.models.teachers.base import Teacher, freeze_teacher
from scene_kd.models.teachers.clip import build_clip_teacher
from scene_kd.models.teachers.dinov2 import build_dinov2_teacher
from scene_kd.models.teachers.frame_encoder import build_frame_encoder_teacher
from scene_kd.models.teachers.imported import build_import_teacher
from scene_kd.models.teachers.resnet import build_resnet_teacher

TEACHERS: dict[str, Callable[..., Teacher]] = {
    "resnet50": build_resnet_teacher,
    "clip": build_clip_teacher,
    "dinov2": build_dinov2_teacher,
    "frame_encoder": build_frame_encoder_teacher,
    "import": build_import_teacher,
}


def build_teacher(name: str, **kwargs) -> Teacher:
    """The frozen teacher `name` (a key of TEACHERS) built with `kwargs`."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return freeze_teacher(TEACHERS[name](**kwargs))


__all__ = ["TEACHERS", "Teacher", "build_teacher", "freeze_teacher"]
