"""Pointcept's view of a processed output: `--pointcept-layout` gives `<out>/{train,val,test}/<scene>`
and `--pointcept-tasks` the data-efficient `lr_file` / `la_file`. The oracle is a re-implementation of
how Pointcept's ScanNetDataset finds scenes and labelled points (pointcept/datasets/scannet.py and
defaults.py: `get_data_list`, `get_data`), which must find exactly the scenes and labels of scene_kd's
own split and subset files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scene_kd.data.scenes import load_scene, read_point_subset, read_scene_subset, resolve_scene_ids
from scene_kd.scannet import pointcept_layout
from scene_kd.scannet.splits import read_split, write_split

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import make_data_efficient_subsets as subsets_tool  # noqa: E402
import preprocess_scannet  # noqa: E402
from pointcept_contract import VALID_ASSETS, pointcept_data_list, pointcept_get_data, write_scan  # noqa: E402

TRAIN, VAL, TEST = ["scene0000_00", "scene0001_00", "scene0002_00"], ["scene0003_00"], ["scene0707_00"]


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    for i, scene_id in enumerate(TRAIN + VAL + TEST):
        write_scan(root, scene_id, seed=i, test=scene_id in TEST)
    for split, ids in (("train", TRAIN), ("val", VAL)):  # no test list: the test scan goes to test/ all the same
        write_split(root / f"scannetv2_{split}.txt", ids)
    return root


def preprocess(raw: Path, out: Path, *extra: str) -> int:
    argv = ["--scannet-root", str(raw), "--out", str(out), "--frame-skip", "1", "--image-size", "8x6", "--no-progress"]
    return preprocess_scannet.main(argv + list(extra))


@pytest.fixture(scope="module")
def out(raw_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("processed")
    assert preprocess(raw_root, out, "--pointcept-layout") == 0
    return out


# ------------------------------------------------------------------ tests


def test_layout_is_what_pointcept_reads(out, capsys):
    for split, ids in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        found = pointcept_data_list(str(out), split)
        assert sorted(os.path.basename(p) for p in found) == ids
        if split != "test":
            assert ids == read_split(out / "splits" / f"{split}.txt")
        for path in found:
            assert os.readlink(path) == f"../{os.path.basename(path)}"  # one copy of the data
            data = pointcept_get_data(path)
            ours = load_scene(out, os.path.basename(path), VALID_ASSETS)
            for name in ("coord", "color", "normal", "instance"):
                np.testing.assert_array_equal(data[name], ours[name])
            np.testing.assert_array_equal(data["segment"], ours["segment20"])
    # scene_kd's own readers see the scenes once, never the links
    assert resolve_scene_ids(out, None) == sorted(TRAIN + VAL + TEST)
    assert resolve_scene_ids(out, "train") == TRAIN


def test_rerun_follows_the_splits_and_refuses_foreign_paths(raw_root, out, tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "scans").symlink_to(raw_root / "scans")  # the same scans with other split files
    write_split(raw / "scannetv2_train.txt", TRAIN[:2])
    write_split(raw / "scannetv2_val.txt", VAL + TRAIN[2:])
    work = tmp_path / "out"
    assert preprocess(raw_root, work, "--scenes", *TRAIN, *VAL, "--pointcept-layout") == 0
    capsys.readouterr()
    assert preprocess(raw, work, "--pointcept-layout") == 0
    assert "4 skipped" in capsys.readouterr().out
    assert sorted(os.listdir(work / "train")) == TRAIN[:2]  # the stale link left
    assert sorted(os.listdir(work / "val")) == sorted(VAL + TRAIN[2:])
    (work / "val" / "scene0003_00").unlink()
    (work / "val" / "scene0003_00").mkdir()  # the user's own directory: never replaced
    assert preprocess(raw, work, "--pointcept-layout") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{work / 'val' / 'scene0003_00'}: not a link to ../scene0003_00" in err


def test_copies_where_links_are_impossible(out, tmp_path, monkeypatch):
    work = tmp_path / "out"
    for scene_id in TRAIN:  # hard links of the processed arrays: no copy of the data here either
        (work / scene_id).mkdir(parents=True)
        for f in (out / scene_id).glob("*.*"):
            os.link(f, work / scene_id / f.name)
    (work / "splits").mkdir()
    write_split(work / "splits" / "train.txt", TRAIN)

    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(pointcept_layout.os, "symlink", no_symlinks)
    pointcept_layout.check_pointcept_layout(work, TRAIN)
    notes = pointcept_layout.write_pointcept_layout(work, TRAIN)
    assert "3 as copies" in notes[0]
    for path in pointcept_data_list(str(work), "train"):
        assert not os.path.islink(path) and pointcept_layout.entry_kind(Path(path), work / Path(path).name) == "copy"
        np.testing.assert_array_equal(pointcept_get_data(path)["coord"], load_scene(work, Path(path).name)["coord"])
    # A scene redone since (another manifest) gets a fresh copy on the next run.
    manifest = work / TRAIN[0] / "manifest.json"
    manifest.unlink()
    manifest.write_text(json.dumps({"scene_id": TRAIN[0], "frame_ids": [0], "redone": True}))
    pointcept_layout.write_pointcept_layout(work, TRAIN)
    marker = json.loads((work / "train" / TRAIN[0] / pointcept_layout.COPY_MARKER).read_text())
    assert marker["manifest_sha256"] == pointcept_layout._manifest_digest(work / TRAIN[0])


def test_data_efficient_files_give_pointcept_the_same_labels(out, tmp_path, capsys):
    subsets, tasks = tmp_path / "subsets", out / "tasks"
    argv = [str(out), "--out", str(subsets), "--scene-percents", "10", "50", "100", "--point-counts", "5", "20",
            "--pointcept-tasks"]
    assert subsets_tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"warning: {tasks / 'scenes' / '10.txt'}: one scene" in printed  # Pointcept's 0-d np.loadtxt
    with pytest.raises(TypeError):
        pointcept_data_list(str(out), "train", str(tasks / "scenes" / "10.txt"))
    for pct in (50, 100):
        ours = read_scene_subset(subsets / f"scenes_{pct}pct.txt")
        found = pointcept_data_list(str(out), "train", str(tasks / "scenes" / f"{pct}.txt"))
        assert [os.path.basename(p) for p in found] == ours and all(os.path.isdir(p) for p in found)
    assert len(read_scene_subset(subsets / "scenes_50pct.txt")) == 2
    for n in (5, 20):
        labelled = read_point_subset(subsets / f"points_{n}.json")
        la = torch.load(tasks / "points" / f"points{n}")  # torch's default: weights_only=True since 2.6
        assert sorted(la) == sorted(labelled) == TRAIN
        for path in pointcept_data_list(str(out), "train"):
            scene_id = os.path.basename(path)
            segment20 = load_scene(out, scene_id, ("segment20",))["segment20"]
            expected = np.full_like(segment20, -1)
            expected[labelled[scene_id]] = segment20[labelled[scene_id]]
            np.testing.assert_array_equal(pointcept_get_data(path, la)["segment"], expected)
            assert (expected >= 0).sum() == min(n, (segment20 >= 0).sum())
    before = (tasks / "points" / "points20").read_bytes()
    assert subsets_tool.main(argv) == 0  # the same draw again: the same bytes
    assert (tasks / "points" / "points20").read_bytes() == before
    capsys.readouterr()
    assert subsets_tool.main(argv + [str(tasks), "--seed", "1"]) == 1  # another draw into the same files
    assert "come from another draw: seed 0 (this draw: 1)" in capsys.readouterr().err
    official = tmp_path / "official"
    (official / "scenes").mkdir(parents=True)
    (official / "scenes" / "10.txt").write_text("scene0000_00\n")
    assert subsets_tool.main(argv + [str(official)]) == 1
    assert f"{official / 'scenes' / '10.txt'}: exists and was not written by scene_kd" in capsys.readouterr().err
    assert subsets_tool.main([str(out), "--split", "val", "--pointcept-tasks", str(tmp_path / "t")]) == 1
    assert "need split 'train'" in capsys.readouterr().err
