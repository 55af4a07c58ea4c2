"""Initialise a network from a pretraining, segmentation, MinkowskiEngine or Pointcept SpUNet checkpoint
(`model.init`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from scene_kd.data.scenes import check_checkpoint_features
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.checkpoint_checks import check_checkpoint, checkpoint_kind, describe_checkpoint
from scene_kd.interop.pointcept import from_pointcept, pointcept_backbone_state

HEAD_PREFIX = "final."
_WRAPPER_PREFIXES = ("module.", "student.", "backbone.", "model.")


@dataclass
class InitReport:
    """What `load_backbone_weights` did: keys loaded, and those it could not use."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model (not the head), absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, absent from the model
    shape_mismatch: list[str] = field(default_factory=list)
    head_loaded: bool = False

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded", f"head {'loaded' if self.head_loaded else 'freshly initialised'}"]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("shape mismatch", self.shape_mismatch)):
            if keys:
                parts.append(f"{len(keys)} {name} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})")
        return "; ".join(parts)


def student_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The student's weights in a checkpoint: scene_kd pretraining (`student`), scene_kd finetuning or a
    MinkowskiEngine training script (`model` / `state_dict`), or a bare state_dict; a wrapper prefix
    shared by every key (`module.`, ...) is removed."""
    state = None
    for key in ("student", "state_dict", "model", "model_state"):
        if isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    if state is None:
        state = checkpoint
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("no state_dict of tensors found (looked for keys student, state_dict, model, model_state)")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                          source: str = "checkpoint") -> InitReport:
    """Copy `state` into `model`. The head (`final.*`) is loaded only where its shapes match (a
    MinkowskiEngine checkpoint of the same number of classes); otherwise it keeps its fresh weights.
    strict: every other weight of the model must be present with its shape, and nothing else may be
    in `state`; a ValueError names the keys otherwise."""
    own = model.state_dict()
    report = InitReport()
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif value.shape != own[key].shape:
            (report.shape_mismatch if not key.startswith(HEAD_PREFIX) else []).append(key)
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in usable and not k.startswith(HEAD_PREFIX)
                      and k not in report.shape_mismatch]
    head_keys = [k for k in own if k.startswith(HEAD_PREFIX)]
    report.head_loaded = bool(head_keys) and all(k in usable for k in head_keys)
    if not report.head_loaded:
        usable = {k: v for k, v in usable.items() if not k.startswith(HEAD_PREFIX)}
    report.loaded = sorted(usable)
    if strict and (report.missing or report.unexpected or report.shape_mismatch):
        raise ValueError(f"{source} does not fit the model: {report.summary()} (init_strict=false loads what fits)")
    model.load_state_dict(usable, strict=False)
    return report


POINTCEPT_STUDENT = "SpUNet-v1m1"  # the student whose weights a Pointcept SpUNet checkpoint holds


def pointcept_student_state(path: str | os.PathLike, checkpoint: dict,
                            student: str | None = None) -> tuple[dict[str, torch.Tensor], str] | None:
    """(the SpUNet-v1m1 weights in scene_kd's layout, a name for messages) of a Pointcept checkpoint
    (`state_dict` wrapper or bare; `module.` and `backbone.` prefixes; tensors outside `backbone.` left
    out), or None when `checkpoint` is not one. A student other than SpUNet-v1m1 is a ValueError."""
    found = pointcept_backbone_state(checkpoint)
    if found is None:
        return None
    state, left_out = found
    if student is not None and student != POINTCEPT_STUDENT:
        raise ValueError(f"{path}: a Pointcept {POINTCEPT_STUDENT} checkpoint, but model.student is "
                         f"{student}; set model.student={POINTCEPT_STUDENT} (MinkUNet and SpUNet are "
                         "different networks, docs/pointcept.md)")
    try:
        converted = from_pointcept(state)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    dropped = f", {left_out} tensors outside its backbone left out" if left_out else ""
    return converted, f"{path} (Pointcept {POINTCEPT_STUDENT}{dropped})"


def load_student_checkpoint(path: str | os.PathLike, student: str | None = None,
                            color_norm: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(the student's weights, a name for error messages) of the checkpoint at `path`, to initialise a
    network from (`model.init`): a pretraining or segmentation checkpoint of scene_kd, one of
    MinkowskiEngine, or a Pointcept SpUNet-v1m1 checkpoint (converted from spconv's layout). A
    detection checkpoint, or one of another student than `student` (when given), is a ValueError
    naming the file, what it holds and what was expected."""
    checkpoint = load_checkpoint(path)
    check_checkpoint(checkpoint, path, kinds=("pretraining", "segmentation", None), purpose="model.init",
                     advice="set model.student to the checkpoint's student, or use a checkpoint of model.student",
                     student_name=student)
    if color_norm is not None:  # a checkpoint trained on other colour values: one line naming both settings
        check_checkpoint_features(checkpoint, path, color_norm)
    pointcept = pointcept_student_state(path, checkpoint, student)
    if pointcept is not None:
        return pointcept
    try:
        state = student_state_dict(checkpoint)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    source = str(path) if checkpoint_kind(checkpoint) is None else f"{path} ({describe_checkpoint(checkpoint)})"
    return state, source


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                         student: str | None = None, color_norm: str | None = None) -> InitReport:
    """Load `path` (pretraining, segmentation, MinkowskiEngine or Pointcept SpUNet checkpoint) into
    `model`; see `load_backbone_weights`. student: the model's student name (`model.student`), checked
    against the checkpoint's before loading."""
    state, source = load_student_checkpoint(path, student, color_norm)
    return load_backbone_weights(model, state, strict=strict, source=source)
