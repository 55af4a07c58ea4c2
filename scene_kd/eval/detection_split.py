"""Evaluate a detector on whole scenes of a split: predict each scene (split across processes
under DDP), gather the predictions and score them with VoteNet's protocol (`scene_kd.eval.detection`)
against the instance boxes of `scene_kd.scannet.boxes`. Detection finetuning's validation,
`tools/finetune_det.py --eval-only` and `evaluate_checkpoint` all use it."""

from __future__ import annotations

import os

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from scene_kd.cpu_threads import follow_cpu_load
from scene_kd.data.det_dataset import DetectionDataset, collate_detection, transform_boxes
from scene_kd.engine import distributed as dist_utils
from scene_kd.eval.detection import evaluate_detection, write_detection_outputs
from scene_kd.finetune.det.postprocess import predict_boxes
from scene_kd.scannet.boxes import load_ground_truth
from scene_kd.scannet.labels import DET18_NAMES
from scene_kd.sparse.backend import SparseBackend


@torch.no_grad()
def predict_dataset(model: nn.Module, backend: SparseBackend, dataset: DetectionDataset, device: torch.device,
                    eval_cfg: DictConfig) -> dict[str, dict[str, np.ndarray]]:
    """{scene_id: {"boxes": float64 [P, 6] in the aligned frame (metres), "scores", "labels"}} for the
    scenes of `dataset` that this process evaluates (every world_size-th, from its rank)."""
    was_training = model.training
    model.eval()
    predictions = {}
    with follow_cpu_load(device, "evaluating") as threads:
        for index in range(dist_utils.rank(), len(dataset), dist_utils.world_size()):
            batch = collate_detection([dataset[index]])
            levels = model(backend.sparse_tensor(batch["features"].to(device), batch["coordinates"].to(device)))
            boxes, scores, labels = predict_boxes(levels, 0, score_threshold=eval_cfg.score_threshold,
                                                  nms_iou=eval_cfg.nms_iou, nms_pre=eval_cfg.nms_pre,
                                                  max_boxes=eval_cfg.max_boxes)
            metres = boxes.double().cpu().numpy() * dataset.voxel_size
            predictions[batch["scene_ids"][0]] = {
                "boxes": transform_boxes(metres, batch["to_aligned"][0].numpy()),
                "scores": scores.double().cpu().numpy(), "labels": labels.cpu().numpy()}
            threads.tick()
    model.train(was_training)
    return predictions


def gather_predictions(predictions: dict) -> dict:
    """Every process's predictions, merged (identity without a process group)."""
    if dist_utils.world_size() == 1:
        return predictions
    parts: list[dict] = [{} for _ in range(dist_utils.world_size())]
    torch.distributed.all_gather_object(parts, predictions)
    return {scene: pred for part in parts for scene, pred in part.items()}


def evaluate_detection_split(model: nn.Module, backend: SparseBackend, dataset: DetectionDataset,
                             device: torch.device, eval_cfg: DictConfig,
                             out_dir: str | os.PathLike | None = None) -> dict:
    """Predict every scene of `dataset` whole (split across processes under DDP) and evaluate them
    against `load_scene_boxes` with VoteNet's protocol (`evaluate_detection`). With `out_dir` the
    main process writes `write_detection_outputs` there (box JSON and PLYs only when
    `eval_cfg.write_predictions`). Returns the results dict, the same on every process."""
    predictions = gather_predictions(predict_dataset(model, backend, dataset, device, eval_cfg))
    ground_truth = load_ground_truth(dataset.root, dataset.scene_ids, dataset.min_box_points)
    results = evaluate_detection(predictions, ground_truth, DET18_NAMES, list(eval_cfg.iou_thresholds))
    if out_dir is not None and dist_utils.is_main_process():
        write_detection_outputs(results, predictions if eval_cfg.write_predictions else {}, out_dir, DET18_NAMES,
                                ground_truth=ground_truth if eval_cfg.write_predictions else None)
    return results


def flat_metrics(results: dict, prefix: str = "val_") -> dict[str, float]:
    """The flat float entries of `evaluate_detection`'s results ("map@0.25", "mar@0.5", ...), prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in results.items() if k.startswith(("map@", "mar@"))}
