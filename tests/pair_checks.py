"""Helpers shared by the correspondence and pretraining-data tests: a small processed synthetic
scan, and an independent re-derivation of the 3D point a pair's pixel sees (written out with plain
pinhole formulas, not with scene_kd.data.geometry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Color smaller than depth (as ScanNet's 320 x 240 color against 640 x 480 depth), and color and
# depth intrinsics that differ (the synthetic color camera is ScanNet's, rescaled).
RAW_SIZES = {"color_size": (324, 242), "depth_size": (160, 120), "vertex_spacing": 0.08}
STORED_COLOR_SIZE = (120, 90)
FRAME_SKIP = 2


def make_processed_scans(root: Path, num_scenes: int = 1, num_frames: int = 8, seed: int = 1) -> Path:
    """Write `num_scenes` synthetic scans under root/raw and process them into root/out."""
    from scene_kd.scannet.preprocess import preprocess_dataset
    from scene_kd.synthetic import write_synthetic_scannet

    write_synthetic_scannet(
        root / "raw", num_scenes=num_scenes, seed=seed, num_frames=num_frames, workers=1, **RAW_SIZES
    )
    summary = preprocess_dataset(
        root / "raw", root / "out", frame_skip=FRAME_SKIP, image_size=STORED_COLOR_SIZE,
        workers=1, progress=False,
    )
    assert all(s.status == "done" for s in summary.scenes), summary
    return root / "out"


def rederive_points(
    rows: np.ndarray,
    cols: np.ndarray,
    image_transform,
    depth: np.ndarray,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    camera_to_world: np.ndarray,
    point_transform: np.ndarray | None,
    radius: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """For teacher-image pixels (rows, cols) [M]: the (augmented) world points of the depth pixels
    within `radius` of where the pixel's ray meets the depth image, [M, K, 3], and which of them
    have a depth measurement [M, K]. Identity extrinsics (the synthetic scans')."""
    if image_transform is not None:
        rows, cols = image_transform.inverse_pixels(rows, cols)  # pixel of the stored color image
    kc, kd = intrinsic_color, intrinsic_depth
    # The same viewing ray in the depth camera (identity extrinsics): normalized coordinates agree.
    x_n = (cols - kc[0, 2]) / kc[0, 0]
    y_n = (rows - kc[1, 2]) / kc[1, 1]
    u_d = x_n * kd[0, 0] + kd[0, 2]
    v_d = y_n * kd[1, 1] + kd[1, 2]
    height, width = depth.shape
    points, valid = [], []
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r = np.floor(v_d + 0.5).astype(np.int64) + dr
            c = np.floor(u_d + 0.5).astype(np.int64) + dc
            ok = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            r, c = np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)
            z = depth[r, c].astype(np.float64) / 1000.0
            camera = np.stack([(c - kd[0, 2]) * z / kd[0, 0], (r - kd[1, 2]) * z / kd[1, 1], z], axis=1)
            world = camera @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
            if point_transform is not None:
                world = world @ point_transform[:3, :3].T + point_transform[:3, 3]
            points.append(world)
            valid.append(ok & (z > 0))
    return np.stack(points, axis=1), np.stack(valid, axis=1)


def pixel_point_in_voxel(points: np.ndarray, valid: np.ndarray, voxel_coords: np.ndarray, voxel_size: float) -> np.ndarray:
    """bool [M]: one of the candidate points [M, K, 3] lies in the voxel [M, 3]."""
    inside = (np.floor(points / voxel_size).astype(np.int64) == voxel_coords[:, None, :]).all(axis=2)
    return (inside & valid).any(axis=1)


def run_torchrun(script: Path, args: list[str], nproc: int = 2, timeout: int = 300):
    """Run `script args` under `torch.distributed.run` with `nproc` CPU processes on a free loopback
    port; returns the completed process (stdout/stderr captured)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
