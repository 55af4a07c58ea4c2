"""Forward and forward+backward time and peak memory of the students on a ScanNet-sized scene, for each
sparse backend measured in one run; prints a table with each row's ratios to MinkowskiEngine and to
spconv (this row's figure / the reference backend's figure for the same model, in the same run).

Backends (`--backends`): torch, minkowski (where installed), spconv (CUDA only: its CPU build has no
backward), auto (what `backend="auto"` picks on the device; the row says which). Default: torch and
minkowski on CPU; torch, spconv and minkowski on CUDA. Each (model, backend) runs in its own subprocess
so that the peak memory of one does not hide another's (CPU: peak resident memory over what the
process held before the first forward; CUDA: torch.cuda.max_memory_allocated). The scene is a room of
walls, floor and boxes voxelized at 2 cm to about `--voxels` occupied voxels per batch item (ScanNet
scenes have about 150k at 2 cm).

Arithmetic rate: the multiply-adds of every convolution over its kernel-map pairs (pairs x C_in x C_out,
counted on the torch backend for the same model and input; 2 FLOPs each), per second of the forward
pass and of forward + backward (backward: the kernel's gradient, plus the input's where it is needed),
beside a dense float32 4096 x 4096 matmul measured in the same run with the same threads ("of dense"
= sparse rate / dense rate). The whole pass is timed (kernel maps, batch norms and the rest included).

    python benchmarks/sparse_unet.py                # CPU: torch and MinkowskiEngine, batch 2, 150k voxels
    python benchmarks/sparse_unet.py --device cuda  # GPU: torch, spconv, MinkowskiEngine if installed
    python benchmarks/sparse_unet.py --device cuda --backends torch spconv auto --models MinkUNet34C
    python benchmarks/sparse_unet.py --voxels 40000 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from scene_kd.atomic import write_text_atomic
from scene_kd.cli import add_debug_flag, run_tool
from scene_kd.models.students import STUDENTS
from scene_kd.sparse.fixtures import room_voxels

MODELS = ("Res16UNet34C", "MinkUNet18A")
BACKEND_CHOICES = ("torch", "minkowski", "spconv", "auto")
REFERENCES = (("minkowski", "ME"), ("spconv", "spconv"))  # ratio columns: (backend, column label)
RATIO_KEYS = ("forward_s", "forward_backward_s", "peak_mb")
DENSE_SIZE = 4096


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def count_convolution_flops(model_name: str, feats: torch.Tensor, coords: torch.Tensor) -> tuple[float, float]:
    """FLOPs (2 per multiply-add over the kernel-map pairs) of the convolutions of one forward pass of
    `model_name` on this input and of its backward, counted on the torch backend by wrapping its
    convolution function for one pass (the same for every backend: same layers, same kernel maps)."""
    from scene_kd.models import build_student
    from scene_kd.sparse import get_backend
    from scene_kd.sparse import modules as torch_layers

    backend = get_backend("torch")
    net = build_student(model_name, in_channels=3, out_channels=20, backend=backend).to(feats.device).train()
    forward_flops, backward_flops = 0.0, 0.0
    convolution = torch_layers.sparse_convolution

    def counting(features, kernel, kmap, num_out):
        nonlocal forward_flops, backward_flops
        pairs_macs = float(sum(kmap.counts)) * kernel.shape[-2] * kernel.shape[-1]
        forward_flops += 2 * pairs_macs
        backward_flops += 2 * pairs_macs * (2 if features.requires_grad else 1)  # kernel grad (+ input grad)
        return convolution(features, kernel, kmap, num_out)

    torch_layers.sparse_convolution = counting
    try:
        net(backend.sparse_tensor(feats, coords))
    finally:
        torch_layers.sparse_convolution = convolution
    return forward_flops, backward_flops


def dense_matmul_gflops(threads: int, repeats: int = 3) -> float:
    """GFLOP/s of a dense float32 DENSE_SIZE^3 matmul on the CPU with `threads` threads (best of `repeats`)."""
    torch.set_num_threads(threads)
    a, b = torch.rand(DENSE_SIZE, DENSE_SIZE), torch.rand(DENSE_SIZE, DENSE_SIZE)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * DENSE_SIZE**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(model_name: str, backend_name: str, device: str, voxels: int, batch: int, repeats: int,
            threads: int) -> dict:
    """Run in a worker process: median forward and forward+backward seconds, peak memory."""
    from scene_kd.models import build_student
    from scene_kd.sparse import batched_coordinates, get_backend
    from scene_kd.sparse.spconv_backend import SpconvTensor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    coords = batched_coordinates([room_voxels(voxels, seed=b) for b in range(batch)])
    feats = torch.rand(coords.shape[0], 3)
    backend = get_backend(backend_name)
    net = build_student(model_name, in_channels=3, out_channels=20, backend=backend).to(device).train()
    if device.startswith("cuda"):
        coords, feats = coords.to(device), feats.to(device)
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runs_on = backend_name  # for "auto": what it picks on this device
    if backend_name == "auto":
        on_spconv = isinstance(backend.sparse_tensor(feats[:1], coords[:1]), SpconvTensor)
        runs_on = "spconv" if on_spconv else "torch"

    def forward():
        return net(backend.sparse_tensor(feats, coords))

    fwd, fwd_bwd = [], []
    for i in range(repeats + 1):  # the first run warms up (allocator, kernel-map code paths)
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            forward()
        synchronize(device)
        t1 = time.perf_counter()
        out = forward()
        out.F.square().mean().backward()
        synchronize(device)
        t2 = time.perf_counter()
        net.zero_grad(set_to_none=True)
        if i:
            fwd.append(t1 - t0)
            fwd_bwd.append(t2 - t1)
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    forward_flops, backward_flops = count_convolution_flops(model_name, feats, coords)
    forward_s, forward_backward_s = sorted(fwd)[len(fwd) // 2], sorted(fwd_bwd)[len(fwd_bwd) // 2]
    return {"model": model_name, "backend": backend_name, "runs_on": runs_on, "voxels": int(coords.shape[0]),
            "forward_s": forward_s, "forward_backward_s": forward_backward_s, "peak_mb": peak_mb,
            "forward_gflops": forward_flops / forward_s / 1e9,
            "forward_backward_gflops": (forward_flops + backward_flops) / forward_backward_s / 1e9}


def run_worker(args, model_name: str, backend_name: str) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", model_name, backend_name, "--device", args.device,
           "--voxels", str(args.voxels), "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {model_name} / {backend_name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_dense_worker(args) -> float | None:
    """The dense matmul's GFLOP/s with --threads, in a fresh process (CPU only; None on CUDA)."""
    if args.device.startswith("cuda"):
        return None
    proc = subprocess.run([sys.executable, __file__, "--dense-worker", "--threads", str(args.threads)],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def choose_backends(args) -> list[str]:
    """The backends asked for (default: by device) that can run here; says why any is left out."""
    from scene_kd.sparse import minkowski_available
    from scene_kd.sparse.spconv_backend import spconv_available, spconv_cuda_available

    cuda = args.device.startswith("cuda")
    wanted = args.backends or (["torch", "spconv", "minkowski"] if cuda else ["torch", "minkowski"])
    backends = []
    for name in wanted:
        if name == "minkowski" and not minkowski_available():
            print("MinkowskiEngine is not installed: no minkowski row "
                  "(bash tools/install_minkowski_engine.sh)")
        elif name == "spconv" and not cuda:
            print("spconv is measured on CUDA only: its CPU build has no backward (docs/sparse_backends.md)")
        elif name == "spconv" and not spconv_cuda_available():
            why = "is not installed" if not spconv_available() else "has no CUDA kernels here (a CPU build?)"
            print(f"spconv {why}: no spconv row (pip install spconv-cu126)")
        else:
            backends.append(name)
    return backends


def add_ratios(rows: list[dict]) -> None:
    """Each row's `ratios[reference]` = this row's figure / the reference backend's, same model."""
    for row in rows:
        row["ratios"] = {}
        for reference, _ in REFERENCES:
            ref = next((r for r in rows if r["model"] == row["model"] and r["backend"] == reference), None)
            row["ratios"][reference] = None if ref is None else {
                key: row[key] / ref[key] if ref[key] > 0 else None for key in RATIO_KEYS}


def print_table(rows: list[dict], dense_gflops: float | None) -> None:
    labels = [f"{what} / {label}" for _, label in REFERENCES for what in ("fwd", "fwd+bwd", "memory")]
    labels += ["fwd GFLOP/s", "fwd+bwd GFLOP/s", "fwd of dense", "fwd+bwd of dense"]
    header = "| model | backend | voxels | forward s | fwd+bwd s | peak MB | " + " | ".join(labels) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in rows:
        cells = []
        for reference, _ in REFERENCES:
            ratios = row["ratios"][reference] or {}
            cells += ["-" if ratios.get(key) is None else f"{ratios[key]:.2f}" for key in RATIO_KEYS]
        rates = (row["forward_gflops"], row["forward_backward_gflops"])
        cells += [f"{rate:.1f}" for rate in rates]
        cells += [f"{rate / dense_gflops:.2f}" if dense_gflops else "-" for rate in rates]
        backend = row["backend"] if row["backend"] != "auto" else f"auto ({row['runs_on']})"
        print(f"| {row['model']} | {backend} | {row['voxels']} | {row['forward_s']:.2f} | "
              f"{row['forward_backward_s']:.2f} | {row['peak_mb']:.0f} | {' | '.join(cells)} |")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--voxels", type=int, default=150_000, help="occupied 2 cm voxels per scene (default 150000)")
    parser.add_argument("--batch", type=int, default=2, help="scenes per batch (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up; the median is kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(STUDENTS), metavar="MODEL",
                        help=f"students (default {' '.join(MODELS)})")
    parser.add_argument("--backends", nargs="+", choices=BACKEND_CHOICES,
                        help="torch, minkowski, spconv and/or auto (default: torch minkowski on CPU; "
                             "torch spconv minkowski on CUDA)")
    parser.add_argument("--json", help="also write the rows (with their ratios) to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--dense-worker", action="store_true", help=argparse.SUPPRESS)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if min(args.voxels, args.batch, args.repeats, args.threads) < 1:
        parser.error("--voxels, --batch, --repeats and --threads must be at least 1")

    if args.dense_worker:
        print(dense_matmul_gflops(args.threads))
        return 0
    if args.worker:
        print(json.dumps(measure(*args.worker, args.device, args.voxels, args.batch, args.repeats, args.threads)))
        return 0

    backends = choose_backends(args)
    print(f"device={args.device} threads={args.threads} batch={args.batch} voxels/scene~{args.voxels} "
          f"repeats={args.repeats} torch={torch.__version__}")
    rows = []
    for model_name in args.models:
        for backend_name in backends:
            row = run_worker(args, model_name, backend_name)
            if row:
                rows.append(row)
                print(f"  measured {model_name:13s} {backend_name:9s} fwd {row['forward_s']:.2f}s "
                      f"fwd+bwd {row['forward_backward_s']:.2f}s peak {row['peak_mb']:.0f} MB", flush=True)
    dense_gflops = run_dense_worker(args)
    if dense_gflops:
        print(f"dense float32 {DENSE_SIZE}^3 matmul, {args.threads} threads: {dense_gflops:.1f} GFLOP/s")
    add_ratios(rows)
    print()
    print_table(rows, dense_gflops)
    if args.json:
        write_text_atomic(args.json, json.dumps({"dense_matmul_gflops": dense_gflops, "rows": rows}, indent=2))
    return 0 if len(rows) == len(args.models) * len(backends) else 1


def main(argv: list[str] | None = None) -> int:
    """The benchmark: its exit code, expected errors as one line (--debug: the traceback)."""
    return run_tool(run, argv, name="sparse_unet")


if __name__ == "__main__":
    sys.exit(main())
