"""Config schema of semantic-segmentation finetuning (`tools/finetune_seg.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scene_kd.engine.schema import OptimConfig, ScheduleConfig, TrainConfig


@dataclass
class SegDataConfig:
    root: str = "data/processed"  # processed scenes (tools/preprocess_scannet.py)
    train_split: Any = "train"  # train | val | a split file | a list of scene ids | null (all)
    val_split: Any = "val"
    voxel_size: float = 0.02  # metres
    augment: Any = True  # true | false | a mapping of the segmentation augmentation arguments
    max_voxels: Any = 120000  # training samples larger than this are cropped around a random point; null = no cap
    scene_subset: Any = None  # limited scene reconstructions: a scene-id list file (tools/make_data_efficient_subsets.py)
    labelled_points: Any = None  # limited annotations: a points_N.json file; other points are unlabelled
    in_features: str = "rgb"  # rgb | rgb+normal
    color_norm: str = "symmetric"  # symmetric (rgb / 127.5 - 1) | unit (rgb / 255, Pointcept's NormalizeColor)
    batch_size: int = 4  # scenes per batch per process
    num_workers: int = 2


@dataclass
class SegModelConfig:
    student: str = "Res16UNet34C"  # a key of scene_kd.models.STUDENTS
    backend: str = "torch"  # torch | minkowski | spconv (CUDA) | auto (docs/sparse_backends.md)
    num_classes: int = 20
    init: Any = None  # a pretraining checkpoint, or a MinkowskiEngine checkpoint of the same architecture
    init_strict: bool = True  # every backbone weight must be in `init` (the head may be missing)
    freeze_backbone: bool = False  # linear probe: train the final 1x1x1 layer only


@dataclass
class SegEvalConfig:
    chunk_voxels: int = 400000  # whole-scene inference splits larger scenes into overlapping blocks
    chunk_margin: float = 1.0  # metres of context around each block
    write_predictions: bool = True  # submission .txt files and coloured PLYs of the final evaluation


@dataclass
class FinetuneSegConfig:
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="poly", poly_power=0.9))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=30000, checkpoint_every=1000, eval_every=2000, best_metric="val_miou", out_dir="runs/finetune_seg"))
