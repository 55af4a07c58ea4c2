"""Procedural rooms with ground truth: `generate_room(seed)` -> `SyntheticRoom`.

A room is a rectangle of walls on a floor (no ceiling, as in most ScanNet reconstructions) holding
furniture grouped in zones (a bed with nightstands, a table with chairs, a kitchen run, ...). The
room is laid out in the axis-aligned frame (floor at z = 0, room centred on the origin, furniture
turned by multiples of 90 degrees); the mesh is then moved into a "raw" frame by a random turn about
+z and a translation, and `axis_alignment` maps it back, exactly like ScanNet's `axisAlignment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scene_kd.scannet.annotations import SegGroup
from scene_kd.scannet.mesh import Mesh
from scene_kd.synthetic.catalog import SLOT_MATERIALS, draw_base_color, nyu40_of, surface_colors
from scene_kd.synthetic.furniture import (
    Item,
    Unit,
    box,
    make_armchair,
    make_bathtub,
    make_bed,
    make_bench,
    make_bookshelf,
    make_boxes,
    make_cabinet,
    make_chair,
    make_clutter,
    make_desk,
    make_door,
    make_kitchen_run,
    make_lamp,
    make_monitor,
    make_nightstand,
    make_office_chair,
    make_ottoman,
    make_picture,
    make_sink,
    make_sofa,
    make_table,
    make_toilet,
    make_trash_can,
    make_wardrobe,
    make_window,
)
from scene_kd.synthetic.geometry import MeshBuilder, place, primitive_bounds, rotate_z90

ZONES = ("sleeping", "dining", "lounge", "office", "kitchen", "bathroom", "storage")

# Room surfaces are split into patches of about this size (metres) for the over-segmentation.
STRUCTURE_PATCH = 1.0
MIN_SEGMENT_VERTICES = 20


@dataclass
class SyntheticObject:
    """One annotated instance.

    object_id: its aggregation objectId (= its index in `SyntheticRoom.objects`).
    segments: the segment ids (values of `SyntheticRoom.segments`) that make it up, ascending.
    box: float64 [7] (cx, cy, cz, dx, dy, dz, nyu40_id), the axis-aligned box of its vertices in
    the aligned frame.
    """

    object_id: int
    raw_category: str
    nyu40_id: int
    segments: list[int]
    box: np.ndarray


@dataclass
class SyntheticRoom:
    """A generated room and its ground truth.

    vertices: float32 [N, 3] in the raw frame (what the `.ply` holds); colors: uint8 [N, 3];
    faces: int32 [F, 3]; labels: uint16 [N] nyu40 ids (0 = unannotated); instances: int64 [N]
    objectId (-1 = none); segments: int64 [N] segment ids (segIndices, not contiguous);
    objects: the annotated instances; axis_alignment: float64 [4, 4] mapping raw to aligned
    coordinates (`p' = M @ [p; 1]`); size: (width along x, depth along y, wall height) in metres,
    the room spanning [-w/2, w/2] x [-d/2, d/2] x [0, h] in the aligned frame; zones: the zones laid out.
    """

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    segments: np.ndarray
    objects: list[SyntheticObject]
    axis_alignment: np.ndarray
    size: tuple[float, float, float]
    zones: tuple[str, ...]

    @property
    def mesh(self) -> Mesh:
        """The mesh as written to `_vh_clean_2.ply` (raw frame)."""
        return Mesh(self.vertices, self.colors, self.faces)

    @property
    def seg_groups(self) -> list[SegGroup]:
        """The aggregation's segGroups: one per object, id = objectId, label = raw category."""
        return [SegGroup(o.object_id, o.object_id, list(o.segments), o.raw_category) for o in self.objects]

    def aligned_vertices(self) -> np.ndarray:
        """float64 [N, 3]: the vertices after the axis alignment."""
        m = self.axis_alignment
        return self.vertices.astype(np.float64) @ m[:3, :3].T + m[:3, 3]

    @property
    def boxes(self) -> np.ndarray:
        """float64 [K, 7]: (cx, cy, cz, dx, dy, dz, nyu40_id) of every object, row k = objectId k."""
        return np.stack([o.box for o in self.objects]) if self.objects else np.zeros((0, 7))


BoxBounds = tuple[np.ndarray, np.ndarray]


def _item_bounds(item: Item) -> BoxBounds:
    lo, hi = zip(*(primitive_bounds(p) for p in item.primitives), strict=True)
    return np.min(lo, axis=0), np.max(hi, axis=0)


def _place_item(item: Item, quarter_turns: int, offset: Sequence[float]) -> Item:
    return Item(
        item.raw_category,
        place(item.primitives, quarter_turns, tuple(offset)),
        item.slots,
        item.support,
        item.patch_size,
    )


def _shift(item: Item, dx: float, dy: float, dz: float = 0.0, quarter_turns: int = 0) -> Item:
    return _place_item(item, quarter_turns, (dx, dy, dz))


class _Layout:
    """Occupancy bookkeeping while furnishing one room (all in the aligned frame)."""

    CLEARANCE = 0.03
    WALL_GAP = 0.003  # keeps backs off the wall plane so no two surfaces coincide

    def __init__(self, width: float, depth: float, height: float, rng: np.random.Generator):
        self.width, self.depth, self.height = width, depth, height
        self.rng = rng
        self.occupied: list[BoxBounds] = []
        self.items: list[Item] = []
        self.surfaces: list[tuple[np.ndarray, np.ndarray, float]] = []

    def wall_length(self, wall: int) -> float:
        return self.width if wall % 2 == 0 else self.depth

    def _fits(self, boxes: list[BoxBounds], ignore_below: float | None = None) -> bool:
        half = np.array([self.width / 2, self.depth / 2])
        for lo, hi in boxes:
            if (lo[:2] < -half - 1e-6).any() or (hi[:2] > half + 1e-6).any() or hi[2] > self.height:
                return False
            for olo, ohi in self.occupied:
                if ignore_below is not None and ohi[2] <= ignore_below + 1e-6:
                    continue
                if (lo < ohi + self.CLEARANCE).all() and (olo < hi + self.CLEARANCE).all():
                    return False
        return True

    def try_place(
        self, unit: Unit, quarter_turns: int, offset: Sequence[float], ignore_below: float | None = None
    ) -> bool:
        """Place `unit` turned and moved into the room if nothing is in the way."""
        items = [_place_item(it, quarter_turns, offset) for it in unit.items]
        boxes = [_item_bounds(it) for it in items]
        for lo, hi in unit.keep_out:
            corners = rotate_z90(np.array([lo, hi], dtype=np.float64), quarter_turns) + np.asarray(offset)
            boxes.append((corners.min(0), corners.max(0)))
        if not self._fits(boxes, ignore_below):
            return False
        self.occupied += boxes
        self.items += items
        for it in items:
            for name in it.support:
                tops = [primitive_bounds(p) for p in it.primitives if p.part == name]
                if tops:
                    lo = np.min([t[0] for t in tops], axis=0)
                    hi = np.max([t[1] for t in tops], axis=0)
                    self.surfaces.append((lo[:2], hi[:2], float(hi[2])))
        return True

    def try_wall(
        self, unit: Unit, tries: int = 40, corner: bool = False, walls: Sequence[int] | None = None
    ) -> bool:
        """Put the unit's back (its smallest y) against a random wall, at a random place along it
        (or in a corner); `walls` restricts the choice."""
        lo, hi = _unit_bounds(unit)
        # unit frame -> wall frame: centred on x, back at y = WALL_GAP
        dx, dy = -(lo[0] + hi[0]) / 2, self.WALL_GAP - lo[1]
        unit = Unit(
            [_shift(it, dx, dy) for it in unit.items],
            [(_add(a, dx, dy), _add(b, dx, dy)) for a, b in unit.keep_out],
        )
        half_w = (hi[0] - lo[0]) / 2
        for _ in range(tries):
            wall = int(self.rng.choice(list(walls) if walls is not None else range(4)))
            free = self.wall_length(wall) / 2 - half_w - 0.01
            if free < 0:
                continue
            s = float(self.rng.choice([-free, free])) if corner else float(self.rng.uniform(-free, free))
            normal = rotate_z90(np.array([0.0, 1.0]), wall)
            tangent = rotate_z90(np.array([1.0, 0.0]), wall)
            half_extent = self.depth / 2 if wall % 2 == 0 else self.width / 2
            origin = -normal * half_extent + tangent * s
            if self.try_place(unit, wall, (origin[0], origin[1], 0.0)):
                return True
        return False

    def try_free(self, unit: Unit, tries: int = 40, margin: float = 0.3) -> bool:
        """Put the unit anywhere on the floor, turned by a random multiple of 90 degrees."""
        lo, hi = _unit_bounds(unit)
        centre = (lo + hi) / 2
        unit = Unit([_shift(it, -centre[0], -centre[1]) for it in unit.items])
        for _ in range(tries):
            k = int(self.rng.integers(4))
            ext = rotate_z90((hi - lo)[None], k)[0]
            hx = self.width / 2 - abs(ext[0]) / 2 - margin
            hy = self.depth / 2 - abs(ext[1]) / 2 - margin
            if hx < 0 or hy < 0:
                return False
            offset = (self.rng.uniform(-hx, hx), self.rng.uniform(-hy, hy), 0.0)
            if self.try_place(unit, k, offset):
                return True
        return False

    def try_on_surface(self, make: Callable[[float], Item], tries: int = 10) -> bool:
        """Stand a small item made by `make(z)` on a random support surface (table top, counter)."""
        if not self.surfaces:
            return False
        for _ in range(tries):
            lo, hi, z = self.surfaces[int(self.rng.integers(len(self.surfaces)))]
            item = make(z)
            ilo, ihi = _item_bounds(item)
            span = (hi - lo) - (ihi - ilo)[:2] - 0.04
            if (span < 0).any():
                continue
            xy = lo + 0.02 + self.rng.uniform(0.0, 1.0, 2) * span - ilo[:2]
            if self.try_place(Unit([item]), 0, (xy[0], xy[1], 0.0), ignore_below=z):
                return True
        return False


def _add(p: Sequence[float], dx: float, dy: float) -> tuple[float, float, float]:
    return (p[0] + dx, p[1] + dy, p[2])


def _unit_bounds(unit: Unit) -> BoxBounds:
    lo, hi = zip(*(_item_bounds(it) for it in unit.items), strict=True)
    return np.min(lo, axis=0), np.max(hi, axis=0)


def _size(item: Item) -> np.ndarray:
    lo, hi = _item_bounds(item)
    return hi - lo


# -- zones ------------------------------------------------------------------------------------------


def _zone_sleeping(layout: _Layout, rng: np.random.Generator) -> None:
    bed = make_bed(rng)
    bw, bd, _ = _size(bed[0])
    items = list(bed)
    for side in (-1, 1):
        if rng.random() < 0.7:
            stand = make_nightstand(rng)
            sw, sd, _ = _size(stand[0])
            items += [_shift(it, side * (bw / 2 + sw / 2 + 0.05), -bd / 2 + sd / 2) for it in stand]
    if not layout.try_wall(Unit(items)):
        layout.try_wall(Unit(bed))
    if rng.random() < 0.6:
        layout.try_wall(Unit([make_wardrobe(rng) if rng.random() < 0.5 else make_cabinet(rng, "dresser")]))


def _zone_dining(layout: _Layout, rng: np.random.Generator) -> None:
    table = make_table(rng, str(rng.choice(["table", "dining table"])))
    tw, td, _ = _size(table)
    chair = make_chair(rng)
    cw, cd, _ = _size(chair)
    items = [table]
    per_side = max(1, int(tw // 0.65))
    for side, turns in ((1, 2), (-1, 0)):
        if rng.random() < 0.9:
            for k in range(per_side):
                x = (k + 0.5) * tw / per_side - tw / 2
                items.append(_shift(chair, x, side * (td / 2 + cd / 2 - 0.12), quarter_turns=turns))
    for side, turns in ((1, 1), (-1, 3)):
        if rng.random() < 0.35:
            items.append(_shift(chair, side * (tw / 2 + cd / 2 - 0.1), 0.0, quarter_turns=turns))
    if not layout.try_free(Unit(items)):
        layout.try_free(Unit([table]))


def _zone_lounge(layout: _Layout, rng: np.random.Generator) -> None:
    sofa = make_sofa(rng)
    sw, sd, _ = _size(sofa)
    items = [_shift(sofa, 0.0, sd / 2)]
    if rng.random() < 0.8:
        coffee = make_table(rng, "coffee table")
        items.append(_shift(coffee, 0.0, sd + _u(rng, 0.35, 0.5) + _size(coffee)[1] / 2))
    if rng.random() < 0.4:
        end = make_table(rng, "end table")
        ew, ed, eh = _size(end)
        items.append(_shift(end, sw / 2 + ew / 2 + 0.05, ed / 2))
        if rng.random() < 0.6:
            items.append(_shift(make_lamp(rng, eh), sw / 2 + ew / 2 + 0.05, ed / 2))
    if not layout.try_wall(Unit(items)):
        layout.try_wall(Unit(items[:1]))
    if rng.random() < 0.7:
        layout.try_free(Unit([make_armchair(rng)]))
    if rng.random() < 0.4:
        layout.try_free(Unit([make_ottoman(rng)]))


def _zone_office(layout: _Layout, rng: np.random.Generator) -> None:
    desk = make_desk(rng)
    dw, dd, dh = _size(desk)
    items = [_shift(desk, 0.0, dd / 2)]
    chair = make_office_chair(rng) if rng.random() < 0.75 else make_chair(rng)
    items.append(_shift(chair, _u(rng, -0.2, 0.2), dd + _u(rng, 0.1, 0.3), quarter_turns=2))
    if rng.random() < 0.8:
        items.append(_shift(make_monitor(rng, dh), _u(rng, -0.2, 0.2), 0.12))
    if rng.random() < 0.5:
        items.append(_shift(make_trash_can(rng), dw / 2 + 0.28, 0.3))
    if not layout.try_wall(Unit(items)):
        layout.try_wall(Unit(items[:1]))
    if rng.random() < 0.85:
        layout.try_wall(Unit([make_bookshelf(rng)]))
    if rng.random() < 0.4:
        layout.try_wall(
            Unit([make_cabinet(rng, "file cabinet", (_u(rng, 0.4, 0.5), 0.6, _u(rng, 0.7, 1.3)))])
        )


def _zone_kitchen(layout: _Layout, rng: np.random.Generator) -> None:
    if not layout.try_wall(Unit(make_kitchen_run(rng))):
        layout.try_wall(Unit([make_cabinet(rng, "kitchen cabinets")]))
    if rng.random() < 0.7:
        layout.try_wall(Unit([make_trash_can(rng)]))


def _zone_bathroom(layout: _Layout, rng: np.random.Generator) -> None:
    layout.try_wall(Unit(make_bathtub(rng)), corner=True)
    layout.try_wall(Unit([make_toilet(rng)]))
    layout.try_wall(Unit([make_sink(rng)]))
    if rng.random() < 0.5:
        layout.try_wall(Unit([make_trash_can(rng)]))


def _zone_storage(layout: _Layout, rng: np.random.Generator) -> None:
    makers: list[Callable[[], list[Item]]] = [
        lambda: [make_cabinet(rng)],
        lambda: [make_bookshelf(rng)],
        lambda: [make_cabinet(rng, "dresser")],
        lambda: [make_wardrobe(rng)],
        lambda: make_boxes(rng),
        lambda: [make_bench(rng)],
    ]
    for k in rng.choice(len(makers), size=int(rng.integers(2, 4)), replace=False):
        layout.try_wall(Unit(makers[int(k)]()))


ZONE_BUILDERS: dict[str, Callable[[_Layout, np.random.Generator], None]] = {
    "sleeping": _zone_sleeping,
    "dining": _zone_dining,
    "lounge": _zone_lounge,
    "office": _zone_office,
    "kitchen": _zone_kitchen,
    "bathroom": _zone_bathroom,
    "storage": _zone_storage,
}
# Zones with big wall pieces go first, so free-standing groups fill what is left.
ZONE_ORDER = ("kitchen", "bathroom", "sleeping", "lounge", "office", "storage", "dining")


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _structure(width: float, depth: float, height: float) -> list[Item]:
    """Floor and the four walls, inner faces only, each its own instance."""
    w, d, t = width / 2, depth / 2, 0.1
    floor = Item(
        "floor",
        [box(-w, w, -d, d, -t, 0.0, "surface", ("-x", "+x", "-y", "+y", "-z"))],
        {"surface": "floor"},
        patch_size=STRUCTURE_PATCH,
    )
    not_ = lambda keep: tuple(f for f in ("-x", "+x", "-y", "+y", "-z", "+z") if f != keep)  # noqa: E731
    walls = [
        box(-w, w, -d - t, -d, 0.0, height, "surface", not_("+y")),
        box(w, w + t, -d, d, 0.0, height, "surface", not_("-x")),
        box(-w, w, d, d + t, 0.0, height, "surface", not_("-y")),
        box(-w - t, -w, -d, d, 0.0, height, "surface", not_("+x")),
    ]
    return [floor] + [Item("wall", [wall], {"surface": "wall"}, patch_size=STRUCTURE_PATCH) for wall in walls]


def _furnish(layout: _Layout, zones: Sequence[str], rng: np.random.Generator) -> None:
    h = layout.height
    for _ in range(int(rng.integers(1, 3))):
        layout.try_wall(make_door(rng))
    for _ in range(int(rng.integers(1, 4))):
        layout.try_wall(make_window(rng, h))
    for zone in sorted(zones, key=ZONE_ORDER.index):
        ZONE_BUILDERS[zone](layout, rng)
    for _ in range(int(rng.integers(0, 4))):
        layout.try_wall(make_picture(rng, h))
    if rng.random() < 0.5:
        layout.try_free(Unit([make_trash_can(rng)]))
    for _ in range(int(rng.integers(1, 5))):
        layout.try_free(Unit([make_clutter(rng)]), tries=10)
    for _ in range(int(rng.integers(0, 5))):
        layout.try_on_surface(lambda z: make_clutter(rng, z))


def _mesh_items(items: list[Item], spacing: float, rng: np.random.Generator, seed: int):
    """Mesh the items; vertex colors from each part's material. Returns vertices float64 [N, 3],
    colors uint8 [N, 3], faces int64 [F, 3], item index int64 [N], patch int64 [N]."""
    builder = MeshBuilder(spacing)
    parts: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        part_index: dict[str, int] = {}
        for prim in item.primitives:
            if prim.part not in part_index:
                part_index[prim.part] = len(parts)
                parts.append((index, prim.part))
            builder.add(prim, part_index[prim.part], item.patch_size)
    vertices, faces, part, patch = builder.arrays()
    colors = np.zeros((len(vertices), 3), dtype=np.uint8)
    order = np.argsort(part, kind="stable")
    starts = np.searchsorted(part[order], np.arange(len(parts) + 1))
    for p, (index, name) in enumerate(parts):
        members = order[starts[p] : starts[p + 1]]
        options = SLOT_MATERIALS[items[index].slots[name]]
        material = options[int(rng.integers(len(options)))]
        base = draw_base_color(material, rng)
        colors[members] = surface_colors(material, base, vertices[members], seed * 7919 + p, rng)
    item_of_part = np.array([index for index, _ in parts], dtype=np.int64)
    return vertices, colors, faces, item_of_part[part], patch, builder.num_patches


def _merge_small_patches(
    patch: np.ndarray, item_index: np.ndarray, num_items: int, num_patches: int
) -> np.ndarray:
    """Merge the patches of fewer than MIN_SEGMENT_VERTICES vertices of each item into one, as
    ScanNet's segmentator (segMinVerts 20) leaves no smaller segment; int64 [N] patch per vertex."""
    size = np.bincount(patch, minlength=num_patches)
    owner = np.zeros(num_patches, dtype=np.int64)
    owner[patch] = item_index
    small = np.flatnonzero((size > 0) & (size < MIN_SEGMENT_VERTICES))
    first = np.full(num_items, num_patches, dtype=np.int64)
    np.minimum.at(first, owner[small], small)
    target = np.arange(num_patches)
    target[small] = first[owner[small]]
    return target[patch]


def _random_axis_alignment(aligned: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A raw-to-aligned matrix [4, 4]: a turn about +z far from multiples of 90 degrees and a
    translation that puts the raw room near the positive octant, as in ScanNet's raw meshes."""
    while True:
        theta = rng.uniform(0.0, 2 * math.pi)
        if abs(math.sin(2 * theta)) > 0.35:
            break
    c, s = math.cos(theta), math.sin(theta)
    raw_rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    rotated = aligned @ raw_rotation.T
    shift = -rotated.min(0) + np.array([rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6), 0.0])
    shift[2] = rng.uniform(0.02, 0.12)  # the raw floor sits a little off z = 0
    raw_from_aligned = np.eye(4)
    raw_from_aligned[:3, :3], raw_from_aligned[:3, 3] = raw_rotation, shift
    return np.linalg.inv(raw_from_aligned) + 0.0  # + 0.0 turns -0.0 entries into 0.0


def generate_room(
    seed: int,
    *,
    zones: Sequence[str] | None = None,
    vertex_spacing: float = 0.06,
    room_size: tuple[float, float, float] | None = None,
) -> SyntheticRoom:
    """Generate one furnished room and its ground truth, deterministically from `seed`.

    zones: names from `ZONES` to furnish (default: three or four drawn at random).
    vertex_spacing: the largest distance (metres) between neighbouring mesh vertices; 0.06 gives
    some 60k-90k vertices for a 5-7.5 m room.
    room_size: (width, depth, wall height) in metres (default drawn: 5-7.5 x 5-7.5 x 2.5-2.9).
    """
    rng = np.random.default_rng(seed)
    if zones is None:
        zones = tuple(str(z) for z in rng.choice(ZONES, size=int(rng.integers(3, 5)), replace=False))
    unknown = [z for z in zones if z not in ZONE_BUILDERS]
    if unknown:
        raise ValueError(f"unknown zone(s) {unknown}; choose from {ZONES}")
    if room_size is None:
        room_size = (_u(rng, 5.0, 7.5), _u(rng, 5.0, 7.5), _u(rng, 2.5, 2.9))
    width, depth, height = (float(v) for v in room_size)
    layout = _Layout(width, depth, height, rng)
    _furnish(layout, zones, rng)
    items = _structure(width, depth, height) + layout.items

    vertices, colors, faces, item_index, patch, num_patches = _mesh_items(items, vertex_spacing, rng, seed)
    patch = _merge_small_patches(patch, item_index, len(items), num_patches)
    # Shuffle vertex and face order, as a reconstruction's is: no reader may rely on objects being contiguous.
    perm = rng.permutation(len(vertices))
    new_index = np.empty_like(perm)
    new_index[perm] = np.arange(len(perm))
    vertices, colors, item_index, patch = vertices[perm], colors[perm], item_index[perm], patch[perm]
    faces = new_index[faces][rng.permutation(len(faces))]
    # A segment's id is its smallest vertex index: ids are then sparse, like ScanNet's.
    first = np.full(num_patches, len(vertices), dtype=np.int64)
    np.minimum.at(first, patch, np.arange(len(vertices)))
    segments = first[patch]

    axis_alignment = _random_axis_alignment(vertices, rng)
    raw = vertices @ np.linalg.inv(axis_alignment)[:3, :3].T + np.linalg.inv(axis_alignment)[:3, 3]
    room = SyntheticRoom(
        vertices=raw.astype(np.float32),
        colors=colors,
        faces=faces.astype(np.int32),
        labels=np.zeros(len(vertices), dtype=np.uint16),
        instances=np.full(len(vertices), -1, dtype=np.int64),
        segments=segments,
        objects=[],
        axis_alignment=axis_alignment,
        size=(width, depth, height),
        zones=tuple(zones),
    )
    aligned = room.aligned_vertices()
    annotated = [i for i, item in enumerate(items) if item.raw_category is not None]
    object_of_item = np.full(len(items), -1, dtype=np.int64)
    object_of_item[annotated] = np.arange(len(annotated))
    room.instances = object_of_item[item_index]
    nyu40_of_item = np.array(
        [nyu40_of(it.raw_category) if it.raw_category else 0 for it in items], dtype=np.uint16
    )
    room.labels = nyu40_of_item[item_index]
    order = np.argsort(room.instances, kind="stable")
    starts = np.searchsorted(room.instances[order], np.arange(len(annotated) + 1))
    for object_id, i in enumerate(annotated):
        members = order[starts[object_id] : starts[object_id + 1]]
        lo, hi = aligned[members].min(0), aligned[members].max(0)
        nyu40 = int(nyu40_of_item[i])
        room.objects.append(
            SyntheticObject(
                object_id=object_id,
                raw_category=str(items[i].raw_category),
                nyu40_id=nyu40,
                segments=np.unique(segments[members]).tolist(),
                box=np.array([*((lo + hi) / 2), *(hi - lo), nyu40], dtype=np.float64),
            )
        )
    return room
