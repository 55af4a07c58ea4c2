"""Class-specific furniture shapes for synthetic rooms.

Every `make_*` function draws one piece (or a small set that belongs together, such as a bed with
its pillows) from `rng` and returns `Item`s in a local frame: the footprint centred on x = 0, the
back at the smallest y (the side put against a wall), the front toward +y, the floor at z = 0.
Wall-mounted things (doors, windows, pictures, curtains) use a frame whose wall plane is y = 0.
Shapes differ by class (a chair has legs, a seat and a back; a sink is a hollow basin; a curtain is
pleated), so geometry, not only color, carries the class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scene_kd.synthetic.geometry import Box, Cylinder, Panel, Primitive, place, primitive_bounds

ON_FLOOR = ("-z",)  # the face against the floor is never seen, and ScanNet meshes lack it


@dataclass
class Item:
    """One object instance before placement.

    raw_category: the annotation label, or None for unannotated clutter (label 0, no group).
    primitives: its shapes; part names index `slots`.
    slots: part name -> key of `SLOT_MATERIALS` (which materials that part may take).
    support: part names whose top faces can hold clutter (table tops, counters).
    """

    raw_category: str | None
    primitives: list[Primitive]
    slots: dict[str, str]
    support: tuple[str, ...] = ()
    patch_size: float = 0.4


@dataclass
class Unit:
    """Items placed together (a bed with pillows, a table with chairs) in one local frame.

    keep_out: extra boxes (lo, hi) the unit needs free (the swing of a door) but not meshed.
    """

    items: list[Item]
    keep_out: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = field(
        default_factory=list
    )


def box(
    x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, part: str, skip: tuple[str, ...] = ()
) -> Box:
    """Box from its extents along x, y and z."""
    return Box((x0, y0, z0), (x1, y1, z1), part, skip)


def hollow_box(
    x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, wall: float, floor: float, part: str
) -> list[Box]:
    """An open-topped container (basin, tub): four walls and a floor whose top is at z0 + floor."""
    return [
        box(x0, x1, y0, y0 + wall, z0, z1, part),
        box(x0, x1, y1 - wall, y1, z0, z1, part),
        box(x0, x0 + wall, y0 + wall, y1 - wall, z0, z1, part),
        box(x1 - wall, x1, y0 + wall, y1 - wall, z0, z1, part),
        box(x0 + wall, x1 - wall, y0 + wall, y1 - wall, z0, z0 + floor, part),
    ]


def curtain_panel(
    x0: float, x1: float, y: float, z0: float, z1: float, depth: float, pleat: float, part: str
) -> Panel:
    """A pleated vertical panel in the plane y (bulging toward +y), facing +y."""
    return Panel((x1, y, z0), (x0 - x1, 0.0, 0.0), (0.0, 0.0, z1 - z0), (0.0, 1.0, 0.0), depth, pleat, part)


def legs(
    w: float, d: float, height: float, size: float, inset: float, part: str, round_legs: bool
) -> list[Primitive]:
    """Four legs under a w x d top centred at the origin."""
    out: list[Primitive] = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - size / 2), sy * (d / 2 - inset - size / 2)
            if round_legs:
                out.append(Cylinder((cx, cy), 0.0, height, size / 2, part, caps=(False, False)))
            else:
                out.append(
                    box(
                        cx - size / 2,
                        cx + size / 2,
                        cy - size / 2,
                        cy + size / 2,
                        0.0,
                        height,
                        part,
                        ON_FLOOR,
                    )
                )
    return out


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# -- seating ----------------------------------------------------------------------------------------


def make_chair(rng: np.random.Generator) -> Item:
    """Four legs, a seat and a back."""
    w, d, seat, top = _u(rng, 0.42, 0.5), _u(rng, 0.44, 0.52), _u(rng, 0.43, 0.48), _u(rng, 0.8, 0.95)
    prims = legs(w, d, seat - 0.05, _u(rng, 0.03, 0.045), 0.01, "legs", bool(rng.random() < 0.4))
    prims.append(box(-w / 2, w / 2, -d / 2, d / 2, seat - 0.05, seat, "seat"))
    prims.append(box(-w / 2, w / 2, -d / 2, -d / 2 + 0.04, seat, top, "seat"))
    return Item("chair", prims, {"legs": "legs", "seat": "seat"})


def make_office_chair(rng: np.random.Generator) -> Item:
    """A disc base, a post, a padded seat, a tall back and armrests."""
    w, seat = _u(rng, 0.5, 0.58), _u(rng, 0.45, 0.5)
    d = w
    prims: list[Primitive] = [
        Cylinder((0.0, 0.0), 0.02, 0.07, w / 2, "base", caps=(False, True)),
        Cylinder((0.0, 0.0), 0.07, seat - 0.08, 0.03, "base", caps=(False, False)),
        box(-w / 2 + 0.03, w / 2 - 0.03, -d / 2 + 0.04, d / 2 - 0.02, seat - 0.08, seat, "seat"),
        box(
            -w / 2 + 0.05, w / 2 - 0.05, -d / 2, -d / 2 + 0.07, seat + 0.05, seat + _u(rng, 0.5, 0.65), "seat"
        ),
    ]
    for sx in (-1, 1):
        x = sx * (w / 2 - 0.03)
        prims.append(box(x - 0.02, x + 0.02, -0.03, 0.01, seat, seat + 0.2, "base"))
        prims.append(box(x - 0.03, x + 0.03, -0.15, 0.12, seat + 0.2, seat + 0.23, "base"))
    return Item("office chair", prims, {"base": "handle", "seat": "upholstery"})


def _upholstered(rng: np.random.Generator, w: float, d: float, seats: int, raw: str) -> Item:
    """Armchair or sofa: short legs, a base, seat cushions, arms and a back."""
    arm, back = _u(rng, 0.12, 0.2), _u(rng, 0.16, 0.24)
    seat, arm_top, back_top = _u(rng, 0.4, 0.46), _u(rng, 0.55, 0.65), _u(rng, 0.75, 0.92)
    prims = legs(w, d, 0.1, 0.05, 0.04, "legs", bool(rng.random() < 0.5))
    prims.append(box(-w / 2, w / 2, -d / 2, d / 2, 0.1, seat - 0.08, "body"))
    prims.append(box(-w / 2, w / 2, -d / 2, -d / 2 + back, seat - 0.08, back_top, "body"))
    for sx in (-1, 1):
        x0, x1 = (-w / 2, -w / 2 + arm) if sx < 0 else (w / 2 - arm, w / 2)
        prims.append(box(x0, x1, -d / 2 + back, d / 2, seat - 0.08, arm_top, "body"))
    inner = (w - 2 * arm) / seats
    for k in range(seats):
        x0 = -w / 2 + arm + k * inner
        prims.append(
            box(x0 + 0.005, x0 + inner - 0.005, -d / 2 + back, d / 2 - 0.01, seat - 0.08, seat, "cushion")
        )
    return Item(raw, prims, {"legs": "legs", "body": "upholstery", "cushion": "upholstery"})


def make_armchair(rng: np.random.Generator) -> Item:
    """A bulky one-seat upholstered chair."""
    return _upholstered(rng, _u(rng, 0.72, 0.9), _u(rng, 0.72, 0.88), 1, "armchair")


def make_sofa(rng: np.random.Generator) -> Item:
    """A two- or three-seat sofa."""
    seats = int(rng.integers(2, 4))
    return _upholstered(
        rng, seats * _u(rng, 0.55, 0.7) + 0.35, _u(rng, 0.8, 0.95), seats, str(rng.choice(["couch", "sofa"]))
    )


def make_ottoman(rng: np.random.Generator) -> Item:
    """A padded footstool, square or round."""
    h = _u(rng, 0.38, 0.45)
    if rng.random() < 0.5:
        s = _u(rng, 0.45, 0.6)
        prims: list[Primitive] = [box(-s / 2, s / 2, -s / 2, s / 2, 0.0, h, "body", ON_FLOOR)]
    else:
        prims = [Cylinder((0.0, 0.0), 0.0, h, _u(rng, 0.22, 0.3), "body")]
    return Item("ottoman", prims, {"body": "upholstery"})


def make_bench(rng: np.random.Generator) -> Item:
    """A long seat on two slab legs."""
    w, d, h = _u(rng, 1.0, 1.5), _u(rng, 0.33, 0.4), _u(rng, 0.42, 0.47)
    prims = [box(-w / 2, w / 2, -d / 2, d / 2, h - 0.04, h, "top")]
    for sx in (-1, 1):
        x = sx * (w / 2 - 0.1)
        prims.append(box(x - 0.02, x + 0.02, -d / 2 + 0.02, d / 2 - 0.02, 0.0, h - 0.04, "legs", ON_FLOOR))
    return Item("bench", prims, {"top": "wood_or_white", "legs": "legs"})


# -- tables and desks -------------------------------------------------------------------------------


def make_table(rng: np.random.Generator, kind: str = "table") -> Item:
    """A top on four legs: "table"/"dining table" (0.75 m), "coffee table" (low, with a shelf) or
    "end table" (small)."""
    if kind == "coffee table":
        w, d, h = _u(rng, 0.8, 1.3), _u(rng, 0.45, 0.7), _u(rng, 0.38, 0.48)
    elif kind == "end table":
        w, d, h = _u(rng, 0.4, 0.55), _u(rng, 0.4, 0.55), _u(rng, 0.5, 0.62)
    else:
        w, d, h = _u(rng, 1.0, 1.8), _u(rng, 0.75, 1.0), _u(rng, 0.72, 0.78)
    t = _u(rng, 0.03, 0.05)
    prims = [box(-w / 2, w / 2, -d / 2, d / 2, h - t, h, "top")]
    prims += legs(w, d, h - t, _u(rng, 0.045, 0.08), _u(rng, 0.02, 0.06), "legs", bool(rng.random() < 0.4))
    if kind == "coffee table" and rng.random() < 0.6:
        prims.append(box(-w / 2 + 0.06, w / 2 - 0.06, -d / 2 + 0.06, d / 2 - 0.06, 0.1, 0.12, "top"))
    return Item(kind, prims, {"top": "top", "legs": "legs"}, support=("top",))


def make_desk(rng: np.random.Generator) -> Item:
    """A top on a side panel and a drawer pedestal (or two panels), with a modesty panel."""
    w, d, h, t = _u(rng, 1.0, 1.6), _u(rng, 0.55, 0.75), _u(rng, 0.72, 0.76), 0.03
    prims = [
        box(-w / 2, w / 2, -d / 2, d / 2, h - t, h, "top"),
        box(-w / 2, -w / 2 + 0.03, -d / 2, d / 2, 0.0, h - t, "body", ON_FLOOR),
        box(-w / 2 + 0.03, w / 2 - 0.03, -d / 2, -d / 2 + 0.02, 0.3, h - t, "body"),
    ]
    if rng.random() < 0.6:
        pw = _u(rng, 0.38, 0.45)
        prims.append(box(w / 2 - pw, w / 2, -d / 2, d / 2 - 0.02, 0.0, h - t, "body", ON_FLOOR))
        rows = int(rng.integers(2, 4))
        step = (h - t - 0.06) / rows
        for r in range(rows):
            z0 = 0.05 + r * step
            prims.append(
                box(w / 2 - pw + 0.01, w / 2 - 0.01, d / 2 - 0.02, d / 2, z0, z0 + step - 0.01, "body")
            )
            prims.append(
                box(
                    w / 2 - pw / 2 - 0.06,
                    w / 2 - pw / 2 + 0.06,
                    d / 2,
                    d / 2 + 0.02,
                    z0 + step / 2,
                    z0 + step / 2 + 0.02,
                    "handle",
                )
            )
    else:
        prims.append(box(w / 2 - 0.03, w / 2, -d / 2, d / 2, 0.0, h - t, "body", ON_FLOOR))
    return Item("desk", prims, {"top": "top", "body": "wood_or_white", "handle": "handle"}, support=("top",))


# -- storage ----------------------------------------------------------------------------------------


def make_cabinet(
    rng: np.random.Generator,
    raw: str = "cabinet",
    size: tuple[float, float, float] | None = None,
    drawers: bool | None = None,
) -> Item:
    """A body with doors or drawer fronts and handles on the front."""
    if size is None:
        size = (_u(rng, 0.5, 1.2), _u(rng, 0.4, 0.6), _u(rng, 0.7, 1.2))
    w, d, h = size
    if drawers is None:
        drawers = raw in ("file cabinet", "dresser", "nightstand") or bool(rng.random() < 0.3)
    prims: list[Primitive] = [box(-w / 2, w / 2, -d / 2, d / 2 - 0.015, 0.0, h, "body", ON_FLOOR)]
    front = d / 2 - 0.015
    if drawers:
        rows = max(2, round(h / 0.25))
        step = (h - 0.04) / rows
        for r in range(rows):
            z0 = 0.03 + r * step
            prims.append(
                box(-w / 2 + 0.01, w / 2 - 0.01, front, front + 0.015, z0, z0 + step - 0.01, "front")
            )
            prims.append(
                box(
                    -0.06,
                    0.06,
                    front + 0.015,
                    front + 0.035,
                    z0 + step * 0.6,
                    z0 + step * 0.6 + 0.02,
                    "handle",
                )
            )
    else:
        doors = 1 if w < 0.6 else 2
        dw = (w - 0.02) / doors
        for k in range(doors):
            x0 = -w / 2 + 0.01 + k * dw
            prims.append(box(x0 + 0.003, x0 + dw - 0.003, front, front + 0.015, 0.03, h - 0.02, "front"))
            hx = x0 + dw - 0.05 if k == 0 else x0 + 0.03
            zc = h - 0.15 if h < 1.0 else h * 0.5
            prims.append(box(hx, hx + 0.02, front + 0.015, front + 0.035, zc - 0.07, zc + 0.07, "handle"))
    return Item(
        raw, prims, {"body": "wood_or_white", "front": "wood_or_white", "handle": "handle"}, support=("body",)
    )


def make_bookshelf(rng: np.random.Generator) -> Item:
    """Side panels, a back, shelves, and rows of books (multicolored spines) on the shelves."""
    w, d, h, t = _u(rng, 0.6, 1.2), _u(rng, 0.28, 0.4), _u(rng, 1.2, 2.0), 0.02
    prims: list[Primitive] = [
        box(-w / 2, -w / 2 + t, -d / 2, d / 2, 0.0, h, "body", ON_FLOOR),
        box(w / 2 - t, w / 2, -d / 2, d / 2, 0.0, h, "body", ON_FLOOR),
        box(-w / 2 + t, w / 2 - t, -d / 2, -d / 2 + 0.01, 0.0, h, "body"),
        box(-w / 2 + t, w / 2 - t, -d / 2 + 0.01, d / 2, h - t, h, "body"),
        box(-w / 2 + t, w / 2 - t, -d / 2 + 0.01, d / 2, 0.0, 0.06, "body", ON_FLOOR),
    ]
    levels = max(2, round((h - 0.08) / _u(rng, 0.3, 0.38)))
    step = (h - 0.06 - t) / levels
    for k in range(levels):
        z = 0.06 + k * step
        if k > 0:
            prims.append(box(-w / 2 + t, w / 2 - t, -d / 2 + 0.01, d / 2, z - t, z, "body"))
        if rng.random() < 0.85:
            fill = _u(rng, 0.4, 0.95) * (w - 2 * t)
            x0 = -w / 2 + t + _u(rng, 0.0, w - 2 * t - fill)
            bh = min(_u(rng, 0.15, 0.27), step - t - 0.03)
            prims.append(
                box(
                    x0,
                    x0 + fill,
                    -d / 2 + 0.01,
                    -d / 2 + 0.01 + _u(rng, 0.15, min(0.22, d - 0.03)),
                    z,
                    z + bh,
                    "books",
                )
            )
    return Item("bookshelf", prims, {"body": "wood_or_white", "books": "books"})


def make_wardrobe(rng: np.random.Generator) -> Item:
    """A tall two-door cabinet (nyu40 otherfurniture)."""
    return make_cabinet(
        rng, "wardrobe", (_u(rng, 0.9, 1.4), _u(rng, 0.55, 0.65), _u(rng, 1.8, 2.1)), drawers=False
    )


def make_refrigerator(rng: np.random.Generator) -> Item:
    """A tall box with a freezer door, a fridge door and vertical handles."""
    w, d, h = _u(rng, 0.6, 0.9), _u(rng, 0.65, 0.75), _u(rng, 1.6, 1.9)
    split = h * _u(rng, 0.62, 0.72)
    front = d / 2 - 0.03
    prims: list[Primitive] = [
        box(-w / 2, w / 2, -d / 2, front, 0.0, h, "body", ON_FLOOR),
        box(-w / 2 + 0.005, w / 2 - 0.005, front, d / 2, 0.05, split - 0.01, "body"),
        box(-w / 2 + 0.005, w / 2 - 0.005, front, d / 2, split + 0.01, h - 0.01, "body"),
    ]
    hx = w / 2 - 0.07
    prims.append(box(hx, hx + 0.025, d / 2, d / 2 + 0.04, split - 0.45, split - 0.1, "handle"))
    prims.append(box(hx, hx + 0.025, d / 2, d / 2 + 0.04, split + 0.08, split + 0.3, "handle"))
    return Item("refrigerator", prims, {"body": "appliance", "handle": "handle"})


# -- bedroom ----------------------------------------------------------------------------------------


def make_bed(rng: np.random.Generator) -> list[Item]:
    """A bed (frame, mattress, blanket, headboard) and its pillows (separate instances)."""
    w, d = _u(rng, 0.95, 1.8), _u(rng, 1.95, 2.15)
    prims = legs(w, d, 0.15, 0.06, 0.02, "frame", False)
    prims += [
        box(-w / 2, w / 2, -d / 2, d / 2, 0.15, 0.35, "frame"),
        box(-w / 2, w / 2, -d / 2, -d / 2 + 0.06, 0.35, _u(rng, 0.95, 1.2), "frame"),
        box(-w / 2 + 0.02, w / 2 - 0.02, -d / 2 + 0.06, d / 2 - 0.02, 0.35, 0.55, "mattress"),
        box(-w / 2 + 0.01, w / 2 - 0.01, -d / 2 + 0.55, d / 2 - 0.01, 0.55, 0.58, "blanket"),
    ]
    if rng.random() < 0.5:
        prims.append(box(-w / 2, w / 2, d / 2 - 0.05, d / 2, 0.35, _u(rng, 0.5, 0.7), "frame"))
    bed = Item("bed", prims, {"frame": "wood_or_white", "mattress": "bedding", "blanket": "bedding"})
    pillows = []
    count = 2 if w > 1.3 else 1
    pw = (w - 0.1) / count
    for k in range(count):
        x0 = -w / 2 + 0.05 + k * pw
        pillow = box(
            x0 + 0.02, x0 + pw - 0.02, -d / 2 + 0.1, -d / 2 + 0.45, 0.55, 0.55 + _u(rng, 0.1, 0.15), "cover"
        )
        pillows.append(Item("pillow", [pillow], {"cover": "bedding"}))
    return [bed, *pillows]


def make_nightstand(rng: np.random.Generator) -> list[Item]:
    """A small drawer cabinet (nyu40 night stand) with a lamp on top."""
    w, d, h = _u(rng, 0.4, 0.55), _u(rng, 0.35, 0.45), _u(rng, 0.45, 0.62)
    stand = make_cabinet(rng, "nightstand", (w, d, h), drawers=True)
    items = [stand]
    if rng.random() < 0.7:
        items.append(make_lamp(rng, h))
    return items


def make_lamp(rng: np.random.Generator, z: float) -> Item:
    """A table lamp standing at height z: base, pole and an open shade."""
    pole, shade_r = _u(rng, 0.25, 0.4), _u(rng, 0.1, 0.15)
    prims: list[Primitive] = [
        Cylinder((0.0, 0.0), z, z + 0.03, 0.07, "base"),
        Cylinder((0.0, 0.0), z + 0.03, z + pole, 0.012, "base", caps=(False, False)),
        Cylinder((0.0, 0.0), z + pole - 0.05, z + pole + 0.15, shade_r, "shade", caps=(False, False)),
    ]
    return Item("lamp", prims, {"base": "handle", "shade": "curtain"})


# -- bathroom and kitchen ---------------------------------------------------------------------------


def make_toilet(rng: np.random.Generator) -> Item:
    """Tank against the wall, a pedestal, a round bowl and seat."""
    tw, td = _u(rng, 0.38, 0.45), _u(rng, 0.16, 0.2)
    y0 = -0.35
    prims: list[Primitive] = [
        box(-tw / 2, tw / 2, y0, y0 + td, 0.38, _u(rng, 0.72, 0.8), "body"),
        box(-0.11, 0.11, y0 + 0.05, y0 + 0.45, 0.0, 0.36, "body", ON_FLOOR),
        Cylinder((0.0, y0 + 0.42), 0.3, 0.4, _u(rng, 0.17, 0.19), "body"),
        Cylinder((0.0, y0 + 0.42), 0.4, 0.43, 0.19, "seat"),
    ]
    return Item("toilet", prims, {"body": "sanitary", "seat": "sanitary"})


def make_sink(rng: np.random.Generator, z: float | None = None) -> Item:
    """A hollow basin with a faucet: on a pedestal, or (given z) set on a counter at height z."""
    w, d, depth = _u(rng, 0.45, 0.6), _u(rng, 0.38, 0.48), _u(rng, 0.12, 0.18)
    prims: list[Primitive] = []
    base = 0.68 if z is None else z
    if z is None:
        prims.append(Cylinder((0.0, -0.04), 0.0, base, _u(rng, 0.07, 0.09), "body", caps=(False, False)))
    prims += hollow_box(-w / 2, w / 2, -d / 2, d / 2, base, base + depth, 0.03, 0.02, "body")
    prims.append(Cylinder((0.0, -d / 2 + 0.05), base + depth, base + depth + 0.12, 0.015, "tap"))
    return Item("sink", prims, {"body": "sanitary", "tap": "handle"})


def make_bathtub(rng: np.random.Generator) -> list[Item]:
    """A hollow tub and, often, a pleated shower curtain on a rod along its open side."""
    w, d, h = _u(rng, 1.5, 1.75), _u(rng, 0.7, 0.8), _u(rng, 0.5, 0.6)
    tub = Item(
        "bathtub", hollow_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, h, 0.08, 0.1, "body"), {"body": "sanitary"}
    )
    items = [tub]
    if rng.random() < 0.75:
        y = d / 2 - 0.04
        covered = w * _u(rng, 0.5, 0.95)
        prims: list[Primitive] = [
            curtain_panel(
                -w / 2 + 0.01, -w / 2 + covered, y, h + 0.1, 1.95, 0.05, _u(rng, 0.1, 0.18), "cloth"
            ),
            box(-w / 2, w / 2, y - 0.01, y + 0.01, 1.97, 1.99, "rod"),
        ]
        items.append(Item("shower curtain", prims, {"cloth": "curtain", "rod": "handle"}))
    return items


def make_kitchen_run(rng: np.random.Generator) -> list[Item]:
    """Base cabinets under one counter top with a sink, wall cabinets above, often a refrigerator."""
    d, h = _u(rng, 0.56, 0.62), _u(rng, 0.82, 0.86)
    widths = [_u(rng, 0.6, 1.0) for _ in range(int(rng.integers(1, 4)))]
    run = sum(widths)
    items: list[Item] = []
    x = -run / 2
    for w in widths:
        cab = make_cabinet(rng, "kitchen cabinets", (w - 0.005, d, h), drawers=bool(rng.random() < 0.3))
        items.append(_shifted(cab, x + w / 2, -0.0))
        x += w
    top_t = _u(rng, 0.03, 0.05)
    raw = str(rng.choice(["counter", "kitchen counter"]))
    items.append(
        Item(
            raw,
            [box(-run / 2, run / 2, -d / 2, d / 2 + 0.03, h, h + top_t, "top")],
            {"top": "counter_top"},
            support=("top",),
        )
    )
    sink = make_sink(rng, h + top_t)
    items.append(_shifted(sink, _u(rng, -run / 2 + 0.35, run / 2 - 0.35) if run > 0.8 else 0.0, 0.0))
    if rng.random() < 0.8:
        wd = _u(rng, 0.3, 0.38)
        z0 = _u(rng, 1.45, 1.55)
        upper = make_cabinet(rng, "kitchen cabinets", (run, wd, _u(rng, 0.55, 0.7)), drawers=False)
        items.append(_shifted(upper, 0.0, -d / 2 + wd / 2, z0))
    if rng.random() < 0.75:
        fridge = make_refrigerator(rng)
        fw, fd, _ = np.subtract(*_bounds_of(fridge)[::-1])
        side = 1 if rng.random() < 0.5 else -1
        items.append(_shifted(fridge, side * (run / 2 + fw / 2 + 0.03), -d / 2 + fd / 2 - 0.02))
    return items


# -- small furniture --------------------------------------------------------------------------------


def make_trash_can(rng: np.random.Generator) -> Item:
    """A round or square bin, open or lidded ("trash can" or "recycling bin")."""
    h = _u(rng, 0.3, 0.65)
    raw = "recycling bin" if rng.random() < 0.3 else "trash can"
    if rng.random() < 0.6:
        prims: list[Primitive] = [
            Cylinder((0.0, 0.0), 0.0, h, _u(rng, 0.12, 0.2), "body", caps=(False, bool(rng.random() < 0.5)))
        ]
    else:
        s = _u(rng, 0.25, 0.4)
        prims = hollow_box(-s / 2, s / 2, -s / 2, s / 2, 0.0, h, 0.015, 0.02, "body")
    return Item(raw, prims, {"body": "bin"})


def make_boxes(rng: np.random.Generator) -> list[Item]:
    """One to three stacked cardboard boxes (nyu40 box), each its own instance."""
    items, z = [], 0.0
    for _ in range(int(rng.integers(1, 4))):
        w, d, h = _u(rng, 0.3, 0.6), _u(rng, 0.25, 0.45), _u(rng, 0.2, 0.4)
        items.append(
            Item(
                "box",
                [box(-w / 2, w / 2, -d / 2, d / 2, z, z + h, "body", ON_FLOOR if z == 0 else ())],
                {"body": "cardboard"},
            )
        )
        z += h
        if rng.random() < 0.5:
            break
    return items


def make_monitor(rng: np.random.Generator, z: float) -> Item:
    """A screen on a stand, standing at height z (a desk top); nyu40 otherprop."""
    w, h = _u(rng, 0.45, 0.62), _u(rng, 0.28, 0.38)
    prims: list[Primitive] = [
        box(-0.1, 0.1, -0.08, 0.08, z, z + 0.015, "body"),
        box(-0.02, 0.02, -0.03, 0.0, z + 0.015, z + 0.12, "body"),
        box(-w / 2, w / 2, 0.0, 0.04, z + 0.1, z + 0.1 + h, "body"),
    ]
    return Item("monitor", prims, {"body": "handle"})


def make_clutter(rng: np.random.Generator, z: float = 0.0) -> Item:
    """A small unannotated object (label 0, in no group) standing at height z."""
    if rng.random() < 0.5:
        s = (_u(rng, 0.08, 0.3), _u(rng, 0.08, 0.3), _u(rng, 0.05, 0.3))
        prims: list[Primitive] = [
            box(-s[0] / 2, s[0] / 2, -s[1] / 2, s[1] / 2, z, z + s[2], "body", ON_FLOOR)
        ]
    else:
        prims = [Cylinder((0.0, 0.0), z, z + _u(rng, 0.08, 0.3), _u(rng, 0.03, 0.12), "body")]
    return Item(None, prims, {"body": "clutter"}, patch_size=0.2)


# -- on walls (wall plane y = 0, room toward +y) ----------------------------------------------------


def make_door(rng: np.random.Generator) -> Unit:
    """A door leaf in a trim with a handle, and the floor it swings over kept free."""
    w, h = _u(rng, 0.8, 0.95), _u(rng, 2.0, 2.1)
    trim = 0.07
    prims: list[Primitive] = [
        box(-w / 2, w / 2, 0.0, 0.04, 0.0, h, "leaf"),
        box(-w / 2 - trim, -w / 2, 0.0, 0.02, 0.0, h + trim, "trim"),
        box(w / 2, w / 2 + trim, 0.0, 0.02, 0.0, h + trim, "trim"),
        box(-w / 2 - trim, w / 2 + trim, 0.0, 0.02, h, h + trim, "trim"),
        box(w / 2 - 0.12, w / 2 - 0.06, 0.04, 0.1, 0.95, 1.0, "handle"),
    ]
    item = Item("door", prims, {"leaf": "wood_or_white", "trim": "frame", "handle": "handle"})
    return Unit([item], keep_out=[((-w / 2, 0.0, 0.0), (w / 2, w + 0.1, h))])


def make_window(rng: np.random.Generator, wall_height: float) -> Unit:
    """A framed glass pane with a sill; often with a pleated curtain on each side."""
    w = _u(rng, 0.8, 2.0)
    z0 = _u(rng, 0.7, 1.1)
    z1 = min(wall_height - 0.25, z0 + _u(rng, 0.9, 1.4))
    f = 0.06
    prims: list[Primitive] = [
        box(-w / 2, w / 2, 0.0, 0.06, z0, z0 + f, "frame"),
        box(-w / 2, w / 2, 0.0, 0.06, z1 - f, z1, "frame"),
        box(-w / 2, -w / 2 + f, 0.0, 0.06, z0 + f, z1 - f, "frame"),
        box(w / 2 - f, w / 2, 0.0, 0.06, z0 + f, z1 - f, "frame"),
        box(-w / 2 + f, w / 2 - f, 0.0, 0.015, z0 + f, z1 - f, "glass"),
        box(-w / 2 - 0.05, w / 2 + 0.05, 0.0, 0.14, z0 - 0.04, z0, "frame"),
    ]
    if w > 1.2:
        prims.append(box(-0.025, 0.025, 0.0, 0.05, z0 + f, z1 - f, "frame"))
    items = [Item("window", prims, {"frame": "frame", "glass": "glass"})]
    if rng.random() < 0.65:
        bottom = 0.02 if rng.random() < 0.5 else z0 - 0.15
        top = min(wall_height - 0.05, z1 + 0.15)
        pleat, width = _u(rng, 0.1, 0.2), _u(rng, 0.3, 0.55)
        for sx in (-1, 1):
            x_out, x_in = sx * (w / 2 + 0.2), sx * (w / 2 + 0.2 - width)
            panel = curtain_panel(min(x_out, x_in), max(x_out, x_in), 0.17, bottom, top, 0.07, pleat, "cloth")
            items.append(Item("curtain", [panel], {"cloth": "curtain"}))
    return Unit(items)


def make_picture(rng: np.random.Generator, wall_height: float) -> Unit:
    """A framed picture hanging on the wall."""
    w, h = _u(rng, 0.3, 1.2), _u(rng, 0.25, 0.9)
    zc = min(_u(rng, 1.3, 1.7), wall_height - 0.15 - h / 2)
    b = _u(rng, 0.02, 0.05)
    prims: list[Primitive] = [
        box(-w / 2, w / 2, 0.0, 0.025, zc - h / 2, zc + h / 2, "frame"),
        box(-w / 2 + b, w / 2 - b, 0.025, 0.03, zc - h / 2 + b, zc + h / 2 - b, "canvas"),
    ]
    return Unit([Item("picture", prims, {"frame": "frame", "canvas": "art"}, patch_size=0.3)])


def _bounds_of(item: Item) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = zip(*(primitive_bounds(p) for p in item.primitives), strict=True)
    return np.min(lo, axis=0), np.max(hi, axis=0)


def _shifted(item: Item, dx: float, dy: float, dz: float = 0.0) -> Item:
    return Item(
        item.raw_category, place(item.primitives, 0, (dx, dy, dz)), item.slots, item.support, item.patch_size
    )
