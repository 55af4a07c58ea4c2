"""Export a student's weights for another codebase (tools/export_checkpoint.py).

`export_checkpoint(path, to, out)` reads the student of a scene_kd pretraining or segmentation
checkpoint (or a bare state_dict), checks it against the network it claims to be by loading it
strictly, and writes, atomically:
- `to="pointcept-spunet"`: `{"state_dict": {"backbone.<Pointcept name>": tensor}}` in spconv 2.x's
  layout, Pointcept's finetuning weight init (`weight=`), for a SpUNet-v1m1 student;
- `to="minkowski"`: `{"state_dict": ..., "arch": name}` in MinkowskiEngine's layout (scene_kd's own),
  for a MinkUNet / Res16UNet student.
MinkUNet and SpUNet are different functions, so each is refused the other's format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from scene_kd.atomic import atomic_path
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.checkpoint_checks import check_checkpoint, describe_checkpoint, load_weights
from scene_kd.finetune.init_weights import student_state_dict
from scene_kd.interop.minkowski_layout import MINKUNET_STEM_KERNEL, is_minkunet_state, minkowski_checkpoint
from scene_kd.interop.pointcept import SPUNET_STEM_KERNEL, is_spunet_state, pointcept_checkpoint
from scene_kd.models.spunet import SPUNET_NAME, SpUNet, spunet_kwargs_from_state
from scene_kd.models.students import STUDENTS, build_student

FORMATS = ("pointcept-spunet", "minkowski")

NOT_CONVERTIBLE = (
    "MinkUNet / Res16UNet and Pointcept's SpUNet-v1m1 are different functions (SpUNet's stride-2 "
    "convolutions change the width and its encoder blocks keep identity shortcuts, where MinkUNet's "
    "stride-2 convolutions keep it and a 1x1 shortcut widens), so no exact conversion exists")


def read_student(path: str | os.PathLike, checkpoint: Mapping | None = None,
                 ) -> tuple[dict[str, torch.Tensor], str | None, str]:
    """(the student's state_dict, its name or None, the checkpoint in words) of a scene_kd pretraining
    or segmentation checkpoint, a MinkowskiEngine-style `state_dict` file or a bare state_dict.
    checkpoint: the file's content when already loaded (else it is read from `path`)."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    check_checkpoint(checkpoint, path, kinds=("pretraining", "segmentation", None), purpose="export",
                     advice="export the pretraining checkpoint it was initialised from")
    try:
        state = student_state_dict(checkpoint)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    name = checkpoint.get("student_name")
    if name is None and is_spunet_state(state):
        name = SPUNET_NAME
    return state, name, describe_checkpoint(checkpoint)


def pad_input_channels(state: Mapping[str, torch.Tensor], stem_key: str,
                       in_channels: int) -> dict[str, torch.Tensor]:
    """`state` with the stem kernel `[volume, in, out]` given `in_channels - in` zero input channels
    after its own: the network computes the same on the first `in` channels whatever the others hold
    (e.g. normals appended to colours)."""
    kernel = state[stem_key]
    if in_channels < kernel.shape[1]:
        raise ValueError(f"--in-channels {in_channels} is fewer than the student's {kernel.shape[1]} "
                         "input channels")
    pad = kernel.new_zeros(kernel.shape[0], in_channels - kernel.shape[1], kernel.shape[2])
    return {**state, stem_key: torch.cat([kernel.detach(), pad], dim=1)}


def _checked_spunet(state: dict[str, torch.Tensor], name: str | None, path, what: str) -> None:
    if not is_spunet_state(state):
        student = "a MinkUNet / Res16UNet student" if is_minkunet_state(state) else "no known student"
        held = what if name else f"{what} holding {student}"
        raise ValueError(f"{path}: {held}, not {SPUNET_NAME}; {NOT_CONVERTIBLE}; pretrain with "
                         f"student.name={SPUNET_NAME} (configs/pretrain/ppkt_spunet.yaml) to finetune in "
                         "Pointcept")
    load_weights(SpUNet(**spunet_kwargs_from_state(state)), state, path, f"a {SPUNET_NAME} student")


def _checked_minkunet(state: dict[str, torch.Tensor], name: str | None, path, what: str) -> None:
    if is_spunet_state(state):
        raise ValueError(f"{path}: {what}: {SPUNET_NAME} is Pointcept's network, which MinkowskiEngine "
                         "has no counterpart of; export it with --to pointcept-spunet")
    if not is_minkunet_state(state):
        raise ValueError(f"{path}: {what} holds no MinkUNet / Res16UNet student (no {MINKUNET_STEM_KERNEL})")
    if name in STUDENTS:
        final = state.get("final.kernel")
        net = build_student(name, in_channels=int(state[MINKUNET_STEM_KERNEL].shape[1]),
                            out_channels=None if final is None else int(final.shape[-1]))
        load_weights(net, state, path, f"a {name} student")


def prepare_export(path: str | os.PathLike, to: str, *, include_head: bool = True, in_channels: int | None = None,
                   checkpoint: Mapping | None = None) -> tuple[dict, dict[str, torch.Tensor], str | None, str]:
    """(the checkpoint to write in format `to`, the student's scene_kd state_dict it holds, the
    student's name or None, the layout in words) for the checkpoint at `path` (its content
    `checkpoint` when already loaded); see `export_checkpoint`."""
    if to not in FORMATS:
        raise ValueError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    state, name, what = read_student(path, checkpoint)
    check = _checked_spunet if to == "pointcept-spunet" else _checked_minkunet
    check(state, name, path, what)
    if not include_head:
        state = {k: v for k, v in state.items() if not k.startswith("final.")}
    if in_channels is not None:
        stem = SPUNET_STEM_KERNEL if to == "pointcept-spunet" else MINKUNET_STEM_KERNEL
        state = pad_input_channels(state, stem, in_channels)
    if to == "pointcept-spunet":
        return pointcept_checkpoint(state), state, name, "Pointcept SpUNetBase names under backbone., spconv 2.x layout"
    return minkowski_checkpoint(state, name), state, name, "MinkowskiEngine layout, under state_dict"


def export_checkpoint(path: str | os.PathLike, to: str, out: str | os.PathLike, *, force: bool = False,
                      include_head: bool = True, in_channels: int | None = None) -> str:
    """Write the student of the checkpoint at `path` to `out` in format `to` (FORMATS); returns a line
    saying what was written. force: replace an existing `out`. include_head: keep the segmentation
    layer `final`. in_channels: widen the stem with zero weights to this many input channels."""
    if to not in FORMATS:
        raise ValueError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory (for --out {out})")
    checkpoint, _, name, layout = prepare_export(path, to, include_head=include_head, in_channels=in_channels)
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
    return f"wrote {out}: {len(checkpoint['state_dict'])} tensors of {name or 'the student'} ({layout})"
