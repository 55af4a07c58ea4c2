"""Pointcept's own code, imported from a user's checkout, for `tools/check_pointcept.py`.

Pointcept is not a package one installs: its `pointcept/models/__init__.py` and
`pointcept/datasets/__init__.py` import every model and data set it has (with their compiled
dependencies: torch_scatter, torch_cluster, peft, flash_attn, ...). To run the few modules a SpUNet
finetune on ScanNet goes through, `import_pointcept` registers those two packages (and
`pointcept.models.sparse_unet`) by path without running their `__init__.py`, then imports, unchanged:
- `pointcept.models.sparse_unet.spconv_unet_v1m1_base` (registers "SpUNet-v1m1"; needs spconv,
  torch_geometric, timm) and `pointcept.models.builder.build_model`;
- `pointcept.datasets.scannet` (registers ScanNetDataset; needs scipy, torchvision, PIL, termcolor) and
  `pointcept.datasets.builder.build_dataset`.
Importing modifies `sys.modules` (the `pointcept` entries), which is why only the check tool does it.

`read_pointcept_config` reads a Pointcept config file as Pointcept's `Config.fromfile` does for the
keys used here (`model`, `data`): the file is plain Python; `_base_` files are not merged (neither key
comes from them in the ScanNet configs). `pointcept_weight_keys` is the key rule of Pointcept's
`CheckpointLoader` hook (pointcept/engines/hooks/misc.py) on one process with its default
`keywords=""`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import runpy
import subprocess
import sys
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SPUNET_MODULE = "pointcept.models.sparse_unet.spconv_unet_v1m1_base"
SCANNET_MODULE = "pointcept.datasets.scannet"
# Packages whose __init__.py imports every model / data set: registered by path, not run.
_PACKAGES_NOT_RUN = ("pointcept", "pointcept.models", "pointcept.models.sparse_unet", "pointcept.datasets")
# Where a missing dependency comes from, when its pip name differs from the import name.
_PIP_NAMES = {"spconv": "spconv-cu120 (or spconv for CPU)", "PIL": "pillow", "timm": "timm"}


@dataclass(frozen=True)
class PointceptCode:
    """The functions of a Pointcept checkout that a SpUNet finetune on ScanNet runs."""

    root: Path
    commit: str  # "d74c646" or "unknown" (not a git work tree)
    build_model: object  # pointcept.models.builder.build_model(cfg) -> nn.Module
    build_dataset: object  # pointcept.datasets.builder.build_dataset(cfg) -> Dataset


def _checkout_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _register_package(name: str, path: Path) -> None:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    module.__package__ = name
    sys.modules[name] = module


def _import(name: str, root: Path):
    try:
        with warnings.catch_warnings():  # deprecation notes of Pointcept's dependencies, not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing == "pointcept" or not missing:
            raise ImportError(f"{root}: Pointcept's {name} imports {err.name}, which this checkout lacks "
                              "(another Pointcept version?)") from err
        pip = _PIP_NAMES.get(missing, missing.replace("_", "-"))
        raise ImportError(f"{root}: Pointcept's {name} needs the Python package {missing!r}, which is not "
                          f"installed (pip install {pip})") from err


def import_pointcept(root: str | os.PathLike) -> PointceptCode:
    """Import the SpUNet and ScanNet code of the Pointcept checkout at `root` (see the module text).
    A directory that is not a checkout, or a missing dependency, is an ImportError naming it."""
    root = Path(root).expanduser().resolve()
    for module in (SPUNET_MODULE, SCANNET_MODULE):
        if not (root / (module.replace(".", "/") + ".py")).is_file():
            raise ImportError(f"{root}: not a Pointcept checkout (no {module.replace('.', '/')}.py); pass the "
                              "directory that holds pointcept/ and configs/")
    loaded = sys.modules.get("pointcept")
    if loaded is not None and Path(getattr(loaded, "__path__", [""])[0]) != root / "pointcept":
        raise ImportError(f"{root}: another Pointcept ({loaded.__path__[0]}) is already imported in this process")
    for name in _PACKAGES_NOT_RUN:
        if name not in sys.modules:
            _register_package(name, root.joinpath(*name.split(".")))
    _import(SPUNET_MODULE, root)
    _import(SCANNET_MODULE, root)
    return PointceptCode(root=root, commit=_checkout_commit(root),
                         build_model=_import("pointcept.models.builder", root).build_model,
                         build_dataset=_import("pointcept.datasets.builder", root).build_dataset)


def read_pointcept_config(path: str | os.PathLike) -> dict:
    """The top-level names of a Pointcept config file (plain Python, e.g.
    configs/scannet/semseg-spunet-v1m1-0-base.py); a file that does not run is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Pointcept config file")
    try:
        names = runpy.run_path(str(path))
    except Exception as err:  # a config is user code: whatever it raises is reported as one line
        raise ValueError(f"{path}: the config does not run: {type(err).__name__}: {err}") from err
    return {k: v for k, v in names.items() if not k.startswith("__")}


def pointcept_weight_keys(state: Mapping[str, object]) -> dict[str, object]:
    """`checkpoint["state_dict"]` as Pointcept's CheckpointLoader hands it to `model.load_state_dict` on
    one process: `module.` is put in front of every key that lacks it, then the first 7 characters are
    cut, so the net effect is a leading `module.` removed."""
    out = {}
    for key, value in state.items():
        key = key if key.startswith("module.") else "module." + key
        out[key[len("module."):]] = value
    return out
