"""The README's main job on built-in synthetic data: the whole pipeline at toy size.

synthetic ScanNet scans -> preprocessing (+ limited-label subsets) -> a 2D teacher trained on the
frames' 2D labels -> a student pretrained from it by PPKT on the unlabelled training scans ->
20-class segmentation finetuned with 200 labelled points per scene, from the pretrained student and
from scratch -> val mIoU of both, side by side, and the pictures: loss curves, coloured prediction
PLYs, a pixel-to-point correspondence overlay. Each stage reuses its finished outputs, so a rerun
of an interrupted demo goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from scene_kd.atomic import write_text_atomic
from scene_kd.engine.metrics_log import read_metrics
from scene_kd.transfer.pipeline import (
    TransferSettings,
    finetune_stage,
    prepare_synthetic_data,
    pretrain_stage,
    train_teacher_stage,
)
from scene_kd.transfer.plots import paint_pixels, plot_loss_curves, position_colors, save_png, side_by_side

DEMO_SETTINGS = TransferSettings(
    num_scenes=8, val_fraction=0.25, num_frames=40, teacher_steps=150, teacher_width=32,
    pretrain_steps=150, finetune_steps=80, point_counts=[200], scene_percents=[],
)


def write_overlay(processed: Path, settings: TransferSettings, path: Path) -> int:
    """Three panels for the first validation frame: the frame; its pixel-to-point pairs (the frame's
    depth lifted to 3D and voxelized, as PPKT pairs them) painted with the 3D position of their
    voxel; the scene's annotated points projected into it (depth-tested) painted with their class
    colour. Where the correspondences are right, colours change at the objects' edges in the frame.
    Returns the number of pairs drawn."""
    from scene_kd.data.correspondence import RGBDCamera
    from scene_kd.data.pretrain_dataset import PretrainDataset
    from scene_kd.eval.semseg import label_colors
    from scene_kd.scannet.exported import ExportedFrameSource
    from scene_kd.transfer.frame_labels import frame_label_image

    dataset = PretrainDataset(processed, "val", mode="frame", voxel_size=settings.voxel_size / 4,
                              image_size=settings.image_size, augment=False, min_pairs=1)
    sample = dataset[0]
    image = (sample["images"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pairs = sample["pairs"].numpy()
    points = sample["coords"].numpy()[pairs[:, 0]] * dataset.voxel_size
    scene_dir = processed / sample["meta"]["scene_id"]
    source = ExportedFrameSource(scene_dir)
    labels = frame_label_image(np.load(scene_dir / "coord.npy"), np.load(scene_dir / "segment20.npy"),
                               source.read(sample["meta"]["frame_ids"][0]), RGBDCamera.from_source(source),
                               settings.image_size)
    rows, cols = np.nonzero(labels >= 0)
    panels = [image, paint_pixels(image, pairs[:, 2], pairs[:, 3], position_colors(points)),
              paint_pixels(image, rows, cols, label_colors(labels[rows, cols]))]
    save_png(side_by_side(panels), path, scale=3)
    return len(pairs)


def _curve(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in read_metrics(run_dir) if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def run_demo(out_dir: str | os.PathLike = "outputs/demo", *, seed: int = 0,
             settings: TransferSettings = DEMO_SETTINGS, progress: bool = True) -> dict:
    """Run the demo into `out_dir`; returns (and writes as demo_summary.json) what it measured."""
    out = Path(out_dir)
    started = time.perf_counter()
    setting = f"points_{settings.point_counts[0]}"

    print(f"[1/5] {settings.num_scenes} synthetic ScanNet scans -> preprocessing -> limited-label subsets")
    processed = prepare_synthetic_data(out / "data", settings, seed=seed, progress=progress)
    overlay_pairs = write_overlay(processed, settings, out / "correspondences.png")

    print(f"[2/5] 2D teacher trained on the training frames' 2D labels ({settings.teacher_steps} steps)")
    teacher, teacher_metrics = train_teacher_stage(processed, out / "teacher", settings, seed=seed, progress=progress)
    print(f"      validation frames: pixel accuracy {100 * teacher_metrics['val_pixel_accuracy']:.1f} %")

    print(f"[3/5] pretraining {settings.student} from the 2D teacher by PPKT ({settings.pretrain_steps} steps, "
          "no 3D labels)")
    checkpoint = pretrain_stage(processed, teacher, out / "pretrain", settings, seed=seed, progress=progress)

    results = {}
    for step_index, (name, init) in enumerate((("scratch", None), ("pretrained", checkpoint))):
        print(f"[{4 + step_index}/5] finetuning segmentation from {name} with {settings.point_counts[0]} labelled "
              f"points per scene ({settings.finetune_steps} steps)")
        metrics = finetune_stage(processed, setting, init, out / f"finetune_{name}", settings, seed=seed,
                                 progress=progress, write_predictions=True)
        results[name] = metrics

    curves = {"2D teacher (cross-entropy)": (list(range(1, settings.teacher_steps + 1)),
                                            teacher_metrics.get("loss") or []),
              "PPKT pretraining (InfoNCE)": _curve(out / "pretrain", "loss_ppkt"),
              "finetune from scratch": _curve(out / "finetune_scratch", "loss_seg"),
              "finetune from pretrained": _curve(out / "finetune_pretrained", "loss_seg")}
    plot_loss_curves(curves, out / "loss_curves.png", title="demo losses")

    scratch, pretrained = results["scratch"]["miou"], results["pretrained"]["miou"]
    table = "\n".join([
        f"| val mIoU, {setting} | from scratch | pretrained (PPKT) | gain |",
        "|---|---|---|---|",
        f"| {settings.finetune_steps} finetuning steps | {100 * scratch:.1f} | {100 * pretrained:.1f} | "
        f"{100 * (pretrained - scratch):+.1f} |",
    ])
    summary = {
        "val_miou": {"scratch": scratch, "pretrained": pretrained},
        "teacher_val_pixel_accuracy": teacher_metrics["val_pixel_accuracy"],
        "pretrain_checkpoint": str(checkpoint),
        "pictures": {"loss_curves": str(out / "loss_curves.png"),
                     "correspondences": str(out / "correspondences.png"),
                     "predictions": str(out / "finetune_pretrained" / "eval" / "ply")},
        "correspondence_pairs_drawn": overlay_pairs,
        "seconds": time.perf_counter() - started,
    }
    write_text_atomic(out / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    print("\n" + table + "\n")
    print(f"pictures: {out / 'loss_curves.png'}, {out / 'correspondences.png'}, prediction and ground-truth PLYs "
          f"in {out / 'finetune_pretrained' / 'eval' / 'ply'}")
    print(f"pretrained student (MinkowskiEngine layout): {checkpoint}; {summary['seconds']:.0f} s in all")
    return summary


def demo_settings(**changes) -> TransferSettings:
    """DEMO_SETTINGS with `changes` applied (the CLI's size flags)."""
    return replace(DEMO_SETTINGS, **changes)
