#!/usr/bin/env bash
# Builds MinkowskiEngine 0.5.4 (CPU, OpenBLAS) from the package registry's source distribution for the
# torch that is installed, caches the wheel outside the repository and installs it.
#
# Why a script: MinkowskiEngine 0.5.4 (2021) does not install from the registry on current PyTorch.
#   - pip's metadata step runs its setup.py, which imports torch and numpy.distutils (gone in numpy 2,
#     and broken by setuptools >= 74), so we fetch the sdist directly from the simple index (verifying
#     its sha256) and never run that step;
#   - the build needs libopenblas-dev and `--cpu_only --blas=openblas` (no numpy.distutils BLAS probe);
#   - on Python 3.10+ `from collections import Sequence` must become `collections.abc`;
#   - the CUDA build is attempted only with SCENE_KD_ME_CUDA=1 and a working nvcc (many CUDA 12+
#     toolchains cannot build it).
# The wheel is cached under $SCENE_KD_CACHE (default ~/.cache/scene_kd)/minkowski/<torch>-<python>/, so a
# machine builds it once (about 10-20 minutes on 2 cores) and reuses it afterwards.
#
# Usage: bash tools/install_minkowski_engine.sh [--force-rebuild]
set -euo pipefail

PYTHON=${PYTHON:-python3}
ME_VERSION=0.5.4
ME_SHA256=b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94
FORCE=0
[[ "${1:-}" == "--force-rebuild" ]] && FORCE=1

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install_minkowski_engine: torch is not importable by $PYTHON; install the project first (pip install -e .)" >&2
    exit 1
fi

key=$("$PYTHON" -c 'import sys, torch; v = torch.__version__.replace("+", "_"); print(f"torch{v}-cp{sys.version_info[0]}{sys.version_info[1]}")')
cache_root=${SCENE_KD_CACHE:-$HOME/.cache/scene_kd}/minkowski
wheel_dir=$cache_root/$key
mkdir -p "$wheel_dir"

if "$PYTHON" -c "import MinkowskiEngine" 2>/dev/null && [[ $FORCE == 0 ]]; then
    echo "install_minkowski_engine: MinkowskiEngine is already importable; nothing to do"
    exit 0
fi

install_cached_wheel() {
    local wheel
    wheel=$(ls "$wheel_dir"/[Mm]inkowski[Ee]ngine-${ME_VERSION}-*.whl 2>/dev/null | head -n 1 || true)
    [[ -n "$wheel" ]] || return 1
    echo "install_minkowski_engine: installing cached wheel $wheel"
    "$PYTHON" -m pip install --no-deps --force-reinstall -q "$wheel"
}

if [[ $FORCE == 0 ]] && install_cached_wheel; then
    "$PYTHON" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'ok')"
    exit 0
fi

# System libraries: OpenBLAS headers and library, and ninja for a parallel build.
if ! ldconfig -p | grep -q libopenblas || [[ ! -e /usr/include/x86_64-linux-gnu/cblas.h && ! -e /usr/include/cblas.h && ! -e /usr/include/openblas/cblas.h ]]; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        echo "install_minkowski_engine: installing libopenblas-dev"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev >/dev/null
    else
        echo "install_minkowski_engine: libopenblas-dev is missing and cannot be installed here (needs root and apt-get)" >&2
        exit 1
    fi
fi
"$PYTHON" -m pip install -q ninja wheel

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Fetch the sdist from the simple index pip is configured with, and check its hash.
"$PYTHON" - "$ME_VERSION" "$ME_SHA256" <<'EOF'
import hashlib, re, subprocess, sys, urllib.parse, urllib.request
version, sha = sys.argv[1], sys.argv[2]
index = "https://pypi.org/simple"
try:
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True).stdout.strip()
    if configured.startswith("http"):
        index = configured.rstrip("/")
except OSError:
    pass
page = urllib.request.urlopen(f"{index}/minkowskiengine/", timeout=120).read().decode()
links = re.findall(rf'href="([^"]*MinkowskiEngine-{re.escape(version)}\.tar\.gz[^"]*)"', page)
if not links:
    sys.exit(f"MinkowskiEngine-{version}.tar.gz is not listed at {index}/minkowskiengine/")
url = links[0].split("#")[0]
if url.startswith("/") or not url.startswith("http"):
    url = urllib.parse.urljoin(f"{index}/minkowskiengine/", url)
data = urllib.request.urlopen(url, timeout=300).read()
digest = hashlib.sha256(data).hexdigest()
if digest != sha:
    sys.exit(f"MinkowskiEngine sdist sha256 mismatch: got {digest}, expected {sha}")
open(f"MinkowskiEngine-{version}.tar.gz", "wb").write(data)
print(f"install_minkowski_engine: fetched {url.rsplit('/', 1)[-1]} ({len(data)} bytes, sha256 ok)")
EOF

tar xzf "MinkowskiEngine-${ME_VERSION}.tar.gz"
cd "MinkowskiEngine-${ME_VERSION}"

# Python 3.10 removed the ABC aliases from `collections`.
grep -rl "from collections import" MinkowskiEngine | while read -r f; do
    sed -i -E 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/; s/^from collections import Sequence$/from collections.abc import Sequence/' "$f"
done
# setup.py uninstalls any installed copy with a bare `pip`; route it to this interpreter.
sed -i "s/run_command(\"pip\", \"uninstall\"/run_command(sys.executable, \"-m\", \"pip\", \"uninstall\"/" setup.py

flags=(--cpu_only --blas=openblas)
if [[ "${SCENE_KD_ME_CUDA:-0}" == 1 ]] && command -v nvcc >/dev/null; then
    flags=(--force_cuda --blas=openblas)
fi
echo "install_minkowski_engine: building MinkowskiEngine ${ME_VERSION} (${flags[*]}) with MAX_JOBS=${MAX_JOBS:=$(nproc)}; this takes a while"
export MAX_JOBS
"$PYTHON" setup.py -q bdist_wheel "${flags[@]}" > build.log 2>&1 || { tail -n 60 build.log >&2; echo "install_minkowski_engine: build failed (full log above)" >&2; exit 1; }

built=$(ls dist/[Mm]inkowski[Ee]ngine-${ME_VERSION}-*.whl)  # setuptools >= 75 writes the name in lower case
tmp_wheel="$wheel_dir/.$(basename "$built").part"
cp "$built" "$tmp_wheel"
mv "$tmp_wheel" "$wheel_dir/$(basename "$built")"
install_cached_wheel
cd /
"$PYTHON" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'ok')"
