"""Primitive shapes for synthetic rooms, meshed densely enough to carry per-vertex colors and labels.

Furniture is described in its own frame by a few primitives (boxes, vertical cylinders, pleated
panels); `place` moves them into the room with a yaw that is a multiple of 90 degrees, so every
object's vertices stay inside an axis-aligned box in the room frame (what ScanNet's detection boxes
assume after the axis alignment). `MeshBuilder` turns primitives into triangles whose vertices are at
most `spacing` apart and records, per vertex, which part it belongs to and which surface patch (the
seed of the over-segmentation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned box [lo, hi] (metres). `skip` names faces left out ("-z" for a box on the floor)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    part: str
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder of `radius` around (x, y) from z0 to z1, with optional end caps."""

    center: tuple[float, float]
    z0: float
    z1: float
    radius: float
    part: str
    caps: tuple[bool, bool] = (False, True)


@dataclass(frozen=True)
class Panel:
    """A vertical rectangle pleated like a curtain.

    origin: one bottom corner; edge_u: horizontal edge, edge_v: vertical edge (both 3-vectors).
    The surface is pushed along `normal` by `depth * (1 + sin(2 pi u / pleat)) / 2`.
    """

    origin: tuple[float, float, float]
    edge_u: tuple[float, float, float]
    edge_v: tuple[float, float, float]
    normal: tuple[float, float, float]
    depth: float
    pleat: float
    part: str


Primitive = Box | Cylinder | Panel


def rotate_z90(xy: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Rotate points [..., 2] (or [..., 3], z kept) by `quarter_turns` x 90 degrees about +z."""
    xy = np.asarray(xy, dtype=np.float64)
    out = xy.copy()
    k = quarter_turns % 4
    x, y = xy[..., 0], xy[..., 1]
    # exact integer rotations: no cos/sin rounding, so rotated boxes stay exactly axis aligned
    out[..., 0], out[..., 1] = [(x, y), (-y, x), (-x, -y), (y, -x)][k]
    return out


def place(
    primitives: list[Primitive], quarter_turns: int, offset: tuple[float, float, float]
) -> list[Primitive]:
    """Rotate primitives about +z by `quarter_turns` x 90 degrees, then translate by `offset`."""
    t = np.asarray(offset, dtype=np.float64)
    placed: list[Primitive] = []
    for p in primitives:
        if isinstance(p, Box):
            corners = rotate_z90(np.array([p.lo, p.hi]), quarter_turns) + t
            placed.append(
                replace(
                    p,
                    lo=tuple(corners.min(0)),
                    hi=tuple(corners.max(0)),
                    skip=_rotate_faces(p.skip, quarter_turns),
                )
            )
        elif isinstance(p, Cylinder):
            c = rotate_z90(np.array(p.center), quarter_turns) + t[:2]
            placed.append(replace(p, center=tuple(c), z0=p.z0 + t[2], z1=p.z1 + t[2]))
        else:
            origin = rotate_z90(np.array(p.origin), quarter_turns) + t
            placed.append(
                replace(
                    p,
                    origin=tuple(origin),
                    edge_u=tuple(rotate_z90(np.array(p.edge_u), quarter_turns)),
                    edge_v=tuple(rotate_z90(np.array(p.edge_v), quarter_turns)),
                    normal=tuple(rotate_z90(np.array(p.normal), quarter_turns)),
                )
            )
    return placed


def _rotate_faces(faces: tuple[str, ...], quarter_turns: int) -> tuple[str, ...]:
    ring = ["+x", "+y", "-x", "-y"]
    return tuple(ring[(ring.index(f) + quarter_turns) % 4] if f in ring else f for f in faces)


def primitive_bounds(p: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds (lo [3], hi [3]) of one primitive."""
    if isinstance(p, Box):
        return np.array(p.lo, dtype=np.float64), np.array(p.hi, dtype=np.float64)
    if isinstance(p, Cylinder):
        c = np.array(p.center)
        return np.array([*(c - p.radius), p.z0]), np.array([*(c + p.radius), p.z1])
    pts = np.array(p.origin) + np.array([[0, 0, 0], p.edge_u, p.edge_v, np.add(p.edge_u, p.edge_v)])
    pts = np.concatenate([pts, pts + np.array(p.normal) * p.depth])
    return pts.min(0), pts.max(0)


class MeshBuilder:
    """Accumulates densely meshed primitives.

    Per vertex it keeps the part index (an index into `parts`, the (object, material slot) pairs the
    caller registers) and a patch index (a planar piece of a primitive face, at most about
    `patch_size` across), from which the over-segmentation is made.
    """

    def __init__(self, spacing: float):
        if spacing <= 0:
            raise ValueError(f"vertex spacing must be positive, got {spacing}")
        self.spacing = spacing
        self._vertices: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._part: list[np.ndarray] = []
        self._patch: list[np.ndarray] = []
        self._num_vertices = 0
        self.num_patches = 0

    def add(self, primitive: Primitive, part: int, patch_size: float) -> None:
        """Mesh one primitive for part index `part`."""
        if isinstance(primitive, Box):
            self._add_box(primitive, part, patch_size)
        elif isinstance(primitive, Cylinder):
            self._add_cylinder(primitive, part, patch_size)
        else:
            self._add_panel(primitive, part, patch_size)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """vertices float64 [N, 3], faces int64 [F, 3], part int64 [N], patch int64 [N]."""
        if not self._vertices:
            raise ValueError("the mesh is empty")
        return (
            np.concatenate(self._vertices),
            np.concatenate(self._faces),
            np.concatenate(self._part),
            np.concatenate(self._patch),
        )

    # -- primitives -------------------------------------------------------------------------------

    def _append(self, vertices: np.ndarray, faces: np.ndarray, part: int, patch: np.ndarray) -> None:
        self._vertices.append(vertices)
        self._faces.append(faces + self._num_vertices)
        self._part.append(np.full(len(vertices), part, dtype=np.int64))
        self._patch.append(patch)
        self._num_vertices += len(vertices)

    def _grid(
        self,
        origin: np.ndarray,
        edge_u: np.ndarray,
        edge_v: np.ndarray,
        part: int,
        patch_size: float,
        patch: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mesh the parallelogram origin + a edge_u + b edge_v (a, b in [0, 1]); normal edge_u x edge_v.

        The face is tiled into patches of about `patch_size`, or is all patch `patch` when given.
        Returns the grid parameters (a, b) of the vertices, float64 [N] each, for callers that bend it.
        """
        len_u, len_v = float(np.linalg.norm(edge_u)), float(np.linalg.norm(edge_v))
        nu = max(1, math.ceil(len_u / self.spacing - 1e-9))
        nv = max(1, math.ceil(len_v / self.spacing - 1e-9))
        a, b = np.meshgrid(np.linspace(0.0, 1.0, nu + 1), np.linspace(0.0, 1.0, nv + 1), indexing="ij")
        a, b = a.ravel(), b.ravel()
        vertices = origin + a[:, None] * edge_u + b[:, None] * edge_v
        i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
        v00 = (i * (nv + 1) + j).ravel()
        v10, v01 = v00 + (nv + 1), v00 + 1
        v11 = v10 + 1
        faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
        if patch is not None:
            self._append(vertices, faces, part, np.full(len(vertices), patch, dtype=np.int64))
            return a, b
        # tiles of about patch_size: the over-segmentation splits large flat faces like ScanNet's does
        tu = max(1, round(len_u / patch_size))
        tv = max(1, round(len_v / patch_size))
        tile = np.minimum((a * tu).astype(np.int64), tu - 1) * tv + np.minimum(
            (b * tv).astype(np.int64), tv - 1
        )
        self._append(vertices, faces, part, self.num_patches + tile)
        self.num_patches += tu * tv
        return a, b

    def _add_box(self, box: Box, part: int, patch_size: float) -> None:
        lo, hi = np.array(box.lo, dtype=np.float64), np.array(box.hi, dtype=np.float64)
        sx, sy, sz = hi - lo
        ex, ey, ez = np.array([sx, 0, 0]), np.array([0, sy, 0]), np.array([0, 0, sz])
        # (origin, edge_u, edge_v) with edge_u x edge_v pointing out of the box
        faces = {
            "+x": (np.array([hi[0], lo[1], lo[2]]), ey, ez),
            "-x": (lo, ez, ey),
            "+y": (np.array([lo[0], hi[1], lo[2]]), ez, ex),
            "-y": (lo, ex, ez),
            "+z": (np.array([lo[0], lo[1], hi[2]]), ex, ey),
            "-z": (lo, ey, ex),
        }
        # a small box (handle, leg, pillow) is one segment, as ScanNet's segmentation would leave it
        whole = None
        if max(sx, sy, sz) <= patch_size:
            whole, self.num_patches = self.num_patches, self.num_patches + 1
        for name, (origin, eu, ev) in faces.items():
            if name not in box.skip:
                self._grid(origin, eu, ev, part, patch_size, whole)

    def _add_cylinder(self, cyl: Cylinder, part: int, patch_size: float) -> None:
        n_around = max(8, math.ceil(2 * math.pi * cyl.radius / self.spacing))
        n_up = max(1, math.ceil((cyl.z1 - cyl.z0) / self.spacing - 1e-9))
        angle = np.linspace(0.0, 2 * math.pi, n_around, endpoint=False)
        z = np.linspace(cyl.z0, cyl.z1, n_up + 1)
        ang, zz = np.meshgrid(angle, z, indexing="ij")
        cx, cy = cyl.center
        side = np.stack(
            [cx + cyl.radius * np.cos(ang.ravel()), cy + cyl.radius * np.sin(ang.ravel()), zz.ravel()], 1
        )
        i, j = np.meshgrid(np.arange(n_around), np.arange(n_up), indexing="ij")
        v00 = (i * (n_up + 1) + j).ravel()
        v10 = (((i + 1) % n_around) * (n_up + 1) + j).ravel()
        faces = np.concatenate([np.stack([v00, v10, v10 + 1], 1), np.stack([v00, v10 + 1, v00 + 1], 1)])
        # the side splits into up to four patches around, more on tall cylinders
        tiles_around = min(4, max(1, round(2 * math.pi * cyl.radius / patch_size)))
        tiles_up = max(1, round((cyl.z1 - cyl.z0) / patch_size))
        sector = np.minimum((ang.ravel() / (2 * math.pi) * tiles_around).astype(np.int64), tiles_around - 1)
        level = np.minimum(
            ((zz.ravel() - cyl.z0) / max(cyl.z1 - cyl.z0, 1e-9) * tiles_up).astype(np.int64), tiles_up - 1
        )
        self._append(side, faces, part, self.num_patches + sector * tiles_up + level)
        self.num_patches += tiles_around * tiles_up
        for is_top, wanted in ((False, cyl.caps[0]), (True, cyl.caps[1])):
            if wanted:
                self._add_disc(cyl, angle, cyl.z1 if is_top else cyl.z0, is_top, part)

    def _add_disc(self, cyl: Cylinder, angle: np.ndarray, z: float, facing_up: bool, part: int) -> None:
        n_rings = max(1, math.ceil(cyl.radius / self.spacing))
        radii = np.linspace(cyl.radius / n_rings, cyl.radius, n_rings)
        rr, ang = np.meshgrid(radii, angle, indexing="ij")
        cx, cy = cyl.center
        ring_pts = np.stack(
            [
                cx + rr.ravel() * np.cos(ang.ravel()),
                cy + rr.ravel() * np.sin(ang.ravel()),
                np.full(rr.size, z),
            ],
            1,
        )
        vertices = np.concatenate([[[cx, cy, z]], ring_pts])
        n = len(angle)
        k = np.arange(n)
        faces = [np.stack([np.zeros(n, dtype=np.int64), 1 + k, 1 + (k + 1) % n], 1)]
        for r in range(n_rings - 1):
            a0, a1 = 1 + r * n + k, 1 + r * n + (k + 1) % n
            b0, b1 = a0 + n, a1 + n
            faces += [np.stack([a0, b0, b1], 1), np.stack([a0, b1, a1], 1)]
        faces = np.concatenate(faces)
        if not facing_up:
            faces = faces[:, ::-1]
        self._append(vertices, faces, part, np.full(len(vertices), self.num_patches, dtype=np.int64))
        self.num_patches += 1

    def _add_panel(self, panel: Panel, part: int, patch_size: float) -> None:
        edge_u = np.array(panel.edge_u, dtype=np.float64)
        a, _ = self._grid(
            np.array(panel.origin, dtype=np.float64), edge_u, np.array(panel.edge_v), part, patch_size
        )
        u = a * np.linalg.norm(edge_u)
        bulge = panel.depth * 0.5 * (1.0 + np.sin(2 * math.pi * u / panel.pleat))
        self._vertices[-1] = self._vertices[-1] + bulge[:, None] * np.array(panel.normal)


def value_noise(points: np.ndarray, frequency: float, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at `points` float [N, 3] (lattice spacing 1 / frequency).

    A deterministic integer hash of the lattice corners, interpolated with a smoothstep, so a
    texture depends only on the position and the seed, never on vertex order.
    """
    p = np.asarray(points, dtype=np.float64) * frequency
    cell = np.floor(p).astype(np.int64)
    f = p - cell
    f = f * f * (3.0 - 2.0 * f)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                h = _hash01(cell[:, 0] + dx, cell[:, 1] + dy, cell[:, 2] + dz, seed)
                w = (
                    (f[:, 0] if dx else 1 - f[:, 0])
                    * (f[:, 1] if dy else 1 - f[:, 1])
                    * (f[:, 2] if dz else 1 - f[:, 2])
                )
                out += w * h
    return out


def _hash01(x: np.ndarray, y: np.ndarray, z: np.ndarray, seed: int) -> np.ndarray:
    h = (
        x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        ^ y.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        ^ z.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
        ^ np.uint64((seed * 0x27D4EB2F165667C5) & 0xFFFFFFFFFFFFFFFF)
    )
    # splitmix64 finalizer: neighbouring lattice points get unrelated values
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
