"""Read and write ScanNet's `_vh_clean_2.ply` mesh and `_vh_clean_2.labels.ply` label mesh.

Both are binary little-endian PLY: vertex `float x, y, z; uchar red, green, blue, alpha` (the
labels file adds `ushort label`, the nyu40 id), face `list uchar int vertex_indices`. Reading uses
plyfile; writing packs the same layout with numpy (plyfile writes list properties row by row,
~100x slower on a 300k-face mesh).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plyfile

from scene_kd.atomic import atomic_open
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.labels import NYU40_PALETTE


@dataclass
class Mesh:
    """A triangle mesh with vertex colors.

    vertices: float32 [N, 3]; colors: uint8 [N, 3] RGB; faces: int32 [F, 3] vertex indices.
    """

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32).reshape(-1, 3)
        n = len(self.vertices)
        if self.vertices.shape != (n, 3) or self.colors.shape != (n, 3):
            raise ValueError(
                f"Mesh: vertices {list(self.vertices.shape)} and colors {list(self.colors.shape)} must both be [N, 3]"
            )


def _read_ply(path: Path) -> plyfile.PlyData:
    try:
        return plyfile.PlyData.read(
            str(path), known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}}
        )
    except (plyfile.PlyParseError, UnicodeDecodeError, ValueError) as e:
        # a header that is not ASCII is a UnicodeDecodeError, which would not name the file
        raise ScanNetFormatError(f"{path}: malformed or truncated PLY: {type(e).__name__}: {e}") from e


def _vertex_field(ply: plyfile.PlyData, name: str, path: Path) -> np.ndarray:
    try:
        vertex = ply["vertex"]
    except KeyError:
        raise ScanNetFormatError(f"{path}: PLY has no vertex element") from None
    if name not in vertex.data.dtype.names:
        raise ScanNetFormatError(
            f"{path}: vertex element has no {name!r} property (has {vertex.data.dtype.names})"
        )
    return np.asarray(vertex.data[name])


def read_mesh_ply(path: str | os.PathLike) -> Mesh:
    """Read a `_vh_clean_2.ply` (or any triangle PLY with vertex x, y, z, red, green, blue).

    A vertex coordinate that is nan or inf is a ScanNetFormatError naming the file and the first
    such vertex (it would otherwise travel silently into every later stage)."""
    path = Path(path)
    ply = _read_ply(path)
    vertices = np.stack([_vertex_field(ply, axis, path) for axis in "xyz"], axis=1).astype(np.float32)
    finite = np.isfinite(vertices).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ScanNetFormatError(
            f"{path}: {int((~finite).sum())} of {len(vertices)} vertices have non-finite coordinates "
            f"(first: vertex {first} = {vertices[first].tolist()})"
        )
    colors = np.stack([_vertex_field(ply, c, path) for c in ("red", "green", "blue")], axis=1).astype(
        np.uint8
    )
    faces = np.zeros((0, 3), dtype=np.int32)
    if "face" in ply:
        data = ply["face"].data
        name = "vertex_indices" if "vertex_indices" in data.dtype.names else "vertex_index"
        if name not in data.dtype.names:
            raise ScanNetFormatError(f"{path}: face element has no vertex_indices property")
        faces = np.asarray(data[name]).astype(np.int32).reshape(-1, 3)
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ScanNetFormatError(
                f"{path}: face vertex indices span [{faces.min()}, {faces.max()}] but there are {len(vertices)} vertices"
            )
    return Mesh(vertices=vertices, colors=colors, faces=faces)


def read_labels_ply(path: str | os.PathLike) -> np.ndarray:
    """The per-vertex `label` (nyu40 id, 0 = none) of a `_vh_clean_2.labels.ply`, uint16 [N]."""
    path = Path(path)
    return _vertex_field(_read_ply(path), "label", path).astype(np.uint16)


def _ply_header(num_vertices: int, num_faces: int, with_label: bool) -> bytes:
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        "comment VCGLIB generated",
        f"element vertex {num_vertices}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "property uchar alpha",
    ]
    if with_label:
        lines.append("property ushort label")
    lines += [f"element face {num_faces}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def _write_ply(path: str | os.PathLike, mesh: Mesh, colors: np.ndarray, labels: np.ndarray | None) -> None:
    fields = [("xyz", "<f4", (3,)), ("rgba", "u1", (4,))]
    if labels is not None:
        fields.append(("label", "<u2"))
    vertex = np.empty(len(mesh.vertices), dtype=np.dtype(fields))
    vertex["xyz"] = mesh.vertices
    vertex["rgba"][:, :3] = colors
    vertex["rgba"][:, 3] = 255
    if labels is not None:
        vertex["label"] = labels
    face = np.empty(len(mesh.faces), dtype=np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    face["n"] = 3
    face["v"] = mesh.faces
    with atomic_open(path, "wb") as f:
        f.write(_ply_header(len(vertex), len(face), labels is not None))
        f.write(vertex.tobytes())
        f.write(face.tobytes())


def write_mesh_ply(path: str | os.PathLike, mesh: Mesh) -> None:
    """Write `mesh` in the `_vh_clean_2.ply` layout (alpha 255)."""
    _write_ply(path, mesh, mesh.colors, None)


def write_labels_ply(
    path: str | os.PathLike, mesh: Mesh, labels: np.ndarray, colors: np.ndarray | None = None
) -> None:
    """Write the `_vh_clean_2.labels.ply` layout: `mesh` with labels uint16 [N] (nyu40 ids).

    Vertex colors default to ScanNet's nyu40 palette color of each label (black for ids > 40),
    as in ScanNet's own label meshes; pass `colors` uint8 [N, 3] to override.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(mesh.vertices),):
        raise ValueError(
            f"{path}: labels shape {list(labels.shape)} != [{len(mesh.vertices)}] (one per vertex)"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"{path}: labels outside the uint16 range")
    labels = labels.astype(np.uint16)
    if colors is None:
        colors = np.zeros((len(labels), 3), dtype=np.uint8)
        known = labels < len(NYU40_PALETTE)
        colors[known] = NYU40_PALETTE[labels[known]]
    _write_ply(path, mesh, colors, labels)
