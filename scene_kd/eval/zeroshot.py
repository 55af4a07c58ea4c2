"""Zero-shot 3D semantic segmentation from CLIP text: a label-free measure of what concept distillation
taught the student.

The 20 ScanNet class names, each in several prompt templates, go through the text tower of the same
local open_clip weights as the teacher; every voxel's student feature goes through the concept head's
CLIP-space point projection; a voxel takes the class of the text embedding with the highest cosine.
The segmenter is just another segmentation model: it goes through the same evaluation as finetuning
(`scene_kd.eval.segmentation.evaluate_segmentation`: whole scenes, in blocks when large, voxel labels
carried to every vertex and scored by the ScanNet evaluator), at the checkpoint's voxel size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor, nn

from scene_kd.data.scenes import recorded_feature_settings
from scene_kd.data.seg_dataset import SegmentationDataset
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.checkpoint_checks import check_checkpoint
from scene_kd.engine.trainer import resolve_device
from scene_kd.eval.segmentation import evaluate_segmentation
from scene_kd.eval.semseg import SemanticConfusion, write_evaluation_outputs
from scene_kd.models.concept import ConceptHead
from scene_kd.models.students import build_student
from scene_kd.models.teachers.clip import clip_text_embeddings
from scene_kd.scannet.labels import SEG20_NAMES
from scene_kd.sparse.backend import SparseBackend, get_backend

# Prompt ensembling as in CLIP's zero-shot ImageNet recipe, with indoor-scene phrasings.
SCANNET_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a {} in a room.",
    "there is a {} in the scene.",
    "a {} in an indoor scene.",
    "a cropped photo of a {}.",
)
PROMPT_NAMES = {"otherfurniture": "other furniture"}  # SEG20 names that do not read as words


def seg20_prompt_names() -> list[str]:
    """The 20 ScanNet class names (SEG20_NAMES order) as they go into the prompts."""
    return [PROMPT_NAMES.get(name, name) for name in SEG20_NAMES]


class PointLogits(NamedTuple):
    """What `predict_scene` reads of a model output: C int32 [N, 4] coordinates, F logits [N, K]."""

    C: Tensor  # noqa: N815 (MinkowskiEngine's name)
    F: Tensor  # noqa: N815


class ZeroShotSegmenter(nn.Module):
    """Student -> concept head's CLIP-space point projection -> cosine with the class text embeddings.

    forward(sparse input) -> PointLogits(C, F = cosine logits [N, K]); text_embeddings: [K, D],
    L2-normalized (`clip_text_embeddings`).
    """

    def __init__(self, student: nn.Module, concept_head: ConceptHead, text_embeddings: Tensor):
        super().__init__()
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != concept_head.embed_dim:
            raise ValueError(f"ZeroShotSegmenter: text embeddings must be [K, {concept_head.embed_dim}] (the concept "
                             f"head's CLIP width), got {tuple(text_embeddings.shape)}: another CLIP model than the "
                             "teacher's?")
        self.student, self.concept_head = student, concept_head
        self.register_buffer("text_embeddings", text_embeddings.float().clone())

    def forward(self, x: Any) -> PointLogits:
        out = self.student(x)
        points = self.concept_head.project_points(out.F.float())
        return PointLogits(C=out.C, F=points @ self.text_embeddings.t())


def load_pretrained_concept_model(checkpoint: str | os.PathLike,
                                  backend: str | SparseBackend | None = None) -> tuple[nn.Module, ConceptHead, dict]:
    """(student, concept head, the checkpoint's config dict) of a pretraining checkpoint made with
    `loss.objective` concept or ppkt+concept. A checkpoint without a concept head is a ValueError."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = load_checkpoint(path)
    check_checkpoint(state, path, kinds=("pretraining",), purpose="zero-shot segmentation",
                     advice="pass one of tools/pretrain.py, made with loss.objective=concept or ppkt+concept")
    missing = [k for k in ("student", "student_name", "config") if k not in state]
    if missing:
        raise ValueError(f"{path}: not a pretraining checkpoint (no {', '.join(missing)})")
    if "concept_head" not in state or "concept_head_config" not in state:
        objective = state["config"].get("loss", {}).get("objective", "ppkt")
        raise ValueError(f"{path}: the checkpoint has no concept head (pretrained with loss.objective={objective}); "
                         "zero-shot segmentation needs loss.objective=concept or ppkt+concept")
    cfg = state["config"]
    backend = get_backend(backend or cfg.get("student", {}).get("backend", "torch"))
    student = build_student(state["student_name"], in_channels=int(cfg.get("student", {}).get("in_channels", 3)),
                            out_channels=None, backend=backend)
    head = ConceptHead(**state["concept_head_config"])
    try:
        student.load_state_dict(state["student"], strict=True)
        head.load_state_dict(state["concept_head"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the student or concept head does not match its recorded configuration: "
                         f"{error}") from error
    return student, head, cfg


def zeroshot_segmentation(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    split: str | os.PathLike | list[str] | None = "val",
    *,
    clip_model: str | None = None,
    clip_weights: str | os.PathLike | None = None,
    pretrained: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    allow_random: bool = False,
    templates: tuple[str, ...] = SCANNET_TEMPLATES,
    out_dir: str | os.PathLike | None = None,
    write_predictions: bool = False,
    device: str = "auto",
    voxel_size: float | None = None,
    chunk_voxels: int = 400_000,
    chunk_margin: float = 1.0,
    progress: bool = False,
) -> SemanticConfusion:
    """Zero-shot segment every scene of `split` under `data_root` (processed scenes with
    segment20.npy) with the checkpoint's student and concept head and CLIP text embeddings, and
    return the ScanNet confusion. clip_model / clip_weights / pretrained / cache_dir / quick_gelu:
    the CLIP whose text tower embeds the prompts (None: the checkpoint's teacher settings);
    allow_random: random CLIP weights (smoke tests). voxel_size: None, the checkpoint's
    data.voxel_size. With `out_dir`: metrics.json, table.md, confusion.png and, with
    write_predictions, submission files `submission/{scene}.txt`. chunk_voxels / chunk_margin
    (metres): whole-scene inference in blocks, as in `evaluate_segmentation`."""
    student, head, cfg = load_pretrained_concept_model(checkpoint)
    clip_model, clip_weights, pretrained, cache_dir, quick_gelu = _clip_settings(
        checkpoint, cfg, clip_model, clip_weights, pretrained, cache_dir, quick_gelu, allow_random)
    text = clip_text_embeddings(clip_model, clip_weights, seg20_prompt_names(), templates, pretrained=pretrained,
                                cache_dir=cache_dir, quick_gelu=quick_gelu, allow_random=allow_random)
    run_device = resolve_device(device)
    model = ZeroShotSegmenter(student, head, text).to(run_device)
    backend = get_backend(cfg.get("student", {}).get("backend", "torch"))
    voxel_size = float(voxel_size or _checkpoint_voxel_size(checkpoint, cfg))
    features = recorded_feature_settings(cfg)  # what the checkpoint's student was fed
    dataset = SegmentationDataset(data_root, split, voxel_size=voxel_size, augment=False, max_voxels=None,
                                  in_features=features["in_features"], color_norm=features["color_norm"])
    if len(dataset) == 0:
        raise ValueError(f"{data_root}: split {split!r} holds no scene")
    confusion = evaluate_segmentation(model, backend, dataset, run_device, chunk_voxels, chunk_margin,
                                      out_dir=out_dir if write_predictions else None, write_ply=False,
                                      progress=progress)
    if out_dir is not None:
        write_evaluation_outputs(out_dir, confusion, scenes=list(dataset.scene_ids), checkpoint=str(checkpoint),
                                 clip_model=clip_model, templates=list(templates), voxel_size=voxel_size)
    return confusion


def _checkpoint_voxel_size(checkpoint: str | os.PathLike, cfg: dict) -> float:
    voxel_size = cfg.get("data", {}).get("voxel_size")
    if voxel_size is None:
        raise ValueError(f"{checkpoint}: the checkpoint's config records no data.voxel_size; pass voxel_size")
    return voxel_size


def _clip_settings(checkpoint, cfg: dict, clip_model, clip_weights, pretrained, cache_dir, quick_gelu,
                   allow_random: bool) -> tuple:
    """(clip_model, clip_weights, pretrained, cache_dir, quick_gelu): the given ones, else the
    checkpoint's teacher settings."""
    teacher = cfg.get("teacher", {})
    options = teacher.get("options", {}) or {}
    clip_model = clip_model or options.get("model")
    if clip_model is None:
        raise ValueError(f"{checkpoint}: the checkpoint's config names no CLIP model (teacher.options.model); "
                         "pass clip_model")
    if clip_weights is None and pretrained is None and not allow_random:
        clip_weights, pretrained = teacher.get("weights"), options.get("pretrained")
        cache_dir = cache_dir or options.get("cache_dir")
    quick_gelu = options.get("quick_gelu") if quick_gelu is None else quick_gelu
    return clip_model, clip_weights, pretrained, cache_dir, quick_gelu
