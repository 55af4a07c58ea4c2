"""One launcher for every job (pretraining, segmentation and detection finetuning).

A job hands `launch` a function that builds its `Task` (what to train, on what, how to evaluate);
the launcher does everything the jobs share, in one order: device and process group, one global
seeding (weight initialisation), the refusal of a used run directory before anything is written,
the DDP wrap of the trainable part, optimizer and scheduler, the resolved config next to the run,
the loop, the job's closing work, and the process group's clean-up in `finally` around all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from scene_kd.config import as_dict, plain, save_config
from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.batches import batch_stream
from scene_kd.engine.checkpoint import Resumable, latest_checkpoint, load_latest_checkpoint
from scene_kd.engine.checkpoint_checks import check_resumable
from scene_kd.engine.hooks import default_hooks
from scene_kd.engine.optim import build_optimizer, build_scheduler
from scene_kd.engine.schema import TrainConfig
from scene_kd.engine.seeding import seed_everything
from scene_kd.engine.trainer import LoopResult, Trainer, refuse_used_run_dir, resolve_device


def train(*, model: nn.Module, trainable: nn.Module, dataset: Dataset, collate_fn: Callable, batch_size: int,
          num_workers: int, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
          cfg: TrainConfig, run_dir: str | Path, checkpoint_extra: Callable[[], dict[str, Any]] | None = None,
          samples_in: Callable[[Any], int] = lambda batch: 1,
          batch_metrics: Callable[[Any], dict[str, float]] | None = None,
          evaluate: Callable[[int], dict[str, float]] | None = None,
          device: torch.device | None = None, found: Resumable | None = None) -> LoopResult:
    """A `Trainer` with the default hooks over `dataset`, resumed from `run_dir/checkpoints/last.pth`
    (else the newest intact step_*.pth, saying so) when `cfg.resume` (refused when one exists and
    `cfg.resume` is false). checkpoint_extra: more entries for each checkpoint (those naming the job
    and student are checked against a resumed checkpoint's); samples_in(batch): samples in a batch
    (for samples/s); batch_metrics(batch): counters summed between logs; evaluate(step): metrics of the
    model now; found: the checkpoint to resume, when the caller has already loaded (and checked) it."""
    device = device or next(trainable.parameters()).device
    refuse_used_run_dir(run_dir, cfg.resume)

    def batches(consumed: int) -> Iterator[Any]:
        return batch_stream(dataset, collate_fn, batch_size, num_workers, cfg.seed, consumed,
                            rank=dist_utils.rank(), world_size=dist_utils.world_size(),
                            pin_memory=device.type == "cuda")

    trainer = Trainer(model, trainable, optimizer, scheduler, cfg, device, batches,
                      default_hooks(cfg, run_dir, evaluate, checkpoint_extra), samples_in, batch_metrics)
    if found is None and cfg.resume:
        found = load_latest_checkpoint(Path(run_dir) / "checkpoints", map_location=device)
    if found is not None:
        if found.notice and dist_utils.is_main_process():
            print(found.notice)
        trainer.resume(found.path, found.state, checkpoint_extra() if checkpoint_extra is not None else None)
    return trainer.train(run_dir)


# Keys a resumed run may change: they apply from the resumed step on (or only affect how it is run).
RESUMABLE_CHANGES = ("train.resume", "train.progress", "train.tensorboard", "train.device", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.max_steps",
                     "data.num_workers", "eval.")


def changed_keys(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for every leaf that differs between two nested dicts."""
    changes = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes


def check_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """When this run resumes `run_dir`, refuse a config that differs from the run's `config.yaml` in a
    key that would not apply as written (the learning rate, the batch size, the model, ...); say which
    allowed changes apply. Nothing is written."""
    saved = run_dir / "config.yaml"
    if not cfg.train.resume or latest_checkpoint(run_dir / "checkpoints") is None or not saved.is_file():
        return
    changes = changed_keys(plain(OmegaConf.load(saved)), as_dict(cfg))
    refused = {k: v for k, v in changes.items() if not k.startswith(RESUMABLE_CHANGES)}
    if refused:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"{run_dir} is resumed with settings that would not apply as written: {listed}; restore "
                         "them, or start a new run in another train.out_dir")
    if changes and dist_utils.is_main_process():
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        print(f"resuming {run_dir} with changed settings (they apply from the resumed step on): {listed}")


@dataclass
class Task:
    """What a job hands the launcher.

    trainable: the module whose parameters are optimized (already on the device); the launcher wraps
        it in DDP under torchrun. objective(trainable or its DDP wrap) -> the module the loop calls,
        `model(batch[, generator]) -> {"loss_...": ...}` (a frozen teacher lives in it, outside DDP).
    dataset, collate_fn: the training samples. evaluate(step) -> metrics, on every process.
    checkpoint_extra() -> more checkpoint entries. finish(result): closing work on every process
    (e.g. the final evaluation). description: one line printed before training.
    """

    trainable: nn.Module
    objective: Callable[[nn.Module], nn.Module]
    dataset: Dataset
    collate_fn: Callable
    description: str
    samples_in: Callable[[Any], int] = lambda batch: 1
    batch_metrics: Callable[[Any], dict[str, float]] | None = None
    evaluate: Callable[[int], dict[str, float]] | None = None
    checkpoint_extra: Callable[[], dict[str, Any]] = field(default=lambda: {})
    finish: Callable[[LoopResult], None] | None = None


def launch(cfg: DictConfig, build_task: Callable[[DictConfig, torch.device], Task]) -> LoopResult:
    """Run the job that `build_task(cfg, device)` describes under `cfg.train`, `cfg.optim`,
    `cfg.schedule` and `cfg.data.batch_size` / `cfg.data.num_workers`; returns the loop's result."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group: NCCL binds to the current device
    distributed = dist_utils.init_distributed(device)
    try:
        run_dir = Path(cfg.train.out_dir)
        refuse_used_run_dir(run_dir, cfg.train.resume)
        check_resumed_config(cfg, run_dir)
        seed_everything(cfg.train.seed)
        task = build_task(cfg, device)
        wrapped: nn.Module = task.trainable
        if distributed:
            wrapped = nn.parallel.DistributedDataParallel(
                task.trainable, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = build_optimizer(task.trainable.parameters(), cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
        # The checkpoint to resume is checked (kind, student, classes) before config.yaml is written:
        # a refused resume changes nothing in the run directory.
        found = load_latest_checkpoint(run_dir / "checkpoints", map_location=device) if cfg.train.resume else None
        if found is not None:
            check_resumable(found.state, found.path, task.checkpoint_extra())
        if dist_utils.is_main_process():
            save_config(cfg, run_dir / "config.yaml")
            print(f"{task.description} -> {run_dir}")
        result = train(model=task.objective(wrapped), trainable=wrapped, dataset=task.dataset,
                       collate_fn=task.collate_fn, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                       optimizer=optimizer, scheduler=scheduler, cfg=cfg.train, run_dir=run_dir,
                       checkpoint_extra=task.checkpoint_extra, samples_in=task.samples_in,
                       batch_metrics=task.batch_metrics, evaluate=task.evaluate, device=device, found=found)
        if task.finish is not None:
            task.finish(result)
        return result
    finally:
        dist_utils.cleanup_distributed()
