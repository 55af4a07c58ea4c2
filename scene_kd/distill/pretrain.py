"""Build everything pretraining needs from a `PretrainConfig` and run the shared loop."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from scene_kd.config import as_dict
from scene_kd.data.collate import collate_pretrain
from scene_kd.data.pretrain_dataset import PretrainDataset
from scene_kd.distill.concept import OBJECTIVES, ConceptObjective, ConceptTrainable
from scene_kd.distill.ppkt import PPKTObjective, PPKTTrainable
from scene_kd.engine.launch import Task, launch
from scene_kd.engine.trainer import LoopResult
from scene_kd.models.concept import ConceptHead
from scene_kd.models.heads import PointProjection, UpsamplingProjection
from scene_kd.models.students import build_student
from scene_kd.models.teachers import build_teacher
from scene_kd.sparse.backend import SparseBackend, get_backend


def build_pretrain_dataset(cfg: DictConfig) -> PretrainDataset:
    d = cfg.data
    augment = d.augment if isinstance(d.augment, bool) or d.augment is None else OmegaConf.to_container(d.augment)
    split = OmegaConf.to_container(d.split) if OmegaConf.is_config(d.split) else d.split
    return PretrainDataset(d.root, split, mode=d.mode, voxel_size=d.voxel_size, image_size=tuple(d.image_size),
                           frames_per_sample=d.frames_per_sample, augment=augment, min_pairs=d.min_pairs,
                           depth_tolerance=d.depth_tolerance, in_features=d.in_features, color_norm=d.color_norm,
                           seed=cfg.train.seed)


def build_student_and_teacher(cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module, SparseBackend]:
    """The student (no `final` layer), the frozen teacher that `cfg` names (on the CPU) and the
    student's sparse backend."""
    backend = get_backend(cfg.student.backend)
    student = build_student(cfg.student.name, in_channels=cfg.student.in_channels, out_channels=None, backend=backend)
    teacher = build_teacher(cfg.teacher.name, weights=cfg.teacher.weights, allow_random=cfg.teacher.allow_random,
                            **OmegaConf.to_container(cfg.teacher.options))
    return student, teacher, backend


def build_ppkt_heads(cfg: DictConfig, student: torch.nn.Module,
                     teacher: torch.nn.Module) -> tuple[UpsamplingProjection, PointProjection]:
    """PPKT's 2D and 3D projection heads (`head.*`)."""
    upsample = teacher.stride if cfg.head.head2d_mode == "transposed" else None
    head2d = UpsamplingProjection(teacher.out_channels, cfg.head.embed_dim, mode=cfg.head.head2d_mode,
                                  upsample_factor=upsample)
    head3d = PointProjection(student.feature_channels, cfg.head.embed_dim, hidden=cfg.head.head3d_hidden)
    return head2d, head3d


def build_ppkt(cfg: DictConfig, device: torch.device) -> tuple[PPKTTrainable, torch.nn.Module]:
    """The trainable part (student + heads) and the frozen teacher, on `device`."""
    student, teacher, backend = build_student_and_teacher(cfg)
    head2d, head3d = build_ppkt_heads(cfg, student, teacher)
    trainable = PPKTTrainable(student, head2d, head3d, cfg.loss.temperature, backend)
    return trainable.to(device), teacher.to(device)


def build_concept(cfg: DictConfig, device: torch.device) -> tuple[ConceptTrainable, torch.nn.Module]:
    """The trainable part of `loss.objective` concept or ppkt+concept (student, concept head and, with
    PPKT, PPKT's heads) and the frozen CLIP teacher, on `device`."""
    student, teacher, backend = build_student_and_teacher(cfg)
    if not getattr(teacher, "has_global_embedding", False) or teacher.embed_dim is None:
        raise ValueError(
            f"loss.objective={cfg.loss.objective} needs a CLIP teacher with CLIP-space dense features "
            f"(teacher.name=clip, and teacher.options.clip_space=true for ResNets); teacher {cfg.teacher.name!r} "
            f"has embed_dim={teacher.embed_dim}")
    c = cfg.concept
    concept = ConceptHead(student.feature_channels, teacher.embed_dim, num_concepts=c.num_concepts,
                          num_heads=c.num_heads, width=c.width, point_hidden=c.point_hidden)
    head2d, head3d = build_ppkt_heads(cfg, student, teacher) if cfg.loss.objective == "ppkt+concept" else (None, None)
    loss = cfg.loss
    trainable = ConceptTrainable(
        student, concept, backend, head2d=head2d, head3d=head3d,
        ppkt_temperature=loss.temperature, ppkt_weight=loss.ppkt_weight, global_weight=loss.global_weight,
        concept_weight=loss.concept_weight, concept_fit_weight=loss.concept_fit_weight,
        global_temperature=loss.global_temperature, concept_temperature=loss.concept_temperature,
        concept_teacher_temperature=loss.concept_teacher_temperature, max_keys=c.max_keys)
    return trainable.to(device), teacher.to(device)


def build_objective(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(trainable part, frozen teacher) of `loss.objective`: ppkt | concept | ppkt+concept."""
    if cfg.loss.objective not in OBJECTIVES:
        raise ValueError(f"loss.objective must be one of {list(OBJECTIVES)}, got {cfg.loss.objective!r}")
    if cfg.loss.objective == "ppkt":
        return build_ppkt(cfg, device)
    return build_concept(cfg, device)


def pretraining_task(cfg: DictConfig, device: torch.device) -> Task:
    """The launcher's task of `cfg.loss.objective` (PPKT, CLIP concept distillation or both)."""
    dataset = build_pretrain_dataset(cfg)
    trainable, teacher = build_objective(cfg, device)
    objective_class = PPKTObjective if cfg.loss.objective == "ppkt" else ConceptObjective
    if cfg.loss.objective != "ppkt" and cfg.loss.global_weight > 0 and cfg.data.batch_size == 1:
        print("note: data.batch_size is 1: loss_global contrasts each point set with the images of the other "
              "sets of its batch, so with one set per batch it is 0 and trains nothing; use data.batch_size >= 2")

    def checkpoint_extra() -> dict:
        extra = {"student_name": cfg.student.name, "student": trainable.student.state_dict(), "config": as_dict(cfg)}
        if isinstance(trainable, ConceptTrainable):  # what zero-shot segmentation needs besides the student
            extra["concept_head"] = trainable.concept.state_dict()
            extra["concept_head_config"] = trainable.concept.config()
        return extra

    return Task(
        trainable=trainable,
        objective=lambda model: objective_class(model, teacher, num_pairs=cfg.loss.num_pairs),
        dataset=dataset, collate_fn=collate_pretrain,
        description=(f"pretraining {cfg.student.name} from teacher {cfg.teacher.name} by {cfg.loss.objective} on "
                     f"{len(dataset)} samples ({cfg.data.mode} mode)"),
        samples_in=lambda batch: int(batch["images"].shape[0]),
        batch_metrics=lambda batch: {k: float(v) for k, v in batch["counts"].items()},
        checkpoint_extra=checkpoint_extra)


def run_pretraining(cfg: DictConfig) -> LoopResult:
    """Pretrain a student by `cfg.loss.objective` (PPKT, CLIP concept distillation or both) as `cfg`
    says; checkpoints and logs go to `cfg.train.out_dir`."""
    return launch(cfg, pretraining_task)
