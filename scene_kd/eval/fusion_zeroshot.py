"""The 2D-only zero-shot baseline that needs no 3D training (OpenScene's 2D fusion): every frame's
dense CLIP-space features are carried onto the scene's voxels through the depth-tested
pixel-to-point pairs, averaged over the frames that see a voxel, and each voxel takes the class of
the nearest text embedding. Voxels no frame sees get no class (they count as misses)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene_kd.data.augment import ImageTransform
from scene_kd.data.correspondence import RGBDCamera, scene_pairs
from scene_kd.data.scenes import load_scene, read_manifest, resolve_scene_ids
from scene_kd.eval.semseg import SemanticConfusion
from scene_kd.models.heads import sample_pixel_features
from scene_kd.scannet.exported import ExportedFrameSource
from scene_kd.sparse.quantize import sparse_quantize


@torch.no_grad()
def fused_voxel_features(root: str | os.PathLike, scene_id: str, teacher: nn.Module, voxel_size: float,
                         image_size: tuple[int, int], depth_tolerance: float = 0.05, frames_per_batch: int = 8,
                         device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, np.ndarray]:
    """(features float32 [V, D]: the mean of the teacher's dense features at the pixels that see each
    voxel, L2-normalized, zero where unseen; seen bool [V]; inverse_map int64 [P], each point's voxel)
    of processed scene `scene_id`. teacher: images [B, 3, H, W] in [0, 1] -> [B, D, h, w] (a CLIP
    teacher: CLIP space); image_size: (W, H) the frames are resized to."""
    scene_dir = Path(root) / scene_id
    points = load_scene(root, scene_id, ("coord",))["coord"].astype(np.float64)
    _, _, inverse = (t.numpy() for t in sparse_quantize(points, voxel_size))
    num_voxels = int(inverse.max()) + 1 if len(inverse) else 0
    source = ExportedFrameSource(scene_dir)
    camera = RGBDCamera.from_source(source)
    frame_ids = [int(i) for i in read_manifest(scene_dir)["frame_ids"]]
    sums, counts = None, torch.zeros(num_voxels)
    for start in range(0, len(frame_ids), frames_per_batch):
        frames = [source.read(i) for i in frame_ids[start:start + frames_per_batch]]
        transforms = [ImageTransform.resize((f.color.shape[1], f.color.shape[0]), image_size) for f in frames]
        found = scene_pairs(points, inverse, frames, camera, depth_tolerance=depth_tolerance, image_transforms=transforms)
        if not found.used:
            continue
        images = np.stack([transforms[i].apply_image(frames[i].color) for i in found.used])
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
        features = teacher(images)
        pairs = torch.from_numpy(found.pairs).to(device)
        pixel = sample_pixel_features(features, pairs[:, 1], pairs[:, 2], pairs[:, 3], (image_size[1], image_size[0]))
        pixel = F.normalize(pixel.float(), dim=1).cpu()
        sums = torch.zeros(num_voxels, pixel.shape[1]) if sums is None else sums
        sums.index_add_(0, pairs[:, 0].cpu(), pixel)
        counts.index_add_(0, pairs[:, 0].cpu(), torch.ones(len(pairs)))
    if sums is None:
        raise ValueError(f"{scene_dir}: no frame of the scene sees any of its points")
    seen = counts > 0
    return F.normalize(sums, dim=1), seen, inverse


def fusion_zeroshot_segmentation(root: str | os.PathLike, split: str | Sequence[str] | None, teacher: nn.Module,
                                 text_embeddings: Tensor, voxel_size: float, image_size: tuple[int, int],
                                 depth_tolerance: float = 0.05, device: torch.device | str = "cpu",
                                 label_name: str = "segment20") -> SemanticConfusion:
    """The ScanNet confusion of the 2D-fusion zero-shot prediction over the scenes of `split`.
    text_embeddings: [20, D] L2-normalized, in SEG20 order."""
    confusion = SemanticConfusion(num_classes=20)
    text = F.normalize(text_embeddings.float().cpu(), dim=1)
    for scene_id in resolve_scene_ids(Path(root), split):
        features, seen, inverse = fused_voxel_features(root, scene_id, teacher, voxel_size, image_size,
                                                       depth_tolerance, device=device)
        voxel_pred = (features @ text.T).argmax(1)
        voxel_pred[~seen] = 20  # no class: a miss
        labels = load_scene(root, scene_id, (label_name,))[label_name]
        confusion.update(voxel_pred.numpy()[inverse], labels)
    return confusion
