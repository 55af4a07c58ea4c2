"""Step time of the training tools and of the loops outside the shared trainer on an idle CPU and
beside one other CPU-bound process, under each CPU thread policy; prints a table with each row's ratio
of loaded to idle step time.

The training tools (`tools/pretrain.py`, `tools/finetune_seg.py`, `tools/finetune_det.py`) run as the
user runs them, as subprocesses, for `--steps` steps on a small synthetic world (the demo's sizes:
MinkUNet14A at 10 cm, one scene of about 15k voxels a pretraining step); the step time is the median of
the steps' `samples_per_s` in metrics.jsonl (the first step, which builds caches, left out), turned
into seconds. The loops (`evaluate`: whole-scene segmentation evaluation as `tools/finetune_seg.py
--eval-only` runs it, a unit is one scene; `2d_teacher`: the demo's 2D-teacher training, a unit is one
step; `world_clip`: `tools/train_world_clip.py`'s training, a unit is one step) run in a worker process
that sets the tools' policy first; see `run_loop`.
Loads: `idle`; `loaded`: a `while True: pass` process started 1 s before the tool and running to its
end (one core of two busy); `loaded-later`: the same process started 1.5 s after the tool's first
step was logged (the loops: after their timed loop began), when its threads are already chosen.

Policies (each a fresh process, set through the environment the tools read at start-up, see
`scene_kd/cpu_threads.py` and docs/performance.md):
- `tools`: what the tools do by default now (SCENE_KD_CPU_THREADS unset, so `auto`: short OpenMP spin,
  and the loop's thread count follows the other processes' load, checked after its first 2 s and then
  every 2 s);
- `openmp-default`: SCENE_KD_CPU_THREADS=keep, the runtime's own defaults (one thread per core,
  OpenMP threads spin before they sleep): what the tools did before;
- `passive`: one thread per core, OMP_WAIT_POLICY=PASSIVE (threads sleep at once);
- `one-thread`: OMP_NUM_THREADS=1.

    python benchmarks/cpu_contention.py --work-dir /tmp/bench_contention
    python benchmarks/cpu_contention.py --work-dir /tmp/bench_contention --tools pretrain --policies tools openmp-default
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scene_kd.atomic import write_text_atomic
from scene_kd.cli import add_debug_flag, run_tool

REPO = Path(__file__).resolve().parents[1]
TRAINING_TOOLS = ("pretrain", "finetune_seg", "finetune_det")
LOOPS = ("evaluate", "2d_teacher", "world_clip")  # loops outside the shared trainer, run in a worker (run_loop)
TOOLS = TRAINING_TOOLS + LOOPS
LOOP_UNITS = {"evaluate": 40, "2d_teacher": 80, "world_clip": 30}  # scenes evaluated / training steps per run
STARTED = "timed loop started"  # a loop worker's line when its timed loop begins
POLICIES = {  # environment changes of each policy (None: remove the variable)
    "tools": {"SCENE_KD_CPU_THREADS": None, "OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None},
    "openmp-default": {"SCENE_KD_CPU_THREADS": "keep", "OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None},
    "passive": {"SCENE_KD_CPU_THREADS": "keep", "OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"SCENE_KD_CPU_THREADS": "keep", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None},
}
LOADS = ("idle", "loaded", "loaded-later")
LATER_S = 1.5  # "loaded-later": the busy process starts this long after the first step (threads already chosen)


def prepare(work: Path) -> tuple[Path, Path]:
    """A small synthetic world, processed, and a 2D teacher for pretraining (few steps: only speed counts)."""
    from scene_kd.demo import demo_settings
    from scene_kd.transfer.pipeline import prepare_synthetic_data, train_teacher_stage

    settings = demo_settings(num_scenes=4, num_frames=24, teacher_steps=5)
    processed = prepare_synthetic_data(work / "data", settings, progress=False)
    teacher, _ = train_teacher_stage(processed, work / "teacher", settings, progress=False)
    return processed, teacher


def tool_command(tool: str, processed: Path, teacher: Path, run_dir: Path, steps: int) -> list[str]:
    """The tool's command line: the demo's student and voxel size, `steps` steps, a metric line each step."""
    common = [f"train.max_steps={steps}", "train.log_every=1", f"train.checkpoint_every={steps}",
              "train.progress=false", "train.tensorboard=false", "train.device=cpu", f"train.out_dir={run_dir}",
              f"data.root={processed}", "data.voxel_size=0.1", "data.num_workers=0"]
    if tool == "pretrain":
        return [sys.executable, str(REPO / "tools/pretrain.py"), *common, "student.name=MinkUNet14A",
                "data.mode=scene", "data.frames_per_sample=4", "data.batch_size=1", "data.image_size=[160,120]",
                "data.min_pairs=50", "teacher.name=frame_encoder", f"teacher.weights={teacher}",
                "teacher.options.out_channels=64", "teacher.options.width=32"]
    model = ["model.student=MinkUNet14A", "data.batch_size=2"]
    if tool == "finetune_seg":
        return [sys.executable, str(REPO / "tools/finetune_seg.py"), *common, *model, "data.max_voxels=6000",
                "train.eval_every=0", "data.val_split=null"]
    return [sys.executable, str(REPO / "tools/finetune_det.py"), *common, *model, "train.eval_every=0",
            "data.val_split=null"]


def loop_command(loop: str, work: Path, processed: Path) -> list[str]:
    """A worker process that runs `loop` as the tools run it (see `run_loop`)."""
    return [sys.executable, str(Path(__file__).resolve()), "--loop-worker", loop, "--work-dir", str(work),
            "--processed", str(processed)]


def run_loop(loop: str, work: Path, processed: Path) -> list[float]:
    """In a worker process: set the tools' CPU-thread policy (before torch is imported, as every tool
    does), then time each unit of `loop` on `processed`, the world of `prepare`:
    - `evaluate`: whole-scene segmentation evaluation (`evaluate_segmentation`, as `tools/finetune_seg.py
      --eval-only` and finetuning's validation run it) of a random MinkUNet14A at 10 cm, the validation
      scenes repeated to LOOP_UNITS scenes; a unit is one scene;
    - `2d_teacher`: the demo's 2D-teacher training (`train_frame_teacher`, the demo's sizes) for
      LOOP_UNITS steps; a unit is one step;
    - `world_clip`: `tools/train_world_clip.py` run in the worker with its defaults (pairs of the train
      scenes, its tiny CLIP, 128 pairs a step) for LOOP_UNITS steps; a unit is one training step (its
      evaluation afterwards is not timed).
    The unit times are taken where the loop calls its `CpuThreadFollower.tick()` (once per unit), through
    a wrapper around the loop module's `follow_cpu_load`; the first unit is left out by the caller."""
    from scene_kd.cpu_threads import apply_cpu_thread_policy

    if not apply_cpu_thread_policy():
        raise RuntimeError("the loop worker imported torch before setting the CPU-thread policy")
    import torch

    ticks: list[float] = []
    if loop == "evaluate":
        from scene_kd.data.seg_dataset import SegmentationDataset
        from scene_kd.eval import segmentation
        from scene_kd.models import build_student
        from scene_kd.sparse import get_backend

        scenes = SegmentationDataset(processed, "val", voxel_size=0.1, augment=False, max_voxels=None)
        repeated = RepeatedScenes(scenes, LOOP_UNITS["evaluate"])
        backend = get_backend("torch")
        torch.manual_seed(0)
        model = build_student("MinkUNet14A", in_channels=3, out_channels=20, backend=backend)
        record_ticks(segmentation, ticks)
        segmentation.evaluate_segmentation(model, backend, repeated, torch.device("cpu"), chunk_voxels=400_000,
                                           chunk_margin=1.0)
    elif loop == "world_clip":
        import importlib.util
        import shutil

        from scene_kd.transfer import world_clip

        spec = importlib.util.spec_from_file_location("train_world_clip", REPO / "tools/train_world_clip.py")
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        out = work / "loop_world_clip"
        shutil.rmtree(out, ignore_errors=True)  # a finished run would only be resumed
        record_ticks(world_clip, ticks)
        tool.run(["--data", str(processed), "--out", str(out), "--steps", str(LOOP_UNITS["world_clip"]),
                  "--no-progress"])
    else:
        from scene_kd.demo import demo_settings
        from scene_kd.transfer import frame_teacher
        from scene_kd.transfer.frame_labels import load_labelled_frames

        settings = demo_settings(num_scenes=4, num_frames=24, teacher_steps=LOOP_UNITS["2d_teacher"])
        frames = load_labelled_frames(processed, "train", settings.image_size, progress=False)
        record_ticks(frame_teacher, ticks)
        frame_teacher.train_frame_teacher(frames, work / "loop_teacher.pth", out_channels=settings.teacher_channels,
                                          width=settings.teacher_width, steps=settings.teacher_steps, progress=False)
    return [b - a for a, b in zip(ticks, ticks[1:], strict=False)]


def record_ticks(module, ticks: list[float]) -> None:
    """Make `module.follow_cpu_load` return followers whose `tick()` also appends the time to `ticks`
    (the loop's start first, announced by the STARTED line)."""
    follow = module.follow_cpu_load

    def follow_and_record(device, what):
        follower = follow(device, what)
        tick = follower.tick
        follower.tick = lambda: (ticks.append(time.perf_counter()), tick())
        print(STARTED, flush=True)
        ticks.append(time.perf_counter())
        return follower

    module.follow_cpu_load = follow_and_record


class RepeatedScenes:
    """A segmentation dataset's scenes repeated to `length` items (evaluation needs only `len`,
    indexing, `root` and `voxel_size`)."""

    def __init__(self, scenes, length: int) -> None:
        self.scenes, self.length = scenes, length
        self.root, self.voxel_size = scenes.root, scenes.voxel_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.scenes[index % len(self.scenes)]


def step_seconds(run_dir: Path, batch: int) -> list[float]:
    """Seconds of each logged step after the first (metrics.jsonl's samples_per_s, one line a step)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [line["samples_per_s"] for line in lines if "samples_per_s" in line]
    return [batch / rate for rate in rates[1:]]


def policy_environment(policy: str) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in POLICIES[policy].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def wait_for_first_step(metrics: Path, tool_proc: subprocess.Popen) -> None:
    """Until the tool has logged its first step to `metrics` (or has ended)."""
    while tool_proc.poll() is None and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.05)


def measure(tool: str, policy: str, load: str, work: Path, processed: Path, teacher: Path, steps: int) -> dict:
    """One run of `tool` (a training tool or a loop) under `policy` and `load`: its unit times."""
    run_dir = work / "runs" / f"{tool}-{policy}-{load}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    loop = tool in LOOPS
    command = loop_command(tool, work, processed) if loop else tool_command(tool, processed, teacher, run_dir, steps)
    busy_command = [sys.executable, "-c", "while True: pass"]
    busy = subprocess.Popen(busy_command) if load == "loaded" else None
    try:
        if busy:
            time.sleep(1.0)
        started = time.perf_counter()
        tool_proc = subprocess.Popen(command, env=policy_environment(policy), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        head = []
        if load == "loaded-later":  # imports and set-up take seconds: count from the timed loop's start
            if loop:
                for line in tool_proc.stdout:
                    head.append(line)
                    if line.strip() == STARTED:
                        break
            else:
                wait_for_first_step(run_dir / "metrics.jsonl", tool_proc)
            time.sleep(LATER_S)
            busy = subprocess.Popen(busy_command)
        output = "".join(head) + tool_proc.communicate()[0]
        wall = time.perf_counter() - started
    finally:
        if busy:
            busy.kill()
            busy.wait()
    if tool_proc.returncode != 0:
        raise RuntimeError(f"{tool} under policy {policy} ({load}) failed:\n{output[-2000:]}")
    lines = output.splitlines()
    if loop:
        times = json.loads(lines[-1])[1:]
    else:
        times = step_seconds(run_dir, 1 if tool == "pretrain" else 2)
    threads_line = next((line for line in lines if "CPU thread(s) while they do" in line), "")
    return {"tool": tool, "policy": policy, "load": load, "step_s": statistics.median(times), "steps_s": times,
            "wall_s": wall, "threads_note": threads_line.strip()}


def threads_in_note(note: str) -> str:
    """"1 CPU thread(s)" from the follower's note ("... evaluating on 1 CPU thread(s) while they do ...")."""
    found = re.search(r" on (\d+ CPU thread\(s\)) while", note)
    return found.group(1) if found else note


def print_table(rows: list[dict]) -> None:
    """Per tool and policy: the step time of each load, and loaded / idle (this policy's idle, then the
    best idle time of any policy)."""
    print("| tool | policy | idle s | loaded s | loaded later s | loaded / idle | later / idle | "
          "loaded / best idle | later / best idle | threads lowered to |")
    print("|---" * 10 + "|")
    for tool in dict.fromkeys(r["tool"] for r in rows):
        mine = [r for r in rows if r["tool"] == tool]
        best_idle = min(r["step_s"] for r in mine if r["load"] == "idle")
        for policy in dict.fromkeys(r["policy"] for r in mine):
            by_load = {r["load"]: r for r in mine if r["policy"] == policy}
            idle, loaded, later = (by_load[load]["step_s"] for load in LOADS)
            note = "; ".join(f"{load}: {threads_in_note(by_load[load]['threads_note'])}"
                             for load in LOADS[1:] if by_load[load]["threads_note"])
            print(f"| {tool} | {policy} | {idle:.2f} | {loaded:.2f} | {later:.2f} | {loaded / idle:.2f} | "
                  f"{later / idle:.2f} | {loaded / best_idle:.2f} | {later / best_idle:.2f} | {note} |")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="where the synthetic world and the runs go (reused)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                        help="what to measure: the training tools and the loops evaluate, 2d_teacher, world_clip "
                        "(default all)")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES),
                        help="thread policies to measure (default all)")
    parser.add_argument("--steps", type=int, default=40,
                        help="steps per run of a training tool; the first is left out (default 40)")
    parser.add_argument("--json", help="also write every row (each step's time included) to this JSON file")
    parser.add_argument("--loop-worker", choices=LOOPS, help=argparse.SUPPRESS)  # internal: one loop's run
    parser.add_argument("--processed", help=argparse.SUPPRESS)  # internal: the loop worker's world
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.loop_worker:
        print(json.dumps(run_loop(args.loop_worker, Path(args.work_dir), Path(args.processed))))
        return 0
    if args.steps < 3:
        parser.error("--steps must be at least 3")
    if (os.cpu_count() or 1) < 2:
        raise ValueError("this benchmark needs at least 2 CPU cores (one is kept busy)")
    work = Path(args.work_dir)
    processed, teacher = prepare(work)
    print(f"cpus={os.cpu_count()} steps={args.steps} (median after the first) world={processed}")
    rows = []
    for tool in args.tools:
        for policy in args.policies:
            for load in LOADS:
                row = measure(tool, policy, load, work, processed, teacher, args.steps)
                rows.append(row)
                print(f"  {tool:12s} {policy:14s} {load:6s} step {row['step_s']:.2f} s  {row['threads_note']}",
                      flush=True)
    print()
    print_table(rows)
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The benchmark: its exit code, expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="cpu_contention")


if __name__ == "__main__":
    sys.exit(main())
