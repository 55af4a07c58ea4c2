"""The training loop shared by pretraining and finetuning.

The model is called as `model(batch) -> {"loss_x": tensor, ...}`; the loop sums every entry whose name
starts with "loss", stops on a non-finite term naming it, and handles gradient accumulation, clipping,
AMP (bf16 on CUDA by default), DDP (the trainable part only; a frozen teacher stays outside), atomic
checkpoints every N steps, resuming from the last one onto the same batches, a JSONL/TensorBoard log
and a tqdm bar with the loss and samples/s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_best_checkpoint,
    save_checkpoint,
)
from scene_kd.engine.metrics_log import MetricsLog
from scene_kd.engine.schema import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_utils.local_rank())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist_utils.local_rank())  # one GPU per process under torchrun
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` on `device` (None = full precision)."""
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or none, got {amp!r}")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, split across processes, that can start mid-epoch.

    Epoch e visits `permutation(seed, e)[rank::world_size]` (padded to equal length); `start` skips
    the first indices of the current epoch so a resumed run sees the batches it would have seen.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if length < 1:
            raise ValueError("the dataset is empty")
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.per_rank = -(-length // world_size)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.length)
        padded = order.repeat(-(-self.per_rank * self.world_size // self.length))[: self.per_rank * self.world_size]
        return iter(padded[self.rank :: self.world_size][self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


@dataclass
class LoopResult:
    step: int
    last_losses: dict[str, float]
    history: list[dict[str, float]]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def train(
    *,
    model: nn.Module,
    trainable: nn.Module,
    dataset: Dataset,
    collate_fn: Callable,
    batch_size: int,
    num_workers: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    run_dir: str | Path,
    checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
    samples_in: Callable[[Any], int] = lambda batch: 1,
    batch_metrics: Callable[[Any], dict[str, float]] | None = None,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    device: torch.device | None = None,
) -> LoopResult:
    """Run `cfg.max_steps` optimizer steps of `model` (whose trainable parameters are `trainable`'s,
    already on `device` and, under torchrun, wrapped in DDP by the caller through `model`).

    checkpoint_extra: more entries for each checkpoint (e.g. the student's state_dict and its name).
    samples_in(batch): how many samples (frames, scenes) a batch holds, for the samples/s figure.
    batch_metrics(batch): counters to log from the batch (e.g. skipped frames), summed between logs.
    evaluate(step): metrics of the model now (e.g. {"val_miou": ...}), every `cfg.eval_every` steps and
        at the end, on every process (it may use collectives); logged, and with `cfg.best_metric` the
        best checkpoint is kept as checkpoints/best.pth.
    """
    device = device or next(trainable.parameters()).device
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    main = dist_utils.is_main_process()
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step = 0
    best_value = float("-inf")
    if not cfg.resume and latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(
            f"{ckpt_dir} holds the checkpoints of an earlier run and train.resume is false: choose another "
            "train.out_dir, delete that directory, or set train.resume=true to continue the run")
    last = latest_checkpoint(ckpt_dir) if cfg.resume else None
    if last is not None:
        state = load_checkpoint(last, map_location=device)
        _unwrap(trainable).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        best_value = float(state.get("best_value", best_value))
        if main:
            print(f"resumed from {last} at step {step}")

    sampler = ResumableSampler(len(dataset), cfg.seed, rank=dist_utils.rank(), world_size=dist_utils.world_size())
    if sampler.per_rank < batch_size:  # drop_last would leave no batch at all: the loop would spin forever
        raise ValueError(
            f"{len(dataset)} training samples over {dist_utils.world_size()} process(es) give {sampler.per_rank} per "
            f"process, fewer than the batch size {batch_size}: lower the batch size (data.batch_size) or use fewer "
            "processes"
        )
    batches_per_epoch = max(1, sampler.per_rank // batch_size)

    def batches_from(consumed: int) -> Iterator[Any]:
        epoch, within = divmod(consumed, batches_per_epoch)
        while True:
            sampler.set_position(epoch, within * batch_size)
            if hasattr(dataset, "set_epoch"):  # new augmentations (and frames) each epoch
                dataset.set_epoch(epoch)
            # Worker seeds come from this state: a function of the position, not of the history.
            seed_everything(cfg.seed + 7919 * epoch + within + 1000003 * dist_utils.rank())
            loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                collate_fn=collate_fn, drop_last=True, pin_memory=device.type == "cuda",
                                worker_init_fn=_seed_worker)
            yield from loader
            epoch, within = epoch + 1, 0

    batches = batches_from(step * cfg.grad_accum)
    log = MetricsLog(run_dir, tensorboard=cfg.tensorboard, resume_step=step if last is not None else None) if main else None
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    counters: dict[str, float] = {}
    samples, window_start, window_steps = 0, time.perf_counter(), 0
    bar = None
    if main and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    model.train()
    last_losses: dict[str, float] = {}
    try:
        while step < cfg.max_steps:
            optimizer.zero_grad(set_to_none=True)
            step_losses: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch = _to_device(next(batches), device)
                # Randomness inside the model (pair sampling, dropout) depends on the step alone, so a
                # resumed run repeats exactly what the uninterrupted run would have done.
                seed_everything(cfg.seed * 1000003 + (step * cfg.grad_accum + micro) * 7 + dist_utils.rank())
                sync = nullcontext()
                if isinstance(trainable, nn.parallel.DistributedDataParallel) and micro < cfg.grad_accum - 1:
                    sync = trainable.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        losses = model(batch)
                    terms = {k: v for k, v in losses.items() if k.startswith("loss")}
                    if not terms:
                        raise ValueError(f"the model returned no loss term (keys: {sorted(losses)})")
                    total = sum(v.float() for v in terms.values())
                    if not torch.isfinite(total):
                        raise FloatingPointError(
                            f"non-finite loss at step {step}: " + ", ".join(f"{k}={v.item()}" for k, v in terms.items()))
                    scaler.scale(total / cfg.grad_accum).backward()
                for k, v in losses.items():
                    step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
                samples += samples_in(batch)
                if batch_metrics is not None:
                    for k, v in batch_metrics(batch).items():
                        counters[k] = counters.get(k, 0.0) + v
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(_unwrap(trainable).parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            window_steps += 1
            last_losses = step_losses
            for k, v in step_losses.items():
                sums[k] = sums.get(k, 0.0) + v

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                metrics = {k: v / window_steps for k, v in sums.items()}
                metrics = dist_utils.mean_across_processes(metrics, device)
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                metrics["samples_per_s"] = samples * dist_utils.world_size() / max(elapsed, 1e-9)
                metrics.update(dist_utils.sum_across_processes(counters, device))
                history.append({"step": step, **metrics})
                if log is not None:
                    log.log(step, metrics)
                if bar is not None:
                    shown = {k: f"{v:.4f}" for k, v in metrics.items() if k.startswith("loss")}
                    bar.set_postfix(**shown, samples_s=f"{metrics['samples_per_s']:.1f}")
                sums, counters, samples, window_steps = {}, {}, 0, 0
                window_start = time.perf_counter()
            if bar is not None:
                bar.update(1)

            is_best = False
            if evaluate is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                eval_metrics = evaluate(step)
                model.train()
                history.append({"step": step, **eval_metrics})
                if log is not None:
                    log.log(step, eval_metrics)
                if cfg.best_metric:
                    if cfg.best_metric not in eval_metrics:
                        raise KeyError(f"train.best_metric {cfg.best_metric!r} is not among the evaluation "
                                       f"metrics {sorted(eval_metrics)}")
                    if eval_metrics[cfg.best_metric] > best_value:
                        best_value, is_best = float(eval_metrics[cfg.best_metric]), True

            if is_best or step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                if main:
                    payload = {
                        "step": step,
                        "model": _unwrap(trainable).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "best_value": best_value,
                    }
                    if checkpoint_extra is not None:
                        payload.update(checkpoint_extra())
                    if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                        save_checkpoint(ckpt_dir, step, payload, keep=cfg.keep_checkpoints)
                    if is_best:
                        save_best_checkpoint(ckpt_dir, {**payload, "best_metric": cfg.best_metric})
                dist_utils.barrier()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return LoopResult(step=step, last_losses=last_losses, history=history)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
