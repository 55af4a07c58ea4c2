"""Throughput of tools/preprocess_scannet.py against the bare decode limit, at ScanNet resolutions.

    python benchmarks/preprocess.py                      # ~2 minutes on 2 cores
    python benchmarks/preprocess.py --scenes 8 --frames 1500 --workers 1 2 4

Scans: one template scan comes from `scene_kd.synthetic` (ray-cast rooms, needs open3d)
or, with `--template simple` or where that is unavailable, from a procedural image generator. Each
benchmark scan copies the template's mesh and annotations and writes a `.sens` of `--frames`
frames that cycle through the template's encoded JPEG / zlib payloads (so making long scans costs
no encoding). Every timed run reads files the previous steps just wrote, i.e. from the page cache:
these are CPU figures, not disk figures.

Measured for each worker count, on the same kept frames (every `--frame-skip`-th with a valid
pose):
- pipeline: `preprocess_dataset` end to end (mesh, labels, normals, frames, manifest);
- decode limit: JPEG decode at full size + zlib inflate of the depth, nothing else, in the same
  number of processes (payloads read into memory before the clock starts);
- reduced decode: the same with the JPEG decoded at reduced DCT scale, as the pipeline does.
Ratio = pipeline frames/s / decode-limit frames/s; the target is >= 0.8. Rates are the best of
`--repeats` runs; ratios the median over repeats of (pipeline run / decode run just before it). On a machine shared with other work the wall-time ratio is noisy; the
ratio by CPU time (CPU seconds of the pipeline, its worker processes included, against those of
the decoding) is not, and says the same where the machine is idle.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from scene_kd import cli_types
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.scannet.annotations import SegGroup, write_aggregation_json, write_scene_txt, write_segs_json
from scene_kd.scannet.frame_types import RGBDFrame
from scene_kd.scannet.labels import LabelRow, write_label_tsv
from scene_kd.scannet.layout import LABEL_TSV_NAME, scene_paths
from scene_kd.scannet.mesh import Mesh, write_labels_ply, write_mesh_ply
from scene_kd.scannet.preprocess import preprocess_dataset
from scene_kd.scannet.sens import SensReader, SensWriter, write_sens

COLOR_K = np.array([[1170.187988, 0, 647.75, 0], [0, 1170.187988, 483.75, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
DEPTH_K = np.array([[577.870605, 0, 319.5, 0], [0, 577.870605, 239.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


# ------------------------------------------------------------------------------------- scan making


def make_simple_template(root: Path, args: argparse.Namespace) -> Path:
    """A procedural scan: a grid mesh with labels and instances, and frames whose color is a
    smooth random texture with edges and sensor noise and whose depth is planar with noise and
    holes (Kinect-like), at the requested sizes."""
    rng = np.random.default_rng(0)
    scene_id = "scene9999_00"
    paths = scene_paths(root, scene_id, subdir="scans")
    paths.scene_dir.mkdir(parents=True)
    side = int(np.sqrt(args.vertices))
    x, y = np.meshgrid(np.linspace(0, 6, side, dtype=np.float32), np.linspace(0, 5, side, dtype=np.float32))
    vertices = np.stack([x.ravel(), y.ravel(), 0.2 * np.sin(x.ravel()) * np.cos(y.ravel())], 1)
    a = (np.arange(side - 1)[None, :] + side * np.arange(side - 1)[:, None]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + side], 1), np.stack([a + 1, a + side + 1, a + side], 1)])
    mesh = Mesh(vertices, rng.integers(0, 256, (len(vertices), 3)), faces)
    write_mesh_ply(paths.mesh, mesh)
    seg = (x.ravel() * 4).astype(np.int64) * 100 + (y.ravel() * 4).astype(np.int64)
    write_labels_ply(paths.labels, mesh, np.array([1, 2, 3, 4, 5, 7, 39])[seg % 7])
    write_segs_json(paths.segs, scene_id, seg)
    segments = np.unique(seg)
    groups = [
        SegGroup(k, k + 1, segments[k::40].tolist(), ["chair", "table", "wall"][k % 3]) for k in range(40)
    ]
    write_aggregation_json(paths.aggregation, scene_id, groups)
    write_scene_txt(paths.scene_txt, np.eye(4))

    cw, ch = args.color_size
    dw, dh = args.depth_size

    def frames():
        for i in range(args.template_frames):
            lo = rng.random((ch // 24 + 2, cw // 24 + 2, 3))
            texture = np.asarray(Image.fromarray((lo * 255).astype(np.uint8)).resize((cw, ch), Image.BICUBIC))
            yy, xx = np.mgrid[0:ch, 0:cw]
            edges = ((xx // 97 + yy // 61 + i) % 5 == 0)[..., None] * 60
            color = np.clip(texture * 0.8 + edges + rng.normal(0, 3, (ch, cw, 3)), 0, 255).astype(np.uint8)
            dy, dx = np.mgrid[0:dh, 0:dw]
            z = 1.2 + 2.0 * dy / dh + 0.6 * ((dx + 7 * i) % 200 < 80)
            z = z + rng.normal(0, 1, z.shape) * (0.0012 + 0.0019 * (z - 0.4) ** 2)
            depth = np.round(z * 1000).astype(np.uint16)
            depth[rng.random(depth.shape) < 0.03] = 0
            pose = np.eye(4)
            pose[:3, 3] = [0.01 * i, 0, 1.5]
            yield RGBDFrame(color, depth, pose, timestamp_color=33_333 * i, timestamp_depth=33_333 * i)

    write_sens(paths.sens, frames(), intrinsic_color=COLOR_K, intrinsic_depth=DEPTH_K)
    return paths.scene_dir


def make_synthetic_template(root: Path, args: argparse.Namespace) -> Path:
    """One scan from the project's synthetic ScanNet generator at the requested sizes."""
    from scene_kd.synthetic import write_synthetic_scannet

    write_synthetic_scannet(
        root, num_scenes=1, seed=0, num_frames=args.template_frames, color_size=args.color_size,
        depth_size=args.depth_size,
    )  # fmt: skip
    scene_dirs = sorted(p for p in (root / "scans").iterdir() if p.is_dir())
    return scene_dirs[0]


def make_benchmark_root(root: Path, args: argparse.Namespace) -> str:
    """Write `args.scenes` scans under `root/scans/`; returns which template was used."""
    template_root = root / "template"
    template = args.template
    if template == "synthetic":
        try:
            template_dir = make_synthetic_template(template_root, args)
        except (ImportError, AttributeError, TypeError) as e:
            print(f"synthetic generator unavailable ({type(e).__name__}: {e}); using --template simple")
            shutil.rmtree(template_root, ignore_errors=True)
            template = "simple"
    if template == "simple":
        template_dir = make_simple_template(template_root, args)
    template_id = template_dir.name
    tsv = template_root / LABEL_TSV_NAME
    if tsv.exists():
        shutil.copy(tsv, root / LABEL_TSV_NAME)
    else:
        rows = [
            LabelRow(1, "wall", "wall", 1),
            LabelRow(2, "chair", "chair", 5),
            LabelRow(4, "table", "table", 7),
        ]
        write_label_tsv(root / LABEL_TSV_NAME, rows)
    with SensReader(template_dir / f"{template_id}.sens") as reader:
        header = reader.header
        payloads = [reader.read_payloads(i) for i in range(len(reader))]
        poses = reader.poses.copy()
    for k in range(args.scenes):
        scene_id = f"scene{k:04d}_00"
        scene_dir = root / "scans" / scene_id
        scene_dir.mkdir(parents=True)
        for source in template_dir.iterdir():
            if source.is_file() and source.suffix != ".sens":
                shutil.copy(source, scene_dir / source.name.replace(template_id, scene_id))
        with SensWriter(
            scene_dir / f"{scene_id}.sens", color_size=header.color_size, depth_size=header.depth_size,
            intrinsic_color=header.intrinsic_color, intrinsic_depth=header.intrinsic_depth,
            color_compression=header.color_compression, depth_compression=header.depth_compression,
        ) as writer:  # fmt: skip
            for i in range(args.frames):
                j = (i + 7 * k) % len(payloads)
                writer.write_encoded_frame(poses[j], *payloads[j], 33_333 * i, 33_333 * i)
    return template


# ---------------------------------------------------------------------------------------- timing


def kept_payloads(sens: Path, frame_skip: int) -> list[tuple[bytes, bytes]]:
    with SensReader(sens) as reader:
        return [
            reader.read_payloads(i)
            for i in range(0, len(reader), frame_skip)
            if np.isfinite(reader.read_pose(i)).all()
        ]


def decode_scene(job: tuple[str, int, tuple[int, int] | None]) -> tuple[int, float, float]:
    """Decode the kept frames of one scan; returns (frames, wall seconds, CPU seconds) of the
    decoding alone."""
    sens, frame_skip, reduced = job
    payloads = kept_payloads(Path(sens), frame_skip)
    wall, cpu = time.perf_counter(), time.process_time()
    for color_bytes, depth_bytes in payloads:
        image = Image.open(io.BytesIO(color_bytes))
        if reduced is not None:
            image.draft("RGB", reduced)
        np.asarray(image.convert("RGB"))
        np.frombuffer(zlib.decompress(depth_bytes), dtype="<u2")
    return len(payloads), time.perf_counter() - wall, time.process_time() - cpu


def decode_rates(
    sens_files: list[Path], frame_skip: int, workers: int, reduced: tuple[int, int] | None
) -> tuple[float, float]:
    """(frames/s by wall time, frames/s by CPU time) of bare decoding with `workers` processes
    decoding at once, assuming a perfect split of the work: frames / (summed seconds / workers)."""
    jobs = [(str(p), frame_skip, reduced) for p in sens_files]
    if workers == 1:
        results = [decode_scene(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(decode_scene, jobs))
    frames = sum(r[0] for r in results)
    return frames / (sum(r[1] for r in results) / workers), frames / (sum(r[2] for r in results) / workers)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pipeline_run(
    root: Path, out: Path, args: argparse.Namespace, workers: int
) -> tuple[int, int, float, float]:
    """(scenes, frames, wall seconds, CPU seconds) of one full preprocess run into a fresh `out`;
    the CPU time includes the worker processes (their start-up too)."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    summary = preprocess_dataset(
        root, out, workers=workers, frame_skip=args.frame_skip, image_size=args.image_size,
        depth_png=args.depth_png, progress=False,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    failed = summary.failed
    if failed:
        raise RuntimeError(f"preprocessing failed: {failed[0].scene_id}: {failed[0].reason}")
    return len(summary.scenes), sum(s.num_frames for s in summary.scenes), wall, cpu


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=4, help="benchmark scans")
    parser.add_argument(
        "--frames", type=int, default=1500, help="frames per scan's .sens (ScanNet: ~1650 on average)"
    )
    parser.add_argument("--frame-skip", type=int, default=25, help="keep every n-th frame")
    parser.add_argument("--color-size", type=cli_types.image_size,
                        default="1296x968", help="source color WxH")
    parser.add_argument("--depth-size", type=cli_types.image_size, default="640x480", help="source depth WxH")
    parser.add_argument("--image-size", type=cli_types.image_size, default="320x240", help="stored color WxH")
    parser.add_argument(
        "--depth-png", choices=["rle", "deflate", "none"], default="none", help="depth PNG compression"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best is kept")
    parser.add_argument(
        "--template",
        choices=["synthetic", "simple"],
        default="synthetic",
        help="where the template scan comes from (see above)",
    )
    parser.add_argument(
        "--template-frames", type=int, default=50, help="distinct frames in the template scan"
    )
    parser.add_argument("--vertices", type=cli_types.checked(int, (lambda v: v >= 4, ">= 4")),
                        default=150_000, help="mesh vertices of the simple template")
    parser.add_argument(
        "--work-dir",
        help="where scans and outputs go, kept and reused by later runs with the "
        "same scan arguments (default: a temporary directory, removed)",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)  # fmt: skip
    if min(args.scenes, args.frames, args.frame_skip, args.repeats, args.template_frames, *args.workers) < 1:
        parser.error("--scenes, --frames, --frame-skip, --workers, --repeats and --template-frames must be >= 1")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        root = work / "raw"
        recipe = {k: getattr(args, k) for k in ("scenes", "frames", "color_size", "depth_size", "template",
                                                "template_frames", "vertices")}  # fmt: skip
        recipe_file = work / "raw_recipe.json"
        start = time.perf_counter()
        if recipe_file.exists() and json.loads(recipe_file.read_text())["recipe"] == json.loads(
            json.dumps(recipe)
        ):
            template = json.loads(recipe_file.read_text())["template"]  # reuse the scans of an earlier run
        else:
            recipe_file.unlink(missing_ok=True)
            shutil.rmtree(root, ignore_errors=True)
            template = make_benchmark_root(root, args)
            recipe_file.write_text(json.dumps({"recipe": recipe, "template": template}))
        sens_files = sorted(root.glob("scans/*/*.sens"))
        size_mb = sum(p.stat().st_size for p in sens_files) / 1e6
        print(
            f"{args.scenes} scans x {args.frames} frames ({template} template, {args.template_frames} distinct), "
            f"color {args.color_size[0]}x{args.color_size[1]} JPEG, depth {args.depth_size[0]}x{args.depth_size[1]} "
            f"zlib, {size_mb:.0f} MB of .sens; made in {time.perf_counter() - start:.0f} s"
        )
        rows = []
        for workers in args.workers:
            # Interleaved, so that each pipeline run has a decode-limit run next to it in time: on a
            # shared machine the load changes from minute to minute.
            runs, limits, reduced = [], [], []
            for _ in range(args.repeats):
                limits.append(decode_rates(sens_files, args.frame_skip, workers, None))
                runs.append(pipeline_run(root, work / "out", args, workers))
                reduced.append(decode_rates(sens_files, args.frame_skip, workers, args.image_size))
            scenes, frames = runs[0][:2]
            pairs = list(zip(runs, limits, strict=True))
            rows.append({
                "workers": workers,
                "scenes": scenes,
                "frames": frames,
                "pipeline_fps": frames / min(r[2] for r in runs),
                "decode_fps": max(r[0] for r in limits),
                "reduced_fps": max(r[0] for r in reduced),
                "ratio": float(np.median([frames / r[2] / d[0] for r, d in pairs])),
                "cpu_ratio": float(np.median([frames / (r[3] / workers) / d[1] for r, d in pairs])),
            })  # fmt: skip
        output_mb = sum(p.stat().st_size for p in (work / "out").rglob("*") if p.is_file()) / 1e6
        load = os.getloadavg()[0]
        print(
            f"kept frames: {rows[0]['frames']} ({rows[0]['frames'] / rows[0]['scenes']:.0f} per scan); output "
            f"{output_mb:.0f} MB (depth PNG compression {args.depth_png}); {os.cpu_count()} CPUs, "
            f"load average {load:.1f} at the end\n"
        )
        print("| workers | pipeline frames/s | scenes/h | decode limit frames/s | ratio | ratio by CPU time "
              "| reduced-decode frames/s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['workers']} | {r['pipeline_fps']:.1f} | {r['pipeline_fps'] / r['frames'] * r['scenes'] * 3600:.0f} "
                f"| {r['decode_fps']:.1f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['reduced_fps']:.1f} |"
            )
        (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The benchmark: its exit code, expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="preprocess_benchmark")


if __name__ == "__main__":
    sys.exit(main())
