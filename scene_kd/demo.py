"""The README's main job on built-in synthetic data, as far as the pipeline exists today.

Synthetic ScanNet scans -> `preprocess_dataset` -> voxelize a processed scene -> train a student on its
20-class labels for a few steps (forward, backward, SGD) -> save the student's state_dict in
MinkowskiEngine's layout. The full demo (pretraining from a 2D teacher, finetuning, evaluation)
replaces the training step once those stages exist.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scene_kd.models import build_student
from scene_kd.scannet.preprocess import format_summary, preprocess_dataset
from scene_kd.scannet.synthetic import write_synthetic_scannet
from scene_kd.sparse import SparseTensor, batched_coordinates, sparse_quantize


def load_voxelized_scene(scene_dir: Path, voxel_size: float) -> dict[str, torch.Tensor]:
    """Voxelize one processed scene: coordinates int32 [V, 4] (batch 0), colors in [-1, 1] [V, 3],
    20-class targets int64 [V] (-1 = ignore), and the points' inverse map [P]."""
    coord = np.load(scene_dir / "coord.npy")
    color = np.load(scene_dir / "color.npy")
    segment = np.load(scene_dir / "segment20.npy")
    voxels, unique_map, inverse_map = sparse_quantize(torch.from_numpy(coord), voxel_size)
    return {
        "coordinates": batched_coordinates([voxels]),
        "features": torch.from_numpy(color[unique_map.numpy()]).float() / 127.5 - 1.0,
        "targets": torch.from_numpy(segment[unique_map.numpy()]).long(),
        "inverse_map": inverse_map,
        "point_targets": torch.from_numpy(segment).long(),
    }


def run_demo(out_dir: str | os.PathLike = "outputs/demo", *, num_scenes: int = 2, num_frames: int = 60,
             student: str = "MinkUNet14A", voxel_size: float = 0.05, steps: int = 40, seed: int = 0) -> dict:
    """Run the demo into `out_dir`; returns (and writes as demo_summary.json) what it measured."""
    out = Path(out_dir)
    raw, processed = out / "scannet", out / "processed"
    torch.manual_seed(seed)
    started = time.perf_counter()

    print(f"[1/4] writing {num_scenes} synthetic ScanNet scans ({num_frames} frames each) to {raw}")
    scene_ids = write_synthetic_scannet(raw, num_scenes=num_scenes, seed=seed, num_frames=num_frames,
                                        color_size=(648, 484), depth_size=(320, 240), progress=True)

    print(f"[2/4] preprocessing into {processed}")
    summary = preprocess_dataset(raw, processed, frame_skip=10, workers=1, progress=True)
    print(format_summary(summary))
    if summary.failed:
        raise RuntimeError(f"preprocessing failed for {[s.scene_id for s in summary.failed]}")

    print(f"[3/4] training {student} on {scene_ids[0]}'s 20-class labels for {steps} steps (voxels {voxel_size} m)")
    scene = load_voxelized_scene(processed / scene_ids[0], voxel_size)
    net = build_student(student, in_channels=3, out_channels=20)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    losses = []
    bar = tqdm(range(steps), desc="train", unit="step")
    for _ in bar:
        logits = net(SparseTensor(scene["features"], scene["coordinates"]))
        loss = torch.nn.functional.cross_entropy(logits.F, scene["targets"], ignore_index=-1)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss_seg: {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")

    net.eval()
    with torch.no_grad():
        per_point = net(SparseTensor(scene["features"], scene["coordinates"])).features_at(scene["inverse_map"])
    valid = scene["point_targets"] >= 0
    accuracy = (per_point.argmax(1)[valid] == scene["point_targets"][valid]).float().mean().item()

    print("[4/4] saving the student (MinkowskiEngine state_dict layout)")
    checkpoint = out / "student.pth"
    tmp = checkpoint.with_suffix(".pth.tmp")
    torch.save({"student": student, "state_dict": net.state_dict()}, tmp)
    os.replace(tmp, checkpoint)
    result = {
        "scenes": scene_ids, "student": student, "voxels": int(scene["coordinates"].shape[0]),
        "loss_first": losses[0], "loss_last": losses[-1], "train_point_accuracy": accuracy,
        "checkpoint": str(checkpoint), "seconds": time.perf_counter() - started,
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2))
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; training-scene point accuracy {accuracy:.1%}; "
          f"{result['seconds']:.0f} s in all; checkpoint {checkpoint}")
    return result
