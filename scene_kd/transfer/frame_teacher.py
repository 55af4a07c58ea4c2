"""Training of the transfer experiment's 2D teacher: a segmentation network fitted to the frames' 2D
labels, whose encoder's features then serve as the distillation teacher (the premise of the method:
2D labels are plentiful, 3D labels are not).

`train_frame_teacher` fits `frame_encoder` (scene_kd/models/teachers/frame_encoder.py) with a 1x1
classifier on top and saves both; the encoder is then the named teacher `frame_encoder`
(`teacher.name=frame_encoder teacher.weights=<that file>`).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from scene_kd.atomic import write_bytes_atomic
from scene_kd.cpu_threads import follow_cpu_load
from scene_kd.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD
from scene_kd.models.teachers.frame_encoder import frame_encoder


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] normalized as the frame_encoder teacher does (ImageNet)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def segment_frames(encoder: nn.Module, classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalized images [B, 3, H, W] -> class logits [B, K, H, W] (bilinear from stride 4)."""
    logits = classifier(encoder(images))
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def pixel_miou(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in `labels` or `pred`, on labelled pixels (labels >= 0)."""
    keep = labels >= 0
    pred, labels = pred[keep], labels[keep]
    ious = []
    for k in range(num_classes):
        union = np.count_nonzero((pred == k) | (labels == k))
        if union:
            ious.append(np.count_nonzero((pred == k) & (labels == k)) / union)
    return float(np.mean(ious)) if ious else float("nan")


@torch.no_grad()
def predict_frames(encoder: nn.Module, classifier: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 [F, H, W, 3] -> predicted classes int64 [F, H, W]."""
    encoder.eval()
    classifier.eval()
    out = [segment_frames(encoder, classifier, normalize_images(torch.from_numpy(images[i:i + batch_size])))
           .argmax(1).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def train_frame_teacher(
    train_frames: dict[str, np.ndarray],
    out_path: str | os.PathLike,
    *,
    val_frames: dict[str, np.ndarray] | None = None,
    num_classes: int = 20,
    out_channels: int = 64,
    width: int = 48,
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fit `frame_encoder` + a 1x1 classifier to labelled frames (`load_labelled_frames`'s dict) by
    pixel cross-entropy on labelled pixels (AdamW, cosine schedule, horizontal flips), save
    {"encoder", "classifier", "config", "metrics"} to `out_path` (atomically) and return the
    metrics: the loss curve and the pixel accuracy / mIoU on `val_frames` (when given)."""
    images, labels = train_frames["images"], train_frames["labels"]
    if len(images) == 0 or not (labels >= 0).any():
        raise ValueError("train_frame_teacher: no labelled pixels in the training frames")
    started = time.perf_counter()
    encoder = frame_encoder(out_channels, width, seed=seed)
    torch.manual_seed(seed)
    classifier = nn.Conv2d(out_channels, num_classes, 1)
    parameters = [*encoder.parameters(), *classifier.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)
    losses = []
    encoder.train()
    classifier.train()
    bar = tqdm(range(steps), desc="2D teacher", unit="step", disable=not progress)
    with follow_cpu_load("cpu", "training the 2D teacher") as threads:  # under SCENE_KD_CPU_THREADS=auto
        for _ in bar:
            pick = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
            x = torch.from_numpy(images[pick])
            y = torch.from_numpy(labels[pick])
            flip = torch.from_numpy(rng.random(len(pick)) < 0.5)
            x[flip] = x[flip].flip(2)
            y[flip] = y[flip].flip(2)
            loss = F.cross_entropy(segment_frames(encoder, classifier, normalize_images(x)), y, ignore_index=-1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"2D teacher: non-finite loss at step {len(losses)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            threads.tick()
    metrics: dict = {"loss": losses, "steps": steps, "train_frames": int(len(images))}
    if val_frames is not None:
        pred = predict_frames(encoder, classifier, val_frames["images"])
        keep = val_frames["labels"] >= 0
        metrics["val_pixel_accuracy"] = float((pred[keep] == val_frames["labels"][keep]).mean())
        metrics["val_pixel_miou"] = pixel_miou(pred, val_frames["labels"], num_classes)
    metrics["seconds"] = time.perf_counter() - started
    buffer = _serialize({"encoder": encoder.state_dict(), "classifier": classifier.state_dict(),
                         "config": {"out_channels": out_channels, "width": width, "num_classes": num_classes},
                         "metrics": {k: v for k, v in metrics.items() if k != "loss"}})
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_path, buffer)
    return metrics


def _serialize(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
