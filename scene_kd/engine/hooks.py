"""Hooks of the training loop (detectron2's `HookBase` idea): each does one thing after a step.

Order matters and is the order `default_hooks` returns: the window metrics are logged first, then the
progress bar shows them, then the periodic evaluation may mark the step as the best, then the
checkpoint hook writes the step and best checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scene_kd.cpu_threads import CHECK_EVERY_S, FIRST_CHECK_S, CpuThreadFollower, adjusts_threads
from scene_kd.engine import distributed as dist_utils
from scene_kd.engine.checkpoint import save_best_checkpoint, save_checkpoint
from scene_kd.engine.schema import TrainConfig
from scene_kd.engine.trainer import HookBase, Trainer


def is_last_or_every(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


class CpuThreadsHook(HookBase):
    """On the CPU, one torch thread per core that other processes leave idle: `CpuThreadFollower`
    (scene_kd.cpu_threads) started before training, ticked after every step, stopped at the end (the
    count at the start restored; the note from the main process only). Added by `default_hooks` where
    `adjusts_threads()` (the tools' default)."""

    def __init__(self, first_s: float = FIRST_CHECK_S, every_s: float = CHECK_EVERY_S,
                 load_factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, cpu_count: int | None = None) -> None:
        self.settings = {"first_s": first_s, "every_s": every_s, "load_factory": load_factory, "clock": clock,
                         "cpu_count": cpu_count}
        self.follower: CpuThreadFollower | None = None

    def before_train(self, trainer: Trainer) -> None:
        if trainer.device.type != "cpu":
            return
        announce = print if dist_utils.is_main_process() else None
        self.follower = CpuThreadFollower(enabled=True, announce=announce, **self.settings).start()

    def after_step(self, trainer: Trainer) -> None:
        if self.follower is not None:
            self.follower.tick()

    def after_train(self, trainer: Trainer) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None


class MetricsHook(HookBase):
    """Every `log_every` steps (and at the last): the window's mean losses (averaged across
    processes), the learning rate, samples/s and the batch counters (summed across processes)."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.samples, self.steps, self.start = 0, 0, time.perf_counter()

    def before_train(self, trainer: Trainer) -> None:
        self._reset()

    def after_step(self, trainer: Trainer) -> None:
        for key, value in trainer.step_losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        for key, value in trainer.step_counters.items():
            self.counters[key] = self.counters.get(key, 0.0) + value
        self.samples += trainer.step_samples
        self.steps += 1
        if not is_last_or_every(trainer.step, self.log_every, trainer.max_steps):
            return
        elapsed = time.perf_counter() - self.start
        metrics = dist_utils.mean_across_processes({k: v / self.steps for k, v in self.sums.items()}, trainer.device)
        metrics["lr"] = trainer.optimizer.param_groups[0]["lr"]
        metrics["samples_per_s"] = self.samples * dist_utils.world_size() / max(elapsed, 1e-9)
        metrics.update(dist_utils.sum_across_processes(self.counters, trainer.device))
        trainer.record(metrics)
        trainer.latest_metrics = metrics
        self._reset()


class ProgressHook(HookBase):
    """A tqdm bar on the main process with the latest logged losses and samples/s."""

    def before_train(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.max_steps, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True)

    def after_step(self, trainer: Trainer) -> None:
        metrics = trainer.latest_metrics
        if metrics and is_last_or_every(trainer.step, trainer.cfg.log_every, trainer.max_steps):
            shown = {k: f"{v:.4f}" for k, v in metrics.items() if k.startswith("loss")}
            self.bar.set_postfix(**shown, samples_s=f"{metrics['samples_per_s']:.1f}")
        self.bar.update(1)

    def after_train(self, trainer: Trainer) -> None:
        self.bar.close()


class EvalHook(HookBase):
    """`evaluate(step) -> metrics` every `eval_every` steps and at the last, on every process (it may
    use collectives); logged, and with `best_metric` (higher is better) the step is marked best."""

    def __init__(self, evaluate: Callable[[int], dict[str, float]], eval_every: int, best_metric: str = "") -> None:
        self.evaluate, self.eval_every, self.best_metric = evaluate, eval_every, best_metric

    def after_step(self, trainer: Trainer) -> None:
        trainer.is_best = False
        if self.eval_every <= 0 or not is_last_or_every(trainer.step, self.eval_every, trainer.max_steps):
            return
        metrics = self.evaluate(trainer.step)
        trainer.model.train()
        trainer.record(metrics)
        if not self.best_metric:
            return
        if self.best_metric not in metrics:
            raise ValueError(f"train.best_metric {self.best_metric!r} is not among the evaluation metrics "
                           f"{sorted(metrics)}")
        if metrics[self.best_metric] > trainer.best_value:
            trainer.best_value, trainer.is_best = float(metrics[self.best_metric]), True


class CheckpointHook(HookBase):
    """Every `checkpoint_every` steps and at the last: `step_*.pth` and `last.pth` (atomically, the
    `keep` newest step files kept); on a best step: `best.pth`. The main process writes; all wait."""

    def __init__(self, directory: str | Path, checkpoint_every: int, keep: int, best_metric: str = "",
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.directory, self.every, self.keep = Path(directory), checkpoint_every, keep
        self.best_metric, self.extra = best_metric, extra

    def after_step(self, trainer: Trainer) -> None:
        periodic = is_last_or_every(trainer.step, self.every, trainer.max_steps)
        if not (periodic or trainer.is_best):
            return
        if dist_utils.is_main_process():
            payload = {**trainer.state_dict(), **(self.extra() if self.extra is not None else {})}
            if periodic:
                save_checkpoint(self.directory, trainer.step, payload, keep=self.keep)
            if trainer.is_best:
                save_best_checkpoint(self.directory, {**payload, "best_metric": self.best_metric})
        dist_utils.barrier()


def default_hooks(cfg: TrainConfig, run_dir: str | Path, evaluate: Callable[[int], dict[str, float]] | None = None,
                  checkpoint_extra: Callable[[], dict[str, Any]] | None = None) -> list[HookBase]:
    """CPU threads (where `adjusts_threads()`), metrics, progress (main process, `cfg.progress`),
    evaluation (with `evaluate`) and checkpoints."""
    hooks: list[HookBase] = [CpuThreadsHook()] if adjusts_threads() else []
    hooks.append(MetricsHook(cfg.log_every))
    if dist_utils.is_main_process() and cfg.progress:
        hooks.append(ProgressHook())
    if evaluate is not None:
        hooks.append(EvalHook(evaluate, cfg.eval_every, cfg.best_metric))
    if cfg.best_metric and (evaluate is None or cfg.eval_every <= 0) and dist_utils.is_main_process():
        why = "train.eval_every is 0" if evaluate is not None else "this run has no validation data"
        print(f"note: no evaluation during training ({why}): train.best_metric {cfg.best_metric!r} keeps no "
              "checkpoints/best.pth")
    hooks.append(CheckpointHook(Path(run_dir) / "checkpoints", cfg.checkpoint_every, cfg.keep_checkpoints,
                                cfg.best_metric, checkpoint_extra))
    return hooks
