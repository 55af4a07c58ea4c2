"""Zero-shot 3D segmentation from CLIP text: the segmenter's logits by hand, the tool end to end with
random weights on synthetic scans, and its errors (missing CLIP weights, a checkpoint without a
concept head)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pair_checks import make_processed_scans
from test_concept import SMALL_CNN_TEACHER, TINY_VIT, register_tiny_clips, small_run

from scene_kd.config import load_config
from scene_kd.distill.pretrain import run_pretraining
from scene_kd.distill.schema import PretrainConfig
from scene_kd.eval.zeroshot import (
    SCANNET_TEMPLATES,
    ZeroShotSegmenter,
    load_pretrained_concept_model,
    seg20_prompt_names,
)
from scene_kd.models import build_student
from scene_kd.models.concept import ConceptHead
from scene_kd.sparse.backend import get_backend
from scene_kd.sparse.quantize import batched_coordinates

REPO = Path(__file__).resolve().parents[1]


def zeroshot_tool():
    spec = importlib.util.spec_from_file_location("zeroshot_seg", REPO / "tools" / "zeroshot_seg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    register_tiny_clips(tmp_path_factory.mktemp("open_clip_configs"))
    return TINY_VIT


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("zeroshot"), num_scenes=2, num_frames=6)


@pytest.fixture(scope="module")
def concept_checkpoint(processed, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("concept_run")
    run_pretraining(load_config(PretrainConfig, None, small_run(
        processed, out, "loss.objective=ppkt+concept", "train.max_steps=2", "train.checkpoint_every=2")))
    return out / "checkpoints" / "last.pth"


def test_prompt_names_are_the_20_scannet_classes():
    names = seg20_prompt_names()
    assert len(names) == 20 and names[0] == "wall" and names[-1] == "other furniture"
    assert all("{}" in t for t in SCANNET_TEMPLATES)


def test_segmenter_logits_are_cosines_with_the_text_embeddings():
    torch.manual_seed(0)
    student = build_student("MinkUNet14A", in_channels=3, out_channels=None).eval()
    head = ConceptHead(student.feature_channels, 8, num_concepts=4, num_heads=2, width=16).eval()
    text = F.normalize(torch.randn(5, 8), dim=1)
    model = ZeroShotSegmenter(student, head, text)
    coords = torch.randint(0, 12, (300, 3), dtype=torch.int32).unique(dim=0)
    feats = torch.rand(len(coords), 3) * 2 - 1
    x = get_backend("torch").sparse_tensor(feats, batched_coordinates([coords]))
    with torch.no_grad():
        out = model(x)
        expected = F.normalize(head.point_projection.projection(student(x).F), dim=1) @ text.t()
    assert out.F.shape == (len(coords), 5) and out.C.shape == (len(coords), 4)
    torch.testing.assert_close(out.F, expected)
    assert out.F.abs().max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="another CLIP model"):
        ZeroShotSegmenter(student, head, torch.randn(5, 16))


def test_zeroshot_tool_runs_end_to_end_with_random_weights(concept_checkpoint, processed, tmp_path, capsys):
    student, head, cfg = load_pretrained_concept_model(concept_checkpoint)
    assert cfg["loss"]["objective"] == "ppkt+concept" and head.embed_dim == 32
    out = tmp_path / "zeroshot"
    code = zeroshot_tool().main(["--checkpoint", str(concept_checkpoint), "--data-root", str(processed),
                                 "--split", "train", "--allow-random", "--clip-model", TINY_VIT, "--out-dir", str(out),
                                 "--write-predictions", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and "| **mean** |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["clip_model"] == TINY_VIT
    assert metrics["templates"] == list(SCANNET_TEMPLATES) and metrics["voxel_size"] == 0.15
    scenes = (processed / "splits" / "train.txt").read_text().split()
    assert metrics["scenes"] == scenes
    total = 0
    for scene in scenes:
        labels = np.load(processed / scene / "segment20.npy")
        lines = (out / "submission" / f"{scene}.txt").read_text().split()
        assert len(lines) == len(labels)  # one prediction per vertex
        total += int((labels >= 0).sum())
    assert metrics["num_points"] == total and metrics["num_invalid_predictions"] == 0  # every labelled vertex
    assert (out / "table.md").is_file() and (out / "confusion.png").is_file()


def test_missing_clip_weights_and_a_ppkt_checkpoint_are_clear_errors(concept_checkpoint, processed, tmp_path, capsys):
    tool = zeroshot_tool()
    missing = tmp_path / "nowhere" / "clip_vitb16_openai.pt"
    code = tool.main(["--checkpoint", str(concept_checkpoint), "--data-root", str(processed), "--split", "train",
                      "--clip-model", "ViT-B-16", "--clip-weights", str(missing)])
    err = capsys.readouterr().err
    assert code == 1 and str(missing) in err and "does not exist" in err

    ppkt_run = tmp_path / "ppkt"
    run_pretraining(load_config(PretrainConfig, None, small_run(
        processed, ppkt_run, "train.max_steps=1", "train.checkpoint_every=1", teacher=SMALL_CNN_TEACHER)))
    code = tool.main(["--checkpoint", str(ppkt_run / "checkpoints" / "last.pth"), "--data-root", str(processed),
                      "--allow-random", "--clip-model", TINY_VIT])
    err = capsys.readouterr().err
    assert code == 1 and "no concept head" in err and "loss.objective=ppkt" in err
    code = tool.main(["--checkpoint", str(tmp_path / "absent.pth"), "--data-root", str(processed)])
    assert code == 1 and "checkpoint not found" in capsys.readouterr().err


def test_help_explains_every_flag():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "zeroshot_seg.py"), "--help"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0
    for flag in ["--checkpoint", "--data-root", "--split", "--clip-model", "--clip-weights", "--pretrained",
                 "--cache-dir", "--allow-random", "--template", "--out-dir", "--write-predictions", "--device",
                 "--voxel-size", "--chunk-voxels"]:
        assert flag in proc.stdout
