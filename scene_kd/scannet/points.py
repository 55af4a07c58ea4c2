"""The labelled point cloud of a scan: mesh vertices with colors, normals, 20-class and
ScanNet200 semantics, and instances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scene_kd.scannet.annotations import group_of_vertices, read_aggregation_json, read_segs_json
from scene_kd.scannet.errors import ScanNetFormatError
from scene_kd.scannet.labels import nyu40_to_seg20
from scene_kd.scannet.layout import ScenePaths
from scene_kd.scannet.mesh import read_labels_ply, read_mesh_ply


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals float32 [N, 3]: the area-weighted sum of the normals of the faces around
    each vertex (as Pointcept's ScanNet preprocessing computes them); zero for a vertex in no
    face or only in degenerate faces. vertices: [N, 3]; faces: int [F, 3] (counter-clockwise)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.intp).reshape(-1, 3)
    a = v[f[:, 1]] - v[f[:, 0]]
    b = v[f[:, 2]] - v[f[:, 0]]
    # a x b, written out (np.cross is ~2x slower); its length is twice the face area, so summing
    # it weights faces by area.
    face_normals = np.empty_like(a)
    face_normals[:, 0] = a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1]
    face_normals[:, 1] = a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]
    face_normals[:, 2] = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    corners = f.T.ravel()  # every face's first corner, then every second corner, then every third
    normals = np.empty_like(v)
    for axis in range(3):
        normals[:, axis] = np.bincount(corners, weights=np.tile(face_normals[:, axis], 3), minlength=len(v))
    length = np.sqrt((normals * normals).sum(axis=1, keepdims=True))
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0).astype(np.float32)


@dataclass
class ScenePoints:
    """The point cloud of one scan, one entry per `_vh_clean_2.ply` vertex, in the mesh's own
    (not axis-aligned) frame.

    coord: float32 [N, 3]; color: uint8 [N, 3]; normal: float32 [N, 3];
    segment20: int64 [N], 20-class index from the labels.ply nyu40 ids, -1 = ignore;
    segment200: int64 [N], ScanNet200 index from the aggregation's raw labels, -1 = ignore;
    instance: int64 [N], position of the vertex's group in the aggregation, -1 = none.
    has_labels / has_segment200 / has_instances: whether the source files existed (when not, the
    array is all -1).
    """

    coord: np.ndarray
    color: np.ndarray
    normal: np.ndarray
    segment20: np.ndarray
    segment200: np.ndarray
    instance: np.ndarray
    num_faces: int
    has_labels: bool
    has_segment200: bool
    has_instances: bool


def _check_count(count: int, expected: int, path, mesh_path) -> None:
    if count != expected:
        raise ScanNetFormatError(
            f"{path}: {count} per-vertex entries but the mesh {mesh_path} has {expected} vertices"
        )


def load_scene_points(paths: ScenePaths, raw_to_seg200: dict[str, int] | None) -> ScenePoints:
    """Read the mesh and annotations of one scan.

    The labels.ply is required unless the scan is a test scan (`paths.is_test`); the segments and
    aggregation are optional (instances and segment200 are then all -1). raw_to_seg200: raw
    category -> ScanNet200 index (from the label tsv); None leaves segment200 all -1.
    Raises FileNotFoundError for a missing required file and ScanNetFormatError for a malformed
    one, a per-vertex file whose length differs from the mesh's vertex count, or a mesh with no
    vertices or no faces (no points to train on; no normals).
    """
    mesh = read_mesh_ply(paths.mesh)
    n = len(mesh.vertices)
    if n == 0 or len(mesh.faces) == 0:
        raise ScanNetFormatError(
            f"{paths.mesh}: empty mesh ({n} vertices, {len(mesh.faces)} faces): a scan needs both"
        )
    none = np.full(n, -1, dtype=np.int64)
    segment20, segment200, instance = none, none.copy(), none.copy()
    has_labels = not paths.is_test or paths.labels.exists()
    if has_labels:
        nyu40 = read_labels_ply(paths.labels)
        _check_count(len(nyu40), n, paths.labels, paths.mesh)
        segment20 = nyu40_to_seg20(nyu40)
    has_instances = paths.segs.exists() and paths.aggregation.exists()
    has_segment200 = has_instances and raw_to_seg200 is not None
    if has_instances:
        seg_indices = read_segs_json(paths.segs)
        _check_count(len(seg_indices), n, paths.segs, paths.mesh)
        groups = read_aggregation_json(paths.aggregation)
        instance = group_of_vertices(seg_indices, groups)  # instance id = group position
        if raw_to_seg200 is not None:
            seg200_of_group = np.array(
                [raw_to_seg200.get(g.label, -1) for g in groups] + [-1], dtype=np.int64
            )
            segment200 = seg200_of_group[instance]
    return ScenePoints(
        coord=mesh.vertices,
        color=mesh.colors,
        normal=vertex_normals(mesh.vertices, mesh.faces),
        segment20=segment20,
        segment200=segment200,
        instance=instance,
        num_faces=len(mesh.faces),
        has_labels=has_labels,
        has_segment200=has_segment200,
        has_instances=has_instances,
    )
