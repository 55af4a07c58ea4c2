"""The arms of the transfer benchmark: which teacher a student is pretrained from and by which
objective. Each arm is a teacher section and a loss section merged into `PretrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Arm:
    """teacher: "frame_encoder" (the 2D-label teacher) or "clip" (the in-world CLIP); objective:
    loss.objective (ppkt | concept | ppkt+concept); concept_fit: keep the `loss_concept_fit` term
    (False: the paper's two concept terms alone); main: run for every seed (False: an ablation, run
    for the first seed only)."""

    name: str
    teacher: str
    objective: str
    concept_fit: bool = True
    main: bool = True
    description: str = ""


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("ppkt_2d", "frame_encoder", "ppkt", description="PPKT from the 2D-label teacher"),
    Arm("ppkt_clip", "clip", "ppkt", description="PPKT from the in-world CLIP"),
    Arm("ppkt_concept_clip", "clip", "ppkt+concept", description="PPKT + concept distillation from the in-world CLIP"),
    Arm("concept_clip", "clip", "concept", main=False, description="concept distillation alone (ablation)"),
    Arm("ppkt_concept_nofit_clip", "clip", "ppkt+concept", concept_fit=False, main=False,
        description="PPKT + the paper's two concept terms, without the fit term (ablation)"),
)}


@dataclass(frozen=True)
class TeacherFiles:
    """The trained teachers' files: the 2D-label frame encoder, and the in-world CLIP's open_clip
    checkpoint with its model-config JSON (None when no CLIP arm runs)."""

    frame_encoder: Path
    clip_weights: Path | None = None
    clip_model_config: Path | None = None


def teacher_section(arm: Arm, files: TeacherFiles, frame_encoder_options: dict,
                    clip_image_size: list[int]) -> dict:
    """The `teacher` section of `arm`'s pretraining config."""
    if arm.teacher == "frame_encoder":
        return {"name": "frame_encoder", "weights": str(files.frame_encoder), "options": frame_encoder_options}
    if files.clip_weights is None or files.clip_model_config is None:
        raise ValueError(f"arm {arm.name} needs the in-world CLIP's weights and model config")
    return {"name": "clip", "weights": str(files.clip_weights),
            "options": {"model": str(files.clip_model_config), "image_size": list(clip_image_size)}}


def loss_section(arm: Arm, temperature: float) -> dict:
    """The `loss` section of `arm`'s pretraining config."""
    loss = {"objective": arm.objective, "temperature": temperature}
    if not arm.concept_fit:
        loss["concept_fit_weight"] = 0.0
    return loss
