"""The CPU thread policy of the tools (scene_kd/cpu_threads.py): its readings of /proc/stat and of the
CPU topology on hand-made files, its choices, and that the tools apply it before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from scene_kd.cpu_threads import (
    POLICY_VARIABLE,
    CpuThreadFollower,
    OtherProcessesLoad,
    adjusts_threads,
    apply_cpu_thread_policy,
    auto_threads,
    cpu_thread_environment,
    read_cpu_times,
    read_own_cpu_ticks,
)
from scene_kd.engine.hooks import CpuThreadsHook

REPO = Path(__file__).resolve().parents[1]


def test_read_cpu_times_of_a_stat_file(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 5 30 800 20 3 2 0 7 0\ncpu0 50 2 15 400 10 1 1 0 3 0\n")
    busy, total = read_cpu_times(stat)
    assert total == 100 + 5 + 30 + 800 + 20 + 3 + 2 + 0
    assert busy == total - 800 - 20
    assert read_cpu_times(tmp_path / "missing") is None


def test_read_own_cpu_ticks_of_a_stat_file(tmp_path):
    stat = tmp_path / "stat"
    # pid (comm with ") " inside) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat.write_text("1234 (python (x) y) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 30 0 0 20 0 3 0\n")
    assert read_own_cpu_ticks(stat) == 280
    assert read_own_cpu_ticks(tmp_path / "missing") is None


def test_other_processes_load_leaves_out_this_process():
    readings = iter([(1000, 10000), (1700, 10400), (1900, 10800)])
    own = iter([500, 700, 900])
    load = OtherProcessesLoad(read_all=lambda: next(readings), read_own=lambda: next(own), cpu_count=2)
    # 700 busy jiffies of 400 (all CPUs), 200 of them this process's: others 500 / 400 x 2 CPUs
    assert load.sample() == pytest.approx(2.5)
    assert load.sample() == pytest.approx(0.0)  # 200 busy, all of them ours
    unknown = OtherProcessesLoad(read_all=lambda: None, read_own=lambda: 5, cpu_count=2)
    assert unknown.sample() is None


@pytest.mark.parametrize("cores, busy, logical, threads", [
    (2, 0.1, 2, 2), (2, 0.5, 2, 1), (2, 1.0, 2, 1), (2, 2.0, 2, 1), (2, None, 2, 2), (16, 4.0, 32, 14),
    (8, 0.3, 8, 8), (8, 0.5, 8, 7)])
def test_auto_threads_leave_the_busy_cores(cores, busy, logical, threads):
    assert auto_threads(cores, busy, logical) == threads


def test_environment_of_each_policy():
    assert cpu_thread_environment({}) == {POLICY_VARIABLE: "auto", "GOMP_SPINCOUNT": "10000"}
    assert cpu_thread_environment({POLICY_VARIABLE: "3"}) == {
        POLICY_VARIABLE: "3", "GOMP_SPINCOUNT": "10000", "OMP_NUM_THREADS": "3"}
    assert cpu_thread_environment({POLICY_VARIABLE: "keep"}) == {}
    # what the user set stays
    assert cpu_thread_environment({"OMP_WAIT_POLICY": "PASSIVE"}) == {POLICY_VARIABLE: "auto"}
    assert cpu_thread_environment({"GOMP_SPINCOUNT": "1"}) == {POLICY_VARIABLE: "auto"}
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=rf"^{POLICY_VARIABLE}='{bad}': expected auto, keep or a number"):
            cpu_thread_environment({POLICY_VARIABLE: bad})
    assert adjusts_threads({POLICY_VARIABLE: "auto"})
    assert not adjusts_threads({})  # library use: nothing adjusted unless asked
    assert not adjusts_threads({POLICY_VARIABLE: "auto", "OMP_NUM_THREADS": "2"})
    assert not adjusts_threads({POLICY_VARIABLE: "2"})


def test_not_applied_once_torch_is_imported():
    import torch  # noqa: F401

    environ = {}
    assert apply_cpu_thread_policy(environ) is False and environ == {}


class FakeLoad:
    def __init__(self, samples):
        self.samples = iter(samples)

    def sample(self):
        return next(self.samples)


def test_the_hook_follows_the_load_and_restores_the_thread_count():
    import torch

    original = torch.get_num_threads()
    torch.set_num_threads(2)
    now = [0.0]
    samples = iter([1.0, 1.0, 0.0])  # busy other CPUs at each check
    hook = CpuThreadsHook(first_s=2.0, every_s=10.0, load_factory=lambda: FakeLoad(samples), clock=lambda: now[0],
                          cpu_count=2)
    trainer = type("FakeTrainer", (), {"device": torch.device("cpu")})()
    seen = []
    try:
        hook.before_train(trainer)
        for t in (1.0, 2.5, 5.0, 12.6, 22.7):  # checks at 2.5 (first window), 12.6 and 22.7
            now[0] = t
            hook.after_step(trainer)
            seen.append(torch.get_num_threads())
        assert seen == [2, 1, 1, 1, 2]
        now[0] = 23.0
        hook.after_step(trainer)
        torch.set_num_threads(1)
        hook.after_train(trainer)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(original)


@pytest.fixture
def one_of_two_cpus_busy(monkeypatch):
    """The tools' policy in the environment, and every follower measuring one of two logical CPUs busy
    with another process at each check, from the first step on. Restores torch's thread count."""
    import torch

    from scene_kd import cpu_threads

    original = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(POLICY_VARIABLE, "auto")
    loads = iter([1.0] * 1000)
    monkeypatch.setattr(cpu_threads, "CpuThreadFollower", partial(
        CpuThreadFollower, first_s=0.0, every_s=0.0, load_factory=lambda: FakeLoad(loads), cpu_count=2))
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(original)


def test_the_follower_is_off_without_the_policy(monkeypatch):
    """Library loops change nothing unless the tools' policy SCENE_KD_CPU_THREADS=auto is in the environment."""
    from scene_kd.cpu_threads import follow_cpu_load

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(POLICY_VARIABLE, raising=False)
    assert not CpuThreadFollower().enabled and not follow_cpu_load("cpu", "x").enabled
    monkeypatch.setenv(POLICY_VARIABLE, "auto")
    assert CpuThreadFollower().enabled and follow_cpu_load("cpu", "x").enabled
    assert not follow_cpu_load("cuda", "x").enabled  # the GPU's loop leaves the CPU threads alone


def test_the_demos_2d_teacher_follows_the_load(one_of_two_cpus_busy, monkeypatch, capsys, tmp_path):
    import torch

    from scene_kd.transfer import frame_teacher

    during = []
    segment = frame_teacher.segment_frames
    monkeypatch.setattr(frame_teacher, "segment_frames",
                        lambda *a: during.append(torch.get_num_threads()) or segment(*a))
    frames = {"images": np.zeros((4, 16, 16, 3), np.uint8), "labels": np.zeros((4, 16, 16), np.int64)}
    frame_teacher.train_frame_teacher(frames, tmp_path / "teacher.pth", steps=4, batch_size=2, out_channels=4,
                                      width=4, progress=False)
    assert during == [2, 1, 1, 1]  # the first step before any measurement, then one thread
    assert torch.get_num_threads() == 2  # restored
    assert "other processes keep 1 of 2 cores busy: training the 2D teacher on 1 CPU thread(s)" in capsys.readouterr().out


def test_the_world_clip_training_follows_the_load(one_of_two_cpus_busy, monkeypatch, capsys, tmp_path):
    import torch

    from scene_kd.transfer import world_clip

    during = []
    step = world_clip.clip_step
    monkeypatch.setattr(world_clip, "clip_step", lambda *a: during.append(torch.get_num_threads()) or step(*a))
    config = world_clip.tiny_clip_config(image_size=16, patch_size=8, width=16, layers=1, head_width=8,
                                         embed_dim=8, text_width=16, text_heads=2, text_layers=1, context_length=8)
    pairs = {"images": np.zeros((4, 16, 16, 3), np.uint8), "texts": ["a chair", "a table", "a wall", "a door"]}
    world_clip.train_world_clip(pairs, tmp_path / "clip", model_config=config, steps=4, batch_size=2, progress=False)
    assert during == [2, 1, 1, 1] and torch.get_num_threads() == 2
    assert "training the world CLIP on 1 CPU thread(s)" in capsys.readouterr().out


def test_evaluation_follows_the_load(one_of_two_cpus_busy, monkeypatch):
    import torch

    from scene_kd.eval import segmentation

    during = []
    monkeypatch.setattr(segmentation, "_evaluate_scene", lambda *args: during.append(torch.get_num_threads()))
    scenes = type("Scenes", (list,), {"voxel_size": 0.05})([{}] * 4)
    segmentation.evaluate_segmentation(torch.nn.Identity(), None, scenes, torch.device("cpu"), 1000, 0.1)
    assert during == [2, 1, 1, 1] and torch.get_num_threads() == 2


def test_detection_prediction_follows_the_load(one_of_two_cpus_busy, monkeypatch):
    import torch

    from scene_kd.eval import detection_split

    during = []

    def no_boxes(*args, **kwargs):
        during.append(torch.get_num_threads())
        return torch.zeros(0, 6), torch.zeros(0), torch.zeros(0, dtype=torch.long)

    monkeypatch.setattr(detection_split, "predict_boxes", no_boxes)
    monkeypatch.setattr(detection_split, "collate_detection", lambda items: {
        "features": torch.zeros(1, 3), "coordinates": torch.zeros(1, 4, dtype=torch.int32),
        "scene_ids": [items[0]], "to_aligned": torch.eye(4)[None]})
    backend = type("Backend", (), {"sparse_tensor": staticmethod(lambda feats, coords: feats)})()
    scenes = type("Scenes", (list,), {"voxel_size": 0.05})([f"scene{i:04d}_00" for i in range(4)])
    eval_cfg = type("EvalConfig", (), {"score_threshold": 0.0, "nms_iou": 0.25, "nms_pre": 10, "max_boxes": 10})()
    predictions = detection_split.predict_dataset(torch.nn.Identity(), backend, scenes, torch.device("cpu"), eval_cfg)
    assert during == [2, 1, 1, 1] and torch.get_num_threads() == 2
    assert sorted(predictions) == list(scenes)


TOOL_CHECK = """
import os, runpy, sys
tool = runpy.run_path(sys.argv[1], run_name="tool")
assert "torch" not in sys.modules, "the tool imports torch before its main"
try:
    tool["main"](sys.argv[2:])
except SystemExit:
    pass
import torch
print(torch.get_num_threads(), os.environ.get("GOMP_SPINCOUNT"), os.environ.get("SCENE_KD_CPU_THREADS"))
"""


@pytest.mark.parametrize("tool, args", [("pretrain", ["--print-config"]), ("finetune_seg", ["--print-config"]),
                                        ("finetune_det", ["--print-config"]), ("demo", ["--help"]),
                                        ("train_world_clip", ["--help"]), ("zeroshot_seg", ["--help"])])
def test_tools_apply_the_policy_before_torch(tool, args):
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", POLICY_VARIABLE):
        env.pop(key, None)
    command = [sys.executable, "-c", TOOL_CHECK, str(REPO / "tools" / f"{tool}.py"), *args]
    proc = subprocess.run(command, capture_output=True, text=True, env={**env, POLICY_VARIABLE: "1"}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 10000 1"
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].split()[1:] == ["10000", "auto"]


def test_world_clip_tool_takes_the_policys_threads_unless_told(tmp_path):
    """tools/train_world_clip.py keeps the thread count the tools' policy gives torch (one per core
    under `auto`, as a bare torch process has, following the load) unless --threads fixes one (as
    SCENE_KD_CPU_THREADS=N, so the loop's follower is off); the run stops at the missing data, after
    the count is set."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", POLICY_VARIABLE)}
    bare = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                          text=True, env=env, check=True).stdout.strip()
    tool = str(REPO / "tools/train_world_clip.py")
    common = ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "clip")]
    for extra, expected in (([], [bare, "10000", "auto"]), (["--threads", "1"], ["1", "10000", "1"])):
        proc = subprocess.run([sys.executable, "-c", TOOL_CHECK, tool, *common, *extra], capture_output=True,
                              text=True, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert "missing/splits/train.txt" in proc.stderr
        assert proc.stdout.splitlines()[-1].split() == expected


def test_a_bad_policy_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, POLICY_VARIABLE: "many"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, str(REPO / "tools/pretrain.py"), f"train.out_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"pretrain: error: {POLICY_VARIABLE}='many': expected auto, keep or a number of threads >= 1 "
        "(--debug shows the traceback)"]
    assert not (tmp_path / "run").exists()
