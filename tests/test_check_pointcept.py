"""tools/check_pointcept.py on a stand-in Pointcept checkout (Pointcept itself is not installable here;
docs/pointcept.md records the tool's run on a real checkout). The stand-in has Pointcept's file layout
and contracts: package `__init__.py`s that must not run (they raise), `build_model` / `build_dataset`
registries, Pointcept's SpUNet written on spconv (tests/reference/pointcept_spunet.py), a ScanNetDataset
reading the processed output by Pointcept's rules (tests/pointcept_contract.py) with its val pipeline
(2 cm GridSample, `color / 255` then the normals), and a config file in Pointcept's form.

spconv's CPU forward is correct only with one torch thread; the tool sets it for the comparison.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("spconv.pytorch", reason="needs spconv 2.x (pip install -e .[dev]), the stand-in's network")

from pointcept_contract import write_scan  # noqa: E402
from test_pointcept_spconv import randomize_batch_norms  # noqa: E402

from scene_kd.models import build_student  # noqa: E402
from scene_kd.scannet.splits import write_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import check_pointcept  # noqa: E402
import make_data_efficient_subsets as subsets_tool  # noqa: E402
import preprocess_scannet  # noqa: E402

TRAIN, VAL = ["scene0000_00", "scene0001_00", "scene0002_00", "scene0003_00"], ["scene0004_00"]
NOT_RUN = "raise ImportError('Pointcept imports every model here; the check must not run this file')\n"
STAND_IN = {
    "pointcept/__init__.py": "",
    "pointcept/models/__init__.py": NOT_RUN,
    "pointcept/models/sparse_unet/__init__.py": NOT_RUN,
    "pointcept/datasets/__init__.py": NOT_RUN,
    "pointcept/models/builder.py": """
        MODELS = {}

        def build_model(cfg):
            cfg = dict(cfg)
            return MODELS[cfg.pop("type")](**cfg)
        """,
    "pointcept/models/sparse_unet/spconv_unet_v1m1_base.py": """
        from pointcept.models.builder import MODELS
        from reference.pointcept_spunet import SpUNetBase

        MODELS["SpUNet-v1m1"] = SpUNetBase
        """,
    "pointcept/datasets/builder.py": """
        DATASETS = {}

        def build_dataset(cfg):
            cfg = dict(cfg)
            return DATASETS[cfg.pop("type")](**cfg)
        """,
    "pointcept/datasets/scannet.py": """
        import numpy as np
        import torch
        from pointcept.datasets.builder import DATASETS
        from pointcept_contract import pointcept_data_list, pointcept_get_data

        class ScanNetDataset:
            def __init__(self, split="train", data_root="data/scannet", transform=None, lr_file=None,
                         la_file=None, ignore_index=-1, test_mode=False):
                self.data_root, self.ignore_index = data_root, ignore_index
                self.grid_size = next(t["grid_size"] for t in transform or [{"grid_size": 0.02}] if "grid_size" in t)
                self.data_list = pointcept_data_list(data_root, split, lr_file)
                self.la = torch.load(la_file) if la_file is not None else None

            def get_data(self, idx):
                return pointcept_get_data(self.data_list[idx], self.la, self.ignore_index)

            def __len__(self):
                return len(self.data_list)

            def __getitem__(self, idx):  # the val pipeline: GridSample, NormalizeColor, Collect
                data = self.get_data(idx)
                grid = np.floor(data["coord"] / self.grid_size).astype(np.int64)
                grid -= grid.min(0)
                _, first = np.unique(grid, axis=0, return_index=True)
                color = data["color"][first].astype(np.float32) / 255
                feat = np.concatenate([color, data["normal"][first].astype(np.float32)], 1)
                return {"grid_coord": torch.from_numpy(grid[first]), "feat": torch.from_numpy(feat),
                        "offset": torch.tensor([len(first)])}

        DATASETS["ScanNetDataset"] = ScanNetDataset
        """,
    "configs/scannet/semseg-spunet-v1m1-0-base.py": """
        _base_ = ["../_base_/default_runtime.py"]
        model = dict(type="DefaultSegmentor",
                     backbone=dict(type="SpUNet-v1m1", in_channels=6, num_classes=20,
                                   channels=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2)))
        dataset_type = "ScanNetDataset"
        data_root = "data/scannet"
        val_transform = [dict(type="GridSample", grid_size=0.02, mode="train", return_grid_coord=True)]
        data = dict(num_classes=20, ignore_index=-1,
                    train=dict(type=dataset_type, split="train", data_root=data_root, transform=val_transform),
                    val=dict(type=dataset_type, split="val", data_root=data_root, transform=val_transform))
        """,
}


@pytest.fixture(autouse=True)
def forget_pointcept():
    """The check imports the stand-in as `pointcept`: each test starts and ends without it."""
    def forget():
        for name in [n for n in sys.modules if n == "pointcept" or n.startswith("pointcept.")]:
            del sys.modules[name]
    forget()
    yield
    forget()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Pointcept")
    for name, text in STAND_IN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    raw, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("processed")
    for i, scene_id in enumerate(TRAIN + VAL):
        write_scan(raw, scene_id, seed=i)
    write_split(raw / "scannetv2_train.txt", TRAIN)
    write_split(raw / "scannetv2_val.txt", VAL)
    argv = ["--scannet-root", str(raw), "--out", str(out), "--frame-skip", "1", "--image-size", "8x6", "--no-progress"]
    assert preprocess_scannet.main(argv + ["--pointcept-layout"]) == 0
    assert subsets_tool.main([str(out), "--scene-percents", "50", "--point-counts", "5",
                              "--pointcept-tasks"]) == 0
    return out


def student_checkpoint(path: Path, in_channels: int, color_norm: str, in_features: str, seed: int = 0) -> Path:
    """A segmentation-style checkpoint of a SpUNet-v1m1 student with random weights and statistics,
    recording the input settings it was trained on."""
    torch.manual_seed(seed)
    net = build_student("SpUNet-v1m1", in_channels=in_channels, out_channels=None)
    randomize_batch_norms(net, seed=seed + 1)
    torch.save({"student_name": "SpUNet-v1m1", "model": net.state_dict(),
                "config": {"data": {"in_features": in_features, "color_norm": color_norm}}}, path)
    return path


def run_check(checkpoint: Path, checkout: Path, data: Path, *extra: str) -> int:
    return check_pointcept.main([str(checkpoint), "--pointcept-root", str(checkout), "--data", str(data), *extra])


def test_a_pointcept_ready_student_passes_every_check(checkout, data, tmp_path, capsys):
    checkpoint = student_checkpoint(tmp_path / "rgb.pth", 3, "unit", "rgb")
    assert run_check(checkpoint, checkout, data, "--scenes", "1") == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert all(line.startswith("ok ") for line in table), printed
    rows = "\n".join(table)
    assert "stem widened to 6 channels, no head exported" in rows and "fresh head: backbone.final.weight" in rows
    assert f"ScanNetDataset finds {len(TRAIN)} scenes, splits/train.txt lists {len(TRAIN)}" in rows
    assert "lr_file tasks/scenes/50.txt" in rows and "2 scenes; scenes_50pct.txt lists 2" in rows
    assert "the same points as points_5.json" in rows
    assert "are the student's inputs (data.in_features=rgb, data.color_norm=unit)" in rows
    assert sum("outputs scene0004_00" in line and "float64" in line for line in table) == 2  # eval and train
    assert f"all {len(table)} checks passed" in printed


def test_other_colour_normalisation_fails_the_input_check(checkout, data, tmp_path, capsys):
    checkpoint = student_checkpoint(tmp_path / "symmetric.pth", 6, "symmetric", "rgb+normal")
    assert run_check(checkpoint, checkout, data, "--scenes", "1", "--dtype", "float32") == 1
    captured = capsys.readouterr()
    assert "FAIL input features scene0004_00" in captured.out
    assert "data.color_norm=symmetric" in captured.out and "pretrain with data.color_norm=unit" in captured.out
    assert "ok   outputs scene0004_00 (eval)" in captured.out  # the network is the same all the same
    assert captured.err.count("\n") == 1 and captured.err.startswith("check_pointcept: 1 of ")


def test_weights_of_another_shape_are_one_line_naming_the_tensor(checkout, data, tmp_path, capsys):
    checkpoint = student_checkpoint(tmp_path / "rgb.pth", 3, "unit", "rgb")
    exported = tmp_path / "spunet.pth"  # exported without --in-channels 6: Pointcept's config feeds 6
    from scene_kd.interop.export import export_checkpoint
    export_checkpoint(checkpoint, "pointcept-spunet", exported)
    assert run_check(exported, checkout, data) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "backbone.conv_input.0.weight has shape (32, 5, 5, 5, 3)" in err
    assert "export with --in-channels" in err and "Traceback" not in err


def test_a_directory_that_is_not_a_checkout_is_refused(data, tmp_path, capsys):
    checkpoint = student_checkpoint(tmp_path / "rgb.pth", 3, "unit", "rgb")
    assert run_check(checkpoint, tmp_path, data) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Pointcept checkout" in err
    assert "pointcept" not in sys.modules
