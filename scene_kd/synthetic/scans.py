"""Synthetic ScanNet scan sets, written in every raw ScanNet format.

`write_synthetic_scannet(root)` writes `root/scans/sceneXXXX_00/` (the `.sens` stream rendered from
the mesh, `_vh_clean_2.ply`, `_vh_clean_2.labels.ply`, `_vh_clean_2.0.010000.segs.json`,
`.aggregation.json`, the scene `.txt` with a non-identity `axisAlignment`), the label tsv and the
train/val split files. Everything follows from the seed: the same call writes the same bytes.
The rooms come from `room.generate_room`, the frames from `render`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scene_kd.atomic import atomic_directory
from scene_kd.scannet.annotations import write_aggregation_json, write_scene_txt, write_segs_json
from scene_kd.scannet.codecs import encode_color, encode_depth
from scene_kd.scannet.frame_types import RGBDFrame
from scene_kd.scannet.labels import LabelRow, write_label_tsv
from scene_kd.scannet.layout import LABEL_TSV_NAME, scene_paths, split_file_name
from scene_kd.scannet.mesh import write_labels_ply, write_mesh_ply
from scene_kd.scannet.sens import SensWriter
from scene_kd.scannet.splits import write_split
from scene_kd.synthetic.catalog import CATEGORIES
from scene_kd.synthetic.render import (
    SCANNET_COLOR_SIZE,
    SCANNET_DEPTH_SIZE,
    FrameRenderer,
    camera_track,
    ordered_map,
    render_frame,
)
from scene_kd.synthetic.room import ZONES, SyntheticRoom, generate_room

JPEG_QUALITY = 90  # pinned: the same frames always encode to the same bytes
DEPTH_ZLIB_LEVEL = 1  # noisy depth barely compresses better at 6, and level 1 is twice as fast
MODELNET10 = frozenset("bathtub bed chair desk dresser monitor night_stand sofa table toilet".split())


def scene_id_of(index: int) -> str:
    """`scene%04d_00` for scene number `index`."""
    return f"scene{index:04d}_00"


def scene_seed(seed: int, index: int) -> int:
    """The room seed of scene `index` in a set generated from `seed` (independent per scene)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def plan_zones(num_scenes: int, seed: int) -> list[tuple[str, ...]]:
    """Zones of each scene: every two consecutive scenes (0-1, 2-3, ...) together hold all of
    `ZONES`, so even a two-scene set shows most of the 20 benchmark classes."""
    rng = np.random.default_rng([seed, 2**31])
    plans: list[tuple[str, ...]] = []
    while len(plans) < num_scenes:
        order = [str(z) for z in rng.permutation(ZONES)]
        half = len(order) // 2 + 1
        plans.append(tuple(order[:half]))
        plans.append(tuple(order[half:] + [order[int(rng.integers(half))]]))
    return plans[:num_scenes]


def scene_room(seed: int, index: int, vertex_spacing: float = 0.06) -> SyntheticRoom:
    """The room of scene `index` in a set written by `write_synthetic_scannet(seed=seed)` (the
    same ground truth, boxes included, without reading the files back)."""
    return generate_room(
        scene_seed(seed, index), zones=plan_zones(index + 1, seed)[index], vertex_spacing=vertex_spacing
    )


def label_rows() -> list[LabelRow]:
    """The tsv rows of every raw category the generator uses, most frequent first."""
    rows = []
    for c in sorted(CATEGORIES, key=lambda c: (-c.count, c.raw_category)):
        rows.append(
            LabelRow(
                id=c.scannet_id,
                raw_category=c.raw_category,
                category=c.category,
                nyu40id=c.nyu40_id,
                count=c.count,
                eigen13id=str(c.eigen13_id),
                nyu_class=c.category,
                eigen13class=c.eigen13_class,
                modelnet40=c.modelnet40,
                modelnet10=c.modelnet40 if c.modelnet40 in MODELNET10 else "",
                shapenetcore55=c.shapenet,
                synsetoffset=c.synsetoffset,
                wnsynsetid=c.wnsynsetid,
                wnsynsetkey=c.wnsynsetkey,
                mpcat40=c.mpcat40,
                mpcat40index=str(c.mpcat40_index),
            )
        )
    return rows


def _scene_txt_fields(renderer: FrameRenderer, num_frames: int) -> dict[str, str]:
    kc, kd = renderer.intrinsic_color, renderer.intrinsic_depth
    return {
        "colorHeight": str(renderer.color_size[1]),
        "colorToDepthExtrinsics": " ".join(f"{v:g}" for v in np.eye(4).ravel()),
        "colorWidth": str(renderer.color_size[0]),
        "depthHeight": str(renderer.depth_size[1]),
        "depthWidth": str(renderer.depth_size[0]),
        "fx_color": f"{kc[0, 0]:.6f}",
        "fx_depth": f"{kd[0, 0]:.6f}",
        "fy_color": f"{kc[1, 1]:.6f}",
        "fy_depth": f"{kd[1, 1]:.6f}",
        "mx_color": f"{kc[0, 2]:.6f}",
        "mx_depth": f"{kd[0, 2]:.6f}",
        "my_color": f"{kc[1, 2]:.6f}",
        "my_depth": f"{kd[1, 2]:.6f}",
        "numColorFrames": str(num_frames),
        "numDepthFrames": str(num_frames),
        "numIMUmeasurements": "0",
        "sceneType": "Apartment",
    }


def write_synthetic_scene(
    scene_dir: Path,
    scene_id: str,
    room: SyntheticRoom,
    *,
    num_frames: int = 300,
    seed: int = 0,
    color_size: tuple[int, int] = SCANNET_COLOR_SIZE,
    depth_size: tuple[int, int] = SCANNET_DEPTH_SIZE,
    color_render_scale: float | None = None,
    workers: int = 2,
    on_frame: Callable[[], None] | None = None,
) -> None:
    """Write every file of one scan of `room` into the existing directory `scene_dir`.

    seed: the frames' noise and camera path; workers: threads rendering and encoding frames
    (the bytes do not depend on it); on_frame: called once per frame written.
    """
    # ScanNet's file names, placed in scene_dir (which may be a temporary name for the scan)
    paths = scene_paths(scene_dir, scene_id, subdir="")
    mesh = room.mesh
    write_mesh_ply(scene_dir / paths.mesh.name, mesh)
    write_labels_ply(scene_dir / paths.labels.name, mesh, room.labels)
    write_segs_json(scene_dir / paths.segs.name, scene_id, room.segments)
    write_aggregation_json(scene_dir / paths.aggregation.name, scene_id, room.seg_groups)
    renderer = FrameRenderer(room, color_size, depth_size, color_render_scale)
    write_scene_txt(
        scene_dir / paths.scene_txt.name, room.axis_alignment, _scene_txt_fields(renderer, num_frames)
    )
    track = camera_track(room, num_frames, seed)

    def encoded_frame(index: int) -> tuple[RGBDFrame, bytes, bytes]:
        frame = render_frame(renderer, track, index, seed)
        return (
            frame,
            encode_color(frame.color, "jpeg", JPEG_QUALITY),
            encode_depth(frame.depth, "zlib_ushort", DEPTH_ZLIB_LEVEL),
        )

    with SensWriter(
        scene_dir / paths.sens.name,
        color_size=renderer.color_size,
        depth_size=renderer.depth_size,
        intrinsic_color=renderer.intrinsic_color,
        intrinsic_depth=renderer.intrinsic_depth,
        depth_shift=1000.0,
        color_compression="jpeg",
        depth_compression="zlib_ushort",
    ) as writer:
        for frame, color_bytes, depth_bytes in ordered_map(encoded_frame, num_frames, workers):
            writer.write_encoded_frame(
                frame.camera_to_world, color_bytes, depth_bytes, frame.timestamp_color, frame.timestamp_depth
            )
            if on_frame is not None:
                on_frame()


def write_synthetic_scannet(
    root: str | os.PathLike,
    num_scenes: int = 2,
    seed: int = 0,
    num_frames: int = 300,
    color_size: tuple[int, int] = SCANNET_COLOR_SIZE,
    depth_size: tuple[int, int] = SCANNET_DEPTH_SIZE,
    *,
    vertex_spacing: float = 0.06,
    color_render_scale: float | None = None,
    val_fraction: float = 0.25,
    workers: int = 2,
    progress: bool = False,
) -> list[str]:
    """Write a synthetic ScanNet scan set under `root` and return its scene ids.

    root/scans/scene0000_00 ... (num_scenes scans, `num_frames` frames each, color and depth at
    `color_size` / `depth_size` (W, H) with ScanNet's intrinsics scaled to them),
    root/scannetv2-labels.combined.tsv, root/scannetv2_train.txt and root/scannetv2_val.txt (the
    last `val_fraction` of the scenes, at least one when there are two or more).
    vertex_spacing: mesh density in metres; color_render_scale: see `FrameRenderer`; workers:
    threads rendering and encoding frames (the output does not depend on it).
    Each scan is written in a temporary directory and renamed into place when complete, so an
    interrupted run leaves no half-written scan; an existing scan of the same id is replaced.
    """
    if num_scenes < 1 or num_frames < 1:
        raise ValueError(
            f"need at least one scene and one frame, got {num_scenes} scenes of {num_frames} frames"
        )
    if color_render_scale is not None and not 0.0 < color_render_scale <= 1.0:
        raise ValueError(f"color_render_scale must be None or in (0, 1], got {color_render_scale}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    for name, size in (("color_size", color_size), ("depth_size", depth_size)):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"{name} must be (width, height) of positive ints, got {size}")
    root = Path(root)
    (root / "scans").mkdir(parents=True, exist_ok=True)
    scene_ids = [scene_id_of(i) for i in range(num_scenes)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_scenes * num_frames, unit="frame", desc="synthetic ScanNet")
    try:
        for index, scene_id in enumerate(scene_ids):
            if bar is not None:
                bar.set_postfix_str(scene_id)
            room = scene_room(seed, index, vertex_spacing)
            with atomic_directory(root / "scans" / scene_id) as tmp:
                write_synthetic_scene(
                    tmp,
                    scene_id,
                    room,
                    num_frames=num_frames,
                    seed=scene_seed(seed, index),
                    color_size=color_size,
                    depth_size=depth_size,
                    color_render_scale=color_render_scale,
                    workers=workers,
                    on_frame=None if bar is None else (lambda: bar.update(1)),
                )
    finally:
        if bar is not None:
            bar.close()
    write_label_tsv(root / LABEL_TSV_NAME, label_rows())
    num_val = max(1, round(val_fraction * num_scenes)) if num_scenes >= 2 and val_fraction > 0 else 0
    write_split(root / split_file_name("train"), scene_ids[: num_scenes - num_val])
    write_split(root / split_file_name("val"), scene_ids[num_scenes - num_val :])
    return scene_ids
