"""torchvision ResNet-50 teacher: ImageNet weights or a MoCo v2 checkpoint, layer4 or layer3 features."""

from __future__ import annotations

import os

from torch import Tensor, nn

from scene_kd.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Teacher,
    freeze_teacher,
    load_checkpoint_file,
    require_weights,
)

RESNET50_HOW_TO_GET = (
    "ImageNet weights: torchvision.models.ResNet50_Weights.IMAGENET1K_V2, i.e. "
    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth (IMAGENET1K_V1: resnet50-0676ba61.pth); "
    "MoCo v2: moco_v2_800ep_pretrain.pth.tar from "
    "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar. "
    "Download it on a machine with internet access, copy it here and pass its path as weights=."
)
RESNET_LAYERS = {"layer3": (1024, 16), "layer4": (2048, 32)}  # name -> (channels, stride)
MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.")


class ResNetTeacher(Teacher):
    """A torchvision ResNet cut after `layer`; `body` keeps torchvision's parameter names."""

    def __init__(self, body: nn.Module, layer: str):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.body = body
        self.layer = layer
        self.out_channels, self.stride = RESNET_LAYERS[layer]

    def extract(self, images: Tensor) -> Tensor:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))  # stride 4
        x = b.layer3(b.layer2(b.layer1(x)))  # stride 16
        if self.layer == "layer4":
            x = b.layer4(x)  # stride 32
        return x


def resnet_state_dict(checkpoint: dict) -> tuple[dict, str]:
    """The backbone state dict of an ImageNet state dict or a MoCo checkpoint, and which it was.

    MoCo (v1/v2) checkpoints hold `state_dict` with the query encoder under `module.encoder_q.`
    (the key encoder, queue and the MLP head `fc.*` are dropped); an ImageNet checkpoint is the
    torchvision state dict, possibly under `state_dict` or `model` and with a `module.` prefix.
    """
    state = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    for prefix in MOCO_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            body = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            return {k: v for k, v in body.items() if not k.startswith("fc.")}, "moco"
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, "imagenet"


def build_resnet_teacher(
    weights: str | os.PathLike | None = None,
    layer: str = "layer4",
    allow_random: bool = False,
) -> ResNetTeacher:
    """Frozen torchvision ResNet-50 giving `layer` features: layer4 (2048 ch, stride 32) or layer3 (1024, 16).

    `weights` is a local ImageNet state dict or MoCo v2 checkpoint (detected from its keys); None
    gives random weights and needs `allow_random=True`.
    """
    from torchvision.models import resnet50

    if layer not in RESNET_LAYERS:
        raise ValueError(f"resnet50 teacher: layer must be one of {sorted(RESNET_LAYERS)}, got {layer!r}")
    path = require_weights(weights, allow_random, "resnet50 teacher", RESNET50_HOW_TO_GET)
    body = resnet50(weights=None)
    del body.fc, body.avgpool
    if layer == "layer3":
        del body.layer4
    if path is not None:
        state, kind = resnet_state_dict(load_checkpoint_file(path, "resnet50 teacher"))
        if layer == "layer3":
            state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
        try:
            missing, unexpected = body.load_state_dict(state, strict=False)
        except RuntimeError as error:  # parameter shape mismatches
            raise ValueError(
                f"resnet50 teacher: {path!r} does not fit torchvision's ResNet-50: {error}"
            ) from error
        if missing or unexpected:
            raise ValueError(
                f"resnet50 teacher: {path!r} (read as a {kind} checkpoint) does not match torchvision's "
                f"ResNet-50: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected keys "
                f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
    return freeze_teacher(ResNetTeacher(body, layer))
