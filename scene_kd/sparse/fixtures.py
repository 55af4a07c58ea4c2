"""Test and benchmark fixture, not part of the sparse engine: a voxelized toy room (walls, floor,
boxes) of a chosen size, for tests and benchmarks that need scan-like occupancy without generating
a whole ScanNet scan. Kept in the package (not under tests/) because benchmarks/sparse_unet.py uses
it; not exported from `scene_kd.sparse`."""

from __future__ import annotations

import torch


def room_voxels(target: int, seed: int, voxel_size: float = 0.02) -> torch.Tensor:
    """int32 [V, 3]: surface voxels of a box-shaped room with furniture-like boxes, about `target`."""
    g = torch.Generator().manual_seed(seed)
    # Surface area of a room with floor a x b and height h is about a*b + 2(a+b)h; pick a, b to hit target.
    h, aspect = 2.5, 1.3
    area_per_voxel = voxel_size**2
    boxes_fraction = 0.25
    # Solve a*b*(1) + 2(a+b)h = target * area * (1 - boxes_fraction) for b = a / aspect.
    need = target * area_per_voxel * (1 - boxes_fraction)
    qa, qb, qc = 1 / aspect, 2 * h * (1 + 1 / aspect), -need
    a = (-qb + (qb * qb - 4 * qa * qc) ** 0.5) / (2 * qa)
    b = a / aspect
    surfaces = [  # (origin, u, v) rectangles
        ((0, 0, 0), (a, 0, 0), (0, b, 0)),
        ((0, 0, 0), (a, 0, 0), (0, 0, h)), ((0, b, 0), (a, 0, 0), (0, 0, h)),
        ((0, 0, 0), (0, b, 0), (0, 0, h)), ((a, 0, 0), (0, b, 0), (0, 0, h)),
    ]
    box_area = 0.0
    while box_area < need * boxes_fraction / (1 - boxes_fraction):
        size = torch.rand(3, generator=g) * torch.tensor([1.5, 1.5, 1.2]) + 0.3
        corner = torch.rand(3, generator=g) * torch.tensor([a - size[0], b - size[1], 0.0])
        x0, y0, z0 = corner.tolist()
        sx, sy, sz = size.tolist()
        surfaces += [((x0, y0, sz), (sx, 0, 0), (0, sy, 0)),
                     ((x0, y0, 0), (sx, 0, 0), (0, 0, sz)), ((x0, y0 + sy, 0), (sx, 0, 0), (0, 0, sz)),
                     ((x0, y0, 0), (0, sy, 0), (0, 0, sz)), ((x0 + sx, y0, 0), (0, sy, 0), (0, 0, sz))]
        box_area += sx * sy + 2 * (sx + sy) * sz
    points = []
    for origin, u, v in surfaces:
        u, v, o = torch.tensor(u), torch.tensor(v), torch.tensor(origin, dtype=torch.float32)
        n = int(u.norm() * v.norm() / (voxel_size / 2) ** 2)
        st = torch.rand(n, 2, generator=g)
        points.append(o + st[:, :1] * u + st[:, 1:] * v)
    pts = torch.cat(points)
    return torch.unique(torch.floor(pts / voxel_size).int(), dim=0)
