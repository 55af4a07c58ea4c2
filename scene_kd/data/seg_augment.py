"""Augmentations of segmentation finetuning: rotation about z, scale and flips (reused from
`scene_kd.data.augment`), elastic distortion, and color auto-contrast, translation and jitter.

The conventions follow SpatioTemporalSegmentation (`lib/transforms.py`) and Pointcept's ScanNet
recipes, which finetuning results are usually compared against:

- Elastic distortion, per (granularity g, magnitude m) pair in metres: Gaussian noise (3 channels)
  on a grid of `floor(extent / g) + 3` nodes per axis spaced g apart, the first node at
  `min - g`; smoothed by two rounds of a 3-tap box blur along x, y and z (zero outside the grid);
  trilinearly interpolated at each point and added times m. The pairs (0.2, 0.4) then (0.8, 1.6)
  are applied together with probability 0.95.
- Colors in [0, 255]: auto-contrast (p 0.2) blends each channel stretched to [0, 255] with the
  original (blend factor uniform in [0, 1) unless fixed); translation (p 0.95) adds one offset per
  channel, uniform in ±ratio x 255; jitter (p 0.95) adds Gaussian noise of std x 255 per point;
  translation and jitter clip to [0, 255].

Everything random draws from a `numpy.random.Generator`: the same generator state gives the same
result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scene_kd.data.augment import random_point_transform

ELASTIC_SCANNET = ((0.2, 0.4), (0.8, 1.6))


def _box_blur3(grid: np.ndarray, axis: int) -> np.ndarray:
    """3-tap mean along `axis`, zero outside the grid (scipy.ndimage.convolve, mode="constant")."""
    moved = np.moveaxis(grid, axis, 0)
    padded = np.pad(moved, [(1, 1)] + [(0, 0)] * (grid.ndim - 1))
    return np.moveaxis((padded[:-2] + padded[1:-1] + padded[2:]) / 3.0, 0, axis)


def _trilinear(grid: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Values of `grid` [X, Y, Z, C] at continuous node coordinates `u` [P, 3] -> [P, C]."""
    size = np.array(grid.shape[:3])
    base = np.clip(np.floor(u).astype(np.int64), 0, size - 2)
    frac = np.clip(u - base, 0.0, 1.0)
    out = np.zeros((u.shape[0], grid.shape[3]))
    for dx in (0, 1):
        wx = frac[:, 0] if dx else 1.0 - frac[:, 0]
        for dy in (0, 1):
            wy = frac[:, 1] if dy else 1.0 - frac[:, 1]
            for dz in (0, 1):
                wz = frac[:, 2] if dz else 1.0 - frac[:, 2]
                values = grid[base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz]
                out += (wx * wy * wz)[:, None] * values
    return out


def elastic_displacement(
    points: np.ndarray, rng: np.random.Generator, granularity: float, magnitude: float, *, blur_rounds: int = 2
) -> np.ndarray:
    """float64 [P, 3]: one elastic distortion's displacement of `points` [P, 3] (metres).

    Gaussian noise on a grid spaced `granularity` apart covering the points with a node to spare
    on each side, smoothed by `blur_rounds` rounds of a 3-tap box blur along x, y and z,
    trilinearly interpolated and multiplied by `magnitude`. Every displacement is a convex
    combination of smoothed node values, so it is at most `magnitude` x the largest noise value,
    and it varies on the scale of `granularity`.
    """
    if not granularity > 0:
        raise ValueError(f"granularity must be positive, got {granularity}")
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros((0, 3))
    low = points.min(0)
    dims = np.floor((points.max(0) - low) / granularity).astype(np.int64) + 3
    noise = rng.standard_normal((*dims.tolist(), 3))
    for _ in range(blur_rounds):
        for axis in range(3):
            noise = _box_blur3(noise, axis)
    origin = low - granularity  # node k of an axis sits at origin + k * granularity
    return magnitude * _trilinear(noise, (points - origin) / granularity)


def elastic_distortion(
    points: np.ndarray,
    rng: np.random.Generator,
    params: tuple[tuple[float, float], ...] = ELASTIC_SCANNET,
) -> np.ndarray:
    """float64 [P, 3]: `points` displaced by `elastic_displacement` once per (granularity,
    magnitude) pair, in order (each pass sees the previous one's output)."""
    out = np.asarray(points, dtype=np.float64)
    for granularity, magnitude in params:
        out = out + elastic_displacement(out, rng, granularity, magnitude)
    return out


def chromatic_auto_contrast(
    colors: np.ndarray, rng: np.random.Generator, p: float = 0.2, blend: float | None = None
) -> np.ndarray:
    """With probability p, blend colors [P, 3] (0..255) with each channel stretched to [0, 255];
    blend None: a uniform factor in [0, 1). A constant channel is left as is. Draws two uniforms."""
    apply, u_blend = rng.uniform(size=2)
    colors = np.asarray(colors, dtype=np.float64)
    if apply >= p or len(colors) == 0:
        return colors
    factor = u_blend if blend is None else float(blend)
    lo, hi = colors.min(0, keepdims=True), colors.max(0, keepdims=True)
    spread = hi - lo
    stretched = np.where(spread > 0, (colors - lo) * (255.0 / np.where(spread > 0, spread, 1.0)), colors)
    return np.clip((1.0 - factor) * colors + factor * stretched, 0.0, 255.0)


def chromatic_translation(
    colors: np.ndarray, rng: np.random.Generator, p: float = 0.95, ratio: float = 0.05
) -> np.ndarray:
    """With probability p, add one offset per channel, uniform in [-ratio, ratio) x 255, to colors
    [P, 3] (0..255), clipped to [0, 255]. Draws four uniforms."""
    apply, *u = rng.uniform(size=4)
    colors = np.asarray(colors, dtype=np.float64)
    if apply >= p:
        return colors
    offset = (np.asarray(u) - 0.5) * 2.0 * ratio * 255.0
    return np.clip(colors + offset, 0.0, 255.0)


def chromatic_jitter(colors: np.ndarray, rng: np.random.Generator, p: float = 0.95, std: float = 0.05) -> np.ndarray:
    """With probability p, add Gaussian noise of `std` x 255 to every value of colors [P, 3]
    (0..255), clipped to [0, 255]."""
    apply = rng.uniform()
    colors = np.asarray(colors, dtype=np.float64)
    if apply >= p:
        return colors
    return np.clip(colors + rng.standard_normal(colors.shape) * (std * 255.0), 0.0, 255.0)


def transform_normals(normals: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Unit normals [P, 3] under a rotation x isotropic scale x flips `linear` [3, 3] (for such a map
    the inverse transpose has the same direction as the map); zero normals stay zero."""
    moved = np.asarray(normals, dtype=np.float64) @ np.asarray(linear).T
    norm = np.linalg.norm(moved, axis=1, keepdims=True)
    return np.divide(moved, norm, out=np.zeros_like(moved), where=norm > 0)


def scale_range(scale) -> tuple[float, float] | None:
    """A (low, high) scale range as floats (config lists become tuples, so settings hash and pickle);
    None stays None; anything but 0 < low <= high is a ValueError."""
    if scale is None:
        return None
    if len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1]):
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    return float(scale[0]), float(scale[1])


def check_probabilities(settings, names: tuple[str, ...]) -> None:
    """ValueError naming the first attribute of `settings` among `names` outside [0, 1]."""
    for name in names:
        if not 0.0 <= getattr(settings, name) <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {getattr(settings, name)}")


@dataclass(frozen=True)
class SegAugmentation:
    """The augmentation settings of segmentation finetuning (Pointcept's ScanNet values by default;
    `None`, 0 or an empty tuple turns one off).

    rotate_z, scale, flip_x, flip_y: as `scene_kd.data.augment.random_point_transform` (about the
        origin: the dataset centres each scene first).
    elastic: (granularity, magnitude) pairs in metres, applied in order; elastic_p: probability of
        applying them (all together).
    auto_contrast_p, auto_contrast_blend (None: random); color_translation_p,
    color_translation_ratio; color_jitter_p, color_jitter_std: see the module docstring.
    """

    rotate_z: float = math.pi
    scale: tuple[float, float] | None = (0.9, 1.1)
    flip_x: float = 0.5
    flip_y: float = 0.5
    elastic: tuple[tuple[float, float], ...] | None = ELASTIC_SCANNET
    elastic_p: float = 0.95
    auto_contrast_p: float = 0.2
    auto_contrast_blend: float | None = None
    color_translation_p: float = 0.95
    color_translation_ratio: float = 0.05
    color_jitter_p: float = 0.95
    color_jitter_std: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "scale", scale_range(self.scale))
        elastic = tuple(tuple(float(v) for v in pair) for pair in (self.elastic or ()))
        if any(len(pair) != 2 or not pair[0] > 0 or pair[1] < 0 for pair in elastic):
            raise ValueError(f"elastic must be (granularity > 0, magnitude >= 0) pairs, got {self.elastic}")
        object.__setattr__(self, "elastic", elastic)
        check_probabilities(self, ("flip_x", "flip_y", "elastic_p", "auto_contrast_p", "color_translation_p",
                                   "color_jitter_p"))
        if self.auto_contrast_blend is not None and not 0.0 <= self.auto_contrast_blend <= 1.0:
            raise ValueError(f"auto_contrast_blend must be in [0, 1] or None, got {self.auto_contrast_blend}")
        if self.rotate_z < 0 or self.color_translation_ratio < 0 or self.color_jitter_std < 0:
            raise ValueError("rotate_z, color_translation_ratio and color_jitter_std must be >= 0")

    def point_transform(self, rng: np.random.Generator) -> np.ndarray:
        """A random float64 [4, 4] rotation about z x scale x flips."""
        return random_point_transform(
            rng, rotate_z=self.rotate_z, scale=self.scale, flip_x=self.flip_x, flip_y=self.flip_y
        )

    def apply(
        self,
        rng: np.random.Generator,
        points: np.ndarray,
        colors: np.ndarray,
        normals: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Augment one scene: points float [P, 3] (metres), colors [P, 3] (0..255), normals [P, 3]
        or None -> float64 points (rotated, scaled, flipped, then distorted), float64 colors in
        [0, 255], normals rotated with the points (not distorted).

        The geometric, elastic and color draws come from three generators seeded from `rng`, so
        turning one augmentation off leaves the others' draws unchanged.
        """
        geometry_rng, elastic_rng, color_rng = (
            np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=3)
        )
        linear = self.point_transform(geometry_rng)[:3, :3]
        points = np.asarray(points, dtype=np.float64) @ linear.T
        if normals is not None:
            normals = transform_normals(normals, linear)
        if self.elastic and elastic_rng.uniform() < self.elastic_p:
            points = elastic_distortion(points, elastic_rng, self.elastic)
        colors = chromatic_auto_contrast(colors, color_rng, self.auto_contrast_p, self.auto_contrast_blend)
        colors = chromatic_translation(colors, color_rng, self.color_translation_p, self.color_translation_ratio)
        colors = chromatic_jitter(colors, color_rng, self.color_jitter_p, self.color_jitter_std)
        return points, colors, normals


__all__ = [
    "ELASTIC_SCANNET",
    "SegAugmentation",
    "chromatic_auto_contrast",
    "chromatic_jitter",
    "chromatic_translation",
    "elastic_displacement",
    "elastic_distortion",
    "transform_normals",
]
