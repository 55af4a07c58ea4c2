"""The MinkowskiEngine checkpoint of a MinkUNet / Res16UNet student.

scene_kd's students are MinkowskiEngine's networks with its parameter names and layout
(docs/sparse_backends.md), so nothing is converted: the checkpoint is the student's state_dict under
`state_dict`, as MinkowskiEngine training scripts (SpatioTemporalSegmentation, PointContrast) save and
load it, with the network's name under `arch` as they record it. scene_kd reads such a file back with
`scene_kd.finetune.init_weights.student_state_dict` (`model.init`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# The stem of every MinkUNet / Res16UNet: tells their state_dicts from SpUNet's.
MINKUNET_STEM_KERNEL = "conv0p1s1.kernel"


def is_minkunet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the state_dict of a MinkUNet / Res16UNet student (MinkowskiEngine's names)."""
    return MINKUNET_STEM_KERNEL in state


def minkowski_checkpoint(state: Mapping[str, torch.Tensor], arch: str | None) -> dict:
    """`{"state_dict": the student's tensors, "arch": its name}` (no `arch` when unknown)."""
    checkpoint: dict = {"state_dict": {k: v.detach().clone() for k, v in state.items()}}
    if arch:
        checkpoint["arch"] = arch
    return checkpoint
