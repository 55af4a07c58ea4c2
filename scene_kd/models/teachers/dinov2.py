"""DINOv2 teachers (ViT-S/14, B/14, L/14, g/14, with or without 4 registers) on timm's VisionTransformer,
from a local weights file in timm's layout or in facebookresearch/dinov2's torch.hub layout.

The dense map is the last layer's patch tokens after the final norm (`x_norm_patchtokens` of the
original code, timm's `forward_features(x)[:, num_prefix_tokens:]`), reshaped to [B, C, H/14, W/14].
The file's layout and the variant are read from its keys: the width names the size (384 S, 768 B,
1024 L, 1536 g), `reg_token` / `register_tokens` the registers, the `blocks.N.` keys the depth and the
length of `pos_embed` the native patch grid (37 x 37 for the released 518-pixel models).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene_kd.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Teacher,
    freeze_teacher,
    load_checkpoint_file,
    require_weights,
)

WHAT = "dinov2 teacher"
PATCH = 14
# embedding width -> (size letter of the hub names, timm's size name, attention heads, released depth)
DINOV2_VARIANTS = {
    384: ("s", "small", 6, 12),
    768: ("b", "base", 12, 12),
    1024: ("l", "large", 16, 24),
    1536: ("g", "giant", 24, 40),
}
POS_INTERPOLATIONS = ("dinov2", "timm")
DINOV2_HOW_TO_GET = (
    "Download it on a machine with internet access and pass its path as weights=: the original files "
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth (vits14, vitl14, vitg14 "
    "alike; with registers dinov2_vitb14_reg4_pretrain.pth), or timm's model.safetensors from the Hugging "
    "Face repository timm/vit_base_patch14_dinov2.lvd142m (timm/vit_base_patch14_reg4_dinov2.lvd142m with "
    "registers)."
)
EXPECTED_KEYS = (
    "timm's DINOv2 state dict (cls_token, pos_embed, patch_embed.proj.weight [C, 3, 14, 14], blocks.N.*, "
    "norm.weight; reg_token with registers) or facebookresearch/dinov2's (the same keys with mask_token, "
    "register_tokens with registers, blocks.N.mlp.w12/w3 for ViT-g)"
)


def dinov2_model_names() -> list[str]:
    """The accepted `model` names: the hub's (`dinov2_vitb14`, `dinov2_vitb14_reg`) and timm's
    (`vit_base_patch14_dinov2`, `vit_base_patch14_reg4_dinov2`) for S, B, L and g."""
    names = []
    for letter, size, _, _ in DINOV2_VARIANTS.values():
        names += [f"dinov2_vit{letter}14", f"dinov2_vit{letter}14_reg", f"vit_{size}_patch14_dinov2",
                  f"vit_{size}_patch14_reg4_dinov2"]
    return names


def parse_dinov2_model(model: str) -> tuple[int, int]:
    """A `model` name (`dinov2_model_names`) -> (embedding width, register tokens)."""
    for width, (letter, size, _, _) in DINOV2_VARIANTS.items():
        if model in (f"dinov2_vit{letter}14", f"vit_{size}_patch14_dinov2"):
            return width, 0
        if model in (f"dinov2_vit{letter}14_reg", f"dinov2_vit{letter}14_reg4",
                     f"vit_{size}_patch14_reg4_dinov2"):
            return width, 4
    raise ValueError(f"{WHAT}: unknown model {model!r}; choose one of {dinov2_model_names()}")


def read_state_dict(path: str) -> dict:
    """The tensors of a `.safetensors` file or of a torch checkpoint (unwrapped from `model` or
    `state_dict`, without a `module.` prefix)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:
            raise ValueError(f"{WHAT}: cannot read weights file {path!r}: {error}") from error
    state = load_checkpoint_file(path, WHAT)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def dinov2_timm_state_dict(state: dict, path: str) -> tuple[dict, str]:
    """A DINOv2 state dict in timm's layout and which layout `state` was ("timm" or "dinov2", the
    torch.hub one, converted with timm's own `_convert_dinov2`). Anything else is a one-line ValueError
    naming `path` and the expected keys."""
    from timm.models.vision_transformer import _convert_dinov2

    weight = state.get("patch_embed.proj.weight")
    required = ("cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.weight")
    if not (isinstance(weight, Tensor) and all(isinstance(state.get(key), Tensor) for key in required)):
        found = ", ".join(list(state)[:4]) or "none"
        raise ValueError(f"{WHAT}: {path!r} is not a DINOv2 ViT state dict: expected {EXPECTED_KEYS}; "
                         f"found keys {found}{' ...' if len(state) > 4 else ''}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (3, PATCH, PATCH):
        raise ValueError(f"{WHAT}: {path!r} has patch_embed.proj.weight of shape {tuple(weight.shape)}; "
                         f"DINOv2 ViTs have [C, 3, {PATCH}, {PATCH}]")
    state = {key: value for key, value in state.items() if not key.startswith("head.")}
    hub = "mask_token" in state or "register_tokens" in state or any(".mlp.w12." in key for key in state)
    if hub:
        state = _convert_dinov2(dict(state), None)  # the model argument is unused by the converter
    return state, "dinov2" if hub else "timm"


def dinov2_variant(state: dict, path: str) -> dict:
    """From a timm-layout state dict: width, registers, depth and the native patch grid side."""
    width = state["cls_token"].shape[-1]
    if width not in DINOV2_VARIANTS:
        raise ValueError(f"{WHAT}: {path!r} has embedding width {width}; DINOv2 ViTs have "
                         f"{sorted(DINOV2_VARIANTS)} (S, B, L, g)")
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    depth = 1 + max(int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key)))
    patches = state["pos_embed"].shape[1] - (0 if registers else 1)
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{WHAT}: {path!r}: pos_embed holds {patches} patch positions, not a square grid")
    return {"width": width, "registers": registers, "depth": depth, "grid": side}


def build_dinov2_vit(width: int, registers: int, depth: int | None = None, grid: int = 37) -> nn.Module:
    """timm's DINOv2 VisionTransformer of that width (random weights), `grid` x `grid` positions
    (37: the released 518-pixel models), `depth` blocks (None: the released depth), no head."""
    import timm

    _, size, _, released_depth = DINOV2_VARIANTS[width]
    name = f"vit_{size}_patch14_reg4_dinov2" if registers else f"vit_{size}_patch14_dinov2"
    kwargs = {"reg_tokens": registers} if registers else {}
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=grid * PATCH,
                             depth=depth or released_depth, **kwargs)


def load_dinov2_vit(path: str, model: str | None = None) -> tuple[nn.Module, dict]:
    """timm's VisionTransformer with the weights of the file `path` (either layout) and what was read
    (`dinov2_variant` plus "format"). `model`, when given, must name the file's variant."""
    state, layout = dinov2_timm_state_dict(read_state_dict(path), path)
    variant = dinov2_variant(state, path)
    if model is not None and parse_dinov2_model(model) != (variant["width"], variant["registers"]):
        raise ValueError(f"{WHAT}: {path!r} holds a width-{variant['width']} DINOv2 with "
                         f"{variant['registers']} registers, not model={model!r}")
    vit = build_dinov2_vit(variant["width"], variant["registers"], variant["depth"], variant["grid"])
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise ValueError(f"{WHAT}: {path!r} (read as a {layout} DINOv2 state dict) does not fit timm's "
                         f"VisionTransformer: {detail}") from error
    return vit, {**variant, "format": layout}


def resample_patch_positions(positions: Tensor, grid: tuple[int, int], mode: str, registers: int) -> Tensor:
    """Patch positional embeddings [1, M * M, C] -> [1, gh * gw, C], bicubic.

    "dinov2": as the original `interpolate_pos_encoding` of the model (hub defaults): without registers
    with the scale factor `(g + 0.1) / M` and no antialiasing, with registers to the size `g` with
    antialiasing. "timm": timm's `resample_abs_pos_embed` (to the size, antialiased), what
    `timm.create_model(..., dynamic_img_size=True)` does.
    """
    side = math.isqrt(positions.shape[1])
    if grid == (side, side):
        return positions
    square = positions.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if mode == "dinov2" and not registers:
        scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
        resized = F.interpolate(square, scale_factor=scale, mode="bicubic", antialias=False)
    else:
        resized = F.interpolate(square, size=grid, mode="bicubic", antialias=True)
    return resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(positions.dtype)


class DinoV2Teacher(Teacher):
    """DINOv2 patch features [B, C, H/14, W/14] (C: 384, 768, 1024, 1536), not in CLIP space.

    `vit` is timm's DINOv2 VisionTransformer. Input sides that are not multiples of 14 are resized to the
    nearest multiples (or the input to `image_size` when given); the positional embedding is resampled
    to the patch grid as `pos_interpolation` says (`resample_patch_positions`).
    """

    def __init__(self, vit: nn.Module, image_size: int | Sequence[int] | None = None,
                 pos_interpolation: str = "dinov2"):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"{WHAT}: pos_interpolation must be one of {list(POS_INTERPOLATIONS)}, "
                             f"got {pos_interpolation!r}")
        if image_size is not None:
            image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if len(image_size) != 2 or any(s <= 0 or s % PATCH for s in image_size):
                raise ValueError(f"{WHAT}: image_size must be two positive multiples of {PATCH}, "
                                 f"got {image_size}")
        self.vit = vit
        self.image_size = image_size
        self.pos_interpolation = pos_interpolation
        self.registers = vit.reg_token.shape[1] if vit.reg_token is not None else 0
        self.out_channels = vit.embed_dim
        self.stride = PATCH
        self.embed_dim = None

    def run_size(self, height: int, width: int) -> tuple[int, int]:
        if self.image_size is not None:
            return self.image_size
        return max(PATCH, round(height / PATCH) * PATCH), max(PATCH, round(width / PATCH) * PATCH)

    def tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalized images -> (all tokens [B, 1 + registers + gh * gw, C] after the final norm, the
        patch grid (gh, gw))."""
        v = self.vit
        size = self.run_size(*images.shape[-2:])
        if size != tuple(images.shape[-2:]):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = v.patch_embed.proj(images)  # [B, C, gh, gw], stride 14
        batch, _, gh, gw = x.shape
        x = v.patch_embed.norm(x.flatten(2).transpose(1, 2))
        positions = v.pos_embed if v.no_embed_class else v.pos_embed[:, 1:]
        positions = resample_patch_positions(positions, (gh, gw), self.pos_interpolation, self.registers)
        x = x + positions.to(x.dtype)
        cls = v.cls_token if v.no_embed_class else v.cls_token + v.pos_embed[:, :1]
        prefix = [cls.to(x.dtype).expand(batch, -1, -1)]
        if v.reg_token is not None:
            prefix.append(v.reg_token.to(x.dtype).expand(batch, -1, -1))
        x = v.norm_pre(torch.cat([*prefix, x], dim=1))  # [cls, registers, patches], as both codebases have
        return v.norm(v.blocks(x)), (gh, gw)

    def extract(self, images: Tensor) -> Tensor:
        x, grid = self.tokens(images)
        patches = x[:, self.vit.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def build_dinov2_teacher(
    weights: str | os.PathLike | None = None,
    model: str | None = None,
    image_size: int | Sequence[int] | None = None,
    pos_interpolation: str = "dinov2",
    allow_random: bool = False,
) -> DinoV2Teacher:
    """Frozen DINOv2 ViT giving its last layer's normalized patch tokens [B, C, H/14, W/14].

    `weights`: a local file in timm's layout (`.safetensors` or a torch state dict) or the original
    torch.hub one (`dinov2_vitb14_pretrain.pth`, `..._reg4_pretrain.pth`); the variant is read from its
    keys, and `model` (e.g. "dinov2_vitb14", "vit_base_patch14_reg4_dinov2"), when given, must match it.
    `weights=None` needs `allow_random=True` and `model`. `image_size` fixes the resolution the ViT runs
    at (multiples of 14); `pos_interpolation` "dinov2" (the original code's) or "timm" (see
    `resample_patch_positions`).
    """
    path = require_weights(weights, allow_random, WHAT, DINOV2_HOW_TO_GET)
    if path is not None:
        vit, _ = load_dinov2_vit(path, model)
    elif model is None:
        raise ValueError(f"{WHAT}: a random teacher (allow_random=True, weights=None) needs model=, one of "
                         f"{dinov2_model_names()}")
    else:
        vit = build_dinov2_vit(*parse_dinov2_model(model))
    return freeze_teacher(DinoV2Teacher(vit.eval(), image_size, pos_interpolation))
