#!/usr/bin/env bash
# Prepare, on a machine with internet (a CPU is enough), the folder benchmarks/device_check.sh needs on a
# GPU machine that has PyTorch but no internet (and no open3d).
#
#     bash benchmarks/prepare_device_wheels.sh [--out DIR] [--cuda cu126] [--python-version 3.12]
#                                              [--skip-wheels] [--skip-data]
#
# --out DIR           the carried folder (default <repo>/.device_carry; added to .git/info/exclude, so it
#                     travels only when named: the device tool's `carry: [".device_carry"]`)
# --cuda cuXXX        spconv's CUDA flavour. Default: from this machine's torch (torch.version.cuda):
#                     11.8 -> cu118, 12.0 -> cu120, 12.1-12.3 -> cu121, 12.4-12.5 -> cu124, 12.6 and newer,
#                     13.x included -> cu126 (the newest spconv wheels; they bundle their own CUDA 12.6
#                     runtime and NVRTC, so they should run beside a CUDA 13 torch on a new driver: not yet
#                     seen on a GPU). Pass the GPU machine's flavour when its torch differs from this one.
# --python-version    the GPU machine's Python (default 3.12; wheels are cp312, manylinux x86-64)
#
# What it makes in DIR:
#   site-<cuda>-cp<py>.tar.xz  every wheel below unpacked into one site folder, compressed with xz -9:
#       spconv-<cuda>==2.3.8 (2.3.6 for cu120) and the cumm-<cuda> its metadata asks for, their pure-Python
#       needs the GPU image lacks (pccm, ccimport, fire, termcolor, lark), and scene_kd's (omegaconf,
#       open_clip_torch, ftfy, wcwidth, plyfile; pinned to this machine's versions where installed).
#       Sizes (measured for cu126 / cp312): spconv-cu126 2.3.8 is a 70.5 MB wheel (its core_cc.so is
#       284 MB unpacked), cumm-cu126 0.7.11 26.6 MB (58 MB of it NVRTC), the rest about 2.5 MB: about
#       100 MB of wheels, over the device tool's 64 MiB a call. Compressed with xz (about 10x on
#       spconv's CUDA code, 3x on NVRTC, from samples) the folder should come to about 52 MB.
#   data.tar.xz  one synthetic scan at ScanNet resolution (1296x968 color, 640x480 depth, 40 frames, every
#       5th kept: 8 frames), processed as benchmarks/pretrain_throughput.py expects in its --work-dir
#       (data_recipe.json + processed/): 8.3 MB, 3.4 MB compressed. Making it needs open3d (about 10 s).
# Downloads about 100 MB (pip's cache keeps them). At the end it prints the folder's size and the
# working tree's, and fails when together they exceed 64 MiB.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT_DIR="$REPO/.device_carry"
CUDA_FLAVOUR=""
PYTHON_VERSION="3.12"
WHEELS=1
DATA=1
LIMIT_BYTES=$((64 * 1024 * 1024))

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --cuda) CUDA_FLAVOUR="$2"; shift 2 ;;
        --python-version) PYTHON_VERSION="$2"; shift 2 ;;
        --skip-wheels) WHEELS=0; shift ;;
        --skip-data) DATA=0; shift ;;
        -h | --help) sed -n '2,30p' "$0" | cut -c3-; exit 0 ;;
        *) echo "prepare_device_wheels.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

EXCLUDE="$REPO/.git/info/exclude"
if [ "$OUT_DIR" = "$REPO/.device_carry" ] && ! grep -qx '/.device_carry/' "$EXCLUDE" 2>/dev/null; then
    echo '/.device_carry/' >>"$EXCLUDE"
    echo "added /.device_carry/ to .git/info/exclude (it travels only through the device tool's carry)"
fi

cuda_flavour() {  # spconv's flavour for this machine's torch
    local version
    version=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
    case "$version" in
        11.8*) echo cu118 ;;
        12.0*) echo cu120 ;;
        12.1* | 12.2* | 12.3*) echo cu121 ;;
        12.4* | 12.5*) echo cu124 ;;
        12.* | 13.*) echo cu126 ;;
        *)
            echo "prepare_device_wheels.sh: error: this torch has CUDA '$version'; pass --cuda cuXXX" >&2
            return 1
            ;;
    esac
}

download() {  # download SPEC...: binary wheels for the GPU machine into $STAGE/wheels
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
        --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$STAGE/wheels" "$@"
}

prepare_wheels() {
    local flavour spconv_version cumm_spec pure
    flavour="${CUDA_FLAVOUR:-$(cuda_flavour)}"
    spconv_version="${SPCONV_VERSION:-$([ "$flavour" = cu120 ] && echo 2.3.6 || echo 2.3.8)}"
    echo "downloading spconv-$flavour==$spconv_version for Python $PYTHON_VERSION (about 70 MB)"
    download "spconv-$flavour==$spconv_version"
    # The cumm version spconv's metadata asks for, e.g. cumm-cu126<0.8.0,>=0.7.11.
    cumm_spec=$("$PY" - "$STAGE"/wheels/spconv_*.whl <<'EOF'
import sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    for line in whl.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist: cumm"):
            print(line.split(":", 1)[1].split(";")[0].replace(" ", "").replace("(", "").replace(")", ""))
EOF
)
    echo "downloading $cumm_spec (about 27 MB)"
    download "$cumm_spec"
    # Pure-Python packages the GPU image lacks: spconv's needs, then scene_kd's; this machine's versions.
    pure=$("$PY" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version

names = ["pccm", "ccimport", "fire", "termcolor", "lark", "omegaconf", "open_clip_torch", "ftfy", "wcwidth",
         "plyfile"]
specs = []
for name in names:
    try:
        specs.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        specs.append(name)
print(" ".join(specs))
EOF
)
    echo "downloading $pure"
    # shellcheck disable=SC2086  # a list of requirement specifiers
    download $pure
    ls -l "$STAGE/wheels"
    "$PY" - "$STAGE/wheels" "$STAGE/site" <<'EOF'
"""Unpack every wheel into one site folder, as pip --target would lay it out (purelib/platlib at the top)."""
import shutil, sys, zipfile
from pathlib import Path

wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
site.mkdir(parents=True, exist_ok=True)
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        z.extractall(site)
for data in site.glob("*.data"):
    for scheme in ("purelib", "platlib"):
        for item in (data / scheme).glob("*") if (data / scheme).is_dir() else []:
            shutil.move(str(item), site / item.name)
    shutil.rmtree(data)
EOF
    rm -f "$OUT_DIR"/site-*.tar.xz
    local archive="$OUT_DIR/site-$flavour-cp${PYTHON_VERSION//./}.tar.xz"
    echo "compressing $(du -sh "$STAGE/site" | cut -f1) of packages into $archive (xz -9, a few minutes)"
    tar -C "$STAGE/site" -cf - . | xz -9 -T0 >"$archive.tmp"
    mv "$archive.tmp" "$archive"
}

prepare_data() {
    echo "making one synthetic scan at ScanNet resolution and processing it (needs open3d)"
    (cd "$REPO" && "$PY" - "$STAGE/pretrain_data" <<'EOF'
import argparse, importlib.util, shutil, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("pretrain_throughput", "benchmarks/pretrain_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
work = Path(sys.argv[1])
# The benchmark's own data step with its default sizes: 1 scan, 40 frames, every 5th kept.
bench.prepare_data(work, argparse.Namespace(scenes=1, frames=40, frame_skip=5, color_size=(1296, 968),
                                            depth_size=(640, 480), image_size=(320, 240)))
shutil.rmtree(work / "raw")  # only processed/ and data_recipe.json are read again
EOF
)
    tar -C "$STAGE" -cf - pretrain_data | xz -9 -T0 >"$OUT_DIR/data.tar.xz.tmp"
    mv "$OUT_DIR/data.tar.xz.tmp" "$OUT_DIR/data.tar.xz"
}

if [ "$WHEELS" = 1 ]; then prepare_wheels; fi
if [ "$DATA" = 1 ]; then prepare_data; fi

carried=$(du -sb "$OUT_DIR" | cut -f1)
tree=$(cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 -r du -cb 2>/dev/null | tail -n 1 |
    cut -f1)
echo "carried folder $OUT_DIR: $((carried / 1024 / 1024)) MiB; working tree: $((tree / 1024 / 1024)) MiB"
ls -l "$OUT_DIR"
if [ $((carried + tree)) -gt "$LIMIT_BYTES" ]; then
    echo "prepare_device_wheels.sh: error: together over the device tool's 64 MiB a call" >&2
    exit 1
fi
echo "ready: run bash benchmarks/device_check.sh on the GPU machine with $OUT_DIR carried"
