"""Config schema of pretraining (`tools/pretrain.py`); `configs/pretrain/default.yaml` lists it whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scene_kd.engine.schema import OptimConfig, ScheduleConfig, TrainConfig


@dataclass
class PretrainDataConfig:
    root: str = "data/processed"  # processed scenes (tools/preprocess_scannet.py)
    split: Any = "train"  # train | val | test | a split file | a list of scene ids | null (all)
    mode: str = "frame"  # frame (PPKT: a frame's own depth) | scene (the scene's points, depth-tested)
    voxel_size: float = 0.025  # metres
    image_size: list[int] = field(default_factory=lambda: [320, 240])  # teacher input (W, H)
    frames_per_sample: int = 1  # scene mode: frames per scene sample
    augment: Any = True  # true | false | a mapping of scene_kd.data.augment.Augmentation arguments
    min_pairs: int = 100  # frames with fewer pixel-point pairs are skipped (and counted)
    depth_tolerance: float = 0.05  # scene mode depth test, metres
    in_features: str = "rgb"  # rgb | rgb+normal (scene mode only); student.in_channels must match (3 | 6)
    color_norm: str = "symmetric"  # symmetric (rgb / 127.5 - 1) | unit (rgb / 255, Pointcept's NormalizeColor)
    batch_size: int = 8  # samples (frames in frame mode) per batch per process
    num_workers: int = 2


@dataclass
class StudentConfig:
    name: str = "Res16UNet34C"  # a key of scene_kd.models.STUDENTS
    in_channels: int = 3
    backend: str = "torch"  # torch | minkowski | spconv (CUDA) | auto (docs/sparse_backends.md)


@dataclass
class TeacherConfig:
    name: str = "resnet50"  # resnet50 | clip | import
    weights: Any = None  # local weights file; required unless allow_random
    allow_random: bool = False  # random weights (tests, smoke runs): the features mean nothing
    options: dict[str, Any] = field(default_factory=dict)  # more builder arguments (layer, model, clip_space, ...)


@dataclass
class HeadConfig:
    embed_dim: int = 128  # shared pixel/point embedding width (PPKT)
    head2d_mode: str = "bilinear"  # bilinear (1x1 conv + bilinear upsampling) | transposed
    head3d_hidden: Any = None  # null: linear 3D head; an int: MLP with that hidden width


@dataclass
class LossConfig:
    objective: str = "ppkt"  # ppkt | concept | ppkt+concept (docs/concept_distillation.md)
    temperature: float = 0.04  # PPKT InfoNCE temperature (PPKT: 0.04 at 2.5 cm)
    num_pairs: int = 4096  # pairs sampled per batch per process (PPKT and the concept term)
    ppkt_weight: float = 1.0  # weight of loss_ppkt when the objective is ppkt+concept
    global_weight: float = 1.0  # concept objectives: weight of loss_global (3D set vs CLIP image InfoNCE)
    concept_weight: float = 1.0  # concept objectives: weight of loss_concept (concept-distribution KL)
    concept_fit_weight: float = 1.0  # concept objectives: weight of loss_concept_fit (concepts onto CLIP pixel features)
    global_temperature: float = 0.07  # temperature of the global InfoNCE
    concept_temperature: float = 0.1  # temperature of the 3D side's concept softmax
    concept_teacher_temperature: float = 0.05  # temperature of the 2D (teacher) side's concept softmax


@dataclass
class ConceptConfig:
    num_concepts: int = 64  # learnable concept queries K
    num_heads: int = 8  # heads of the cross-attention
    width: int = 256  # width of the cross-attention (queries, keys, values)
    max_keys: int = 4096  # keys per point set at most: a random subset, voxels with pairs first
    point_hidden: Any = None  # null: linear point projection into CLIP space; an int: MLP with that hidden width


@dataclass
class PretrainConfig:
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)  # the concept head (concept objectives)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.5, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=500))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=60000, checkpoint_every=2000,
                                                                  out_dir="runs/pretrain"))
