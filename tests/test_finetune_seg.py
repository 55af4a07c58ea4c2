"""Segmentation finetuning: a short run fits the training scenes, --init really loads the weights,
the linear probe leaves the backbone untouched, chunked inference equals whole-scene inference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pair_checks import make_processed_scans, run_torchrun

from scene_kd.config import load_config
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.metrics_log import read_metrics
from scene_kd.eval.inference import predict_scene
from scene_kd.finetune.init_weights import init_from_checkpoint
from scene_kd.finetune.schema import FinetuneSegConfig
from scene_kd.finetune.seg import build_seg_model, run_finetune_seg
from scene_kd.models import build_student
from scene_kd.sparse import SparseTensor, batched_coordinates, get_backend
from scene_kd.sparse.fixtures import room_voxels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("finetune"), num_scenes=2, num_frames=4)


def small_run(root, out_dir, *extra):
    return [f"data.root={root}", "data.train_split=null", "data.val_split=null", "data.voxel_size=0.1",
            "data.batch_size=2", "data.num_workers=0", "data.augment=false", "model.student=MinkUNet14A",
            "optim.lr=0.05", "schedule.name=constant", f"train.out_dir={out_dir}", "train.progress=false",
            "train.tensorboard=false", "train.log_every=10", *extra]


def test_recipes_resolve_and_default_yaml_is_the_schema():
    # Key for key and value for value: a key missing from the file would otherwise be filled in by the schema.
    written = OmegaConf.to_container(OmegaConf.load(REPO / "configs/finetune_seg/default.yaml"))
    assert written == OmegaConf.to_container(load_config(FinetuneSegConfig))
    assert load_config(FinetuneSegConfig, REPO / "configs/finetune_seg/default.yaml") == load_config(FinetuneSegConfig)
    cfg = load_config(FinetuneSegConfig, REPO / "configs/finetune_seg/points_20.yaml", ["data.root=/data/scannet"])
    assert cfg.data.labelled_points == "/data/scannet/subsets/points_20.json"
    cfg = load_config(FinetuneSegConfig, REPO / "configs/finetune_seg/scenes_5pct.yaml", ["data.root=/d"])
    assert cfg.data.scene_subset == "/d/subsets/scenes_5pct.txt"
    assert load_config(FinetuneSegConfig, REPO / "configs/finetune_seg/linear_probe.yaml").model.freeze_backbone


def test_short_finetune_fits_the_training_scenes(processed, tmp_path):
    cfg = load_config(FinetuneSegConfig, None, small_run(processed, tmp_path, "train.max_steps=50",
                                                         "train.eval_every=25", "train.checkpoint_every=50"))
    run_finetune_seg(cfg)
    evals = [m for m in read_metrics(tmp_path) if "val_miou" in m]
    assert [m["step"] for m in evals] == [25, 50]
    final = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert final["miou"] > 0.5, final
    assert (tmp_path / "checkpoints" / "best.pth").is_file()
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    assert best["best_metric"] == "val_miou" and best["best_value"] == max(m["val_miou"] for m in evals)
    scene = sorted(p.name for p in processed.iterdir() if p.name.startswith("scene"))[0]
    lines = (tmp_path / "eval" / "submission" / f"{scene}.txt").read_text().split()
    assert len(lines) == len(torch.from_numpy(__import__("numpy").load(processed / scene / "coord.npy")))
    assert (tmp_path / "eval" / "confusion.png").is_file() and (tmp_path / "eval" / "ply" / f"{scene}_pred.ply").is_file()


def _features(model, coords):
    """Decoder features (before `final`) of `model` on a fixed input."""
    model.eval()
    final, model.final = model.final, None
    with torch.no_grad():
        out = model(SparseTensor(torch.linspace(-1, 1, coords.shape[0] * 3).reshape(-1, 3), coords)).F
    model.final = final
    return out


def test_init_really_loads_the_pretrained_weights(processed, tmp_path):
    torch.manual_seed(11)
    source = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    torch.save({"student": source.state_dict(), "student_name": "MinkUNet14A"}, tmp_path / "pretrained.pth")
    cfg = load_config(FinetuneSegConfig, None, small_run(processed, tmp_path, f"model.init={tmp_path / 'pretrained.pth'}"))
    model, _, note = build_seg_model(cfg)
    assert "head freshly initialised" in note
    fresh, _, _ = build_seg_model(load_config(FinetuneSegConfig, None, small_run(processed, tmp_path)))
    coords = batched_coordinates([room_voxels(1500, seed=0, voxel_size=0.1)])
    torch.testing.assert_close(_features(model, coords), _features(source, coords), rtol=0, atol=0)
    assert not torch.allclose(_features(fresh, coords), _features(source, coords))


def test_init_from_a_minkowski_style_checkpoint_and_strictness(tmp_path):
    torch.manual_seed(12)
    me_model = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    torch.save({"state_dict": {f"module.{k}": v for k, v in me_model.state_dict().items()}}, tmp_path / "me.pth")
    target = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    report = init_from_checkpoint(target, tmp_path / "me.pth")
    assert report.head_loaded and not report.missing and not report.unexpected
    for key, value in me_model.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    other = build_student("MinkUNet18A", in_channels=3, out_channels=20)  # a superset of MinkUNet14A's keys
    with pytest.raises(ValueError, match=r"me.pth does not fit the model: .*missing \(block1.1.conv1.kernel"):
        init_from_checkpoint(other, tmp_path / "me.pth")
    report = init_from_checkpoint(other, tmp_path / "me.pth", strict=False)
    assert report.missing and not report.unexpected and len(report.loaded) == len(me_model.state_dict())


def test_linear_probe_trains_the_head_only(processed, tmp_path):
    torch.manual_seed(13)
    source = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    torch.save({"student": source.state_dict()}, tmp_path / "pretrained.pth")
    cfg = load_config(FinetuneSegConfig, None, small_run(
        processed, tmp_path / "run", f"model.init={tmp_path / 'pretrained.pth'}", "model.freeze_backbone=true",
        "train.max_steps=3", "train.eval_every=0", "train.checkpoint_every=3", "eval.write_predictions=false"))
    run_finetune_seg(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["model"]
    for key, value in source.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{key} changed in a linear probe")
    head = build_student("MinkUNet14A", in_channels=3, out_channels=20).state_dict()
    assert set(state) - set(source.state_dict()) == {k for k in head if k.startswith("final.")}


def test_chunked_inference_equals_whole_scene_inference():
    torch.manual_seed(14)
    model = build_student("MinkUNet14A", in_channels=3, out_channels=5).eval()
    coords = room_voxels(6000, seed=3, voxel_size=0.05)
    feats = torch.rand(coords.shape[0], 3)
    backend = get_backend("torch")
    whole = predict_scene(model, backend, coords, feats, torch.device("cpu"), chunk_voxels=10**9)
    with torch.no_grad():
        direct = model(SparseTensor(feats, batched_coordinates([coords]))).F
    torch.testing.assert_close(whole, direct)
    chunked = predict_scene(model, backend, coords, feats, torch.device("cpu"), chunk_voxels=4000, margin_voxels=40)
    assert chunked.shape == whole.shape
    agreement = (chunked.argmax(1) == whole.argmax(1)).float().mean().item()
    assert agreement > 0.97, agreement


def test_cli_eval_only_and_bad_init(processed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "tools/finetune_seg.py"), *small_run(processed, tmp_path),
                           "--init", str(tmp_path / "missing.pth")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "missing.pth" in proc.stderr
    model = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    torch.save({"model": model.state_dict()}, tmp_path / "finetuned.pth")
    proc = subprocess.run([sys.executable, str(REPO / "tools/finetune_seg.py"), *small_run(processed, tmp_path),
                           "--eval-only", str(tmp_path / "finetuned.pth"), "--eval-out", str(tmp_path / "ev")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"metrics.json", "table.md", "confusion.png"} <= {p.name for p in (tmp_path / "ev").iterdir()}


def test_two_process_gloo_ddp_finetuning(processed, tmp_path):
    proc = run_torchrun(REPO / "tools/finetune_seg.py",
                        small_run(processed, tmp_path, "data.batch_size=1", "train.max_steps=4", "train.eval_every=4",
                                  "train.checkpoint_every=4", "train.device=cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [m for m in read_metrics(tmp_path) if "val_miou" in m]
    assert [m["step"] for m in evals] == [4]
    final = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # Each process evaluated one scene; the all-reduced confusion counts every labelled vertex of both.
    assert final["num_points"] == sum(int((__import__("numpy").load(p / "segment20.npy") >= 0).sum())
                                      for p in processed.iterdir() if (p / "segment20.npy").exists())
    scenes = sorted(p.name for p in processed.iterdir() if (p / "segment20.npy").exists())
    assert sorted(p.stem for p in (tmp_path / "eval" / "submission").iterdir()) == scenes  # both ranks' scenes
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    build_student("MinkUNet14A", in_channels=3, out_channels=20).load_state_dict(state["model"], strict=True)
