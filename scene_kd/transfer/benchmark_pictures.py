"""The transfer benchmark's pictures: the table as grouped bars, the pretraining loss curves, student
features on a validation scan (random init vs pretrained, PCA to RGB) and the zero-shot predictions
beside the ground truth; PLYs of the same in work_dir/ply/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scene_kd.data.scenes import load_scene, resolve_scene_ids
from scene_kd.engine.metrics_log import read_metrics
from scene_kd.transfer.benchmark import FUSION_ARM, BenchmarkPlan, BenchmarkRecord
from scene_kd.transfer.pictures import (
    feature_pictures,
    prediction_pictures,
    write_colored_ply,
    zeroshot_point_predictions,
)
from scene_kd.transfer.pipeline import TransferSettings
from scene_kd.transfer.plots import plot_arm_table, plot_loss_curves


def pretrain_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, loss_ppkt) of a pretraining run, or the sum of its loss terms when it has no PPKT term."""
    metrics = read_metrics(run_dir)
    steps = [m["step"] for m in metrics if any(k.startswith("loss") for k in m)]
    values = [m["loss_ppkt"] if "loss_ppkt" in m else sum(v for k, v in m.items() if k.startswith("loss"))
              for m in metrics if any(k.startswith("loss") for k in m)]
    return steps, values


def benchmark_pictures(work: Path, record: BenchmarkRecord, settings: TransferSettings, plan: BenchmarkPlan,
                       table: dict, arms: Sequence[str], progress: bool = False) -> None:
    """Write transfer_arms.png, pretrain_curves.png, features.png and zeroshot.png into `work`."""
    limited = {s: e for s, e in table.items() if s not in ("zero_shot",)}
    plot_arm_table(limited, list(arms), work / "transfer_arms.png")
    seed = plan.seeds[0]
    pretrained = {arm: work / f"seed{seed}" / f"pretrain_{arm}" for arm in arms if arm != "scratch"}
    curves = {arm: pretrain_curve(run) for arm, run in pretrained.items() if (run / "metrics.jsonl").exists()}
    if curves:
        plot_loss_curves(curves, work / "pretrain_curves.png",
                         title=f"pretraining loss (loss_ppkt, or the sum of the terms), seed {seed}")
    processed = work / "data" / "processed"
    scene_id = resolve_scene_ids(processed, "val")[0]
    checkpoints = {"random init": None, **{arm: run / "checkpoints" / "last.pth" for arm, run in pretrained.items()
                                           if (run / "checkpoints" / "last.pth").exists() and arm in plan.arms}}
    feature_pictures(processed, scene_id, settings.student, settings.voxel_size, checkpoints,
                     work / "features.png", work / "ply")
    zeroshot_picture(work, processed, scene_id, settings, pretrained.get("ppkt_concept_clip"))


def zeroshot_picture(work: Path, processed: Path, scene_id: str, settings: TransferSettings,
                     concept_run: Path | None) -> None:
    """The ground truth, the zero-shot prediction of the concept-pretrained student and the 2D-fusion
    baseline's, side by side (zeroshot.png) and as PLYs."""
    import numpy as np

    from scene_kd.eval.fusion_zeroshot import fused_voxel_features
    from scene_kd.eval.semseg import label_colors
    from scene_kd.eval.zeroshot import SCANNET_TEMPLATES, seg20_prompt_names
    from scene_kd.models.teachers.clip import build_clip_teacher, clip_text_embeddings

    arrays = load_scene(processed, scene_id, ("coord", "segment20"))
    panels = {"ground truth": arrays["segment20"]}
    if concept_run is not None and (concept_run / "checkpoints" / "last.pth").exists():
        panels["zero-shot, ppkt_concept_clip"] = zeroshot_point_predictions(concept_run / "checkpoints" / "last.pth",
                                                                            processed, scene_id)
    clip_dir = work / "world_clip"
    width, height = settings.image_size
    teacher = build_clip_teacher(str(clip_dir / "model_config.json"), weights=clip_dir / "world_clip.pt",
                                 image_size=(height, width))
    text = clip_text_embeddings(str(clip_dir / "model_config.json"), clip_dir / "world_clip.pt", seg20_prompt_names(),
                                SCANNET_TEMPLATES)
    features, seen, inverse = fused_voxel_features(processed, scene_id, teacher, settings.voxel_size, (width, height))
    fused = (features @ text.T).argmax(1).numpy()
    fused[~seen.numpy()] = -1
    panels[f"zero-shot, {FUSION_ARM}"] = fused[inverse]
    prediction_pictures(arrays["coord"], panels, work / "zeroshot.png")
    for title, classes in panels.items():
        name = title.replace(", ", "_").replace(" ", "_")
        write_colored_ply(work / "ply" / f"{scene_id}_{name}.ply", arrays["coord"], label_colors(np.asarray(classes)))
