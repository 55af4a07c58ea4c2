"""The launcher, the loop's explicit generators, the tools' one-line errors and the optional imports."""

import builtins
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from scene_kd.cli import run_tool
from scene_kd.deps import import_open3d
from scene_kd.engine.checkpoint import save_checkpoint
from scene_kd.engine.launch import Task, launch, train
from scene_kd.engine.metrics_log import MetricsLog, read_metrics
from scene_kd.engine.schema import OptimConfig, ScheduleConfig, TrainConfig
from scene_kd.engine.seeding import step_generator

ROOT = Path(__file__).resolve().parents[1]


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return torch.tensor([float(i), 1.0])


class DrawingObjective(nn.Module):
    """Records, per call, the first number it draws from the generator the loop passes."""

    def __init__(self, net):
        super().__init__()
        self.net, self.draws = net, []

    def forward(self, batch, generator=None):
        noise = torch.rand(1, generator=generator)
        self.draws.append(float(noise))
        return {"loss_fit": (self.net(batch).squeeze(1) - noise).square().mean()}


def run_toy(run_dir, max_steps, resume=True):
    torch.manual_seed(0)
    net = nn.Linear(2, 1)
    objective = DrawingObjective(net)
    cfg = TrainConfig(max_steps=max_steps, log_every=2, checkpoint_every=3, out_dir=str(run_dir), resume=resume,
                      progress=False, tensorboard=False, seed=5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train(model=objective, trainable=net, dataset=Points(), collate_fn=torch.stack, batch_size=4, num_workers=0,
          optimizer=optimizer, scheduler=scheduler, cfg=cfg, run_dir=run_dir)
    return objective.draws


def test_step_generator_depends_on_its_arguments_alone():
    a = torch.rand(4, generator=step_generator(3, 10, 1, 0))
    torch.manual_seed(123)  # global state does not matter
    assert torch.equal(a, torch.rand(4, generator=step_generator(3, 10, 1, 0)))
    for other in (step_generator(3, 11, 1, 0), step_generator(3, 10, 0, 0), step_generator(3, 10, 1, 1),
                  step_generator(4, 10, 1, 0)):
        assert not torch.equal(a, torch.rand(4, generator=other))


def test_objective_draws_repeat_after_resume_and_global_state_is_untouched(tmp_path):
    straight = run_toy(tmp_path / "a", max_steps=8)
    assert straight == [float(torch.rand(1, generator=step_generator(5, s, 0, 0))) for s in range(8)]
    run_toy(tmp_path / "b", max_steps=7)  # "killed" after step 7, last checkpoint at step 6
    (tmp_path / "b" / "checkpoints" / "last.pth").unlink()
    (tmp_path / "b" / "checkpoints" / "step_00000006.pth").rename(tmp_path / "b" / "checkpoints" / "last.pth")
    np.random.seed(999)
    numpy_state = np.random.get_state()[1].copy()
    resumed = run_toy(tmp_path / "b", max_steps=8)
    assert resumed == straight[6:]
    # run_toy seeds torch's global generator once (weight init); the loop draws nothing from it or NumPy's
    torch_state_after_run = torch.get_rng_state()
    assert torch.equal(torch_state_after_run, _state_after_init())
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def _state_after_init():
    torch.manual_seed(0)
    nn.Linear(2, 1)
    return torch.get_rng_state()


@dataclass
class ToyData:
    batch_size: int = 4
    num_workers: int = 0


@dataclass
class ToyConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: ToyData = field(default_factory=ToyData)


def toy_task(finished):
    def build(cfg, device):
        net = nn.Linear(2, 1).to(device)
        return Task(trainable=net, objective=DrawingObjective, dataset=Points(), collate_fn=torch.stack,
                    description="toy", checkpoint_extra=lambda: {"toy": True}, finish=finished.append)
    return build


def toy_config(run_dir, **train):
    return OmegaConf.structured(ToyConfig(train=TrainConfig(out_dir=str(run_dir), max_steps=3, checkpoint_every=3,
                                                            progress=False, tensorboard=False, **train)))


def test_launch_trains_saves_the_config_and_finishes(tmp_path):
    finished = []
    result = launch(toy_config(tmp_path), toy_task(finished))
    assert result.step == 3 and finished == [result]
    assert OmegaConf.load(tmp_path / "config.yaml").train.max_steps == 3
    assert torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)["toy"] is True


def test_a_refused_launch_changes_nothing_in_the_run_directory(tmp_path):
    save_checkpoint(tmp_path / "checkpoints", 3, {"step": 3})
    (tmp_path / "config.yaml").write_text("the earlier run's config\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    finished = []
    with pytest.raises(FileExistsError, match="train.resume"):
        launch(toy_config(tmp_path, resume=False), toy_task(finished))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert finished == []


def test_tensorboard_scalars_are_written_by_default(tmp_path):
    assert TrainConfig().tensorboard is True
    log = MetricsLog(tmp_path)
    log.log(1, {"loss_x": 0.5})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert read_metrics(tmp_path) == [{"step": 1, "loss_x": 0.5}]


def failing_main(error):
    def main(argv):
        raise error
    return main


def test_run_tool_prints_one_line_and_exits_1(capsys):
    assert run_tool(failing_main(ValueError("data.voxel_size must be > 0, got -0.02")), [], name="tool") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: error: data.voxel_size must be > 0, got -0.02")
    assert run_tool(failing_main(KeyError("train.best_metric 'x' is not among the metrics")), [], name="tool") == 1
    assert capsys.readouterr().err.startswith("tool: error: train.best_metric 'x' is not among the metrics")
    with pytest.raises(ValueError):
        run_tool(failing_main(ValueError("shown with its traceback")), ["--debug"])
    with pytest.raises(ZeroDivisionError):  # a bug is not an expected error: its traceback stays
        run_tool(failing_main(ZeroDivisionError()), [])


def test_missing_open3d_system_library_is_named_with_its_apt_line(monkeypatch):
    real_import = builtins.__import__

    def no_libusb(name, *args, **kwargs):
        if name == "open3d":
            raise ImportError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "open3d", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_libusb)
    with pytest.raises(ImportError) as info:
        import_open3d()
    assert str(info.value) == ("open3d needs the system library libusb-1.0.so.0, which is not installed "
                               "(Debian/Ubuntu: apt-get install libusb-1.0-0)")


def test_tools_answer_a_bad_config_key_in_one_line_with_usage_code(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrain.py"), "train.no_such_key=1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "train.no_such_key" in done.stderr and "Traceback" not in done.stderr


def test_resume_refuses_a_change_that_would_not_apply_and_accepts_a_longer_run(tmp_path, capsys):
    launch(toy_config(tmp_path), toy_task([]))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = OmegaConf.merge(toy_config(tmp_path), {"optim": {"lr": 0.05}, "data": {"batch_size": 8}})
    with pytest.raises(ValueError, match=r"data.batch_size 4 -> 8, optim.lr 0.1 -> 0.05"):
        launch(changed, toy_task([]))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    longer = OmegaConf.merge(toy_config(tmp_path), {"train": {"max_steps": 6}})
    assert launch(longer, toy_task([])).step == 6
    assert "train.max_steps 3 -> 6" in capsys.readouterr().out
    assert OmegaConf.load(tmp_path / "config.yaml").train.max_steps == 6


def test_out_of_range_config_values_name_their_keys():
    from scene_kd.config import ConfigError, load_config
    from scene_kd.distill.schema import PretrainConfig

    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, overrides=["train.max_steps=0", "train.grad_accum=0", "data.voxel_size=-0.02",
                                               "loss.temperature=0", "train.log_every=0"])
    assert str(info.value) == ("train.max_steps must be >= 1, got 0; train.grad_accum must be >= 1, got 0; "
                               "train.log_every must be >= 1, got 0; data.voxel_size must be > 0, got -0.02; "
                               "loss.temperature must be > 0, got 0.0")


def test_best_metric_absent_from_the_evaluation_names_the_key(tmp_path):
    def build(cfg, device):
        return Task(trainable=nn.Linear(2, 1), objective=DrawingObjective, dataset=Points(), collate_fn=torch.stack,
                    description="toy", evaluate=lambda step: {"val_miou": 0.5})
    with pytest.raises(ValueError, match=r"train.best_metric 'val_mIoU' is not among the evaluation metrics "
                                         r"\['val_miou'\]"):
        launch(toy_config(tmp_path, eval_every=1, best_metric="val_mIoU"), build)


def test_best_metric_without_evaluation_is_announced(tmp_path, capsys):
    launch(toy_config(tmp_path, eval_every=0, best_metric="val_miou"), toy_task([]))
    assert "train.best_metric 'val_miou' keeps no checkpoints/best.pth" in capsys.readouterr().out
    assert not (tmp_path / "checkpoints" / "best.pth").exists()
