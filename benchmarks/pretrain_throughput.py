r"""Frames per second and peak memory of one PPKT pretraining step for each recipe, split into its parts.

    python benchmarks/pretrain_throughput.py --work-dir /tmp/bench_pretrain            # CPU, all recipes
    python benchmarks/pretrain_throughput.py --work-dir /tmp/bench_pretrain --device cuda
    python benchmarks/pretrain_throughput.py --work-dir /tmp/bench_pretrain_tiny --batch-frames 2 --steps 1 \
        --scenes 1 --frames 20 --frame-skip 2 --color-size 162x121 --depth-size 80x60 --image-size 80x60  # smoke

Data: synthetic scans (`scene_kd.synthetic.write_synthetic_scannet`, raw color 1296 x 968 JPEG and
depth 640 x 480 by default) processed by `scene_kd.scannet.preprocess.preprocess_dataset` (color stored at
`--image-size`, 320 x 240 by default; depth kept at its raw size), both kept in `--work-dir` and reused
by later runs with the same data arguments. Each recipe's `data.image_size` is set to `--image-size`,
`data.voxel_size` stays the recipe's (2.5 cm).

Teachers: no weight files exist here, so every recipe runs with `teacher.weights=null
teacher.allow_random=true` (random initialization: the same layers and cost, meaningless features).

Each recipe runs in its own process, after one warm-up iteration and then `--steps` timed ones, each on
the next `--batch-frames` frames of the dataset; within an iteration, in this order:
- data: `PretrainDataset.__getitem__` for the batch's frames + `collate_pretrain` (in this process);
- teacher: the frozen teacher's forward on the batch's images;
- student: student + both projection heads forward, InfoNCE and backward, on `loss.num_pairs` pairs;
- full step: what `run_pretraining` does per step with `data.num_workers=--num-workers` (default 0, so the
  loading is not hidden behind the model by worker processes): a DataLoader batch with
  `collate_pretrain`, the move to the device, `PPKTObjective` (built by `build_ppkt`, pair sampling
  included) under the recipe's autocast, the finiteness check, backward, the optimizer and scheduler steps.
Frames/s counts the frames a batch kept (skipped frames, if any, are reported). Times are the best of
the timed iterations (as in benchmarks/preprocess.py: on a shared machine other work only slows a run
down; every iteration's times are in the JSON). Ratio = full step / (data + teacher + student): above 1
is the overhead of the optimizer step, the device transfer and the loop itself.

Peak memory of each part: on CPU the process's peak resident memory (`resource.getrusage`) while that
part ran, its high-water mark reset before each part (`/proc/self/clear_refs`; where that is not
allowed, the peak since the process started); it includes the models and everything held at the time.
On CUDA also `torch.cuda.max_memory_allocated` per part (reset before each).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scene_kd import cli_types
from scene_kd.atomic import write_text_atomic
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.models.students import STUDENTS

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("ppkt_resnet50", "ppkt_clip_rn50", "ppkt_clip_vitb16")
STAGES = ("data", "teacher", "student", "full")
RANDOM_TEACHER_NOTE = (
    "teachers have random weights (teacher.weights=null, teacher.allow_random=true): no weight "
    "files here; speed and memory are those of the trained networks, the features are not"
)


# ------------------------------------------------------------------------------------------ data


def prepare_data(work: Path, args: argparse.Namespace) -> Path:
    """Synthetic scans under work/raw processed into work/processed; reused when the data arguments match."""
    from scene_kd.scannet.preprocess import preprocess_dataset
    from scene_kd.synthetic import write_synthetic_scannet

    recipe = {
        k: getattr(args, k)
        for k in ("scenes", "frames", "frame_skip", "color_size", "depth_size", "image_size")
    }
    recipe = json.loads(json.dumps(recipe))
    recipe_file = work / "data_recipe.json"
    processed = work / "processed"
    if recipe_file.exists() and json.loads(recipe_file.read_text()) == recipe:
        print(f"reusing the processed scans in {processed}")
        return processed
    recipe_file.unlink(missing_ok=True)
    shutil.rmtree(work / "raw", ignore_errors=True)
    shutil.rmtree(processed, ignore_errors=True)
    start = time.perf_counter()
    write_synthetic_scannet(
        work / "raw",
        num_scenes=args.scenes,
        seed=0,
        num_frames=args.frames,
        color_size=args.color_size,
        depth_size=args.depth_size,
    )
    summary = preprocess_dataset(
        work / "raw",
        processed,
        frame_skip=args.frame_skip,
        image_size=args.image_size,
        workers=1,
        progress=False,
    )
    if summary.failed:
        raise RuntimeError(f"preprocessing failed: {summary.failed[0].scene_id}: {summary.failed[0].reason}")
    recipe_file.write_text(json.dumps(recipe))
    print(
        f"wrote {args.scenes} synthetic scans x {args.frames} frames (color {args.color_size[0]}x"
        f"{args.color_size[1]}, depth {args.depth_size[0]}x{args.depth_size[1]}) and processed one frame in "
        f"{args.frame_skip} (color stored at {args.image_size[0]}x{args.image_size[1]}) in "
        f"{time.perf_counter() - start:.0f} s -> {processed}"
    )
    return processed


# --------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of one part of the work: host resident memory and, on CUDA, allocated GPU memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = True

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the resident high-water mark that getrusage reports
        except OSError:
            self.resettable = False
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float | None]:
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return {"host_mb": host, "gpu_mb": gpu}


# -------------------------------------------------------------------------------------- measure


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def measure(recipe: str, args: argparse.Namespace, root: Path) -> dict:
    """Run in a worker process: time and peak memory of each part, per iteration."""
    from torch.utils.data import DataLoader

    from scene_kd.config import load_config
    from scene_kd.data.collate import collate_pretrain, sample_pairs
    from scene_kd.distill.ppkt import PPKTObjective
    from scene_kd.distill.pretrain import build_ppkt, build_pretrain_dataset
    from scene_kd.distill.schema import PretrainConfig
    from scene_kd.engine.optim import build_optimizer, build_scheduler
    from scene_kd.engine.seeding import seed_everything
    from scene_kd.engine.trainer import autocast_dtype, resolve_device

    torch.set_num_threads(args.threads)
    width, height = args.image_size
    overrides = [
        f"data.root={root}",
        "data.split=null",
        f"data.image_size=[{width},{height}]",
        f"data.batch_size={args.batch_frames}",
        f"data.num_workers={args.num_workers}",
        f"student.name={args.student}",
        "teacher.weights=null",
        "teacher.allow_random=true",
        f"train.device={args.device}",
        f"train.max_steps={args.steps + 1}",
        *args.override,
    ]
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / f"{recipe}.yaml", overrides)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.train.seed)
    dataset = build_pretrain_dataset(cfg)
    trainable, teacher = build_ppkt(cfg, device)
    objective = PPKTObjective(trainable, teacher, num_pairs=cfg.loss.num_pairs)
    optimizer = build_optimizer(trainable.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    objective.train()
    batch_size = cfg.data.batch_size
    iterations = args.steps + 1
    order = [i % len(dataset) for i in range(iterations * batch_size)]
    # The full step reads the same frames as the data part, through the DataLoader the loop builds.
    loader = iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=order,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_pretrain,
            drop_last=True,
            pin_memory=device.type == "cuda",
        )
    )
    memory = PeakMemory(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def timed(fn, *fn_args):
        sync()
        memory.reset()
        start = time.perf_counter()
        out = fn(*fn_args)
        sync()
        return out, time.perf_counter() - start, memory.read()

    def load(indices: list[int]) -> dict:
        return collate_pretrain([dataset[i] for i in indices])

    def student_step(batch: dict, teacher_map: torch.Tensor, pairs: torch.Tensor) -> None:
        image_size = (int(batch["images"].shape[-2]), int(batch["images"].shape[-1]))
        with autocast():
            losses = trainable(batch["features"], batch["coordinates"], teacher_map, pairs, image_size)
        sum(v.float() for v in losses.values()).backward()

    def full_step() -> float:
        # The body of scene_kd.engine.trainer.train for one optimizer step (grad_accum 1, no clipping).
        optimizer.zero_grad(set_to_none=True)
        batch = to_device(next(loader), device)
        with autocast():
            losses = objective(batch)
        terms = {k: v for k, v in losses.items() if k.startswith("loss")}
        total = sum(v.float() for v in terms.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss: {terms}")
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return float(total.detach())

    base = memory.read()["host_mb"]
    params = {
        "student": sum(p.numel() for p in trainable.student.parameters()),
        "heads": sum(p.numel() for p in trainable.head2d.parameters())
        + sum(p.numel() for p in trainable.head3d.parameters()),
        "teacher": sum(p.numel() for p in teacher.parameters()),
    }
    runs = []
    for it in range(iterations):
        batch, t_data, m_data = timed(load, order[it * batch_size : (it + 1) * batch_size])
        on_device = to_device(batch, device)
        teacher_map, t_teacher, m_teacher = timed(teacher, on_device["images"])
        pairs = sample_pairs(on_device["pairs"], cfg.loss.num_pairs)
        _, t_student, m_student = timed(student_step, on_device, teacher_map, pairs)
        optimizer.zero_grad(set_to_none=True)
        del on_device, teacher_map, pairs  # freed before the full step, as the training loop would have them
        loss, t_full, m_full = timed(full_step)
        runs.append(
            {
                "frames": int(batch["images"].shape[0]),
                "voxels": int(batch["coordinates"].shape[0]),
                "pairs": int(batch["pairs"].shape[0]),
                "counts": dict(batch["counts"]),
                "loss": loss,
                "seconds": {"data": t_data, "teacher": t_teacher, "student": t_student, "full": t_full},
                "memory": {"data": m_data, "teacher": m_teacher, "student": m_student, "full": m_full},
            }
        )
        del batch
    timed_runs = runs[1:] or runs

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    seconds = {s: min(r["seconds"][s] for r in timed_runs) for s in STAGES}
    frames = median([r["frames"] for r in timed_runs])
    peak = {
        s: {k: max((r["memory"][s][k] or 0.0) for r in runs) for k in ("host_mb", "gpu_mb")} for s in STAGES
    }
    if device.type != "cuda":
        for s in STAGES:
            peak[s]["gpu_mb"] = None
    skipped = {}
    for r in timed_runs:
        for k, v in r["counts"].items():
            if k.startswith("skipped") or k.startswith("samples_dropped"):
                skipped[k] = skipped.get(k, 0) + v
    return {
        "recipe": recipe,
        "teacher": cfg.teacher.name,
        "teacher_options": dict(cfg.teacher.options),
        "student": cfg.student.name,
        "device": str(device),
        "amp": "off" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
        "image_size": list(cfg.data.image_size),
        "voxel_size": cfg.data.voxel_size,
        "num_pairs": cfg.loss.num_pairs,
        "batch_frames": batch_size,
        "frames": frames,
        "voxels": median([r["voxels"] for r in timed_runs]),
        "pairs_in_batch": median([r["pairs"] for r in timed_runs]),
        "skipped": skipped,
        "params": params,
        "host_mb_after_build": base,
        "peak_reset_per_part": memory.resettable,
        "seconds": seconds,
        "frames_per_s": {s: frames / seconds[s] for s in STAGES},
        "peak": peak,
        "ratio_full_over_parts": seconds["full"]
        / (seconds["data"] + seconds["teacher"] + seconds["student"]),
        "losses": [r["loss"] for r in runs],
        "iterations": runs,
    }


# ----------------------------------------------------------------------------------------- main


def run_worker(args: argparse.Namespace, recipe: str, root: Path) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        recipe,
        "--data-root",
        str(root),
        "--device",
        args.device,
        "--batch-frames",
        str(args.batch_frames),
        "--steps",
        str(args.steps),
        "--student",
        args.student,
        "--image-size",
        f"{args.image_size[0]}x{args.image_size[1]}",
        "--threads",
        str(args.threads),
        "--num-workers",
        str(args.num_workers),
    ]
    for item in args.override:
        cmd += ["--override", item]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  {recipe} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    gpu = any(r["device"].startswith("cuda") for r in rows)
    header = "| recipe | part | frames/s | s per batch | peak host MB |" + (" peak GPU MB |" if gpu else "")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        for s in STAGES:
            cells = [
                r["recipe"],
                "full step" if s == "full" else s,
                f"{r['frames_per_s'][s]:.2f}",
                f"{r['seconds'][s]:.3f}",
                f"{r['peak'][s]['host_mb']:.0f}",
            ]
            if gpu:
                cells.append("-" if r["peak"][s]["gpu_mb"] is None else f"{r['peak'][s]['gpu_mb']:.0f}")
            print("| " + " | ".join(cells) + " |")
    print()
    print("| recipe | teacher | frames per batch | voxels per batch | full / (data + teacher + student) |")
    print("|---|---|---|---|---|")
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["teacher_options"].items())
        print(
            f"| {r['recipe']} | {r['teacher']} ({options}) | {r['frames']} of {r['batch_frames']} | "
            f"{r['voxels']} | {r['ratio_full_over_parts']:.2f} |"
        )


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipes", nargs="+", default=list(RECIPES), help="configs/pretrain/<name>.yaml names"
    )
    parser.add_argument("--student", default="Res16UNet34C", choices=list(STUDENTS), metavar="STUDENT",
                        help="student.name (default Res16UNet34C)")
    parser.add_argument("--batch-frames", type=int, default=8, help="frames per batch (data.batch_size)")
    parser.add_argument("--steps", type=int, default=2, help="timed iterations after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--num-workers",
        type=cli_types.non_negative_int,
        default=0,
        help="DataLoader workers of the full step (default 0: loading is not overlapped)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more config overrides for every recipe (repeatable), e.g. loss.num_pairs=2048",
    )
    parser.add_argument("--scenes", type=int, default=2, help="synthetic scans")
    parser.add_argument("--frames", type=int, default=120, help="frames per synthetic scan")
    parser.add_argument("--frame-skip", type=int, default=5, help="preprocessing keeps every n-th frame")
    parser.add_argument("--color-size", type=cli_types.image_size,
                        default="1296x968", help="raw color WxH (ScanNet)")
    parser.add_argument("--depth-size", type=cli_types.image_size,
                        default="640x480", help="raw depth WxH (ScanNet)")
    parser.add_argument(
        "--image-size",
        type=cli_types.image_size,
        default="320x240",
        help="stored color WxH, and the teacher's input (data.image_size)",
    )
    parser.add_argument(
        "--work-dir",
        help="where the scans go, kept and reused by later runs with the same data "
        "arguments (default: a temporary directory, removed)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if min(args.batch_frames, args.steps, args.threads, args.scenes, args.frames, args.frame_skip) < 1:
        parser.error("--batch-frames, --steps, --threads, --scenes, --frames and --frame-skip must be >= 1")
    unknown = set(args.recipes) - set(RECIPES) - {p.stem for p in (REPO / "configs" / "pretrain").glob("*.yaml")}
    if unknown:
        parser.error(f"--recipes {sorted(unknown)}: no such configs/pretrain/<name>.yaml")

    if args.worker:
        print(json.dumps(measure(args.worker, args, Path(args.data_root))))
        return 0

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        root = prepare_data(work, args)
        print(
            f"device={args.device} threads={args.threads} student={args.student} batch={args.batch_frames} "
            f"frames, image {args.image_size[0]}x{args.image_size[1]}, steps={args.steps} timed after 1 "
            f"warm-up, DataLoader workers={args.num_workers}, torch={torch.__version__}"
        )
        print(RANDOM_TEACHER_NOTE)
        rows = []
        for recipe in args.recipes:
            row = run_worker(args, recipe, root)
            if row is None:
                continue
            rows.append(row)
            skipped = f", skipped {row['skipped']}" if row["skipped"] else ""
            print(
                f"  measured {recipe}: {row['frames']} frames, {row['voxels']} voxels, "
                f"{row['pairs_in_batch']} pairs per batch, amp {row['amp']}, full step "
                f"{row['seconds']['full']:.2f} s, loss {row['losses'][-1]:.3f}{skipped}",
                flush=True,
            )
            print_table([row])  # each recipe's rows as soon as it is measured (a long run may be cut short)
            sys.stdout.flush()
        if not rows:
            return 1
        if not all(r["peak_reset_per_part"] for r in rows):
            print(
                "note: /proc/self/clear_refs is not writable here, so each peak is the process's peak so far"
            )
        print("\nall recipes:")
        print_table(rows)
        if args.json:
            result = {
                "args": {k: v for k, v in vars(args).items() if k not in ("worker", "data_root")},
                "note": RANDOM_TEACHER_NOTE,
                "rows": rows,
            }
            write_text_atomic(args.json, json.dumps(result, indent=1))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if len(rows) == len(args.recipes) else 1


def main(argv: list[str] | None = None) -> int:
    """The benchmark: its exit code, expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="pretrain_throughput")


if __name__ == "__main__":
    sys.exit(main())
