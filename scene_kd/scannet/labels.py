"""ScanNet label sets: nyu40, the 20-class segmentation and 18-class detection benchmarks,
ScanNet200, and the `scannetv2-labels.combined.tsv` raw-category table.

Class indices are int64 with -1 = ignore. The id lists, names and colors are data copied from
ScanNet's benchmark scripts and Pointcept's `scannet200_constants.py`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scene_kd.atomic import write_text_atomic
from scene_kd.scannet.errors import ScanNetFormatError, read_utf8_text

IGNORE_INDEX = -1

# Index i is nyu40 id i (0 = unannotated).
NYU40_NAMES = (
    "unannotated", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow",
    "mirror", "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper",
    "towel", "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

# ScanNet's create_color_palette(): the color of nyu40 id i, uint8 [41, 3].
NYU40_PALETTE = np.array(
    [
        (0, 0, 0), (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
        (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
        (196, 156, 148), (23, 190, 207), (178, 76, 76), (247, 182, 210), (66, 188, 102),
        (219, 219, 141), (140, 57, 197), (202, 185, 52), (51, 176, 203), (200, 54, 131),
        (92, 193, 61), (78, 71, 183), (172, 114, 82), (255, 127, 14), (91, 163, 138), (153, 98, 156),
        (140, 153, 101), (158, 218, 229), (100, 125, 154), (178, 127, 135), (120, 185, 128),
        (146, 111, 194), (44, 160, 44), (112, 128, 144), (96, 207, 209), (227, 119, 194),
        (213, 92, 176), (94, 106, 211), (82, 84, 163), (100, 85, 144),
    ],
    dtype=np.uint8,
)  # fmt: skip

SEG20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SEG20_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)  # fmt: skip
SEG20_PALETTE = NYU40_PALETTE[list(SEG20_NYU40_IDS)]  # uint8 [20, 3]

DET18_NYU40_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
DET18_NAMES = (
    "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "garbage bin",
)  # fmt: skip

# ScanNet200: the tsv `id` of each of the 200 classes, in class-index order.
SEG200_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29,
    31, 32, 33, 34, 35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57,
    58, 59, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86,
    87, 88, 89, 90, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 110, 112, 115,
    116, 118, 120, 121, 122, 125, 128, 130, 131, 132, 134, 136, 138, 139, 140, 141, 145, 148, 154,
    155, 156, 157, 159, 161, 163, 165, 166, 168, 169, 170, 177, 180, 185, 188, 191, 193, 195, 202,
    208, 213, 214, 221, 229, 230, 232, 233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312, 323,
    325, 331, 342, 356, 370, 392, 395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776,
    1156, 1163, 1164, 1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178,
    1179, 1180, 1181, 1182, 1183, 1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191,
)  # fmt: skip
SEG200_NAMES = (
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair",
    "bed", "pillow", "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book",
    "armchair", "coffee table", "box", "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes",
    "tv", "nightstand", "counter", "dresser", "stool", "cushion", "plant", "ceiling", "bathtub",
    "end table", "dining table", "keyboard", "bag", "backpack", "toilet paper", "printer", "tv stand",
    "whiteboard", "blanket", "shower curtain", "trash can", "closet", "stairs", "microwave", "stove",
    "shoe", "computer tower", "bottle", "bin", "ottoman", "bench", "board", "washing machine",
    "mirror", "copier", "basket", "sofa chair", "file cabinet", "fan", "laptop", "shower", "paper",
    "person", "paper towel dispenser", "oven", "blinds", "rack", "plate", "blackboard", "piano",
    "suitcase", "rail", "radiator", "recycling bin", "container", "wardrobe", "soap dispenser",
    "telephone", "bucket", "clock", "stand", "light", "laundry basket", "pipe", "clothes dryer",
    "guitar", "toilet paper holder", "seat", "speaker", "column", "bicycle", "ladder",
    "bathroom stall", "shower wall", "cup", "jacket", "storage bin", "coffee maker", "dishwasher",
    "paper towel roll", "machine", "mat", "windowsill", "bar", "toaster", "bulletin board",
    "ironing board", "fireplace", "soap dish", "kitchen counter", "doorframe",
    "toilet paper dispenser", "mini fridge", "fire extinguisher", "ball", "hat", "shower curtain rod",
    "water cooler", "paper cutter", "tray", "shower door", "pillar", "ledge", "toaster oven", "mouse",
    "toilet seat cover dispenser", "furniture", "cart", "storage container", "scale", "tissue box",
    "light switch", "crate", "power outlet", "decoration", "sign", "projector", "closet door",
    "vacuum cleaner", "candle", "plunger", "stuffed animal", "headphones", "dish rack", "broom",
    "guitar case", "range hood", "dustpan", "hair dryer", "water bottle", "handicap bar", "purse",
    "vent", "shower floor", "water pitcher", "mailbox", "bowl", "paper bag", "alarm clock",
    "music stand", "projector screen", "divider", "laundry detergent", "bathroom counter", "object",
    "bathroom vanity", "closet wall", "laundry hamper", "bathroom stall door", "ceiling light",
    "trash bin", "dumbbell", "stair rail", "tube", "bathroom cabinet", "cd case", "closet rod",
    "coffee kettle", "structure", "shower head", "keyboard piano", "case of water bottles",
    "coat rack", "storage organizer", "folded chair", "fire alarm", "power strip", "calendar",
    "poster", "potted plant", "luggage", "mattress",
)  # fmt: skip

# The columns of scannetv2-labels.combined.tsv, in order, and the LabelRow attribute of each.
TSV_COLUMNS = (
    ("id", "id"), ("raw_category", "raw_category"), ("category", "category"), ("count", "count"),
    ("nyu40id", "nyu40id"), ("eigen13id", "eigen13id"), ("nyuClass", "nyu_class"),
    ("nyu40class", "nyu40class"), ("eigen13class", "eigen13class"), ("ModelNet40", "modelnet40"),
    ("ModelNet10", "modelnet10"), ("ShapeNetCore55", "shapenetcore55"),
    ("synsetoffset", "synsetoffset"), ("wnsynsetid", "wnsynsetid"), ("wnsynsetkey", "wnsynsetkey"),
    ("mpcat40", "mpcat40"), ("mpcat40index", "mpcat40index"),
)  # fmt: skip


@dataclass
class LabelRow:
    """One row of `scannetv2-labels.combined.tsv`. `id` is the ScanNet (ScanNet200) category id,
    `nyu40id` the nyu40 class (0 = none); the other columns are kept as text."""

    id: int
    raw_category: str
    category: str
    nyu40id: int
    count: int = 0
    eigen13id: str = ""
    nyu_class: str = ""
    nyu40class: str = ""
    eigen13class: str = ""
    modelnet40: str = ""
    modelnet10: str = ""
    shapenetcore55: str = ""
    synsetoffset: str = ""
    wnsynsetid: str = ""
    wnsynsetkey: str = ""
    mpcat40: str = ""
    mpcat40index: str = ""


def _parse_int(text: str, path: Path, line: int, column: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScanNetFormatError(
            f"{path}: line {line}: column {column} is {text!r}, not an integer"
        ) from None


def read_label_tsv(path: str | os.PathLike) -> dict[str, LabelRow]:
    """Read the raw-category table, keyed by raw_category (LF or CRLF line endings).

    A raw category listed twice with different `id` or `nyu40id` is a ScanNetFormatError (which
    row wins would otherwise be silent); a file that is not UTF-8 is one too."""
    path = Path(path)
    text = read_utf8_text(path, "tab-separated label table")
    reader = csv.reader(io.StringIO(text, newline=None), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
        raise ScanNetFormatError(f"{path}: empty file, expected a header line")
    header = [h.strip() for h in header]
    missing = [name for name in ("id", "raw_category", "nyu40id") if name not in header]
    if missing:
        raise ScanNetFormatError(f"{path}: header lacks column(s) {missing}; got {header}")
    column = {name: header.index(name) for name in header}
    rows: dict[str, LabelRow] = {}
    for line, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = fields + [""] * (len(header) - len(fields))
        # an optional column the file lacks reads as "" (only id, raw_category, nyu40id are required)
        values = {attr: fields[column[col]] if col in column else "" for col, attr in TSV_COLUMNS}
        row = LabelRow(
            **{
                **values,
                "id": _parse_int(values["id"], path, line, "id"),
                "nyu40id": _parse_int(values["nyu40id"], path, line, "nyu40id"),
                "count": _parse_int(values["count"] or "0", path, line, "count"),
            }
        )
        earlier = rows.get(row.raw_category)
        if earlier is not None and (earlier.id, earlier.nyu40id) != (row.id, row.nyu40id):
            raise ScanNetFormatError(
                f"{path}: line {line}: raw category {row.raw_category!r} is listed again with id "
                f"{row.id} / nyu40id {row.nyu40id} (earlier: {earlier.id} / {earlier.nyu40id})"
            )
        rows[row.raw_category] = row
    return rows


def write_label_tsv(path: str | os.PathLike, rows: Iterable[LabelRow]) -> None:
    """Write rows with the full 17-column header, LF line endings. An empty `nyu40class` is filled
    from NYU40_NAMES."""
    lines = ["\t".join(col for col, _ in TSV_COLUMNS)]
    for row in rows:
        values = []
        for _, attr in TSV_COLUMNS:
            value = getattr(row, attr)
            if attr == "nyu40class" and not value and 0 <= row.nyu40id < len(NYU40_NAMES):
                value = NYU40_NAMES[row.nyu40id]
            text = str(value)
            if "\t" in text or "\n" in text:
                raise ValueError(
                    f"{path}: {attr} {text!r} of raw category {row.raw_category!r} holds a tab or newline"
                )
            values.append(text)
        lines.append("\t".join(values))
    write_text_atomic(path, "\n".join(lines) + "\n")


def raw_to_nyu40(path: str | os.PathLike) -> dict[str, int]:
    """raw_category -> nyu40 id, from the tsv at `path`."""
    return {raw: row.nyu40id for raw, row in read_label_tsv(path).items()}


def _lookup(values: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """Map each value to its position in `ids`, -1 where absent (values of any integer range)."""
    ids = np.asarray(list(ids), dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, values), 0, len(ids) - 1)
    found = sorted_ids[pos] == values
    return np.where(found, order[pos], IGNORE_INDEX).astype(np.int64)


def nyu40_to_seg20(nyu40: np.ndarray) -> np.ndarray:
    """nyu40 ids (any integer array) -> 20-class indices int64, -1 for every other id."""
    return _lookup(nyu40, SEG20_NYU40_IDS)


def nyu40_to_det18(nyu40: np.ndarray) -> np.ndarray:
    """nyu40 ids (any integer array) -> 18-class detection indices int64, -1 for every other id."""
    return _lookup(nyu40, DET18_NYU40_IDS)


def scannet_id_to_seg200(ids: np.ndarray) -> np.ndarray:
    """ScanNet category ids (the tsv `id` column) -> ScanNet200 class indices int64, -1 if not one
    of the 200."""
    return _lookup(ids, SEG200_IDS)


def raw_to_seg200(rows: dict[str, LabelRow]) -> dict[str, int]:
    """raw_category -> ScanNet200 class index (-1 where the category is not one of the 200)."""
    raws = list(rows)
    indices = scannet_id_to_seg200(np.array([rows[r].id for r in raws], dtype=np.int64))
    return dict(zip(raws, indices.tolist(), strict=True))
