"""Augmentations that keep pixel-to-point pairs consistent.

3D: a random rotation about +z, scaling and x / y flips, as one [4, 4] matrix applied to the points
before voxelization. Pairs refer to points and voxels, not to coordinates, so they stay valid.

2D: a random resized crop then a horizontal flip of the teacher's image, as an `ImageTransform`
that applies the same map to the image and to continuous pixel coordinates. Pixel centres sit at
integer coordinates (as in `scene_kd.data.geometry`), so an output pixel `j` of a crop box
`[x0, x1)` (pixel-edge coordinates) resized to width `W` samples the source at
`x0 + (j + 0.5) * (x1 - x0) / W - 0.5`, exactly where Pillow's `resize(box=...)` samples it.

Everything random draws from a `numpy.random.Generator`: the same generator state gives the same
transforms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Augmentation:
    """The augmentation settings of pretraining (plain values; `None` or 0 turns one off).

    rotate_z: maximum rotation about +z in radians (uniform in [-rotate_z, rotate_z]; pi: any).
    scale: (low, high) uniform isotropic scale factor.
    flip_x, flip_y: probability of negating x, resp. y.
    crop_scale: (low, high) area of the crop as a fraction of the image; None: no crop (the whole
        image is resized to the teacher's size).
    crop_ratio: (low, high) aspect ratio of the crop relative to the output's (log-uniform), so 1
        means no distortion.
    hflip: probability of a horizontal flip of the image.
    """

    rotate_z: float = math.pi
    scale: tuple[float, float] | None = (0.9, 1.1)
    flip_x: float = 0.5
    flip_y: float = 0.5
    crop_scale: tuple[float, float] | None = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self):
        # Config lists (YAML, OmegaConf) become plain float tuples, so the settings hash and pickle.
        for name in ("scale", "crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2:
                    raise ValueError(f"{name} must be a (low, high) pair, got {value}")
                object.__setattr__(self, name, (float(value[0]), float(value[1])))
        for name in ("flip_x", "flip_y", "hflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.rotate_z < 0:
            raise ValueError(f"rotate_z must be >= 0 radians, got {self.rotate_z}")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (low, high) in (0, 1], low <= high, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {self.crop_ratio}")

    def point_transform(self, rng: np.random.Generator) -> np.ndarray:
        """A random [4, 4] point transform (see `random_point_transform`)."""
        return random_point_transform(
            rng, rotate_z=self.rotate_z, scale=self.scale, flip_x=self.flip_x, flip_y=self.flip_y
        )

    def image_transform(
        self, rng: np.random.Generator, in_size: tuple[int, int], out_size: tuple[int, int]
    ) -> ImageTransform:
        """A random `ImageTransform` from an image of `in_size` to `out_size` (W, H)."""
        return random_image_transform(
            rng, in_size, out_size, crop_scale=self.crop_scale, crop_ratio=self.crop_ratio, hflip=self.hflip
        )


def random_point_transform(
    rng: np.random.Generator,
    *,
    rotate_z: float = math.pi,
    scale: tuple[float, float] | None = (0.9, 1.1),
    flip_x: float = 0.5,
    flip_y: float = 0.5,
) -> np.ndarray:
    """float64 [4, 4]: flips, then scale, then a rotation about +z (about the origin).

    Always draws four uniforms (angle, scale, flip x, flip y), so the generator's stream does not
    depend on which are enabled.
    """
    u_angle, u_scale, u_flip_x, u_flip_y = rng.uniform(size=4)
    angle = rotate_z * (2.0 * u_angle - 1.0)
    factor = scale[0] + (scale[1] - scale[0]) * u_scale if scale is not None else 1.0
    fx = -1.0 if u_flip_x < flip_x else 1.0
    fy = -1.0 if u_flip_y < flip_y else 1.0
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag([fx * factor, fy * factor, factor])
    return m


@dataclass(frozen=True)
class ImageTransform:
    """Crop `box` (x0, y0, x1, y1 in pixel-edge coordinates of the input), resize to `out_size`
    (W, H), then flip horizontally if `flip`. `in_size` is the input's (W, H)."""

    in_size: tuple[int, int]
    out_size: tuple[int, int]
    box: tuple[float, float, float, float]
    flip: bool = False

    @classmethod
    def identity(cls, size: tuple[int, int]) -> ImageTransform:
        """Leaves an image of `size` (W, H) unchanged."""
        return cls(tuple(size), tuple(size), (0.0, 0.0, float(size[0]), float(size[1])), False)

    @classmethod
    def resize(cls, in_size: tuple[int, int], out_size: tuple[int, int]) -> ImageTransform:
        """Resizes the whole image to `out_size`."""
        return cls(tuple(in_size), tuple(out_size), (0.0, 0.0, float(in_size[0]), float(in_size[1])), False)

    @property
    def resamples(self) -> bool:
        """True when the image is cropped or resized (not only flipped, or left alone)."""
        full = (0.0, 0.0, float(self.in_size[0]), float(self.in_size[1]))
        return tuple(self.in_size) != tuple(self.out_size) or tuple(float(v) for v in self.box) != full

    @property
    def is_identity(self) -> bool:
        """True when the transform changes nothing."""
        return not self.flip and not self.resamples

    def _scales(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return self.out_size[0] / (x1 - x0), self.out_size[1] / (y1 - y0)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] of `in_size` -> uint8 [H', W', 3] of `out_size` (Pillow's antialiased
        bilinear resize of the crop box)."""
        if image.shape[1::-1] != tuple(self.in_size):
            raise ValueError(
                f"image is {image.shape[1]}x{image.shape[0]}, transform expects {self.in_size[0]}x{self.in_size[1]}"
            )
        out = image
        if self.resamples:
            out = np.asarray(
                Image.fromarray(image).resize(tuple(self.out_size), Image.BILINEAR, box=tuple(self.box))
            )
        if self.flip:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def map_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous input pixel coordinates -> output coordinates (float64); points outside the
        crop land outside the output (check with `geometry.inside_image`)."""
        x0, y0, _, _ = self.box
        sx, sy = self._scales()
        out_cols = (np.asarray(cols, dtype=np.float64) + 0.5 - x0) * sx - 0.5
        out_rows = (np.asarray(rows, dtype=np.float64) + 0.5 - y0) * sy - 0.5
        if self.flip:
            out_cols = self.out_size[0] - 1 - out_cols
        return out_rows, out_cols

    def inverse_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output pixel coordinates -> the continuous input coordinates they show (float64)."""
        x0, y0, _, _ = self.box
        sx, sy = self._scales()
        cols = np.asarray(cols, dtype=np.float64)
        if self.flip:
            cols = self.out_size[0] - 1 - cols
        in_cols = (cols + 0.5) / sx + x0 - 0.5
        in_rows = (np.asarray(rows, dtype=np.float64) + 0.5) / sy + y0 - 0.5
        return in_rows, in_cols


def random_crop_box(
    rng: np.random.Generator,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[float, float, float, float]:
    """An integer crop box (x0, y0, x1, y1) of area `scale` x the image's and aspect ratio
    `ratio` x the output's (log-uniform), at a uniform position, as torchvision's
    RandomResizedCrop; after `attempts` boxes that do not fit, the largest centred box with the
    output's aspect ratio."""
    width, height = in_size
    target_aspect = out_size[0] / out_size[1]
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        crop_area = area * rng.uniform(*scale)
        aspect = target_aspect * math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(crop_area * aspect)))
        h = int(round(math.sqrt(crop_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (float(x0), float(y0), float(x0 + w), float(y0 + h))
    if width / height > target_aspect:
        h = height
        w = max(1, min(width, int(round(h * target_aspect))))
    else:
        w = width
        h = max(1, min(height, int(round(w / target_aspect))))
    x0, y0 = (width - w) // 2, (height - h) // 2
    return (float(x0), float(y0), float(x0 + w), float(y0 + h))


def random_image_transform(
    rng: np.random.Generator,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    crop_scale: tuple[float, float] | None = (0.5, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> ImageTransform:
    """A random resized crop (`crop_scale` None: the whole image resized) and horizontal flip
    (probability `hflip`) from `in_size` to `out_size` (W, H)."""
    in_size, out_size = tuple(int(v) for v in in_size), tuple(int(v) for v in out_size)
    if crop_scale is None:
        box = (0.0, 0.0, float(in_size[0]), float(in_size[1]))
    else:
        box = random_crop_box(rng, in_size, out_size, crop_scale, crop_ratio)
    flip = bool(rng.uniform() < hflip)
    return ImageTransform(in_size, out_size, box, flip)


__all__ = [
    "Augmentation",
    "ImageTransform",
    "random_crop_box",
    "random_image_transform",
    "random_point_transform",
]


def coerce_augmentation(augment, augmentation_type: type):
    """A dataset's `augment` argument as an instance of `augmentation_type` or None: True gives the
    defaults, a mapping gives `augmentation_type(**mapping)`, False / None give None."""
    if augment is True:
        return augmentation_type()
    if isinstance(augment, Mapping):
        return augmentation_type(**augment)
    if augment is False or augment is None:
        return None
    if not isinstance(augment, augmentation_type):
        raise TypeError(f"augment must be a bool, a {augmentation_type.__name__}, a mapping or None, "
                        f"got {type(augment).__name__}")
    return augment
