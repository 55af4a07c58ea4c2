"""An in-world CLIP: open_clip's own CLIP (a tiny ViT and a small text transformer), tokenizer and
`ClipLoss`, trained on the synthetic world's image-text pairs (`world_clip_data`), then loaded as a
teacher exactly as real CLIP weights are: `teacher.name=clip`, `teacher.weights=<out>/world_clip.pt`,
`teacher.options.model=<out>/model_config.json`.

`train_world_clip` writes `model_config.json` (open_clip's model-config format), resumable training
state in `checkpoints/last.pt` (every `checkpoint_every` steps, atomically) and the final open_clip
checkpoint `world_clip.pt` ({"state_dict": ...}, as `open_clip.load_checkpoint` reads it).
`evaluate_world_clip` measures it through the library's CLIP teacher: 2D zero-shot accuracy of the
class prompts on validation crops, and the pixel mIoU of its dense features against the same prompts on
validation frames. The default model pools the mean of its patch tokens (open_clip's `pool_type: "avg"`),
so ClipLoss trains each patch token and those tokens are the teacher's dense features; with class-token
pooling ("tok") the teacher reads them the MaskCLIP way and, for a CLIP this small, they carry no class
information (docs/world_clip.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from scene_kd.atomic import atomic_path, write_text_atomic
from scene_kd.cpu_threads import follow_cpu_load
from scene_kd.engine.seeding import step_generator
from scene_kd.models.teachers.base import CLIP_MEAN, CLIP_STD
from scene_kd.models.teachers.clip import (
    build_clip_teacher,
    clip_from_config_file,
    clip_text_embeddings,
    clip_tokenizer,
)
from scene_kd.transfer.world_clip_data import CROP, CROP_TEMPLATES, REGION, seg20_class_names

MODEL_CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "world_clip.pt"
CHECKPOINT_NAME = "checkpoints/last.pt"
METRICS_NAME = "train_metrics.json"
OPEN_CLIP_VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (its BPE vocabulary ships in the package)


def tiny_clip_config(
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 192,
    layers: int = 4,
    head_width: int = 64,
    embed_dim: int = 128,
    text_width: int = 128,
    text_heads: int = 4,
    text_layers: int = 3,
    context_length: int = 32,
    pool_type: str = "avg",
) -> dict:
    """An open_clip model config (the format of open_clip/model_configs/*.json) for a tiny ViT image
    tower (`image_size` / `patch_size` patches a side) and a small text transformer. `pool_type` is
    open_clip's image pooling: "avg" (the mean of the patch tokens is the image embedding, so ClipLoss
    trains every patch token; the CLIP teacher's dense features are those tokens) or "tok" (the class
    token, as OpenAI's CLIP; the teacher's dense features are then MaskCLIP's value path)."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    if pool_type not in ("avg", "tok"):
        raise ValueError(f"pool_type must be 'avg' or 'tok' (the CLIP teacher's dense pools), got {pool_type!r}")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size,
                       "head_width": head_width, "pool_type": pool_type},
        "text_cfg": {"context_length": context_length, "vocab_size": OPEN_CLIP_VOCAB_SIZE, "width": text_width,
                     "heads": text_heads, "layers": text_layers},
    }


def normalize_clip_images(images: Tensor) -> Tensor:
    """Float images [B, 3, H, W] in [0, 1] -> CLIP-normalized (the CLIP teacher's mean and std)."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def to_float_images(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)


def augment_images(images: Tensor, generator: torch.Generator, min_scale: float = 0.8) -> Tensor:
    """A random horizontal flip and a random zoom (a square window of `min_scale`..1 of the side,
    anywhere in the image, resized back) per image; images float [B, 3, S, S]."""
    batch = images.shape[0]
    scale = min_scale + (1 - min_scale) * torch.rand(batch, generator=generator)
    shift = (1 - scale)[:, None] * (2 * torch.rand(batch, 2, generator=generator) - 1)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as open_clip trains: no decay on gains, biases, embeddings' scalars and logit_scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LambdaLR factor: linear warmup over `warmup_steps`, then cosine to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _check_pairs(pairs: dict, image_size: int) -> None:
    images = pairs.get("images")
    if images is None or images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        shape = None if images is None else list(images.shape)
        raise ValueError(f"pairs: images must be uint8 [M, {image_size}, {image_size}, 3] (the model's "
                         f"image_size), got {shape}")
    if len(pairs["texts"]) != len(images) or len(images) < 2:
        raise ValueError(f"pairs: need at least 2 images and one text per image, got {len(images)} images and "
                         f"{len(pairs['texts'])} texts")


def pair_fingerprint(pairs: dict) -> str:
    """SHA-1 of a pair set's images and texts: a resumed run must train on the same pairs."""
    digest = hashlib.sha1(np.ascontiguousarray(pairs["images"]).tobytes())
    digest.update("\n".join(pairs["texts"]).encode("utf-8"))
    return digest.hexdigest()


def _save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _resumable_state(checkpoint_path: Path, settings: dict) -> dict | None:
    """The resumable training state at `checkpoint_path` (None when there is none); a state made with
    other settings is a ValueError naming the directory and the settings that differ."""
    if not checkpoint_path.exists():
        return None
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if state.get("settings") != settings:
        recorded = state.get("settings") or {}
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise ValueError(f"{checkpoint_path.parent.parent}: holds a world CLIP trained with other settings "
                         f"({', '.join(changed)} differ); use another directory or delete this one")
    return state


def _new_training(config_path: Path, seed: int, device: str | torch.device, lr: float, weight_decay: float,
                  warmup_steps: int, steps: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The CLIP of `config_path` initialised from `seed` (global generators untouched) in train mode on
    `device`, AdamW (CLIP's betas and eps; `parameter_groups`) and warmup-cosine."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip_from_config_file(config_path)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, steps))
    return model, optimizer, scheduler


def clip_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
              tokens: Tensor) -> float:
    """One optimizer step of open_clip's ClipLoss on normalized images [B, 3, S, S] and their caption
    tokens [B, L]; the logit scale clamped at 100 as open_clip's training loop does. Returns the loss."""
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokens, normalize=True)
    loss = loss_fn(image_features, text_features, model.logit_scale.exp())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"world CLIP: non-finite ClipLoss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def train_world_clip(pairs: dict, out_dir: str | os.PathLike, *, model_config: dict | None = None, steps: int = 1000,
                     batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.1,
                     warmup_steps: int | None = None, augment: bool = True, seed: int = 0,
                     checkpoint_every: int = 100, device: str | torch.device = "cpu",
                     progress: bool = True) -> tuple[nn.Module, dict]:
    """Train an open_clip CLIP (`model_config`, default `tiny_clip_config` at the pairs' image size) on
    `pairs` (`make_pairs`'s dict: "images" uint8 [M, S, S, 3], "texts") with open_clip's ClipLoss,
    AdamW and a warmup-cosine schedule (warmup default: steps // 10); each step draws `batch_size`
    distinct pairs from a generator of (seed, step). Writes into `out_dir` the model config
    (`model_config.json`), the resumable state (`checkpoints/last.pt`, every `checkpoint_every` steps
    and at the end), the final weights (`world_clip.pt`) and `train_metrics.json`; a rerun with the
    same settings resumes from the state (and returns at once when it is finished), one with other
    settings is a ValueError naming the directory. Returns (the trained open_clip model, in eval mode,
    and {"loss": per-step losses, "steps", "seconds" (training wall time, summed over resumes),
    "cpu_seconds" (this process's CPU time in the steps, likewise), "pairs",
    "weights", "model_config"})."""
    if steps < 1 or batch_size < 2 or checkpoint_every < 1:
        raise ValueError(f"need steps >= 1, batch_size >= 2, checkpoint_every >= 1; got {steps}, {batch_size}, {checkpoint_every}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_size = int(pairs["images"].shape[1]) if getattr(pairs.get("images"), "ndim", 0) == 4 else 64
    config = model_config if model_config is not None else tiny_clip_config(image_size=image_size)
    _check_pairs(pairs, int(config["vision_cfg"]["image_size"]))
    warmup_steps = max(1, steps // 10) if warmup_steps is None else int(warmup_steps)
    settings = {"model_config": config, "steps": steps, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "warmup_steps": warmup_steps, "augment": augment, "seed": seed,
                "pairs": len(pairs["texts"]), "pairs_sha1": pair_fingerprint(pairs)}
    settings = json.loads(json.dumps(settings))
    config_path, checkpoint_path = out / MODEL_CONFIG_NAME, out / CHECKPOINT_NAME
    state = _resumable_state(checkpoint_path, settings)
    write_text_atomic(config_path, json.dumps(config, indent=2) + "\n")

    model, optimizer, scheduler = _new_training(config_path, seed, device, lr, weight_decay, warmup_steps, steps)
    tokens = clip_tokenizer(config_path)(list(pairs["texts"]))  # [M, context_length]
    images_all = torch.from_numpy(np.ascontiguousarray(pairs["images"]))
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    start, losses, seconds, cpu_seconds = 0, [], 0.0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses = int(state["step"]), list(state["losses"])
        seconds, cpu_seconds = float(state["seconds"]), float(state["cpu_seconds"])

    def save_state(step: int) -> None:
        _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "step": step, "losses": losses, "seconds": seconds,
               "cpu_seconds": cpu_seconds, "settings": settings}, checkpoint_path)

    bar = tqdm(range(start, steps), desc="world CLIP", unit="step", disable=not progress, initial=start, total=steps)
    with follow_cpu_load(device, "training the world CLIP") as threads:  # under SCENE_KD_CPU_THREADS=auto
        for step in bar:
            began, began_cpu = time.perf_counter(), time.process_time()
            generator = step_generator(seed, step)
            pick = torch.randperm(len(images_all), generator=generator)[: min(batch_size, len(images_all))]
            images = to_float_images(images_all[pick])
            if augment:
                images = augment_images(images, generator)
            loss = clip_step(model, loss_fn, optimizer, normalize_clip_images(images.to(device)), tokens[pick].to(device))
            scheduler.step()
            losses.append(loss)
            seconds += time.perf_counter() - began
            cpu_seconds += time.process_time() - began_cpu
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            threads.tick()
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                save_state(step + 1)
    metrics = {"loss": losses, "steps": steps, "seconds": seconds, "cpu_seconds": cpu_seconds,
               "pairs": len(pairs["texts"]), "weights": str(out / WEIGHTS_NAME), "model_config": str(config_path)}
    _save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, out / WEIGHTS_NAME)
    write_text_atomic(out / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
    return model.eval(), metrics


def zero_shot_accuracy(image_embeddings: Tensor, text_embeddings: Tensor, labels: Tensor) -> dict:
    """Nearest class prompt by cosine. image_embeddings [N, D], text_embeddings [K, D], labels int [N]
    -> {"accuracy", "mean_class_accuracy" (over the classes present in labels), "predictions" int64 [N]}."""
    if len(image_embeddings) == 0:
        raise ValueError("zero_shot_accuracy: no images")
    logits = F.normalize(image_embeddings.float(), dim=-1) @ F.normalize(text_embeddings.float(), dim=-1).T
    pred = logits.argmax(1)
    labels = torch.as_tensor(labels, dtype=torch.long)
    correct = (pred == labels).float()
    per_class = [correct[labels == k].mean().item() for k in labels.unique().tolist()]
    return {"accuracy": correct.mean().item(), "mean_class_accuracy": float(np.mean(per_class)),
            "predictions": pred}


def dense_text_predictions(features: Tensor, text_embeddings: Tensor, size: tuple[int, int]) -> Tensor:
    """Dense features [B, D, h, w] and class text embeddings [K, D] -> classes int64 [B, H, W]: the
    cosine of each cell with each class, upsampled bilinearly to `size` (H, W), argmax."""
    logits = torch.einsum("bdhw,kd->bkhw", F.normalize(features.float(), dim=1),
                          F.normalize(text_embeddings.float(), dim=-1))
    logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits.argmax(1)


def pixel_scores(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """{"miou": mean IoU over the classes present in `labels` or `pred` on labelled pixels (labels >= 0),
    "accuracy": pixel accuracy there, "iou": per-class IoU (NaN for classes in neither)}."""
    keep = labels >= 0
    pred, labels = np.asarray(pred)[keep], np.asarray(labels)[keep]
    iou = np.full(num_classes, np.nan)
    for k in range(num_classes):
        union = np.count_nonzero((pred == k) | (labels == k))
        if union:
            iou[k] = np.count_nonzero((pred == k) & (labels == k)) / union
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "accuracy": float((pred == labels).mean()) if labels.size else float("nan"), "iou": iou.tolist()}


def evaluate_world_clip(
    weights: str | os.PathLike,
    model_config: str | os.PathLike,
    val_pairs: dict,
    val_frames: dict,
    *,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = CROP_TEMPLATES,
    dense_image_size: int | tuple[int, int] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict:
    """Measure a CLIP checkpoint (`weights`, open_clip model-config file `model_config`) through the
    library's CLIP teacher (`build_clip_teacher(model=model_config, weights=weights)`, the path
    pretraining takes) and its text embeddings (`clip_text_embeddings`, the mean over `templates` per
    class name; default names: the 20 ScanNet classes):
    - zero-shot accuracy on the object crops of `val_pairs` (kind CROP): the teacher's global image
      embedding against the class embeddings ("crop_accuracy", "crop_mean_class_accuracy", "crops"),
      and the same on its region crops (kind REGION: "region_accuracy", ..., "regions");
    - the pixel mIoU of the teacher's dense features against the class embeddings on `val_frames`
      ("images" uint8 [F, H, W, 3], "labels" int [F, H, W]): "pixel_miou", "pixel_accuracy",
      "pixel_iou" (per class), "frames". The teacher runs at `dense_image_size` (default: the model's
      input size, frames stretched as the frame pairs were; a pair (H, W) or an int).
    Also "chance": 1 / number of classes."""
    class_names = list(class_names) if class_names is not None else seg20_class_names()
    num_classes = len(class_names)
    if dense_image_size is None:
        from scene_kd.models.teachers.clip import clip_model_config

        dense_image_size = int(clip_model_config(model_config)["vision_cfg"]["image_size"])
    teacher = build_clip_teacher(model_config, weights=weights, image_size=dense_image_size).to(device)
    text = clip_text_embeddings(model_config, weights, class_names, tuple(templates), device=device).cpu()
    results: dict = {"chance": 1.0 / num_classes, "classes": class_names}

    for prefix, kind in (("crop", CROP), ("region", REGION)):
        picked = np.nonzero(np.asarray(val_pairs["kind"]) == kind)[0]
        if not len(picked):
            continue
        embeddings = []
        for i in range(0, len(picked), batch_size):
            images = to_float_images(val_pairs["images"][picked[i:i + batch_size]]).to(device)
            embeddings.append(teacher.encode(images)[1].cpu())
        scores = zero_shot_accuracy(torch.cat(embeddings), text, torch.from_numpy(val_pairs["class_index"][picked]))
        results.update({f"{prefix}_accuracy": scores["accuracy"],
                        f"{prefix}_mean_class_accuracy": scores["mean_class_accuracy"], f"{prefix}s": int(len(picked))})

    labels = np.asarray(val_frames["labels"])
    predictions = []
    for i in range(0, len(labels), batch_size):
        images = to_float_images(val_frames["images"][i:i + batch_size]).to(device)
        features = teacher(images).cpu()
        predictions.append(dense_text_predictions(features, text, labels.shape[1:]).numpy())
    scores = pixel_scores(np.concatenate(predictions), labels, num_classes)
    results.update(pixel_miou=scores["miou"], pixel_accuracy=scores["accuracy"], pixel_iou=scores["iou"],
                   frames=int(len(labels)))
    return results
