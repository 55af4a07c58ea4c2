"""Step time of the training tools on an idle CPU and beside one other CPU-bound process, under each
CPU thread policy; prints a table with each row's ratio of loaded to idle step time.

The tools (`tools/pretrain.py`, `tools/finetune_seg.py`, `tools/finetune_det.py`) run as the user runs
them, as subprocesses, for `--steps` steps on a small synthetic world (the demo's sizes: MinkUNet14A at
10 cm, one scene of about 15k voxels a pretraining step); the step time is the median of the steps'
`samples_per_s` in metrics.jsonl (the first step, which builds caches, left out), turned into seconds.
"Loaded": a `while True: pass` process runs for the whole measurement (one core of two busy).

Policies (each a fresh process, set through the environment the tools read at start-up, see
`scene_kd/cpu_threads.py` and docs/performance.md):
- `tools`: what the tools do by default now (SCENE_KD_CPU_THREADS unset, so `auto`: short OpenMP spin,
  and the training loop's thread count follows the other processes' load, checked after its first 2 s
  and then every 10 s);
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
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scene_kd.atomic import write_text_atomic
from scene_kd.cli import add_debug_flag, run_tool

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("pretrain", "finetune_seg", "finetune_det")
POLICIES = {  # environment changes of each policy (None: remove the variable)
    "tools": {"SCENE_KD_CPU_THREADS": None, "OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None},
    "openmp-default": {"SCENE_KD_CPU_THREADS": "keep", "OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None},
    "passive": {"SCENE_KD_CPU_THREADS": "keep", "OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"SCENE_KD_CPU_THREADS": "keep", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None},
}
LOADS = ("idle", "loaded", "loaded-later")
LATER_S = 1.5  # "loaded-later": the busy process starts this long after the tool (its threads already chosen)


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


def measure(tool: str, policy: str, load: str, work: Path, processed: Path, teacher: Path, steps: int) -> dict:
    run_dir = work / "runs" / f"{tool}-{policy}-{load}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    busy_command = [sys.executable, "-c", "while True: pass"]
    busy = subprocess.Popen(busy_command) if load == "loaded" else None
    try:
        if busy:
            time.sleep(1.0)
        started = time.perf_counter()
        tool_proc = subprocess.Popen(tool_command(tool, processed, teacher, run_dir, steps),
                                     env=policy_environment(policy), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        if load == "loaded-later":
            time.sleep(LATER_S)
            busy = subprocess.Popen(busy_command)
        stdout, stderr = tool_proc.communicate()
        proc = subprocess.CompletedProcess(tool_proc.args, tool_proc.returncode, stdout, stderr)
        wall = time.perf_counter() - started
    finally:
        if busy:
            busy.kill()
            busy.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} under policy {policy} ({load}) failed:\n{proc.stderr[-2000:]}")
    times = step_seconds(run_dir, 1 if tool == "pretrain" else 2)
    output = (proc.stdout + proc.stderr).splitlines()
    threads_line = next((line for line in output if "CPU thread(s) while they do" in line), "")
    return {"tool": tool, "policy": policy, "load": load, "step_s": statistics.median(times), "steps_s": times,
            "wall_s": wall, "threads_note": threads_line.strip()}


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
            note = "; ".join(f"{load}: {by_load[load]['threads_note'].split('training on ')[-1].split(' while')[0]}"
                             for load in LOADS[1:] if by_load[load]["threads_note"])
            print(f"| {tool} | {policy} | {idle:.2f} | {loaded:.2f} | {later:.2f} | {loaded / idle:.2f} | "
                  f"{later / idle:.2f} | {loaded / best_idle:.2f} | {later / best_idle:.2f} | {note} |")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, help="where the synthetic world and the runs go (reused)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="tools to measure (default all)")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES),
                        help="thread policies to measure (default all)")
    parser.add_argument("--steps", type=int, default=25, help="steps per run; the first is left out (default 25)")
    parser.add_argument("--json", help="also write every row (each step's time included) to this JSON file")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
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
