"""SpUNet-v1m1 weights between scene_kd and Pointcept (spconv 2.x).

scene_kd's `SpUNet` has Pointcept's module names, so the names map one to one; per module:
- a convolution: scene_kd `<m>.kernel` (MinkowskiEngine layout) <-> Pointcept `<m>.weight`
  `[out, k, k, k, in]` (`spconv_layout`); a bias `[1, out]` <-> `[out]`;
- a batch norm: scene_kd `<m>.bn.<t>` <-> Pointcept `<m>.<t>` (weight, bias, running_mean,
  running_var, num_batches_tracked).
Pointcept's finetuning loads `checkpoint["state_dict"]` as weight init (its config key `weight`,
hook `CheckpointLoader`), the segmentor's backbone under `backbone.`, DDP's under `module.backbone.`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from scene_kd.interop.spconv_layout import kernel_from_spconv, kernel_to_spconv

POINTCEPT_BACKBONE_PREFIX = "backbone."
# A key only SpUNet has (its stem); tells a Pointcept / scene_kd SpUNet state from a MinkUNet one.
SPUNET_STEM_KERNEL = "conv_input.0.kernel"
POINTCEPT_STEM_WEIGHT = "conv_input.0.weight"
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_spunet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the state_dict of a scene_kd SpUNet (Pointcept's module names, scene_kd's layout)."""
    return SPUNET_STEM_KERNEL in state


def to_pointcept(state: Mapping[str, torch.Tensor],
                 prefix: str = POINTCEPT_BACKBONE_PREFIX) -> dict[str, torch.Tensor]:
    """A scene_kd SpUNet state_dict as Pointcept's SpUNetBase state_dict (spconv 2.x layout), every
    key under `prefix` ("backbone.": the segmentor's backbone; "": the bare network)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "kernel":
            out[prefix + module + ".weight"] = kernel_to_spconv(value)
        elif leaf == "bias" and f"{module}.kernel" in state:
            out[prefix + key] = value.detach().reshape(-1).clone()
        elif module.endswith(".bn") and leaf in _BN_TENSORS:
            out[prefix + module[: -len(".bn")] + "." + leaf] = value.detach().clone()
        else:
            raise ValueError(f"{key}: not a convolution or batch-norm tensor of a SpUNet state_dict")
    return out


def from_pointcept(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Pointcept SpUNetBase state_dict (no prefix) as a scene_kd SpUNet state_dict. A module whose
    `weight` is 5-D is a convolution, any other a batch norm. A 1x1x1 weight is read as spconv applies
    it in SpUNet, where every 1x1x1 convolution (`proj.0`, `final`) is submanifold: a matrix product."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        conv_weight = state.get(f"{module}.weight")
        if isinstance(conv_weight, torch.Tensor) and conv_weight.dim() == 5:
            if leaf == "weight":
                out[f"{module}.kernel"] = kernel_from_spconv(value, matrix_product=value.shape[1] == 1)
            elif leaf == "bias":
                out[key] = value.detach().reshape(1, -1).clone()
            else:
                raise ValueError(f"{key}: a convolution holds weight and bias only")
        else:
            out[f"{module}.bn.{leaf}"] = value.detach().clone()
    return out


def pointcept_checkpoint(state: Mapping[str, torch.Tensor]) -> dict:
    """What Pointcept's finetuning loads as weight init (`weight=`): `{"state_dict": {"backbone.<name>":
    tensor}}` for a scene_kd SpUNet state_dict."""
    return {"state_dict": to_pointcept(state)}


def pointcept_backbone_state(checkpoint: Mapping) -> tuple[dict[str, torch.Tensor], int] | None:
    """(the SpUNet backbone's state_dict without prefixes, number of other tensors left out) of a
    Pointcept checkpoint (`state_dict` wrapper or a bare state_dict; keys with or without `module.`
    and `backbone.`), or None when `checkpoint` holds no Pointcept SpUNet (no 5-D `conv_input.0.weight`)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        return None
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if any(k.startswith(POINTCEPT_BACKBONE_PREFIX) for k in state):
        kept = {k[len(POINTCEPT_BACKBONE_PREFIX):]: v for k, v in state.items()
                if k.startswith(POINTCEPT_BACKBONE_PREFIX)}
    else:
        kept = dict(state)
    stem = kept.get(POINTCEPT_STEM_WEIGHT)
    if not isinstance(stem, torch.Tensor) or stem.dim() != 5:
        return None
    if not all(isinstance(v, torch.Tensor) for v in kept.values()):
        return None
    return kept, len(state) - len(kept)
