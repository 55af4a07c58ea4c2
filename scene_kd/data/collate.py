"""Batching pretraining samples, and sampling a fixed number of pairs per batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from scene_kd.sparse.quantize import batched_coordinates

DEFAULT_NUM_PAIRS = 4096
DROPPED_SAMPLES = "samples_dropped_no_pairs"


def collate_pretrain(samples: Sequence[dict]) -> dict:
    """Stack `PretrainDataset` samples into one batch.

    Samples without pairs are dropped (counted under `samples_dropped_no_pairs`); the others are
    numbered 0 .. B-1 in order. Returns
    coordinates: int32 [N, 4] (batch index, x, y, z), `batched_coordinates` of the samples' coords;
    features: float32 [N, 3];
    images: float32 [B_img, 3, H, W], the samples' images one after another;
    pairs: int64 [M, 4] (row of `coordinates`, row of `images`, pixel row, pixel column), each
        sample's voxel indices offset by the voxels before it, image indices by the images before it;
    counts: Counter, the sum of every sample's counts (dropped ones included);
    meta: list of the kept samples' meta dicts.
    A batch whose samples are all dropped has zero rows everywhere (the training step skips it).
    """
    counts: Counter = Counter()
    kept = []
    for sample in samples:
        counts.update(sample.get("counts", {}))
        if len(sample["pairs"]) == 0:
            counts[DROPPED_SAMPLES] += 1
        else:
            kept.append(sample)
    coords = [torch.as_tensor(s["coords"]) for s in kept]
    features = [torch.as_tensor(s["feats"], dtype=torch.float32) for s in kept]
    images = [torch.as_tensor(s["images"], dtype=torch.float32) for s in kept]
    pairs = []
    voxel_offset = image_offset = 0
    for sample, c, im in zip(kept, coords, images, strict=True):
        p = torch.as_tensor(sample["pairs"], dtype=torch.int64).clone()
        p[:, 0] += voxel_offset
        p[:, 1] += image_offset
        pairs.append(p)
        voxel_offset += len(c)
        image_offset += len(im)
    if kept:
        image_batch = torch.cat(images)
    else:
        shapes = [tuple(torch.as_tensor(s["images"]).shape[-2:]) for s in samples]
        height, width = shapes[0] if shapes else (0, 0)
        image_batch = torch.zeros(0, 3, height, width)
    return {
        "coordinates": batched_coordinates(coords) if kept else torch.zeros(0, 4, dtype=torch.int32),
        "features": torch.cat(features) if kept else torch.zeros(0, 3),
        "images": image_batch,
        "pairs": torch.cat(pairs) if kept else torch.zeros(0, 4, dtype=torch.int64),
        "counts": counts,
        "meta": [s.get("meta", {}) for s in kept],
    }


def sample_pairs(
    pairs: torch.Tensor | np.ndarray,
    num: int = DEFAULT_NUM_PAIRS,
    generator: torch.Generator | np.random.Generator | None = None,
) -> torch.Tensor:
    """`num` rows of `pairs` [M, 4]: without replacement when M >= num, else all M rows (in
    random order) topped up with rows drawn with replacement. Empty `pairs` gives [0, 4].
    generator: a torch.Generator (on the CPU) or a numpy Generator; None: torch's global state."""
    pairs = torch.as_tensor(pairs)
    m = len(pairs)
    if m == 0 or num <= 0:
        return pairs[:0]
    if isinstance(generator, np.random.Generator):
        order = torch.from_numpy(generator.permutation(m))
        extra = torch.from_numpy(generator.integers(0, m, size=max(num - m, 0)))
    else:
        order = torch.randperm(m, generator=generator)
        extra = torch.randint(0, m, (max(num - m, 0),), generator=generator)
    index = order[:num] if m >= num else torch.cat([order, extra])
    return pairs[index.to(pairs.device)]


__all__ = ["DEFAULT_NUM_PAIRS", "DROPPED_SAMPLES", "collate_pretrain", "sample_pairs"]
