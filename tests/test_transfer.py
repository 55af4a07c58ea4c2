"""The transfer experiment's pieces: 2D frame labels by projection, the frame teacher (training,
saving, loading as the named `frame_encoder` teacher and as an import teacher), the configs the
stages build, quiet stages without progress, the result table, the correspondence overlay, and the
demo end to end at toy size."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from scene_kd.data.correspondence import RGBDCamera
from scene_kd.models.teachers import build_teacher
from scene_kd.models.teachers.frame_encoder import frame_encoder
from scene_kd.scannet.frame_types import RGBDFrame
from scene_kd.transfer.frame_labels import frame_label_image
from scene_kd.transfer.frame_teacher import predict_frames, train_frame_teacher
from scene_kd.transfer.pipeline import (
    TransferSettings,
    finetune_config,
    format_transfer_table,
    prepare_synthetic_data,
    pretrain_config,
    summarize,
    train_teacher_stage,
)
from scene_kd.transfer.plots import paint_pixels, position_colors, side_by_side

# A 40 x 30 color camera and a 20 x 15 depth camera looking down +z from the origin.
K_COLOR = np.array([[40.0, 0, 20.0, 0], [0, 40.0, 15.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_DEPTH = np.array([[20.0, 0, 10.0, 0], [0, 20.0, 7.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def _flat_frame(depth_m: float, pose: np.ndarray | None = None) -> RGBDFrame:
    depth = np.full((15, 20), int(depth_m * 1000), dtype=np.uint16)
    return RGBDFrame(color=np.zeros((30, 40, 3), np.uint8), depth=depth,
                     camera_to_world=np.eye(4) if pose is None else pose)


def test_frame_labels_land_where_points_project_and_respect_depth():
    camera = RGBDCamera(intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH)
    # On the wall at z = 2: x = 0.5 -> color column 20 + 40 * 0.25 = 30, y = -0.25 -> row 15 - 5 = 10.
    # Behind the wall (z = 3, hidden) and unlabelled points must not label anything.
    points = np.array([[0.5, -0.25, 2.0], [0.0, 0.0, 2.0], [0.0, 0.25, 3.0], [-0.5, 0.0, 2.0]])
    labels = np.array([7, 3, 5, -1])
    out = frame_label_image(points, labels, _flat_frame(2.0), camera, image_size=(40, 30))
    expected = np.full((30, 40), -1)
    expected[10, 30] = 7
    expected[15, 20] = 3
    np.testing.assert_array_equal(out, expected)
    # Resized to 20 x 15: pixel centres scale, (10, 30) -> ((10.5) / 2 - 0.5, (30.5) / 2 - 0.5) = (4.75, 14.75).
    small = frame_label_image(points, labels, _flat_frame(2.0), camera, image_size=(20, 15))
    assert small[5, 15] == 7 and small[7, 10] == 3  # (15.5 / 2 - 0.5 = 7.25 -> 7, 20.5 / 2 - 0.5 = 9.75 -> 10)
    assert (small >= 0).sum() == 2
    lost = np.full((4, 4), -np.inf)
    assert (frame_label_image(points, labels, _flat_frame(2.0, lost), camera, (40, 30)) == -1).all()
    with pytest.raises(ValueError, match="labels"):
        frame_label_image(points, labels[:2], _flat_frame(2.0), camera, (40, 30))


def _toy_frames(count: int, seed: int) -> dict[str, np.ndarray]:
    """Frames whose label is which of red / green / blue is bright in a 4 x 4 block pattern."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 3, size=(count, 8, 8))
    labels = blocks.repeat(4, 1).repeat(4, 2)
    images = np.zeros((count, 32, 32, 3), np.uint8) + rng.integers(0, 40, size=(count, 32, 32, 3), dtype=np.uint8)
    np.put_along_axis(images, labels[..., None], 200, axis=3)
    labels = labels.astype(np.int64)
    labels[:, ::5] = -1  # some unlabelled pixels
    return {"images": images, "labels": labels}


def test_frame_teacher_learns_saves_and_loads_as_import_teacher(tmp_path):
    train, val = _toy_frames(24, 0), _toy_frames(8, 1)
    metrics = train_frame_teacher(train, tmp_path / "teacher.pth", val_frames=val, num_classes=3, out_channels=8,
                                  width=8, steps=60, batch_size=8, lr=1e-2, progress=False)
    assert metrics["loss"][-1] < 0.5 * metrics["loss"][0]
    assert metrics["val_pixel_accuracy"] > 0.9
    teacher = build_teacher("import", weights=str(tmp_path / "teacher.pth"), target=
                            "scene_kd.models.teachers.frame_encoder:frame_encoder", out_channels=8, stride=4,
                            factory_kwargs={"out_channels": 8, "width": 8})
    encoder = frame_encoder(8, 8, weights=tmp_path / "teacher.pth").eval()
    images = torch.from_numpy(val["images"]).permute(0, 3, 1, 2).float() / 255
    from scene_kd.transfer.frame_teacher import normalize_images

    with torch.no_grad():
        expected = encoder(normalize_images(torch.from_numpy(val["images"])))
    features = teacher(images)
    assert features.shape == (8, 8, 8, 8)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    fresh = frame_encoder(8, 8).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(normalize_images(torch.from_numpy(val["images"]))), expected)
    state = torch.load(tmp_path / "teacher.pth", weights_only=True)
    classifier = torch.nn.Conv2d(8, 3, 1)
    classifier.load_state_dict(state["classifier"])
    pred = predict_frames(encoder, classifier, val["images"])
    keep = val["labels"] >= 0
    assert abs((pred[keep] == val["labels"][keep]).mean() - metrics["val_pixel_accuracy"]) < 1e-9
    with pytest.raises(FileNotFoundError, match="frame_encoder weights"):
        frame_encoder(8, 8, weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a frame_encoder"):
        frame_encoder(16, 8, weights=tmp_path / "teacher.pth")


def test_frame_encoder_is_a_named_teacher(tmp_path):
    encoder = frame_encoder(8, 8, seed=3).eval()
    torch.save({"encoder": encoder.state_dict()}, tmp_path / "teacher.pth")
    teacher = build_teacher("frame_encoder", weights=str(tmp_path / "teacher.pth"), out_channels=8, width=8)
    assert (teacher.out_channels, teacher.stride, teacher.embed_dim) == (8, 4, None)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    imported = build_teacher("import", weights=str(tmp_path / "teacher.pth"), out_channels=8, stride=4,
                             target="scene_kd.models.teachers.frame_encoder:frame_encoder",
                             factory_kwargs={"out_channels": 8, "width": 8})
    features = teacher(images)
    assert features.shape == (2, 8, 6, 8)
    torch.testing.assert_close(features, imported(images))
    missing = tmp_path / "nowhere" / "teacher.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_teacher("frame_encoder", weights=str(missing), out_channels=8, width=8)
    with pytest.raises(ValueError, match="weights are required"):
        build_teacher("frame_encoder", weights=None)


def test_stage_configs_are_typed_and_name_the_frame_encoder(tmp_path):
    settings = TransferSettings(teacher_channels=8, teacher_width=8, image_size=(48, 36), pretrain_mode="frame")
    weights = tmp_path / "teacher.pth"
    torch.save({"encoder": frame_encoder(8, 8).state_dict()}, weights)
    cfg = pretrain_config(tmp_path / "processed", weights, tmp_path / "run", settings, seed=2, progress=False)
    assert (cfg.teacher.name, cfg.teacher.weights) == ("frame_encoder", str(weights))
    assert list(cfg.data.image_size) == [48, 36] and cfg.data.frames_per_sample == 1 and cfg.train.seed == 2
    assert cfg.train.progress is False and cfg.schedule.warmup_steps == 30
    teacher = build_teacher(cfg.teacher.name, weights=cfg.teacher.weights, allow_random=cfg.teacher.allow_random,
                            **cfg.teacher.options)
    assert teacher.out_channels == 8
    cfg = finetune_config(tmp_path / "processed", "points_20", None, tmp_path / "ft", settings, seed=1)
    assert cfg.data.labelled_points == str(tmp_path / "processed" / "subsets" / "points_20.json")
    assert cfg.data.scene_subset is None and cfg.model.init is None and cfg.eval.write_predictions is False
    cfg = finetune_config(tmp_path / "processed", "scenes_10pct", weights, tmp_path / "ft", settings, seed=1)
    assert cfg.data.scene_subset.endswith("scenes_10pct.txt") and cfg.model.init == str(weights)
    with pytest.raises(ValueError, match="unknown label setting"):
        finetune_config(tmp_path / "processed", "some", None, tmp_path / "ft", settings, seed=1)


def test_teacher_stage_draws_no_progress_bar_when_told_not_to(tmp_path, capsys):
    settings = TransferSettings(num_scenes=2, val_fraction=0.5, num_frames=4, frame_skip=2, image_size=(40, 30),
                                teacher_steps=2, teacher_width=4, teacher_channels=4, scene_percents=[],
                                point_counts=[5])
    processed = prepare_synthetic_data(tmp_path / "data", settings, progress=False)
    capsys.readouterr()
    train_teacher_stage(processed, tmp_path / "quiet", settings, progress=False)
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""
    # The same stage with progress draws its bars where the capture sees them.
    train_teacher_stage(processed, tmp_path / "loud", settings, progress=True)
    loud = capsys.readouterr().err
    assert "frame labels" in loud and "2D teacher" in loud


def test_summarize_means_spreads_and_paired_gains():
    rows = [
        {"setting": "points_20", "init": "scratch", "seed": 0, "miou": 0.10},
        {"setting": "points_20", "init": "scratch", "seed": 1, "miou": 0.20},
        {"setting": "points_20", "init": "pretrained", "seed": 0, "miou": 0.25},
        {"setting": "points_20", "init": "pretrained", "seed": 1, "miou": 0.30},
    ]
    table = summarize(rows)["points_20"]
    assert table["scratch"]["mean"] == pytest.approx(15.0)
    assert table["scratch"]["std"] == pytest.approx(np.std([10, 20], ddof=1))
    assert table["pretrained"]["mean"] == pytest.approx(27.5)
    assert table["gain"]["mean"] == pytest.approx(12.5)  # gains 15 and 10
    assert table["gain"]["std"] == pytest.approx(np.std([15, 10], ddof=1))
    text = format_transfer_table(summarize(rows))
    assert "| points_20 | 15.0 ± 7.1 | 27.5 ± 3.5 | +12.5 ± 3.5 | 2 |" in text


def test_overlay_panels_paint_points_by_position():
    image = np.full((4, 5, 3), 100, np.uint8)
    rows, cols = np.array([0, 3]), np.array([1, 4])
    points = np.array([[0.0, 1.0, 2.0], [1.0, 3.0, 2.0]])
    colors = position_colors(points)
    np.testing.assert_array_equal(colors, [[0, 0, 0], [255, 255, 0]])  # min / max per axis; z has no range
    painted = paint_pixels(image, rows, cols, colors)
    np.testing.assert_array_equal(painted[3, 4], [255, 255, 0])
    np.testing.assert_array_equal(painted[1, 1], [25, 25, 25])  # unpaired: the frame darkened to a quarter
    picture = np.asarray(side_by_side([image, painted], gap=4))
    assert picture.shape == (4, 14, 3)
    np.testing.assert_array_equal(picture[:, :5], image)
    np.testing.assert_array_equal(picture[:, 5:9], 255)
    np.testing.assert_array_equal(picture[:, 9:], painted)


def test_demo_runs_end_to_end(tmp_path):
    from scene_kd.demo import demo_settings, run_demo

    settings = demo_settings(num_scenes=3, num_frames=8, teacher_steps=3, pretrain_steps=2, finetune_steps=2,
                             teacher_width=8, teacher_channels=8, voxel_size=0.15)
    summary = run_demo(tmp_path / "demo", settings=settings, progress=False)
    out = tmp_path / "demo"
    for name in ("loss_curves.png", "correspondences.png", "demo_summary.json"):
        assert (out / name).stat().st_size > 0
    assert summary["correspondence_pairs_drawn"] > 100
    assert sorted(p.name for p in (out / "finetune_pretrained" / "eval" / "ply").iterdir()) == [
        "scene0002_00_gt.ply", "scene0002_00_pred.ply"]
    assert 0.0 <= summary["val_miou"]["scratch"] <= 1.0 and 0.0 <= summary["val_miou"]["pretrained"] <= 1.0
    saved = json.loads((out / "demo_summary.json").read_text())
    assert saved["val_miou"] == summary["val_miou"]
    # The pretrained finetune started from the pretraining checkpoint's student.
    config = (out / "finetune_pretrained" / "config.yaml").read_text()
    assert str(out / "pretrain" / "checkpoints" / "last.pth") in config
    # A rerun reuses every finished stage.
    again = run_demo(out, settings=settings, progress=False)
    assert again["val_miou"] == summary["val_miou"] and again["seconds"] < summary["seconds"]
    # ... and refuses a stage made with other settings instead of mixing experiments.
    with pytest.raises(ValueError, match=r"finetune_scratch: made with other settings \(finetune_steps differ\)"):
        run_demo(out, settings=replace(settings, finetune_steps=3), progress=False)
