"""The frozen-teacher base class and the weight-file checks every teacher shares.

A teacher maps RGB images in [0, 1] to a dense feature map, normalizes the images itself, and never
trains: it stays in eval mode whatever its parent module is set to, holds no gradients and runs under
`no_grad` (bf16 autocast on CUDA, float32 out).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Teacher(nn.Module):
    """A frozen 2D network: images float32 [B, 3, H, W] in [0, 1] -> features float32 [B, C, h, w].

    Subclasses implement `extract(normalized_images) -> [B, C, h, w]` and set `out_channels`,
    `stride` (input pixels per feature cell) and `embed_dim` (the CLIP embedding width when the
    features live in CLIP's joint image-text space, else None). `use_autocast` (default True) runs
    `extract` under bf16 autocast when the images are on CUDA. Teachers with a global image
    embedding (CLIP) also implement `extract_with_global` and set `has_global_embedding`; `encode`
    then gives the dense map and the global embedding of one forward pass.
    """

    out_channels: int
    stride: int
    embed_dim: int | None = None
    use_autocast: bool = True
    has_global_embedding: bool = False

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def extract(self, images: Tensor) -> Tensor:
        """Normalized images [B, 3, H, W] -> features [B, C, h, w]."""
        raise NotImplementedError

    def extract_with_global(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalized images [B, 3, H, W] -> (features [B, C, h, w], global embedding [B, embed_dim])."""
        raise NotImplementedError(
            f"{type(self).__name__} gives no global image embedding (concept distillation needs a CLIP teacher)"
        )

    def train(self, mode: bool = True) -> Teacher:
        # A parent's .train() must not switch the teacher's batch norms to batch statistics.
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        with (
            torch.no_grad(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_autocast and images.is_cuda),
        ):
            normalized = (images.float() - self.pixel_mean) / self.pixel_std
            features = self.extract(normalized)
        return features.float()

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images [B, 3, H, W] in [0, 1] -> (the dense map [B, C, h, w], the global image embedding
        [B, embed_dim]), both float32 and from the same forward pass, frozen as `forward` is."""
        check_images(images)
        with (
            torch.no_grad(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_autocast and images.is_cuda),
        ):
            normalized = (images.float() - self.pixel_mean) / self.pixel_std
            features, embedding = self.extract_with_global(normalized)
        return features.float(), embedding.float()


def check_images(images: Tensor) -> None:
    """Raise ValueError unless `images` is a floating [B, 3, H, W] tensor."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"a teacher takes RGB images [B, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"a teacher takes float images in [0, 1], got dtype {images.dtype} (divide uint8 images by 255)"
        )


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put `teacher` in eval mode with every parameter's `requires_grad` off; returns it."""
    return teacher.eval().requires_grad_(False)


def require_weights(
    weights: str | os.PathLike | None, allow_random: bool, what: str, how_to_get: str
) -> str | None:
    """The checked weights path, or None for an explicitly allowed random initialization.

    `weights=None` without `allow_random=True` is a ValueError, a path that is not a file is a
    FileNotFoundError; both messages say how to get the weights (`how_to_get`).
    """
    if weights is None:
        if not allow_random:
            raise ValueError(
                f"{what}: weights are required (weights=None gives a randomly initialized teacher, which "
                f"is only allowed with allow_random=True). {how_to_get}"
            )
        return None
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: weights file {path!r} does not exist. {how_to_get}")
    return path


def load_checkpoint_file(path: str, what: str) -> dict:
    """`torch.load(path)` on CPU with `weights_only=True`, errors naming the file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's messages run over several lines: one line, 300 characters
        detail = " ".join(str(error).replace("\x1b[1m", "").replace("\x1b[0m", "").split())[:300]
        raise ValueError(f"{what}: cannot read weights file {path!r} as a torch checkpoint of tensors "
                         f"({type(error).__name__}: {detail})") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{what}: weights file {path!r} holds a {type(checkpoint).__name__}, not a state dict"
        )
    return checkpoint
