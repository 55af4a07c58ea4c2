"""The concept head of CLIP concept distillation: learnable concept queries attend over the student's
point features of each point set (a sample of the batch) and give concept embeddings in CLIP space.

`ConceptHead` holds K concept queries and one global query. Per point set, the K + 1 queries attend
with one multi-head cross-attention over the set's point features (padded to the longest set, with a
key padding mask); the outputs are projected into CLIP's embedding space: K concept embeddings and
one attention-pooled global embedding. `project_points` carries point features into the same space
(the 3D side of the concept loss, and zero-shot segmentation). See docs/concept_distillation.md.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene_kd.models.heads import PointProjection


class ConceptOutput(NamedTuple):
    concepts: Tensor  # [B, K, embed_dim], L2-normalized
    global_embedding: Tensor  # [B, embed_dim], L2-normalized


def pad_point_sets(features: Tensor, set_index: Tensor, num_sets: int) -> tuple[Tensor, Tensor]:
    """Rows of `features` [N, C] grouped by `set_index` int64 [N] (values 0 .. num_sets - 1) ->
    (padded [num_sets, L, C], padding mask bool [num_sets, L], True at padding), L = the largest set.

    Within a set the rows keep their order in `features`; padded rows are zero. An empty set is a
    ValueError (its attention would have no key).
    """
    if features.dim() != 2 or set_index.shape != features.shape[:1]:
        raise ValueError(
            f"pad_point_sets: features must be [N, C] and set_index [N], got {tuple(features.shape)} "
            f"and {tuple(set_index.shape)}"
        )
    counts = torch.bincount(set_index, minlength=num_sets)
    if counts.numel() != num_sets or bool((counts == 0).any()):
        raise ValueError(f"pad_point_sets: every one of the {num_sets} point sets needs a point, counts {counts.tolist()}")
    order = torch.argsort(set_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_sets = set_index[order]
    position = torch.arange(len(order), device=features.device) - starts[sorted_sets]
    length = int(counts.max())
    padded = features.new_zeros(num_sets, length, features.shape[1])
    padded[sorted_sets, position] = features[order]
    mask = torch.ones(num_sets, length, dtype=torch.bool, device=features.device)
    mask[sorted_sets, position] = False
    return padded, mask


def select_keys(set_index: Tensor, max_keys: int, preferred: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Rows (int64, sorted) to use as attention keys: per set at most `max_keys` random rows, rows with
    `preferred` (bool [N], e.g. voxels with pixel pairs) first, then the others. Bounds the attention's
    memory on ScanNet-size samples. set_index: int64 [N]."""
    if max_keys < 1:
        raise ValueError(f"select_keys: max_keys must be >= 1, got {max_keys}")
    n = set_index.shape[0]
    counts = torch.bincount(set_index)
    if n == 0 or int(counts.max()) <= max_keys:
        return torch.arange(n, device=set_index.device)
    noise = torch.rand(n, generator=generator, device="cpu").to(set_index.device)
    if preferred is not None:
        noise = noise + (~preferred).to(noise.dtype)  # preferred rows draw in [0, 1), the others in [1, 2)
    order = torch.argsort(set_index.to(torch.float64) * 4 + noise.to(torch.float64))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=set_index.device) - starts[set_index[order]]
    return torch.sort(order[rank < max_keys]).values


class ConceptHead(nn.Module):
    """K concept queries and one global query over a point set's features -> CLIP space.

    keys/values: `LayerNorm(Linear(in_channels -> width))` of the point features; queries: learned
    [K + 1, width]; one `nn.MultiheadAttention(width, num_heads)` (per set, key padding masks) with a
    residual, `q + attention(q, keys, values)`, then `LayerNorm` and `Linear(width -> embed_dim)`,
    L2-normalized. `point_projection`
    (a `PointProjection`, linear or MLP with `point_hidden`) maps point features to embed_dim.
    """

    def __init__(self, in_channels: int, embed_dim: int, num_concepts: int = 64, num_heads: int = 8,
                 width: int = 256, point_hidden: int | None = None):
        super().__init__()
        if num_concepts < 1 or width % num_heads:
            raise ValueError(f"ConceptHead: need num_concepts >= 1 and width divisible by num_heads, got "
                             f"num_concepts={num_concepts}, width={width}, num_heads={num_heads}")
        self.in_channels, self.embed_dim, self.num_concepts = in_channels, embed_dim, num_concepts
        self.key_projection = nn.Sequential(nn.Linear(in_channels, width), nn.LayerNorm(width))
        self.queries = nn.Parameter(torch.randn(num_concepts + 1, width) * width ** -0.5)  # row 0: global
        self.attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.output_norm = nn.LayerNorm(width)
        self.output_projection = nn.Linear(width, embed_dim)
        self.point_projection = PointProjection(in_channels, embed_dim, hidden=point_hidden)

    def config(self) -> dict:
        """The constructor's keyword arguments (saved in checkpoints to rebuild the head)."""
        hidden = self.point_projection.projection
        return {"in_channels": self.in_channels, "embed_dim": self.embed_dim, "num_concepts": self.num_concepts,
                "num_heads": self.attention.num_heads, "width": self.attention.embed_dim,
                "point_hidden": None if isinstance(hidden, nn.Linear) else hidden[0].out_features}

    def forward(self, point_features: Tensor, set_index: Tensor, num_sets: int) -> ConceptOutput:
        """point_features [N, in_channels] of the key points, set_index int64 [N] in 0 .. num_sets - 1
        -> ConceptOutput(concepts [num_sets, K, embed_dim], global_embedding [num_sets, embed_dim])."""
        if point_features.dim() != 2 or point_features.shape[1] != self.in_channels:
            raise ValueError(f"ConceptHead: expected point features [N, {self.in_channels}], got "
                             f"{tuple(point_features.shape)}")
        keys, padding = pad_point_sets(self.key_projection(point_features), set_index, num_sets)
        return self.attend(keys, padding)

    def attend(self, keys: Tensor, padding: Tensor) -> ConceptOutput:
        """Projected keys [B, L, width] with their padding mask bool [B, L] (True: padding, ignored)
        -> ConceptOutput. Rows of `keys` where `padding` is True never change the output."""
        queries = self.queries.unsqueeze(0).expand(keys.shape[0], -1, -1).to(keys.dtype)
        attended, _ = self.attention(queries, keys, keys, key_padding_mask=padding, need_weights=False)
        # The residual keeps the concepts apart: without it every query reads nearly the same mean of
        # the values at initialization, the concepts coincide and the concept distributions are uniform.
        out = F.normalize(self.output_projection(self.output_norm(queries + attended)), dim=-1)
        return ConceptOutput(concepts=out[:, 1:], global_embedding=out[:, 0])

    def project_points(self, point_features: Tensor) -> Tensor:
        """[N, in_channels] -> L2-normalized CLIP-space point embeddings [N, embed_dim]."""
        return self.point_projection(point_features)
