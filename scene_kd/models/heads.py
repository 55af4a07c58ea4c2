"""Projection heads into the shared pixel-point embedding (PPKT: 128-d, L2-normalized).

`UpsamplingProjection` maps a coarse teacher map to the embedding width at pixel resolution;
`PointProjection` maps student voxel features to the same width. `sample_pixel_features` reads the
bilinearly upsampled map at given pixels without building the full-resolution map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _source_index(pixel: Tensor, in_size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Coarse neighbours (i0, i1) and weight of i1 for output pixels, as `F.interpolate(bilinear, align_corners=False)`."""
    scale = in_size / out_size
    source = ((pixel.to(torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = source.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, source - i0


def sample_pixel_features(
    features: Tensor, image_index: Tensor, rows: Tensor, cols: Tensor, image_size: tuple[int, int]
) -> Tensor:
    """Features [B, C, h, w] bilinearly upsampled to `image_size` (H, W), read at M pixels -> [M, C].

    image_index, rows, cols: LongTensor [M]. Equals
    `F.interpolate(features, image_size, mode="bilinear", align_corners=False)[image_index, :, rows, cols]`
    while touching only the four coarse neighbours of each pixel.
    """
    if features.dim() != 4:
        raise ValueError(f"sample_pixel_features: features must be [B, C, h, w], got {tuple(features.shape)}")
    if not (image_index.shape == rows.shape == cols.shape) or image_index.dim() != 1:
        raise ValueError(
            "sample_pixel_features: image_index, rows and cols must be [M] each, got "
            f"{tuple(image_index.shape)}, {tuple(rows.shape)}, {tuple(cols.shape)}"
        )
    height, width = image_size
    _, _, h, w = features.shape
    r0, r1, wr = _source_index(rows, h, height)
    c0, c1, wc = _source_index(cols, w, width)
    wr = wr.to(features.dtype)[:, None]
    wc = wc.to(features.dtype)[:, None]
    # [B * h * w, C] rows gathered with index_select: its backward sums repeated pixels in a fixed order
    # (advanced indexing's index_put_ with accumulate does not, on CPU with several threads).
    cells = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])

    def gather(r: Tensor, c: Tensor) -> Tensor:
        return cells.index_select(0, (image_index * h + r) * w + c)

    top = gather(r0, c0) * (1 - wc) + gather(r0, c1) * wc
    bottom = gather(r1, c0) * (1 - wc) + gather(r1, c1) * wc
    return top * (1 - wr) + bottom * wr


class UpsamplingProjection(nn.Module):
    """Teacher map [B, C, h, w] -> L2-normalized pixel embeddings [B, D, H, W].

    mode "bilinear" (default, PPKT): 1x1 convolution to D then bilinear upsampling to (H, W).
    mode "transposed": a learned transposed convolution with kernel = stride = `upsample_factor`
    (the teacher's stride), then bilinear resizing to exactly (H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 128,
        mode: str = "bilinear",
        upsample_factor: int | None = None,
    ):
        super().__init__()
        if mode == "bilinear":
            if upsample_factor is not None:
                raise ValueError("UpsamplingProjection: upsample_factor is only used by mode='transposed'")
            self.projection = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        elif mode == "transposed":
            if not upsample_factor or upsample_factor < 1:
                raise ValueError(
                    "UpsamplingProjection: mode='transposed' needs upsample_factor = the teacher's stride, "
                    f"got {upsample_factor}"
                )
            self.projection = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=upsample_factor, stride=upsample_factor
            )
        else:
            raise ValueError(f"UpsamplingProjection: mode must be 'bilinear' or 'transposed', got {mode!r}")
        self.mode = mode
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.projection(features)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return F.normalize(x, dim=1)

    def sample(
        self, features: Tensor, image_index: Tensor, rows: Tensor, cols: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        """`forward(features, image_size)[image_index, :, rows, cols]` -> [M, D], without the full map.

        Exact because the 1x1 convolution commutes with bilinear interpolation (whose weights sum to 1).
        """
        x = self.projection(features)
        return F.normalize(sample_pixel_features(x, image_index, rows, cols, image_size), dim=1)


class PointProjection(nn.Module):
    """Student features [N, C] -> L2-normalized embeddings [N, D].

    A linear layer, or with `hidden` a 2-layer MLP (linear, BatchNorm, ReLU, linear).
    """

    def __init__(self, in_channels: int, out_channels: int = 128, hidden: int | None = None):
        super().__init__()
        if hidden is None:
            self.projection = nn.Linear(in_channels, out_channels)
        else:
            self.projection = nn.Sequential(
                nn.Linear(in_channels, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, out_channels),
            )
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"PointProjection: expected features [N, {self.in_channels}], got {tuple(features.shape)}"
            )
        return F.normalize(self.projection(features), dim=1)
