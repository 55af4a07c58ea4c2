"""What synthetic rooms are made of: raw categories (with their tsv rows) and surface materials.

Materials are shared between classes on purpose (wood for tables, desks, cabinets, doors and
bookshelves; white for walls, toilets, sinks, bathtubs and refrigerators; fabric of any hue for
chairs, sofas, beds and curtains), and every instance draws its own color inside its material's
range, so a vertex color does not tell the class.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from scene_kd.synthetic.geometry import value_noise


@dataclass(frozen=True)
class RawCategory:
    """One raw annotation category and its `scannetv2-labels.combined.tsv` columns.

    scannet_id: the tsv `id` (ScanNet200 ids where the category is one of the 200);
    nyu40_id: the nyu40 class (what labels.ply stores).
    """

    raw_category: str
    category: str
    scannet_id: int
    nyu40_id: int
    count: int
    eigen13_id: int
    eigen13_class: str
    mpcat40: str
    mpcat40_index: int
    wnsynsetid: str
    wnsynsetkey: str
    modelnet40: str = ""
    shapenet: str = ""
    synsetoffset: str = ""


# Counts are made up but of ScanNet's order of magnitude; ids follow ScanNet200 where the category
# is one of the 200, and are otherwise ids above ScanNet200's range.
CATEGORIES: tuple[RawCategory, ...] = (
    RawCategory("wall", "wall", 1, 1, 8277, 12, "Wall", "wall", 1, "n04546855", "wall.n.01"),
    RawCategory("chair", "chair", 2, 5, 4646, 4, "Chair", "chair", 3, "n03001627", "chair.n.01", "chair", "chair", "03001627"),
    RawCategory("floor", "floor", 3, 2, 1553, 5, "Floor", "floor", 2, "n03365592", "floor.n.01"),
    RawCategory("table", "table", 4, 7, 2454, 10, "Table", "table", 5, "n04379243", "table.n.02", "table", "table", "04379243"),
    RawCategory("door", "door", 5, 8, 2072, 12, "Wall", "door", 4, "n03221720", "door.n.01", "door"),
    RawCategory("couch", "couch", 6, 6, 755, 9, "Sofa", "sofa", 10, "n04256520", "sofa.n.01", "sofa", "sofa", "04256520"),
    RawCategory("cabinet", "cabinet", 7, 3, 1117, 6, "Furniture", "cabinet", 7, "n02933112", "cabinet.n.01", "", "cabinet", "02933112"),
    RawCategory("desk", "desk", 9, 14, 680, 10, "Table", "table", 5, "n03179701", "desk.n.01", "desk"),
    RawCategory("office chair", "office chair", 10, 5, 595, 4, "Chair", "chair", 3, "n04373704", "swivel_chair.n.01", "chair", "chair", "03001627"),
    RawCategory("bed", "bed", 11, 4, 370, 1, "Bed", "bed", 11, "n02818832", "bed.n.01", "bed", "bed", "02818832"),
    RawCategory("pillow", "pillow", 13, 18, 937, 7, "Objects", "cushion", 8, "n03938244", "pillow.n.01"),
    RawCategory("sink", "sink", 14, 34, 488, 7, "Objects", "sink", 15, "n04223580", "sink.n.01", "sink"),
    RawCategory("picture", "picture", 15, 11, 862, 8, "Picture", "picture", 6, "n03931044", "picture.n.01"),
    RawCategory("window", "window", 16, 9, 1206, 13, "Window", "window", 9, "n04587648", "window.n.01"),
    RawCategory("toilet", "toilet", 17, 33, 291, 7, "Objects", "toilet", 18, "n04446276", "toilet.n.01", "toilet"),
    RawCategory("bookshelf", "bookshelf", 18, 10, 360, 6, "Furniture", "shelving", 31, "n02871439", "bookshelf.n.01", "bookshelf", "bookshelf", "02871439"),
    RawCategory("monitor", "monitor", 19, 40, 765, 7, "Objects", "tv_monitor", 22, "n03782190", "monitor.n.04", "", "monitor", "03211117"),
    RawCategory("curtain", "curtain", 21, 16, 356, 13, "Window", "curtain", 12, "n03151077", "curtain.n.01", "curtain"),
    RawCategory("armchair", "armchair", 23, 5, 281, 4, "Chair", "chair", 3, "n02738535", "armchair.n.01", "chair", "chair", "03001627"),
    RawCategory("coffee table", "coffee table", 24, 7, 258, 10, "Table", "table", 5, "n03063968", "coffee_table.n.01", "table", "table", "04379243"),
    RawCategory("box", "box", 26, 29, 775, 7, "Objects", "objects", 39, "n02883344", "box.n.01"),
    RawCategory("refrigerator", "refrigerator", 27, 24, 154, 6, "Furniture", "appliances", 37, "n04070727", "refrigerator.n.01"),
    RawCategory("lamp", "lamp", 28, 35, 419, 7, "Objects", "lighting", 28, "n03636248", "lamp.n.02", "lamp", "lamp", "03636649"),
    RawCategory("kitchen cabinets", "kitchen cabinet", 29, 3, 310, 6, "Furniture", "cabinet", 7, "n02933112", "cabinet.n.01", "", "cabinet", "02933112"),
    RawCategory("nightstand", "nightstand", 34, 32, 224, 6, "Furniture", "chest_of_drawers", 13, "n03015254", "chest_of_drawers.n.01", "night_stand"),
    RawCategory("counter", "counter", 35, 12, 153, 6, "Furniture", "counter", 26, "n03116530", "counter.n.01"),
    RawCategory("dresser", "dresser", 36, 17, 169, 6, "Furniture", "chest_of_drawers", 13, "n03015254", "chest_of_drawers.n.01", "dresser"),
    RawCategory("bathtub", "bathtub", 42, 36, 144, 7, "Objects", "bathtub", 25, "n02808440", "bathtub.n.01", "bathtub", "bathtub", "02808440"),
    RawCategory("end table", "end table", 44, 7, 147, 10, "Table", "table", 5, "n03290195", "end_table.n.01", "table", "table", "04379243"),
    RawCategory("dining table", "dining table", 45, 7, 118, 10, "Table", "table", 5, "n03201208", "dining_table.n.01", "table", "table", "04379243"),
    RawCategory("shower curtain", "shower curtain", 55, 28, 144, 7, "Objects", "curtain", 12, "n04209239", "shower_curtain.n.01", "curtain"),
    RawCategory("trash can", "trash can", 56, 39, 1090, 6, "Furniture", "objects", 39, "n02747177", "ashcan.n.01", "", "trash_bin", "02747177"),
    RawCategory("ottoman", "ottoman", 67, 39, 111, 6, "Furniture", "stool", 19, "n03380724", "footstool.n.01"),
    RawCategory("bench", "bench", 68, 39, 89, 6, "Furniture", "seating", 34, "n02828884", "bench.n.01", "bench", "bench", "02828884"),
    RawCategory("file cabinet", "file cabinet", 75, 3, 217, 6, "Furniture", "cabinet", 7, "n03337140", "file.n.03", "", "cabinet", "02933112"),
    RawCategory("recycling bin", "recycling bin", 97, 39, 225, 6, "Furniture", "objects", 39, "n02747177", "ashcan.n.01", "", "trash_bin", "02747177"),
    RawCategory("kitchen counter", "kitchen counter", 130, 12, 140, 6, "Furniture", "counter", 26, "n03116530", "counter.n.01"),
    RawCategory("sofa", "couch", 1201, 6, 39, 9, "Sofa", "sofa", 10, "n04256520", "sofa.n.01", "sofa", "sofa", "04256520"),
    RawCategory("wardrobe", "wardrobe", 1202, 39, 12, 6, "Furniture", "furniture", 36, "n04550184", "wardrobe.n.01", "wardrobe"),
)  # fmt: skip

CATEGORY_BY_RAW: dict[str, RawCategory] = {c.raw_category: c for c in CATEGORIES}


def nyu40_of(raw_category: str) -> int:
    """The nyu40 id of a raw category of the catalog."""
    return CATEGORY_BY_RAW[raw_category].nyu40_id


@dataclass(frozen=True)
class Material:
    """A family of surface colors: HSV ranges to draw an instance's base color from, and a pattern.

    pattern: "plain", "fabric", "wood", "tile", "metal", "glass", "picture" or "books".
    """

    pattern: str
    hue: tuple[float, float]
    saturation: tuple[float, float]
    value: tuple[float, float]


WOOD = Material("wood", (0.05, 0.11), (0.3, 0.75), (0.25, 0.75))
WHITE = Material("plain", (0.0, 1.0), (0.0, 0.08), (0.72, 0.95))
PAINT = Material("plain", (0.0, 1.0), (0.04, 0.3), (0.62, 0.92))
FABRIC = Material("fabric", (0.0, 1.0), (0.15, 0.7), (0.2, 0.8))
CARPET = Material("fabric", (0.0, 1.0), (0.05, 0.45), (0.25, 0.7))
DARK = Material("plain", (0.0, 0.12), (0.0, 0.5), (0.05, 0.3))
METAL = Material("metal", (0.0, 1.0), (0.0, 0.08), (0.35, 0.8))
GLASS = Material("glass", (0.5, 0.62), (0.08, 0.3), (0.45, 0.8))
TILE = Material("tile", (0.0, 1.0), (0.0, 0.15), (0.55, 0.9))
PLASTIC = Material("plain", (0.0, 1.0), (0.3, 0.8), (0.3, 0.85))
ART = Material("picture", (0.0, 1.0), (0.3, 0.8), (0.3, 0.9))
BOOKS = Material("books", (0.0, 1.0), (0.3, 0.8), (0.25, 0.85))

# For each material slot of each object kind: the materials an instance picks from.
SLOT_MATERIALS: dict[str, tuple[Material, ...]] = {
    "wall": (PAINT, WHITE, WHITE),
    "floor": (WOOD, CARPET, TILE),
    "wood_or_white": (WOOD, WOOD, WHITE, PAINT),
    "legs": (WOOD, METAL, DARK),
    "seat": (FABRIC, WOOD, DARK),
    "upholstery": (FABRIC, FABRIC, DARK),
    "bedding": (FABRIC, WHITE),
    "top": (WOOD, WOOD, WHITE, DARK, GLASS),
    "sanitary": (WHITE, WHITE, PAINT),
    "appliance": (WHITE, METAL, DARK),
    "handle": (METAL, DARK),
    "glass": (GLASS,),
    "frame": (WHITE, WOOD, DARK, METAL),
    "art": (ART,),
    "books": (BOOKS,),
    "curtain": (FABRIC, WHITE, PAINT),
    "bin": (PLASTIC, METAL, DARK),
    "counter_top": (WOOD, WHITE, DARK, TILE),
    "cardboard": (WOOD,),
    "clutter": (PLASTIC, FABRIC, METAL, WOOD),
}


def draw_base_color(material: Material, rng: np.random.Generator) -> np.ndarray:
    """One instance's base color, float64 [3] RGB in [0, 1], drawn inside the material's ranges."""
    h = rng.uniform(*material.hue) % 1.0
    s = rng.uniform(*material.saturation)
    v = rng.uniform(*material.value)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    )
    return table[i, np.arange(len(h))]


def surface_colors(
    material: Material, base: np.ndarray, points: np.ndarray, seed: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-vertex colors uint8 [N, 3] of one part: the base color [3] modulated by the material's
    procedural pattern evaluated at `points` float [N, 3] (metres), plus per-vertex jitter."""
    n = len(points)
    shade = 1.0 + 0.16 * (value_noise(points, 3.0, seed) - 0.5)
    rgb = np.broadcast_to(base, (n, 3)).astype(np.float64)
    if material.pattern == "fabric":
        shade += 0.25 * (value_noise(points, 25.0, seed + 1) - 0.5)
    elif material.pattern == "wood":
        axis = np.array([1.0, 0.0, 0.0]) if seed % 2 else np.array([0.0, 1.0, 0.0])
        grain = np.sin(2 * math.pi * (points @ axis * 6.0 + 3.0 * value_noise(points, 1.5, seed + 2)))
        shade += 0.12 * grain + 0.1 * (value_noise(points, 12.0, seed + 3) - 0.5)
    elif material.pattern == "tile":
        size = 0.3 + 0.1 * (seed % 3)
        grout = (np.abs((points[:, :2] / size) - np.round(points[:, :2] / size)) < 0.04).any(1)
        shade = np.where(grout, 0.6, shade)
    elif material.pattern == "metal":
        shade += 0.3 * (value_noise(points, 8.0, seed + 4) - 0.5)
    elif material.pattern == "glass":
        shade += 0.35 * (value_noise(points, 2.0, seed + 5) - 0.5)
    elif material.pattern in ("picture", "books"):
        # many colors inside one object: blobs for a picture, stripes of book spines for books
        if material.pattern == "picture":
            hue = value_noise(points, 4.0, seed + 6) * 2.0
        else:
            spine = np.floor((points[:, 0] + points[:, 1]) / 0.035)
            hue = value_noise(np.stack([spine, spine * 0.0, spine * 0.0], 1), 1.0, seed + 7) * 3.0
        s = np.clip(0.2 + 0.7 * value_noise(points, 6.0, seed + 8), 0, 1)
        v = np.clip(0.25 + 0.7 * value_noise(points, 5.0, seed + 9), 0, 1)
        rgb = _hsv_to_rgb(hue % 1.0, s, v)
    rgb = rgb * shade[:, None] + rng.normal(0.0, 0.015, size=(n, 3))
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
