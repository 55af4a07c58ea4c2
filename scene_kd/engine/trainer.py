"""The training loop shared by pretraining and finetuning: a short `run_step` plus hooks.

The model is called as `model(batch) -> {"loss_x": tensor, ...}` (or `model(batch, generator=g)` when
its forward takes a `generator`: the loop then passes a CPU torch.Generator derived from (seed, step,
micro-step, rank), so whatever the objective draws is the same after a resume). The loop sums every
entry whose name starts with "loss", stops on a non-finite term naming it, and handles gradient
accumulation, clipping, AMP (bf16 on CUDA by default) and DDP (the trainable part only; a frozen
teacher stays outside). Logging, the progress bar, periodic evaluation and checkpoints are hooks
(`scene_kd/engine/hooks.py`); `scene_kd/engine/launch.py` puts them together.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import latest_checkpoint, load_checkpoint
from scene_kd.engine.checkpoint_checks import check_resumable, load_weights
from scene_kd.engine.metrics_log import MetricsLog
from scene_kd.engine.schema import TrainConfig
from scene_kd.engine.seeding import step_generator


def resolve_device(name: str) -> torch.device:
    """`train.device` (auto | cpu | cuda | cuda:N) as a device; under torchrun, one GPU per process."""
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


@dataclass
class LoopResult:
    step: int
    last_losses: dict[str, float]
    history: list[dict[str, float]]


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested dict / list) batch moved to `device`; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def takes_generator(model: nn.Module) -> bool:
    return "generator" in inspect.signature(model.forward).parameters


def refuse_used_run_dir(run_dir: str | Path, resume: bool) -> None:
    """FileExistsError when `run_dir` holds another run's checkpoints and `resume` is false."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not resume and latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(
            f"{ckpt_dir} holds the checkpoints of an earlier run and train.resume is false: choose another "
            "train.out_dir, delete that directory, or set train.resume=true to continue the run")


class HookBase:
    """Called by `Trainer.train`: `before_train` once, `after_step` after every optimizer step,
    `after_train` once, also when training stops with an error (`scene_kd/engine/hooks.py`)."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


class Trainer:
    """Optimizer steps of `model` (whose trainable parameters are `trainable`'s, on `device`, wrapped
    in DDP by the caller under torchrun) over `batches(consumed)`, an iterator of batches that starts
    after the first `consumed` ones. `step_losses`, `step_counters` and `step_samples` describe the
    last step for the hooks; `record` logs metrics (main process) and keeps them in `history`."""

    def __init__(self, model: nn.Module, trainable: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig, device: torch.device,
                 batches: Callable[[int], Iterator[Any]], hooks: Sequence[HookBase] = (),
                 samples_in: Callable[[Any], int] = lambda batch: 1,
                 batch_metrics: Callable[[Any], dict[str, float]] | None = None) -> None:
        self.model, self.trainable, self.optimizer, self.scheduler = model, trainable, optimizer, scheduler
        self.cfg, self.device, self.batches, self.hooks = cfg, device, batches, list(hooks)
        self.samples_in, self.batch_metrics = samples_in, batch_metrics
        self.max_steps = cfg.max_steps
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.passes_generator = takes_generator(model)
        self.step, self.resumed_from = 0, None
        self.best_value, self.is_best = float("-inf"), False
        self.step_losses: dict[str, float] = {}
        self.step_counters: dict[str, float] = {}
        self.step_samples = 0
        self.latest_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.log: MetricsLog | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "model": unwrap(self.trainable).state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "best_value": self.best_value}

    def resume(self, path: str | Path, state: dict[str, Any] | None = None,
               job_entries: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint at `path` (model, optimizer, scheduler, scaler, step, best).
        state: its contents when already loaded (`load_latest_checkpoint`). job_entries: this job's
        checkpoint entries (student_name, num_classes, strides): a checkpoint of another job or student
        is refused, naming the file, before anything is loaded."""
        state = load_checkpoint(path, map_location=self.device) if state is None else state
        check_resumable(state, path, job_entries or {})
        load_weights(unwrap(self.trainable), state["model"], path, "a checkpoint of this run's model")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_value = float(state.get("best_value", self.best_value))
        self.resumed_from = Path(path)
        if dist_utils.is_main_process():
            print(f"resumed from {path} at step {self.step}")

    def record(self, metrics: dict[str, float]) -> None:
        self.history.append({"step": self.step, **metrics})
        if self.log is not None:
            self.log.log(self.step, metrics)

    def forward_backward(self, batch: Any, micro_step: int) -> dict[str, torch.Tensor]:
        """One micro-batch: the losses, their sum checked for finiteness and back-propagated."""
        kwargs = {}
        if self.passes_generator:
            kwargs["generator"] = step_generator(self.cfg.seed, self.step, micro_step, dist_utils.rank())
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.model(batch, **kwargs)
        terms = {k: v for k, v in losses.items() if k.startswith("loss")}
        if not terms:
            raise ValueError(f"the model returned no loss term (keys: {sorted(losses)})")
        total = sum(v.float() for v in terms.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite loss at step {self.step}: " + ", ".join(f"{k}={v.item()}" for k, v in terms.items()))
        self.scaler.scale(total / self.cfg.grad_accum).backward()
        return losses

    def run_step(self) -> None:
        """One optimizer step over `grad_accum` micro-batches."""
        accum = self.cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        self.step_losses, self.step_counters, self.step_samples = {}, {}, 0
        for micro in range(accum):
            batch = to_device(next(self._batches), self.device)
            last_micro = micro == accum - 1
            ddp = isinstance(self.trainable, nn.parallel.DistributedDataParallel)
            with self.trainable.no_sync() if ddp and not last_micro else nullcontext():
                losses = self.forward_backward(batch, micro)
            for k, v in losses.items():
                self.step_losses[k] = self.step_losses.get(k, 0.0) + float(v.detach()) / accum
            self.step_samples += self.samples_in(batch)
            for k, v in (self.batch_metrics(batch) if self.batch_metrics is not None else {}).items():
                self.step_counters[k] = self.step_counters.get(k, 0.0) + v
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(unwrap(self.trainable).parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1

    def train(self, run_dir: str | Path) -> LoopResult:
        """Run until `cfg.max_steps`; metrics.jsonl (and TensorBoard) go to `run_dir` on the main process."""
        self._batches = self.batches(self.step * self.cfg.grad_accum)
        if dist_utils.is_main_process():
            resume_step = self.step if self.resumed_from is not None else None
            self.log = MetricsLog(run_dir, tensorboard=self.cfg.tensorboard, resume_step=resume_step)
        self.model.train()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while self.step < self.max_steps:
                self.run_step()
                for hook in self.hooks:
                    hook.after_step(self)
        finally:
            for hook in self.hooks:
                hook.after_train(self)
            if self.log is not None:
                self.log.close()
        return LoopResult(step=self.step, last_losses=self.step_losses, history=self.history)
