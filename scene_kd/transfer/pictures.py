"""Pictures of what a student learned: its per-voxel features as colours (the first three principal
components mapped to RGB) and predictions beside the ground truth, drawn top-down (a point cloud
seen from above, the highest point of each pixel in front) as PNGs, and as coloured PLYs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scene_kd.data.scenes import (
    feature_channels,
    feature_fields,
    input_features,
    load_scene,
    recorded_feature_settings,
)
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.eval.semseg import label_colors
from scene_kd.models.students import build_student
from scene_kd.scannet.mesh import Mesh, write_mesh_ply
from scene_kd.sparse.backend import get_backend
from scene_kd.sparse.quantize import sparse_quantize
from scene_kd.sparse.tensor import SparseTensor
from scene_kd.transfer.plots import pyplot_agg, save_figure


def pca_colors(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [N, 3]: features [N, C] projected on their first three principal components, each
    stretched over its 1st-99th percentile to 0-255 (the sign of each component is fixed so that its
    largest loading is positive, for comparable pictures)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = v[:3].T
    components = components * torch.sign(components[components.abs().argmax(0), torch.arange(components.shape[1])])
    projected = (x @ components).numpy()
    if projected.shape[1] < 3:
        projected = np.pad(projected, ((0, 0), (0, 3 - projected.shape[1])))
    low, high = np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
    return (np.clip((projected - low) / np.maximum(high - low, 1e-12), 0, 1) * 255).astype(np.uint8)


@torch.no_grad()
def student_point_features(checkpoint: str | os.PathLike | None, student: str, root: str | os.PathLike,
                           scene_id: str, voxel_size: float, seed: int = 0) -> np.ndarray:
    """float32 [P, C]: the decoder features of every point of a processed scene under the student of a
    pretraining checkpoint (its "student" weights), or a randomly initialised one (checkpoint None).
    The input features are those the checkpoint's student was fed (its `data.in_features` and
    `data.color_norm`; the defaults for a random student)."""
    torch.manual_seed(seed)
    state = load_checkpoint(checkpoint) if checkpoint is not None else {}
    fed = recorded_feature_settings(state.get("config"))
    net = build_student(student, in_channels=feature_channels(fed["in_features"]), out_channels=None,
                        backend=get_backend("torch"))
    if checkpoint is not None:
        net.load_state_dict(state["student"])
    net.eval()
    arrays = load_scene(root, scene_id, ("coord", *feature_fields(fed["in_features"])))
    coords, unique_map, inverse_map = sparse_quantize(arrays["coord"].astype(np.float64), voxel_size)
    batch_coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords.int()], 1)
    kept = unique_map.numpy()
    normals = arrays["normal"][kept] if "normal" in arrays else None
    features = torch.from_numpy(input_features(arrays["color"][kept], normals, fed["color_norm"]))
    out = net(SparseTensor(features, batch_coords))
    return out.F[inverse_map].numpy()


def draw_top_down(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike,
                  point_size: float = 2.0) -> None:
    """One panel per (title, points float [P, 3], colors uint8 [P, 3]), seen from above (higher
    points drawn last), side by side in one PNG."""
    plt = pyplot_agg()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for axis, (title, points, colors) in zip(axes[0], panels, strict=True):
        order = np.argsort(points[:, 2])
        axis.scatter(points[order, 0], points[order, 1], c=colors[order] / 255.0, s=point_size, marker="s",
                     linewidths=0)
        axis.set_title(title, fontsize=9)
        axis.set_aspect("equal")
        axis.axis("off")
    save_figure(figure, path)


def write_colored_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray) -> None:
    """Points [P, 3] with colors uint8 [P, 3] as a vertex-only PLY (atomic)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mesh_ply(path, Mesh(vertices=points, colors=colors, faces=np.zeros((0, 3), dtype=np.int32)))


def feature_pictures(root: str | os.PathLike, scene_id: str, student: str, voxel_size: float,
                     checkpoints: dict[str, str | os.PathLike | None], png: str | os.PathLike,
                     ply_dir: str | os.PathLike) -> None:
    """PCA-coloured student features of one scene for each {title: pretraining checkpoint (None:
    random init)} side by side in `png`, one PLY per title in `ply_dir`."""
    points = load_scene(root, scene_id, ("coord",))["coord"]
    panels = []
    for title, checkpoint in checkpoints.items():
        colors = pca_colors(student_point_features(checkpoint, student, root, scene_id, voxel_size))
        panels.append((title, points, colors))
        write_colored_ply(Path(ply_dir) / f"{scene_id}_features_{title.replace(' ', '_')}.ply", points, colors)
    draw_top_down(panels, png)


def prediction_pictures(points: np.ndarray, panels: dict[str, np.ndarray], png: str | os.PathLike) -> None:
    """Class maps of the same points [P, 3] side by side, {title: classes int [P] (-1: none, black)}."""
    draw_top_down([(title, points, label_colors(classes)) for title, classes in panels.items()], png)


@torch.no_grad()
def zeroshot_point_predictions(checkpoint: str | os.PathLike, root: str | os.PathLike, scene_id: str) -> np.ndarray:
    """int64 [P]: the zero-shot class of every point of a processed scene under a concept-pretrained
    checkpoint and its CLIP teacher's text tower (as `tools/zeroshot_seg.py` predicts it)."""
    from scene_kd.data.seg_dataset import SegmentationDataset
    from scene_kd.eval.inference import predict_scene
    from scene_kd.eval.zeroshot import (
        SCANNET_TEMPLATES,
        ZeroShotSegmenter,
        load_pretrained_concept_model,
        seg20_prompt_names,
    )
    from scene_kd.models.teachers.clip import clip_text_embeddings

    student, head, cfg = load_pretrained_concept_model(checkpoint)
    teacher = cfg["teacher"]
    text = clip_text_embeddings(teacher["options"]["model"], teacher["weights"], seg20_prompt_names(),
                                SCANNET_TEMPLATES)
    model = ZeroShotSegmenter(student, head, text).eval()
    dataset = SegmentationDataset(root, [scene_id], voxel_size=cfg["data"]["voxel_size"], augment=False,
                                  max_voxels=None, in_features="rgb")
    sample = dataset[0]
    logits = predict_scene(model, get_backend("torch"), torch.as_tensor(sample["coords"]),
                           torch.as_tensor(sample["feats"]), torch.device("cpu"), chunk_voxels=400_000, margin_voxels=10)
    return logits.argmax(1)[torch.as_tensor(sample["inverse_map"])].numpy()
