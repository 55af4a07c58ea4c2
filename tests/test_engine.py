"""The shared training loop, schedules, checkpoints and configs, on a toy regression model."""

import math
import os
import socket
from dataclasses import dataclass, field

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from scene_kd.config import ConfigError, load_config, save_config
from scene_kd.distill.infonce import pixel_point_infonce
from scene_kd.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from scene_kd.engine.launch import train
from scene_kd.engine.metrics_log import read_metrics
from scene_kd.engine.optim import build_optimizer, build_scheduler, lr_factor
from scene_kd.engine.schema import OptimConfig, ScheduleConfig, TrainConfig


class ToyData(torch.utils.data.Dataset):
    """y = x @ w_true + noise, 64 samples of 4 features."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.01 * torch.randn(64, generator=g)

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def collate(samples):
    return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples])}


class ToyObjective(nn.Module):
    def __init__(self, net, poison_at=None):
        super().__init__()
        self.net, self.calls, self.poison_at = net, 0, poison_at

    def forward(self, batch):
        self.calls += 1
        pred = self.net(batch["x"]).squeeze(1)
        loss = (pred - batch["y"]).square().mean()
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * float("nan")
        return {"loss_mse": loss, "loss_reg": 1e-3 * sum(p.square().sum() for p in self.net.parameters())}


def run(tmp_path, max_steps, net=None, resume=True, poison_at=None, grad_accum=1, device=None):
    torch.manual_seed(0)
    net = net if net is not None else nn.Linear(4, 1)
    cfg = TrainConfig(max_steps=max_steps, log_every=2, checkpoint_every=3, out_dir=str(tmp_path), resume=resume,
                      progress=False, tensorboard=False, grad_accum=grad_accum, grad_clip=10.0)
    optimizer = build_optimizer(net.parameters(), OptimConfig(name="sgd", lr=0.05, momentum=0.5))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="cosine", warmup_steps=2), max_steps=40)
    result = train(model=ToyObjective(net, poison_at), trainable=net, dataset=ToyData(), collate_fn=collate,
                   batch_size=8, num_workers=0, optimizer=optimizer, scheduler=scheduler, cfg=cfg,
                   run_dir=tmp_path, samples_in=lambda b: b["x"].shape[0])
    return net, optimizer, result


def test_schedules_by_hand():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, warmup_start_factor=0.0)
    assert lr_factor(0, 110, cfg) == 0.0
    assert lr_factor(5, 110, cfg) == pytest.approx(0.5)
    assert lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.5)  # half way through the cosine
    assert lr_factor(110, 110, cfg) == pytest.approx(0.0)
    poly = ScheduleConfig(name="poly", poly_power=2.0)
    assert lr_factor(50, 100, poly) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule.name"):
        lr_factor(0, 10, ScheduleConfig(name="step"))
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer([nn.Parameter(torch.zeros(1))], OptimConfig(name="lion"))


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "step_00000006.pth", "step_00000009.pth"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 9
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_checkpoint(tmp_path / "broken.pth")


def test_loop_trains_logs_and_checkpoints(tmp_path):
    net, _, result = run(tmp_path, max_steps=12)
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [2, 4, 6, 8, 10, 12]
    assert metrics[-1]["loss_mse"] < 0.1 * metrics[0]["loss_mse"]
    assert metrics[0]["samples_per_s"] > 0 and "lr" in metrics[0]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert state["step"] == 12 and set(state) >= {"model", "optimizer", "scheduler", "scaler"}


def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    straight, straight_opt, _ = run(tmp_path / "a", max_steps=12)
    run(tmp_path / "b", max_steps=7)  # "killed" after step 7 (last checkpoint at step 6)
    (tmp_path / "b" / "checkpoints" / "last.pth").unlink()
    os.replace(tmp_path / "b" / "checkpoints" / "step_00000006.pth", tmp_path / "b" / "checkpoints" / "last.pth")
    resumed, resumed_opt, result = run(tmp_path / "b", max_steps=12)
    assert result.step == 12
    torch.testing.assert_close(resumed.weight, straight.weight, rtol=0, atol=0)
    torch.testing.assert_close(resumed.bias, straight.bias, rtol=0, atol=0)
    a, b = straight_opt.state_dict(), resumed_opt.state_dict()
    for key in a["state"]:
        torch.testing.assert_close(a["state"][key]["momentum_buffer"], b["state"][key]["momentum_buffer"], rtol=0, atol=0)
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == [2, 4, 6, 8, 10, 12]


def test_starting_over_in_a_used_directory_is_refused(tmp_path):
    run(tmp_path, max_steps=3)
    with pytest.raises(FileExistsError, match="train.resume"):
        run(tmp_path, max_steps=3, resume=False)


def test_gradient_accumulation_runs_and_counts_samples(tmp_path):
    _, _, result = run(tmp_path, max_steps=4, grad_accum=2)
    assert result.step == 4
    assert read_metrics(tmp_path)[-1]["samples_per_s"] > 0


def test_fewer_samples_than_one_batch_is_an_error_not_a_hang(tmp_path):
    net = nn.Linear(4, 1)
    cfg = TrainConfig(max_steps=2, out_dir=str(tmp_path), progress=False, tensorboard=False)
    optimizer = build_optimizer(net.parameters(), OptimConfig(name="sgd", lr=0.05))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="constant"), max_steps=2)
    tiny = torch.utils.data.Subset(ToyData(), range(3))
    with pytest.raises(ValueError, match="3 per process, fewer than the batch size 8"):
        train(model=ToyObjective(net), trainable=net, dataset=tiny, collate_fn=collate, batch_size=8, num_workers=0,
              optimizer=optimizer, scheduler=scheduler, cfg=cfg, run_dir=tmp_path, samples_in=lambda b: 8)


def test_non_finite_loss_stops_naming_the_terms(tmp_path):
    with pytest.raises(FloatingPointError, match="loss_mse=nan"):
        run(tmp_path, max_steps=10, poison_at=3)


def test_infonce_by_hand():
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pixels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = math.log(1 + math.exp(-1 / t))  # positive logit 1/t, negative 0
    assert pixel_point_infonce(points, pixels, t).item() == pytest.approx(expected)
    swapped = pixel_point_infonce(points, pixels.flip(0), t).item()
    assert swapped == pytest.approx(math.log(1 + math.exp(1 / t)))


@dataclass
class Inner:
    width: int = 4
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    lr: float = 0.1
    inner: Inner = field(default_factory=Inner)


def test_config_recipes_overrides_and_errors(tmp_path):
    (tmp_path / "default.yaml").write_text("lr: 0.2\ninner:\n  width: 8\n")
    (tmp_path / "recipe.yaml").write_text("_base_: default.yaml\ninner:\n  names: [x, y]\n")
    cfg = load_config(Outer, tmp_path / "recipe.yaml", ["lr=0.5"])
    assert cfg.lr == 0.5 and cfg.inner.width == 8 and list(cfg.inner.names) == ["x", "y"]
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Outer, tmp_path / "run" / "config.yaml") == cfg
    (tmp_path / "typo.yaml").write_text("inner:\n  widht: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*widht"):
        load_config(Outer, tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="inner.width"):
        load_config(Outer, None, ["inner.width=wide"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def _ddp_worker(rank, world_size, port, run_dir, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    from scene_kd.engine.distributed import cleanup_distributed, init_distributed

    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    ddp = nn.parallel.DistributedDataParallel(net)
    cfg = TrainConfig(max_steps=6, log_every=3, checkpoint_every=6, out_dir=run_dir, progress=False, tensorboard=False)
    optimizer = build_optimizer(ddp.parameters(), OptimConfig(lr=0.05))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="constant"), 6)
    train(model=ToyObjective(ddp), trainable=ddp, dataset=ToyData(), collate_fn=collate, batch_size=8,
          num_workers=0, optimizer=optimizer, scheduler=scheduler, cfg=cfg, run_dir=run_dir)
    queue.put((rank, net.weight.detach().tolist()))  # a list: a shared tensor dies with its process
    cleanup_distributed()


def test_two_process_gloo_ddp_keeps_replicas_equal_and_checkpoints(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0], "a DDP worker failed (its traceback is above)"
    results = dict(queue.get(timeout=10) for _ in procs)
    assert results[0] == results[1]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    net = nn.Linear(4, 1)
    net.load_state_dict(state["model"])  # saved unwrapped: no "module." prefix
    assert net.weight.tolist() == results[0]
