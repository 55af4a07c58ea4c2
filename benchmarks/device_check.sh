#!/usr/bin/env bash
# The GPU check of issue 16 ("Fast where users train"): one run of at most 8 minutes on one GPU machine
# that has PyTorch but no internet.
#
#     bash benchmarks/device_check.sh [OUTPUT_DIR]
#
# OUTPUT_DIR: $OUT when set (the device tool's folder that comes back), else the argument, else
# benchmarks/device_results. What the GPU machine cannot download or make comes in the carried folder
# $DEVICE_CARRY (default <repo>/.device_carry), made beforehand on a machine with internet by
# benchmarks/prepare_device_wheels.sh:
#   site-*.tar.xz  spconv-cu12x, cumm-cu12x and their pure-Python needs, plus the packages scene_kd needs
#                  that the GPU image lacks (omegaconf, open_clip_torch, plyfile, ...), unpacked and
#                  compressed with xz to fit the device tool's 64 MiB (the wheels alone are ~100 MB)
#   *.whl          more wheels, installed with pip --no-index --no-deps
#   data.tar.xz    processed synthetic scans at ScanNet resolution (making them needs open3d)
# Without the folder, whatever is installed is used.
#
# Parts, each under `timeout` (limit in seconds; 475 in all), each with its log in OUTPUT_DIR:
#   1 setup [40]             unpack the carried packages and scans; report GPU, torch, spconv and what
#                            backend="auto" picks on CUDA
#   2 tests [90]             pytest tests/test_spconv_backend.py (CUDA: layers and students forward + backward
#                            against the torch backend, float32 and bf16 autocast, torch on CUDA against CPU;
#                            the CPU tests too) and the CUDA tests of test_students.py and test_teachers.py
#   3 sparse_unet [85 + 85]  benchmarks/sparse_unet.py --device cuda, once for Res16UNet34C and once for
#                            MinkUNet34C: 2 x 150k voxels, backends spconv, auto, torch (and minkowski where
#                            it imports): forward, forward + backward, peak memory, ratios to spconv in the
#                            same run
#   4 pretrain_throughput [110]  benchmarks/pretrain_throughput.py --device cuda: ppkt_resnet50 and
#                            ppkt_clip_vitb16, 8 ScanNet-size frames a batch, random teacher weights,
#                            student.backend=auto, 8 DataLoader workers
#   5 distributed [60]       torchrun --nproc_per_node 1: an NCCL all_reduce, then tools/pretrain.py for 3
#                            steps on the carried scans (student.backend=auto)
# Then OUTPUT_DIR/device_check.json (every figure) and OUTPUT_DIR/device_check.md (tables and the goals:
# the backend auto picks within 1.2x of spconv's time and memory; a PPKT step >= 150 frames/s).
# Exit code: 0 when every part passed, else 1.

set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-${1:-$REPO/benchmarks/device_results}}"
CARRY="${DEVICE_CARRY:-$REPO/.device_carry}"
WORK="${DEVICE_CHECK_WORK:-/tmp/scene_kd_device_check}"
rm -rf "$WORK"
mkdir -p "$WORK/site" "$OUT_DIR"
export REPO PY OUT_DIR CARRY WORK PYTHONUNBUFFERED=1
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
PARTS="$WORK/parts.tsv"
: >"$PARTS"

# run_part NAME LIMIT_SECONDS FUNCTION [ARGS]: output to OUTPUT_DIR/NAME.log, exit code and time to parts.tsv
run_part() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (at most ${limit}s)"
    timeout --kill-after=5 "$limit" bash -c '"$@"' "$name" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$PARTS"
    echo "   exit code $rc after $((SECONDS - start))s; last lines of $name.log:"
    tail -n 4 "$OUT_DIR/$name.log" | sed 's/^/     /'
}

part_setup() {
    set -e
    shopt -s nullglob
    local archives=("$CARRY"/site*.tar.xz) wheels=("$CARRY"/*.whl)
    [ -d "$CARRY" ] || echo "no carried folder $CARRY: using the packages installed here"
    for archive in "${archives[@]}"; do
        echo "unpacking $archive"
        tar -xJf "$archive" -C "$WORK/site"
    done
    if [ ${#wheels[@]} -gt 0 ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
            "${wheels[@]}"
    fi
    if [ -f "$CARRY/data.tar.xz" ]; then
        tar -xJf "$CARRY/data.tar.xz" -C "$WORK"
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$PY" - "$WORK/env.json" <<'EOF'
import importlib, json, platform, sys

import torch

env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name(0)
    env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
for module in ("spconv", "cumm", "omegaconf", "open_clip", "plyfile", "MinkowskiEngine"):
    try:
        env[module] = getattr(importlib.import_module(module), "__version__", "imported")
    except Exception as err:  # noqa: BLE001 (reported, not raised)
        env[module] = f"not importable: {err}"
try:
    from spconv.cppconstants import CPU_ONLY_BUILD
    env["spconv_cpu_only_build"] = bool(CPU_ONLY_BUILD)
except Exception as err:  # noqa: BLE001
    env["spconv_cpu_only_build"] = f"unknown: {err}"
from scene_kd.sparse import auto_backend_name

env["auto_backend_on_cuda"] = auto_backend_name("cuda")
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
ok = env["cuda_available"] and env["auto_backend_on_cuda"] == "spconv"
sys.exit(0 if ok else 1)
EOF
}

part_tests() {
    cd "$REPO" || exit 1
    "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$WORK/tests.xml" tests/test_spconv_backend.py \
        tests/test_students.py::test_cuda_matches_cpu \
        tests/test_teachers.py::test_cuda_forward_runs_in_bf16_and_returns_float32
}

part_sparse_unet() {  # part_sparse_unet MODEL
    cd "$REPO" || exit 1
    local backends=(spconv auto torch)
    if "$PY" -c "import MinkowskiEngine" 2>/dev/null; then backends+=(minkowski); fi
    "$PY" benchmarks/sparse_unet.py --device cuda --models "$1" --backends "${backends[@]}" \
        --voxels 150000 --batch 2 --repeats 2 --json "$WORK/sparse_unet_$1.json"
}

part_pretrain_throughput() {
    cd "$REPO" || exit 1
    local recipe_file="$WORK/pretrain_data/data_recipe.json" data_args
    if [ ! -f "$recipe_file" ]; then
        echo "no carried scans ($CARRY/data.tar.xz): this machine cannot make them (no open3d); run" \
            "benchmarks/prepare_device_wheels.sh on a machine with internet first"
        exit 1
    fi
    # The data arguments the scans were made with, so that the benchmark reuses them.
    data_args=$("$PY" - "$recipe_file" <<'EOF'
import json, sys

r = json.load(open(sys.argv[1]))
size = lambda key: "x".join(map(str, r[key]))  # noqa: E731
print("--scenes", r["scenes"], "--frames", r["frames"], "--frame-skip", r["frame_skip"], "--color-size",
      size("color_size"), "--depth-size", size("depth_size"), "--image-size", size("image_size"))
EOF
)
    # shellcheck disable=SC2086  # data_args is a list of flags
    "$PY" benchmarks/pretrain_throughput.py --work-dir "$WORK/pretrain_data" $data_args --device cuda \
        --recipes ppkt_resnet50 ppkt_clip_vitb16 --batch-frames 8 --steps 2 --num-workers 8 \
        --override student.backend=auto --json "$WORK/pretrain_throughput.json"
}

part_distributed() {
    set -e
    cd "$REPO"
    local torchrun=(torchrun)
    command -v torchrun >/dev/null || torchrun=("$PY" -m torch.distributed.run)
    cat >"$WORK/nccl_smoke.py" <<'EOF'
import os

import torch
import torch.distributed as dist

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
t = torch.full((4,), float(dist.get_rank() + 1), device="cuda")
dist.all_reduce(t)
dist.barrier()
print(f"nccl ok: world size {dist.get_world_size()}, all_reduce {t.tolist()}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
dist.destroy_process_group()
EOF
    "${torchrun[@]}" --standalone --nproc_per_node 1 "$WORK/nccl_smoke.py"
    # torchrun with one process sets WORLD_SIZE=1, so tools/pretrain.py starts no process group
    # (scene_kd.engine.distributed.init_distributed): this checks the launch and the loop, NCCL is above.
    "${torchrun[@]}" --standalone --nproc_per_node 1 tools/pretrain.py \
        --config configs/pretrain/ppkt_resnet50.yaml \
        data.root="$WORK/pretrain_data/processed" data.split=null data.batch_size=2 data.num_workers=2 \
        student.backend=auto teacher.weights=null teacher.allow_random=true train.device=cuda \
        train.max_steps=3 train.log_every=1 train.checkpoint_every=3 train.progress=false \
        train.tensorboard=false schedule.warmup_steps=1 train.out_dir="$WORK/pretrain_smoke"
    echo "pretrain smoke wrote: $(ls "$WORK/pretrain_smoke" | tr '\n' ' ')"
}

export -f part_setup part_tests part_sparse_unet part_pretrain_throughput part_distributed

echo "device check: repo $REPO, output $OUT_DIR, carried folder $CARRY, work $WORK"
run_part 1_setup 40 part_setup
run_part 2_tests 90 part_tests
run_part 3_sparse_unet_res16unet34c 85 part_sparse_unet Res16UNet34C
run_part 3_sparse_unet_minkunet34c 85 part_sparse_unet MinkUNet34C
run_part 4_pretrain_throughput 110 part_pretrain_throughput
run_part 5_distributed 60 part_distributed

"$PY" - "$WORK" "$OUT_DIR" <<'EOF'
"""device_check.json and device_check.md from the parts' outputs."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
GOAL_RATIO, GOAL_FPS = 1.2, 150.0


def load(name):
    path = work / name
    return json.loads(path.read_text()) if path.exists() else None


def test_summary():
    path = work / "tests.xml"
    if not path.exists():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failed": failed}


def parts():
    rows = []
    for line in (work / "parts.tsv").read_text().splitlines():
        name, rc, seconds, limit = line.split("\t")
        status = "ok" if rc == "0" else "timed out" if rc in ("124", "137") else "failed"
        rows.append({"part": name, "exit_code": int(rc), "seconds": int(seconds), "limit_s": int(limit),
                     "status": status})
    return rows


def unet_goal(rows):
    """Per model: the row of what auto picked against spconv's, within GOAL_RATIO in time and memory."""
    goals = []
    for model in sorted({r["model"] for r in rows}):
        auto = next((r for r in rows if r["model"] == model and r["backend"] == "auto"), None)
        ratios = (auto or {}).get("ratios", {}).get("spconv")
        met = bool(ratios) and all(v is not None and v <= GOAL_RATIO for v in ratios.values())
        goals.append({"model": model, "auto_runs_on": (auto or {}).get("runs_on"), "ratios_to_spconv": ratios,
                      "met": met})
    return goals


def markdown(result):
    lines = ["# Device check", "", f"Environment: `{json.dumps(result['environment'])}`", "",
             "| part | status | exit code | seconds | limit |", "|---|---|---|---|---|"]
    lines += [f"| {p['part']} | {p['status']} | {p['exit_code']} | {p['seconds']} | {p['limit_s']} |"
              for p in result["parts"]]
    tests = result["tests"]
    if tests is None:
        lines += ["", "Tests: no junit report"]
    else:
        lines += ["", f"Tests: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} errors, "
                      f"{tests['skipped']} skipped"] + [f"- failed: `{name}`" for name in tests["failed"]]
    lines += ["", "## Sparse U-Nets (CUDA, 2 x 150k voxels, training mode)", "",
              "| model | backend | voxels | forward s | fwd+bwd s | peak MB | fwd / spconv | "
              "fwd+bwd / spconv | memory / spconv |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["sparse_unet"] or []:
        ratios = (r.get("ratios") or {}).get("spconv") or {}
        cells = ["-" if ratios.get(k) is None else f"{ratios[k]:.2f}"
                 for k in ("forward_s", "forward_backward_s", "peak_mb")]
        backend = r["backend"] if r["backend"] != "auto" else f"auto ({r['runs_on']})"
        lines.append(f"| {r['model']} | {backend} | {r['voxels']} | {r['forward_s']:.3f} | "
                     f"{r['forward_backward_s']:.3f} | {r['peak_mb']:.0f} | {' | '.join(cells)} |")
    for g in result["goals"]["sparse_unet"]:
        lines.append(f"- goal (auto within {GOAL_RATIO}x of spconv, time and memory), {g['model']}: "
                     f"{'met' if g['met'] else 'NOT met'} (auto runs on {g['auto_runs_on']})")
    lines += ["", "## PPKT pretraining step (CUDA, ScanNet-size frames, random teacher weights, "
              "student.backend=auto)", "",
              "| recipe | amp | frames | voxels | full step frames/s | data s | teacher s | student s | "
              "full s | peak GPU MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in (result["pretrain_throughput"] or {}).get("rows", []):
        s = r["seconds"]
        gpu = max((v["gpu_mb"] or 0) for v in r["peak"].values())
        lines.append(f"| {r['recipe']} | {r['amp']} | {r['frames']} | {r['voxels']} | "
                     f"{r['frames_per_s']['full']:.1f} | {s['data']:.3f} | {s['teacher']:.3f} | "
                     f"{s['student']:.3f} | {s['full']:.3f} | {gpu:.0f} |")
    for g in result["goals"]["pretrain"]:
        lines.append(f"- goal (>= {GOAL_FPS:.0f} frames/s, full step), {g['recipe']}: "
                     f"{'met' if g['met'] else 'NOT met'} ({g['frames_per_s']:.1f} frames/s)")
    return "\n".join(lines) + "\n"


unet = [row for path in sorted(work.glob("sparse_unet_*.json")) for row in json.loads(path.read_text())["rows"]]
pretrain = load("pretrain_throughput.json")
result = {"environment": load("env.json"), "parts": parts(), "tests": test_summary(), "sparse_unet": unet,
          "pretrain_throughput": pretrain,
          "goals": {"sparse_unet": unet_goal(unet or []),
                    "pretrain": [{"recipe": r["recipe"], "frames_per_s": r["frames_per_s"]["full"],
                                  "met": r["frames_per_s"]["full"] >= GOAL_FPS}
                                 for r in (pretrain or {}).get("rows", [])]}}
(out / "device_check.json").write_text(json.dumps(result, indent=1))
(out / "device_check.md").write_text(markdown(result))
print(markdown(result))
sys.exit(0 if all(p["status"] == "ok" for p in result["parts"]) else 1)
EOF
