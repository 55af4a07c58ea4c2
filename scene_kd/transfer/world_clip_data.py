"""Image-text pairs of the synthetic world, the in-world stand-in for CLIP's web image-text pairs.

Every frame of the processed scenes gets 2D labels the way `frame_labels` makes them (the annotated
points projected with a depth test, here the 20-class label and the instance id together). Three kinds
of pair come out of a frame:
- a crop per object instance seen in it (enough labelled pixels, a large enough box): the box of its
  labelled pixels widened by a margin and made square where the frame allows, resized to the CLIP
  input size, captioned with its class name through a prompt template ("a photo of a chair.");
- region crops: a square window (`region_side` of the frame's shorter side, or each of several
  sides) around a random labelled pixel of each class in the frame, kept when that class holds at
  least `min_region_purity` of the window's labelled pixels, captioned the same way: clean views of walls, floors and object parts at
  the scale of a few ViT patches, which instance boxes (mostly background) and frames do not give;
- the whole frame, resized (stretched) to the CLIP input size, captioned with the classes that cover
  at least a fraction of its labelled pixels ("a room with a bed, a wall and a floor.").
Templates and the order of the classes in a frame caption are drawn from a generator seeded by
(seed, scene, frame), so the pair set is the same for the same seed whatever else is built. Train and
validation sets come from different scenes (the processed root's split files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from scene_kd.eval.zeroshot import SCANNET_TEMPLATES, seg20_prompt_names
from scene_kd.transfer.frame_labels import load_labelled_frames

CROP = 0  # an object instance's box
FRAME = 1  # a whole frame
REGION = 2  # a window where one class dominates
# Crops are captioned with the zero-shot evaluation's prompt templates (CLIP's recipe, indoor phrasings).
CROP_TEMPLATES = SCANNET_TEMPLATES
FRAME_TEMPLATES = (
    "a photo of a room with {}.",
    "an indoor scene with {}.",
    "a room with {}.",
    "a photo of {}.",
)


@dataclass(frozen=True)
class PairSettings:
    """How pairs are cut from frames. Sizes in pixels of the frames as read (`frame_size`, W x H)."""

    image_size: int = 64  # side of the square CLIP input
    frame_size: tuple[int, int] = (160, 120)
    min_crop_pixels: int = 8  # labelled pixels an instance needs in a frame to give a crop
    min_crop_side: int = 8  # the box of its labelled pixels must be at least this wide and high
    crop_margin: float = 0.15  # fraction of the box's longer side added on each side
    caption_min_fraction: float = 0.03  # of a frame's labelled pixels, for a class to be named
    max_caption_classes: int = 5  # the largest ones
    min_frame_pixels: int = 50  # labelled pixels a frame needs to give a frame pair
    # region window side, fraction of the frame's shorter side (0: no regions), or several sides (a region
    # per class and side: larger windows show a class at the scale it has in a frame given whole)
    region_side: float | tuple[float, ...] = 0.25
    min_region_purity: float = 0.5  # fraction of a window's labelled pixels its class must hold
    region_tries: int = 4  # random centres tried per class and frame


def load_instance_frames(
    root: str | os.PathLike,
    split: str | os.PathLike | Sequence[str] | None,
    frame_size: tuple[int, int] = (160, 120),
    *,
    label_name: str = "segment20",
    depth_tolerance: float = 0.05,
    progress: bool = False,
) -> dict:
    """Every frame (valid pose) of the processed scenes of `split` with its projected class and instance
    labels at `frame_size` (W, H): `load_labelled_frames(..., with_instances=True)`, whose dict has
    "images", "labels" (class, -1 unlabelled), "instances" (-1 none), "scene_index", "frame_ids",
    "scene_ids"."""
    return load_labelled_frames(root, split, frame_size, label_name=label_name, depth_tolerance=depth_tolerance,
                                with_instances=True, progress=progress)


def instance_boxes(labels: np.ndarray, instances: np.ndarray, min_pixels: int = 8,
                   min_side: int = 8) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """The objects of one frame: (class, instance, (x0, y0, x1, y1)) per instance id with at least
    `min_pixels` labelled pixels whose box (x1, y1 exclusive) is at least `min_side` wide and high; the
    class is the instance's most frequent one. labels, instances: int [H, W], -1 = none. Sorted by
    instance id."""
    out = []
    rows, cols = np.nonzero((instances >= 0) & (labels >= 0))
    ids = instances[rows, cols]
    for instance in np.unique(ids):
        keep = ids == instance
        if np.count_nonzero(keep) < min_pixels:
            continue
        r, c = rows[keep], cols[keep]
        box = (int(c.min()), int(r.min()), int(c.max()) + 1, int(r.max()) + 1)
        if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
            continue
        cls = int(np.bincount(labels[r, c]).argmax())
        out.append((cls, int(instance), box))
    return out


def crop_box(box: tuple[int, int, int, int], frame_size: tuple[int, int],
             margin: float = 0.15) -> tuple[int, int, int, int]:
    """`box` (x0, y0, x1, y1; x1, y1 exclusive) grown to a square of side round((1 + 2 margin) x its
    longer side) around its centre (start = floor of the centred start), shifted to lie inside the frame
    `frame_size` (W, H); along an axis shorter than that side the box spans the whole axis."""
    width, height = frame_size
    x0, y0, x1, y1 = box
    side = min(int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin))), max(width, height))
    out = []
    for lo, hi, limit in ((x0, x1, width), (y0, y1, height)):
        extent = min(side, limit)
        start = min(max((lo + hi - extent) // 2, 0), limit - extent)
        out.append((start, start + extent))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [size, size, 3] (bilinear, not keeping the aspect)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def caption_classes(labels: np.ndarray, min_fraction: float = 0.03, max_classes: int = 5) -> list[int]:
    """Classes covering at least `min_fraction` of a frame's labelled pixels (labels int [H, W], -1
    unlabelled), largest first (ties: lower index), at most `max_classes`."""
    values = labels[labels >= 0]
    if values.size == 0:
        return []
    counts = np.bincount(values)
    order = sorted((k for k in np.nonzero(counts)[0] if counts[k] >= min_fraction * values.size),
                   key=lambda k: (-counts[k], k))
    return [int(k) for k in order[:max_classes]]


def region_boxes(labels: np.ndarray, side: int, rng: np.random.Generator, min_purity: float = 0.5,
                 min_pixels: int = 8, tries: int = 4) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Windows where one class dominates: (class, (x0, y0, x1, y1)) for each class with at least
    `min_pixels` labelled pixels in `labels` (int [H, W], -1 unlabelled), in class order: the first of
    `tries` square windows of `side` pixels, centred on a random pixel of the class (shifted inside
    the frame), in which the class holds at least `min_purity` of the labelled pixels."""
    height, width = labels.shape
    side = min(side, width, height)
    out = []
    for cls in np.unique(labels[labels >= 0]):
        rows, cols = np.nonzero(labels == cls)
        if rows.size < min_pixels:
            continue
        for pick in rng.integers(rows.size, size=tries):
            x0 = min(max(int(cols[pick]) - side // 2, 0), width - side)
            y0 = min(max(int(rows[pick]) - side // 2, 0), height - side)
            window = labels[y0:y0 + side, x0:x0 + side]
            seen = window[window >= 0]
            if np.count_nonzero(seen == cls) >= max(min_pixels, min_purity * seen.size):
                out.append((int(cls), (x0, y0, x0 + side, y0 + side)))
                break
    return out


def region_sides(settings: PairSettings) -> tuple[float, ...]:
    """The region window sides of `settings` (fractions of the frame's shorter side), zeros dropped."""
    sides = settings.region_side if isinstance(settings.region_side, (tuple, list)) else (settings.region_side,)
    return tuple(float(side) for side in sides if side > 0)


def list_with_articles(names: Sequence[str]) -> str:
    """["bed", "wall", "floor"] -> "a bed, a wall and a floor"."""
    items = [f"an {n}" if n[:1] in "aeiou" else f"a {n}" for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def frame_generator(seed: int, scene_index: int, frame_id: int) -> np.random.Generator:
    """The generator of one frame's captions: depends on (seed, scene, frame) alone."""
    return np.random.default_rng([seed, scene_index, frame_id])


def make_pairs(
    frames: dict,
    class_names: Sequence[str],
    settings: PairSettings = PairSettings(),
    *,
    seed: int = 0,
    crop_templates: Sequence[str] = CROP_TEMPLATES,
    frame_templates: Sequence[str] = FRAME_TEMPLATES,
) -> dict:
    """The image-text pairs of `frames` (`load_instance_frames`'s dict): {"images": uint8 [M, S, S, 3]
    (S = settings.image_size), "texts": list[str] [M], "kind": int64 [M] (CROP, REGION or FRAME), "class_index":
    int64 [M] (a crop's or region's class, -1 for frames), "classes": bool [M, K] (the classes its caption names),
    "boxes": int64 [M, 4] (x0, y0, x1, y1 of the region taken from the frame; x1, y1 exclusive),
    "frame_index": int64 [M] (into `frames`), "scene_ids"}. Per frame: its object crops in instance
    order, its region crops in class order (side by side, in the order given), then the frame pair (when
    it has `min_frame_pixels` labelled pixels and a class to name)."""
    num_classes = len(class_names)
    size = settings.image_size
    images, texts, kind, class_index, classes, boxes, frame_index = [], [], [], [], [], [], []

    def add(image: np.ndarray, text: str, what: int, cls: int, named: list[int], box, index: int) -> None:
        images.append(resize_image(image, size))
        texts.append(text)
        kind.append(what)
        class_index.append(cls)
        row = np.zeros(num_classes, dtype=bool)
        row[named] = True
        classes.append(row)
        boxes.append(box)
        frame_index.append(index)

    for index in range(len(frames["images"])):
        image, labels = frames["images"][index], frames["labels"][index]
        if labels.max(initial=-1) >= num_classes:
            raise ValueError(f"frame {index}: class {int(labels.max())} but only {num_classes} class names")
        height, width = labels.shape
        rng = frame_generator(seed, int(frames["scene_index"][index]), int(frames["frame_ids"][index]))
        objects = instance_boxes(labels, frames["instances"][index], settings.min_crop_pixels,
                                 settings.min_crop_side)
        for cls, _, box in objects:
            x0, y0, x1, y1 = crop_box(box, (width, height), settings.crop_margin)
            template = crop_templates[rng.integers(len(crop_templates))]
            add(image[y0:y1, x0:x1], template.format(class_names[cls]), CROP, cls, [cls], (x0, y0, x1, y1), index)
        for fraction in region_sides(settings):
            side = max(1, int(round(fraction * min(width, height))))
            for cls, box in region_boxes(labels, side, rng, settings.min_region_purity, settings.min_crop_pixels,
                                         settings.region_tries):
                x0, y0, x1, y1 = box
                template = crop_templates[rng.integers(len(crop_templates))]
                add(image[y0:y1, x0:x1], template.format(class_names[cls]), REGION, cls, [cls], box, index)
        named = caption_classes(labels, settings.caption_min_fraction, settings.max_caption_classes)
        if named and np.count_nonzero(labels >= 0) >= settings.min_frame_pixels:
            order = [named[i] for i in rng.permutation(len(named))]
            template = frame_templates[rng.integers(len(frame_templates))]
            text = template.format(list_with_articles([class_names[k] for k in order]))
            add(image, text, FRAME, -1, named, (0, 0, width, height), index)
    if not images:
        raise ValueError("make_pairs: no frame gave a pair (too few labelled pixels?)")
    return {
        "images": np.stack(images), "texts": texts, "kind": np.asarray(kind, dtype=np.int64),
        "class_index": np.asarray(class_index, dtype=np.int64), "classes": np.stack(classes),
        "boxes": np.asarray(boxes, dtype=np.int64), "frame_index": np.asarray(frame_index, dtype=np.int64),
        "scene_ids": list(frames.get("scene_ids", [])),
    }


def build_pair_set(
    root: str | os.PathLike,
    split: str | os.PathLike | Sequence[str] | None,
    class_names: Sequence[str] | None = None,
    settings: PairSettings = PairSettings(),
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict, dict]:
    """(pairs, frames) of the processed scenes of `split` under `root`: `make_pairs` of
    `load_instance_frames`. class_names: the prompt names of the label classes (None: the 20 ScanNet
    benchmark classes as the zero-shot evaluation words them)."""
    if class_names is None:
        class_names = seg20_class_names()
    frames = load_instance_frames(root, split, settings.frame_size, progress=progress)
    return make_pairs(frames, class_names, settings, seed=seed), frames


def seg20_class_names() -> list[str]:
    """The 20 ScanNet classes as the prompts word them (`scene_kd.eval.zeroshot.seg20_prompt_names`)."""
    return seg20_prompt_names()


def describe_pairs(pairs: dict, class_names: Sequence[str]) -> dict:
    """Counts of a pair set: {"pairs", "crops", "regions", "frames", "crops_per_class": {name: n},
    "regions_per_class": {name: n}}."""
    out = {"pairs": int(len(pairs["texts"]))}
    for key, what in (("crops", CROP), ("regions", REGION)):
        cls = pairs["class_index"][pairs["kind"] == what]
        counts = np.bincount(cls, minlength=len(class_names))[: len(class_names)]
        out[key] = int(cls.size)
        out[f"{key}_per_class"] = {name: int(n) for name, n in zip(class_names, counts, strict=True)}
    out["frames"] = int(np.count_nonzero(pairs["kind"] == FRAME))
    return out
