"""ScanNet-protocol evaluation of a segmentation model on whole scenes: the same function serves
finetuning (validation and the final evaluation), `tools/evaluate_seg.py` and zero-shot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scene_kd.cpu_threads import follow_cpu_load
from scene_kd.data.seg_dataset import SegmentationDataset
from scene_kd.engine import distributed as dist_utils
from scene_kd.eval.inference import predict_scene
from scene_kd.eval.semseg import SemanticConfusion, write_label_ply, write_submission
from scene_kd.sparse.backend import SparseBackend


def _evaluate_scene(model: nn.Module, backend: SparseBackend, dataset: SegmentationDataset, sample: dict,
                    device: torch.device, chunk_voxels: int, margin: int, confusion: SemanticConfusion,
                    out_dir: str | os.PathLike | None, write_ply: bool) -> None:
    """One scene of `evaluate_segmentation`: predict, add to `confusion`, write its files."""
    logits = predict_scene(model, backend, torch.as_tensor(sample["coords"]), torch.as_tensor(sample["feats"]),
                           device, chunk_voxels=chunk_voxels, margin_voxels=margin)
    point_pred = logits.argmax(1)[torch.as_tensor(sample["inverse_map"])].numpy()
    point_labels = np.asarray(sample["point_labels"])
    confusion.update(point_pred, point_labels)
    if out_dir is not None:
        write_submission(Path(out_dir) / "submission", sample["scene_id"], point_pred)
    if out_dir is not None and write_ply:
        out = Path(out_dir)
        (out / "ply").mkdir(parents=True, exist_ok=True)
        coord = np.load(Path(dataset.root) / sample["scene_id"] / "coord.npy")
        write_label_ply(out / "ply" / f"{sample['scene_id']}_pred.ply", coord, point_pred)
        write_label_ply(out / "ply" / f"{sample['scene_id']}_gt.ply", coord, point_labels)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, backend: SparseBackend, dataset: SegmentationDataset,
                          device: torch.device, chunk_voxels: int, chunk_margin: float,
                          out_dir: str | os.PathLike | None = None, write_ply: bool = True,
                          progress: bool = False) -> SemanticConfusion:
    """Predict every scene of `dataset` whole (in blocks when large), carry the voxel predictions to
    every vertex and sum the ScanNet confusion matrix over scenes (across processes under DDP).
    `model` maps a sparse tensor to per-voxel logits [N, 20] (a finetuned student, or the zero-shot
    text-embedding segmenter). With `out_dir`: ScanNet submission files (`submission/{scene}.txt`)
    and, with write_ply, coloured PLYs of the prediction and the ground truth (`ply/`). progress: a
    tqdm bar over this process's scenes."""
    was_training = model.training
    model.eval()
    confusion = SemanticConfusion(num_classes=20)
    margin = max(1, int(round(chunk_margin / dataset.voxel_size)))
    indices = range(dist_utils.rank(), len(dataset), dist_utils.world_size())
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="evaluate", unit="scene")
    with follow_cpu_load(device, "evaluating") as threads:
        for index in indices:
            _evaluate_scene(model, backend, dataset, dataset[index], device, chunk_voxels, margin, confusion,
                            out_dir, write_ply)
            threads.tick()
    if dist_utils.world_size() > 1:
        matrix = torch.as_tensor(confusion.matrix, device=device)
        torch.distributed.all_reduce(matrix)
        confusion.matrix[...] = matrix.cpu().numpy()
    model.train(was_training)
    return confusion
