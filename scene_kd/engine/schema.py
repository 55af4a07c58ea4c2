"""Config schemas of the training loop, shared by pretraining and finetuning."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | poly | constant
    warmup_steps: int = 0
    warmup_start_factor: float = 0.01  # lr multiplier at step 0 of the warm-up
    min_lr_factor: float = 0.0  # cosine floor, as a fraction of lr
    poly_power: float = 0.9


@dataclass
class TrainConfig:
    max_steps: int = 1000
    grad_accum: int = 1  # batches per optimizer step
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | none
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    eval_every: int = 0  # run the evaluation (finetuning: val mIoU) every N steps and at the end; 0 = never
    best_metric: str = ""  # keep checkpoints/best.pth by this evaluation metric (higher is better), e.g. val_miou
    keep_checkpoints: int = 2  # newest step checkpoints kept besides last.pth
    out_dir: str = "runs/default"
    resume: bool = True  # continue from out_dir/checkpoints/last.pth when it exists
    device: str = "auto"  # auto | cpu | cuda
    tensorboard: bool = True
    progress: bool = True
