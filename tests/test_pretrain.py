"""PPKT pretraining end to end on synthetic scans: the loss falls, a killed run resumes to the same
result, a 2-process gloo DDP run trains and its checkpoint loads, and the recipes resolve."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pair_checks import make_processed_scans, run_torchrun

from scene_kd.config import load_config
from scene_kd.distill.ppkt import PPKTObjective
from scene_kd.distill.pretrain import run_pretraining
from scene_kd.distill.schema import PretrainConfig
from scene_kd.engine.checkpoint import load_checkpoint
from scene_kd.engine.metrics_log import read_metrics
from scene_kd.models import build_student
from scene_kd.sparse import minkowski_available

REPO = Path(__file__).resolve().parents[1]
SMALL_TEACHER = [
    "teacher.name=import", "teacher.allow_random=true",
    "teacher.options.target=tests.fixtures.small_teacher:small_cnn",
    "teacher.options.out_channels=32", "teacher.options.stride=4",
    "teacher.options.factory_kwargs={out_channels: 32, width: 16}",
]


def small_run(root, out_dir, *extra):
    return [
        f"data.root={root}", "data.split=null", "data.voxel_size=0.1", "data.image_size=[96,72]",
        "data.batch_size=2", "data.num_workers=0", "data.min_pairs=20",
        "student.name=MinkUNet14A", "head.embed_dim=32", "loss.num_pairs=512", "loss.temperature=0.1",
        "optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.0", "schedule.warmup_steps=0",
        f"train.out_dir={out_dir}", "train.log_every=5", "train.progress=false", "train.tensorboard=false",
        *SMALL_TEACHER, *extra,
    ]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("pretrain"), num_scenes=2, num_frames=12)


def test_recipes_resolve_and_default_yaml_is_the_schema():
    # Key for key and value for value: a key missing from the file would otherwise be filled in by the schema.
    written = OmegaConf.to_container(OmegaConf.load(REPO / "configs/pretrain/default.yaml"))
    assert written == OmegaConf.to_container(load_config(PretrainConfig))
    default = load_config(PretrainConfig)
    assert load_config(PretrainConfig, REPO / "configs/pretrain/default.yaml") == default
    for recipe, teacher in [("ppkt_resnet50", "resnet50"), ("ppkt_clip_rn50", "clip"), ("ppkt_clip_vitb16", "clip")]:
        cfg = load_config(PretrainConfig, REPO / f"configs/pretrain/{recipe}.yaml")
        assert cfg.teacher.name == teacher and cfg.loss.temperature == 0.04 and cfg.data.voxel_size == 0.025


def test_a_short_pretraining_lowers_the_loss_clearly(processed, tmp_path):
    cfg = load_config(PretrainConfig, None, small_run(processed, tmp_path, "train.max_steps=120",
                                                      "train.checkpoint_every=120"))
    run_pretraining(cfg)
    losses = [m["loss_ppkt"] for m in read_metrics(tmp_path)]
    assert len(losses) == 24
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, losses  # log(512) = 6.2 at chance
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert state["student_name"] == "MinkUNet14A" and state["step"] == 120
    student = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    student.load_state_dict(state["student"], strict=True)
    assert (tmp_path / "config.yaml").is_file()
    logged = read_metrics(tmp_path)[-1]
    assert logged.get("frames_used", 0) > 0  # the data's skip/use counters reach the log


def test_killed_pretraining_resumes_to_the_same_student(processed, tmp_path, monkeypatch):
    def args(out):
        return small_run(processed, out, "train.max_steps=8", "train.checkpoint_every=4")

    run_pretraining(load_config(PretrainConfig, None, args(tmp_path / "straight")))

    # Killed during step 6: the last checkpoint is step 4's.
    calls = {"n": 0}
    forward = PPKTObjective.forward

    def dies_in_step_six(self, batch, generator=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return forward(self, batch, generator)

    monkeypatch.setattr(PPKTObjective, "forward", dies_in_step_six)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(load_config(PretrainConfig, None, args(tmp_path / "killed")))
    monkeypatch.setattr(PPKTObjective, "forward", forward)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pth")["step"] == 4

    resumed = run_pretraining(load_config(PretrainConfig, None, args(tmp_path / "killed")))
    assert resumed.step == 8
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pth")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pth")
    # Same batches, seeds and states step by step; the float32 results agree to rounding only, since BLAS
    # kernels may sum in another order when buffers land at other addresses (seen: 1e-8 after 4 steps).
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-6, msg=f"{key} differs after resuming")
    for index, entry in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][index]["exp_avg"], entry["exp_avg"], rtol=1e-4, atol=1e-6)
    assert int(b["optimizer"]["state"][0]["step"]) == int(a["optimizer"]["state"][0]["step"]) == 8
    # Step 5 was logged before the kill and again after resuming: the log keeps it once.
    assert [m["step"] for m in read_metrics(tmp_path / "killed")] == [5, 8]


def test_two_process_gloo_ddp_pretraining(processed, tmp_path):
    proc = run_torchrun(REPO / "tools/pretrain.py",
                        small_run(processed, tmp_path, "train.max_steps=4", "train.checkpoint_every=4", "train.device=cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert state["step"] == 4
    assert not any(k.startswith("module.") for k in state["model"])
    student = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    student.load_state_dict(state["student"], strict=True)
    assert len(read_metrics(tmp_path)) == 1  # one log, from the main process


@pytest.mark.skipif(not minkowski_available() and os.environ.get("SCENE_KD_REQUIRE_MINKOWSKI") != "1",
                    reason="MinkowskiEngine is not installed")
def test_pretrained_student_loads_unchanged_into_minkowski_engine(processed, tmp_path):
    cfg = load_config(PretrainConfig, None, small_run(processed, tmp_path, "train.max_steps=2",
                                                      "train.checkpoint_every=2"))
    run_pretraining(cfg)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    me_student = build_student(state["student_name"], in_channels=3, out_channels=None, backend="minkowski")
    me_student.load_state_dict(state["student"], strict=True)


def test_bad_config_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools/pretrain.py"), "optim.lr=fast"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "optim.lr" in proc.stderr


def test_cli_overrides_may_come_between_options():
    out = subprocess.run([sys.executable, str(REPO / "tools/pretrain.py"), "train.max_steps=7", "--print-config",
                          "optim.lr=0.3"], capture_output=True, text=True, check=True).stdout
    printed = OmegaConf.create(out)
    assert printed.train.max_steps == 7 and printed.optim.lr == 0.3
