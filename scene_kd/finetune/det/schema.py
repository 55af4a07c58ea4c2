"""Config schema of 3D object-detection finetuning (`tools/finetune_det.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scene_kd.engine.schema import OptimConfig, ScheduleConfig, TrainConfig


@dataclass
class DetDataConfig:
    root: str = "data/processed"  # processed scenes (tools/preprocess_scannet.py)
    train_split: Any = "train"  # train | val | a split file | a list of scene ids | null (all)
    val_split: Any = "val"
    voxel_size: float = 0.02  # metres (the levels at strides 2, 4, 8 then have 4, 8, 16 cm cells)
    augment: Any = True  # true | false | a mapping of the detection augmentation arguments (DetAugmentation)
    scene_subset: Any = None  # limited scene reconstructions: a scene-id list file (tools/make_data_efficient_subsets.py)
    in_features: str = "rgb"  # rgb | rgb+normal
    color_norm: str = "symmetric"  # symmetric (rgb / 127.5 - 1) | unit (rgb / 255, Pointcept's NormalizeColor)
    min_box_points: int = 1  # instances with fewer points get no ground-truth box
    batch_size: int = 4  # scenes per batch per process
    num_workers: int = 2


@dataclass
class DetModelConfig:
    student: str = "Res16UNet34C"  # a key of scene_kd.models.STUDENTS
    backend: str = "torch"  # torch | minkowski | spconv (CUDA) | auto (docs/sparse_backends.md)
    strides: list[int] = field(default_factory=lambda: [2, 4, 8])  # decoder levels the head predicts at (of 1, 2, 4, 8)
    head_channels: int = 128
    init: Any = None  # a pretraining checkpoint, or a MinkowskiEngine checkpoint of the same architecture
    init_strict: bool = True  # every backbone weight must be in `init`
    freeze_backbone: bool = False  # train the detection head only


@dataclass
class DetLossConfig:
    assign_min_voxels: int = 27  # a box goes to the coarsest level (run from the finest) with this many voxels inside
    assign_topk: int = 18  # positives per box: its voxels nearest to the box centre at its level
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "iou"  # iou | diou (axis-aligned)
    cls_weight: float = 1.0
    box_weight: float = 1.0
    centerness_weight: float = 1.0


@dataclass
class DetEvalConfig:
    score_threshold: float = 0.01  # sigmoid(class) x sigmoid(centerness) below this is dropped
    nms_iou: float = 0.5  # class-aware axis-aligned NMS
    nms_pre: int = 1000  # per level and scene, the voxels of highest score kept before NMS
    max_boxes: int = 200  # per scene, after NMS
    iou_thresholds: list[float] = field(default_factory=lambda: [0.25, 0.5])
    write_predictions: bool = True  # per-scene box JSON and PLY wireframes of the final evaluation


@dataclass
class FinetuneDetConfig:
    data: DetDataConfig = field(default_factory=DetDataConfig)
    model: DetModelConfig = field(default_factory=DetModelConfig)
    loss: DetLossConfig = field(default_factory=DetLossConfig)
    eval: DetEvalConfig = field(default_factory=DetEvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=0.001, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=500))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=15000, grad_clip=10.0, checkpoint_every=1000, eval_every=1500, best_metric="val_map@0.25",
        out_dir="runs/finetune_det"))
