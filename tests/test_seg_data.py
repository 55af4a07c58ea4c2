"""scene_kd.data.seg_augment, seg_dataset and subsets: one label per voxel from its kept point,
inverse maps, the voxel cap, deterministic augmentations, elastic distortion, color jitter,
labelled-point masking, nested subsets and their files, collate offsets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pair_checks import make_processed_scans

from scene_kd.data.scenes import read_point_subset, read_scene_subset
from scene_kd.data.seg_augment import (
    SegAugmentation,
    chromatic_auto_contrast,
    chromatic_jitter,
    chromatic_translation,
    elastic_displacement,
    elastic_distortion,
)
from scene_kd.data.seg_dataset import SegmentationDataset, collate_segmentation, crop_nearest_voxels
from scene_kd.data.subsets import (
    draw_point_subsets,
    draw_scene_subsets,
    make_data_efficient_subsets,
)

VOXEL = 0.1  # the synthetic scans' vertices are 8 cm apart: several points per voxel


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("seg"), num_scenes=2, num_frames=2)


def write_scene(root, scene_id, coord, color, segment20, normal=None, split="train"):
    """A minimal processed scene: the per-point arrays, a manifest and a split file."""
    scene = root / scene_id
    scene.mkdir(parents=True)
    np.save(scene / "coord.npy", np.asarray(coord, np.float32))
    np.save(scene / "color.npy", np.asarray(color, np.uint8))
    np.save(scene / "segment20.npy", np.asarray(segment20, np.int64))
    if normal is not None:
        np.save(scene / "normal.npy", np.asarray(normal, np.float32))
    (scene / "manifest.json").write_text(json.dumps({"scene_id": scene_id, "frame_ids": []}))
    (root / "splits").mkdir(exist_ok=True)
    with open(root / "splits" / f"{split}.txt", "a") as f:
        f.write(scene_id + "\n")
    return scene


@pytest.fixture()
def tiny_root(tmp_path):
    """Four points on the x axis: after centring (x - 0.025) and 2 cm voxels, points 0 and 1 share
    voxel x = -2, point 2 is in x = 0, point 3 in x = 1."""
    write_scene(
        tmp_path, "scene9000_00",
        coord=[[0.0, 0, 0], [0.004, 0, 0], [0.03, 0, 0], [0.05, 0, 0]],
        color=[[0, 0, 0], [255, 255, 255], [51, 102, 153], [255, 0, 0]],
        segment20=[-1, 3, 5, 7],
        normal=[[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]],
    )
    return tmp_path


def assert_samples_equal(a, b):
    assert a["scene_id"] == b["scene_id"]
    for key in ("coords", "feats", "labels", "inverse_map", "point_labels"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


# ---------------------------------------------------------------------------- voxels and labels


def test_tiny_scene_hand_computed(tiny_root):
    ds = SegmentationDataset(tiny_root, "train", voxel_size=0.02, augment=False, max_voxels=None,
                             in_features="rgb+normal")
    s = ds[0]
    assert s["coords"].dtype == torch.int32 and s["feats"].dtype == torch.float32
    assert s["labels"].dtype == torch.int64 and s["inverse_map"].dtype == torch.int64
    assert s["coords"].tolist() == [[-2, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert s["inverse_map"].tolist() == [0, 0, 1, 2]
    assert s["labels"].tolist() == [-1, 5, 7]  # voxel 0 keeps point 0 (lowest index), unlabelled
    assert s["point_labels"].tolist() == [-1, 3, 5, 7]
    expected = [[-1, -1, -1, 0, 0, 1], [51 / 127.5 - 1, 102 / 127.5 - 1, 153 / 127.5 - 1, 1, 0, 0],
                [1, -1, -1, 0, 0, 0]]
    np.testing.assert_allclose(s["feats"].numpy(), expected, atol=1e-6)
    assert ds.in_channels == 6


def test_tiny_scene_labelled_point_is_kept(tiny_root):
    (tiny_root / "points.json").write_text(json.dumps({"scene9000_00": [1, 3]}))
    ds = SegmentationDataset(tiny_root, "train", voxel_size=0.02, augment=False, max_voxels=None,
                             labelled_points=tiny_root / "points.json")
    s = ds[0]
    # Voxel 0 now keeps the labelled point 1 (its label and color); point 2 is masked.
    assert s["labels"].tolist() == [3, -1, 7]
    np.testing.assert_allclose(s["feats"][0].numpy(), [1, 1, 1])
    assert s["point_labels"].tolist() == [-1, 3, 5, 7]  # evaluation still sees every label


def test_voxel_label_is_kept_point_label(data_root):
    ds = SegmentationDataset(data_root, None, voxel_size=VOXEL, augment=False, max_voxels=None)
    assert len(ds) == 2
    for index in range(len(ds)):
        s = ds[index]
        coords, labels, inverse = s["coords"].numpy(), s["labels"].numpy(), s["inverse_map"].numpy()
        point_labels = np.load(data_root / s["scene_id"] / "segment20.npy")
        np.testing.assert_array_equal(s["point_labels"].numpy(), point_labels)
        assert len(coords) < len(point_labels) / 2  # voxels really merge points
        assert len(np.unique(coords, axis=0)) == len(coords)
        # Kept point = the lowest-index point of each voxel; the voxel's label is its label.
        kept = np.full(len(coords), len(inverse))
        np.minimum.at(kept, inverse, np.arange(len(inverse)))
        np.testing.assert_array_equal(labels, point_labels[kept])
        colors = np.load(data_root / s["scene_id"] / "color.npy")
        np.testing.assert_allclose(s["feats"].numpy(), colors[kept] / 127.5 - 1, atol=1e-6)


def test_inverse_map_carries_voxel_values_to_points(data_root):
    ds = SegmentationDataset(data_root, "train", voxel_size=VOXEL, augment=False, max_voxels=None)
    s = ds[0]
    points = np.load(data_root / s["scene_id"] / "coord.npy").astype(np.float64)
    low, high = points.min(0), points.max(0)
    centred = points - [(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]]
    inverse = s["inverse_map"].numpy()
    assert inverse.min() == 0 and inverse.max() == len(s["coords"]) - 1
    # Every point lands in the voxel whose row the inverse map names.
    np.testing.assert_array_equal(s["coords"].numpy()[inverse], np.floor(centred / VOXEL).astype(np.int64))
    # Voxel predictions (here the voxel labels) carried back agree with most point labels.
    carried = s["labels"].numpy()[inverse]
    valid = s["point_labels"].numpy() >= 0
    assert (carried[valid] == s["point_labels"].numpy()[valid]).mean() > 0.8


def test_augmented_voxels_still_carry_back(data_root):
    ds = SegmentationDataset(data_root, None, voxel_size=VOXEL, max_voxels=None)
    s = ds[1]
    inverse = s["inverse_map"].numpy()
    assert (inverse >= 0).all() and len(np.unique(inverse)) == len(s["coords"])
    kept = np.full(len(s["coords"]), len(inverse))
    np.minimum.at(kept, inverse, np.arange(len(inverse)))
    np.testing.assert_array_equal(s["labels"].numpy(), s["point_labels"].numpy()[kept])
    assert s["feats"].min() >= -1 and s["feats"].max() <= 1


def test_normals_rotated_with_points(data_root):
    plain = SegmentationDataset(data_root, "train", voxel_size=VOXEL, augment=False, max_voxels=None,
                                in_features="rgb+normal")[0]
    rotated_only = {"scale": None, "flip_x": 0, "flip_y": 0, "elastic": None}
    augmented = SegmentationDataset(data_root, "train", voxel_size=VOXEL, augment=rotated_only,
                                    max_voxels=None, in_features="rgb+normal")[0]
    normals = np.load(data_root / plain["scene_id"] / "normal.npy").astype(np.float64)
    kept = np.full(len(augmented["coords"]), len(normals))
    np.minimum.at(kept, augmented["inverse_map"].numpy(), np.arange(len(normals)))
    got = augmented["feats"][:, 3:].numpy().astype(np.float64)
    np.testing.assert_allclose(got[:, 2], normals[kept, 2], atol=1e-6)  # rotation about z
    np.testing.assert_allclose(np.linalg.norm(got[:, :2], axis=1), np.linalg.norm(normals[kept, :2], axis=1), atol=1e-5)
    assert not np.allclose(got, normals[kept], atol=1e-3)
    assert plain["feats"].shape[1] == 6


# ---------------------------------------------------------------------------------------- crop


def test_crop_nearest_voxels_is_a_ball():
    coords = np.random.default_rng(0).integers(-50, 50, size=(2000, 3)).astype(np.int32)
    keep = crop_nearest_voxels(coords, 300, np.random.default_rng(7))
    centre = coords[np.random.default_rng(7).integers(len(coords))]
    assert len(keep) == 300 and (np.diff(keep) > 0).all()
    distance2 = ((coords.astype(np.int64) - centre) ** 2).sum(1)
    dropped = np.setdiff1d(np.arange(len(coords)), keep)
    assert distance2[keep].max() <= distance2[dropped].min()


def test_max_voxels_crop_respects_cap_and_is_compact(data_root):
    voxel = 0.2  # few enough voxels to test every kept voxel as the ball's centre
    full = SegmentationDataset(data_root, "train", voxel_size=voxel, max_voxels=None, seed=3)[0]
    cap = len(full["coords"]) // 4
    crop = SegmentationDataset(data_root, "train", voxel_size=voxel, max_voxels=cap, seed=3)[0]
    assert len(crop["coords"]) == cap == len(crop["feats"]) == len(crop["labels"])
    # The crop draws its own generator: the augmentation is the one of the uncropped sample.
    full_rows = {tuple(c): i for i, c in enumerate(full["coords"].tolist())}
    rows = np.array([full_rows[tuple(c)] for c in crop["coords"].tolist()])
    torch.testing.assert_close(crop["labels"], full["labels"][rows])
    # Compact: a ball around one of the kept voxels holds exactly the kept ones.
    all_coords, kept_coords = full["coords"].numpy().astype(np.int64), crop["coords"].numpy().astype(np.int64)
    inside = np.zeros(len(all_coords), bool)
    inside[rows] = True
    d_all = ((all_coords[:, None, :] - kept_coords[None, :, :]) ** 2).sum(2)  # [V, cap]
    radius_in = np.where(inside[:, None], d_all, -1).max(0)
    radius_out = np.where(~inside[:, None], d_all, np.iinfo(np.int64).max).min(0)
    assert (radius_in <= radius_out).any()
    extent = lambda c: c.max(0) - c.min(0)  # noqa: E731
    assert np.prod(extent(kept_coords)[:2]) < 0.6 * np.prod(extent(all_coords)[:2])
    # Points cropped away map to -1; the others to the voxel they map to uncropped.
    inverse, full_inverse = crop["inverse_map"].numpy(), full["inverse_map"].numpy()
    np.testing.assert_array_equal(inverse >= 0, inside[full_inverse])
    np.testing.assert_array_equal(rows[inverse[inverse >= 0]], full_inverse[inverse >= 0])


def test_validation_keeps_every_point(data_root):
    ds = SegmentationDataset(data_root, "val", voxel_size=0.02, augment=False, max_voxels=None)
    s = ds[0]
    assert (s["inverse_map"] >= 0).all() and len(s["inverse_map"]) == len(s["point_labels"])
    assert_samples_equal(s, SegmentationDataset(data_root, "val", augment=False, max_voxels=None, seed=9)[0])


# ---------------------------------------------------------------------------------- determinism


def test_augmentation_deterministic_per_seed_epoch_index(data_root):
    ds = SegmentationDataset(data_root, "train", voxel_size=VOXEL, max_voxels=2000, seed=1)
    first = ds[0]
    assert_samples_equal(first, ds[0])
    assert_samples_equal(first, SegmentationDataset(data_root, "train", voxel_size=VOXEL, max_voxels=2000, seed=1)[0])
    ds.set_epoch(1)
    other_epoch = ds[0]
    assert not torch.equal(first["coords"], other_epoch["coords"])
    ds.set_epoch(0)
    assert_samples_equal(first, ds[0])
    other_seed = SegmentationDataset(data_root, "train", voxel_size=VOXEL, max_voxels=2000, seed=2)[0]
    assert not torch.equal(first["feats"], other_seed["feats"])


def test_augmentation_streams_independent():
    points = np.random.default_rng(0).uniform(0, 3, (500, 3))
    colors = np.random.default_rng(1).uniform(0, 255, (500, 3))
    full = SegAugmentation().apply(np.random.default_rng(5), points, colors)
    no_color = SegAugmentation(auto_contrast_p=0, color_translation_p=0, color_jitter_p=0).apply(
        np.random.default_rng(5), points, colors)
    np.testing.assert_array_equal(full[0], no_color[0])  # same geometry
    np.testing.assert_array_equal(no_color[1], colors)
    assert not np.array_equal(full[1], colors)


# ------------------------------------------------------------------------------ elastic, colors


def test_elastic_distortion_bounded_and_smooth():
    rng = np.random.default_rng(0)
    line = np.stack([np.arange(0, 4, 0.01), np.full(400, 1.0), np.full(400, 1.0)], axis=1)
    cloud = np.concatenate([line, rng.uniform(0, 4, (3000, 3))])
    for granularity, magnitude in ((0.2, 0.4), (0.8, 1.6)):
        d = elastic_displacement(cloud, np.random.default_rng(1), granularity, magnitude)
        # Smoothed unit noise: std ~0.11 (each axis's blur keeps 19/81 of the variance), so the moves stay well below
        # the magnitude, yet the distortion is real.
        assert np.abs(d).max() < magnitude
        assert np.abs(d).mean() > 0.01 * magnitude
        # Smooth: points 1 cm apart move much more alike than points 1 m apart.
        along = d[:400]
        near = np.abs(np.diff(along, axis=0)).mean()
        far = np.abs(along[100:] - along[:-100]).mean()
        assert near < 0.1 * far
    np.testing.assert_array_equal(
        elastic_distortion(cloud, np.random.default_rng(3)), elastic_distortion(cloud, np.random.default_rng(3))
    )
    assert elastic_displacement(np.zeros((0, 3)), rng, 0.2, 0.4).shape == (0, 3)


def test_elastic_distortion_matches_reference_formulation():
    """SpatioTemporalSegmentation's recipe written with scipy: convolve then RegularGridInterpolator."""
    ndimage = pytest.importorskip("scipy.ndimage")
    interpolate = pytest.importorskip("scipy.interpolate")
    points = np.random.default_rng(2).uniform(-1, 2, (800, 3))
    granularity, magnitude = 0.2, 0.4
    ours = elastic_displacement(points, np.random.default_rng(4), granularity, magnitude)
    rng = np.random.default_rng(4)
    low = points.min(0)
    dims = ((points - low).max(0) // granularity).astype(int) + 3
    noise = rng.standard_normal((*dims, 3))
    for _ in range(2):
        for shape in ((3, 1, 1, 1), (1, 3, 1, 1), (1, 1, 3, 1)):
            noise = ndimage.convolve(noise, np.ones(shape) / 3, mode="constant", cval=0)
    axes = [np.linspace(a, b, n) for a, b, n in zip(low - granularity, low + granularity * (dims - 2), dims, strict=True)]
    reference = interpolate.RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0)(points)
    np.testing.assert_allclose(ours, reference * magnitude, atol=1e-12)


def test_color_jitter_in_range_and_hand_checked():
    rng = np.random.default_rng(0)
    colors = np.concatenate([np.zeros((50, 3)), np.full((50, 3), 255.0), rng.uniform(0, 255, (100, 3))])
    for seed in range(20):
        for op in (lambda c, r: chromatic_auto_contrast(c, r, p=1.0),
                   lambda c, r: chromatic_translation(c, r, p=1.0, ratio=0.5),
                   lambda c, r: chromatic_jitter(c, r, p=1.0, std=0.5)):
            out = op(colors, np.random.default_rng(seed))
            assert out.shape == colors.shape and out.min() >= 0 and out.max() <= 255
    # Auto-contrast with blend 1 stretches each channel to [0, 255]; a constant channel stays.
    dull = np.array([[100.0, 50, 7], [150, 60, 7], [125, 55, 7]])
    stretched = chromatic_auto_contrast(dull, np.random.default_rng(0), p=1.0, blend=1.0)
    np.testing.assert_allclose(stretched, [[0, 0, 7], [255, 255, 7], [127.5, 127.5, 7]])
    half = chromatic_auto_contrast(dull, np.random.default_rng(0), p=1.0, blend=0.5)
    np.testing.assert_allclose(half[:, 0], [50, 202.5, 126.25])
    # Translation: one offset per channel, the same for every point.
    mid = np.full((10, 3), 128.0)
    moved = chromatic_translation(mid, np.random.default_rng(1), p=1.0, ratio=0.05)
    assert np.abs(moved - 128).max() <= 0.05 * 255 and (moved == moved[0]).all() and not (moved == 128).all()
    # p = 0: untouched.
    np.testing.assert_array_equal(chromatic_jitter(dull, np.random.default_rng(0), p=0.0), dull)


def test_augmentation_settings_validated():
    with pytest.raises(ValueError, match="elastic"):
        SegAugmentation(elastic=((0.0, 1.0),))
    with pytest.raises(ValueError, match="color_jitter_p"):
        SegAugmentation(color_jitter_p=2)
    assert SegAugmentation(elastic=[[0.2, 0.4]], scale=[0.8, 1.2]).elastic == ((0.2, 0.4),)


# -------------------------------------------------------------------------- labelled points, subsets


def test_labelled_points_mask_other_labels(data_root, tmp_path):
    out = tmp_path / "subsets"
    make_data_efficient_subsets(data_root, out, point_counts=(20,), scene_percents=(50,), seed=0)
    ds = SegmentationDataset(data_root, "train", voxel_size=VOXEL, max_voxels=None,
                             labelled_points=out / "points_20.json")
    points = read_point_subset(out / "points_20.json")
    s = ds[0]
    listed = points[s["scene_id"]]
    assert len(listed) == 20 and (s["point_labels"].numpy()[listed] >= 0).all()
    labels, inverse = s["labels"].numpy(), s["inverse_map"].numpy()
    labelled_voxels = np.unique(inverse[listed])
    assert set(np.flatnonzero(labels >= 0)) == set(labelled_voxels)  # every other voxel is -1
    for v in labelled_voxels:
        in_voxel = listed[inverse[listed] == v]
        assert labels[v] == s["point_labels"].numpy()[in_voxel.min()]
    # A scene missing from the file is an error naming it.
    (tmp_path / "partial.json").write_text(json.dumps({s["scene_id"]: [0]}))
    with pytest.raises(ValueError, match="partial.json"):
        SegmentationDataset(data_root, ["scene0000_00", "scene0001_00"] if s["scene_id"] == "scene0000_00"
                            else ["scene0001_00", "scene0000_00"], labelled_points=tmp_path / "partial.json")


def test_scene_subsets_deterministic_nested_sized():
    ids = [f"scene{i:04d}_00" for i in range(1201)]
    subsets = draw_scene_subsets(ids, (1, 5, 10, 20), seed=0)
    assert {p: len(s) for p, s in subsets.items()} == {1: 12, 5: 60, 10: 120, 20: 240}
    assert set(subsets[1]) < set(subsets[5]) < set(subsets[10]) < set(subsets[20])
    assert subsets == draw_scene_subsets(list(reversed(ids)), (20, 10, 5, 1), seed=0)
    assert subsets[5] != draw_scene_subsets(ids, (5,), seed=1)[5]
    assert {p: len(s) for p, s in draw_scene_subsets(ids[:7], (1, 5, 20), seed=0).items()} == {1: 1, 5: 1, 20: 1}


def test_point_subsets_deterministic_nested_sized():
    rng = np.random.default_rng(0)
    labels = {f"scene{i:04d}_00": np.where(rng.uniform(size=500) < 0.3, -1, rng.integers(0, 20, 500)) for i in range(4)}
    labels["scene0100_00"] = np.array([-1, 4, -1, 2, 9])  # fewer valid points than asked
    subsets = draw_point_subsets(labels, (20, 50, 100, 200), seed=0)
    for scene_id, scene_labels in labels.items():
        valid = int((scene_labels >= 0).sum())
        previous: set = set()
        for n in (20, 50, 100, 200):
            chosen = subsets[n][scene_id]
            assert len(chosen) == min(n, valid) == len(set(chosen))
            assert (scene_labels[chosen] >= 0).all() and chosen == sorted(chosen)
            assert previous <= set(chosen)
            previous = set(chosen)
    # A scene's draw depends on the seed and its id only.
    alone = draw_point_subsets({"scene0002_00": labels["scene0002_00"]}, (50,), seed=0)
    assert alone[50]["scene0002_00"] == subsets[50]["scene0002_00"]
    assert draw_point_subsets(labels, (50,), seed=1)[50]["scene0002_00"] != subsets[50]["scene0002_00"]


def test_subset_files_and_tool(data_root, tmp_path):
    import importlib.util
    import pathlib

    tool_path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "make_data_efficient_subsets.py"
    spec = importlib.util.spec_from_file_location("make_data_efficient_subsets", tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(data_root), "--out", str(tmp_path / "a"), "--seed", "4"]) == 0
    assert tool.main(["--root", str(data_root), "--out", str(tmp_path / "b"), "--seed", "4"]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([f"scenes_{p}pct.txt" for p in (1, 5, 10, 20)] +
                           [f"points_{n}.json" for n in (20, 50, 100, 200)] + ["subsets.json"])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert read_scene_subset(tmp_path / "a" / "scenes_1pct.txt") == ["scene0000_00"]  # train has one scene
    p20, p50 = (read_point_subset(tmp_path / "a" / f"points_{n}.json") for n in (20, 50))
    assert set(p20["scene0000_00"]) < set(p50["scene0000_00"]) and len(p50["scene0000_00"]) == 50
    assert not list((tmp_path / "a").glob(".*tmp*"))  # atomic writes leave no temporary file
    ds = SegmentationDataset(data_root, None, scene_subset=tmp_path / "a" / "scenes_1pct.txt")
    assert ds.scene_ids == ["scene0000_00"]
    (tmp_path / "bad.json").write_text('{"scene0000_00": [1, -2]}')
    with pytest.raises(ValueError, match="bad.json"):
        read_point_subset(tmp_path / "bad.json")


def test_scene_subset_outside_split_is_an_error(data_root, tmp_path):
    (tmp_path / "scenes.txt").write_text("scene0001_00\n")
    with pytest.raises(ValueError, match="scene0001_00"):
        SegmentationDataset(data_root, "train", scene_subset=tmp_path / "scenes.txt")


# ------------------------------------------------------------------------------------ file errors


def test_missing_or_ill_shaped_files_named(tiny_root):
    scene = tiny_root / "scene9000_00"
    (scene / "normal.npy").unlink()
    ds = SegmentationDataset(tiny_root, "train", in_features="rgb+normal")
    with pytest.raises(FileNotFoundError, match="normal.npy"):
        ds[0]
    np.save(scene / "color.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"color\.npy: expected integer \[N, 3\]"):
        SegmentationDataset(tiny_root, "train")[0]
    np.save(scene / "color.npy", np.zeros((4, 3), np.uint8))
    np.save(scene / "segment20.npy", np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"segment20\.npy: .*N = 4"):
        SegmentationDataset(tiny_root, "train")[0]
    (scene / "coord.npy").write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match="coord.npy"):
        SegmentationDataset(tiny_root, "train")[0]
    with pytest.raises(ValueError, match="in_features"):
        SegmentationDataset(tiny_root, "train", in_features="xyz")


# ------------------------------------------------------------------------------------- batching


def test_collate_offsets_hand_checked():
    def sample(n, scene_id, points):
        return {"coords": torch.arange(3 * n, dtype=torch.int32).reshape(n, 3), "feats": torch.full((n, 3), float(n)),
                "labels": torch.arange(n), "inverse_map": torch.zeros(points, dtype=torch.int64),
                "point_labels": torch.full((points,), -1), "scene_id": scene_id}

    batch = collate_segmentation([sample(2, "a", 5), sample(3, "b", 4)])
    assert batch["voxel_offsets"].tolist() == [0, 2, 5]
    assert batch["coordinates"].dtype == torch.int32
    assert batch["coordinates"][:, 0].tolist() == [0, 0, 1, 1, 1]
    assert batch["coordinates"][2].tolist() == [1, 0, 1, 2]
    assert batch["labels"].tolist() == [0, 1, 0, 1, 2]
    assert batch["features"][:, 0].tolist() == [2, 2, 3, 3, 3]
    assert [len(m) for m in batch["inverse_maps"]] == [5, 4] and batch["scene_ids"] == ["a", "b"]
    assert [len(p) for p in batch["point_labels"]] == [5, 4]


def test_dataloader_num_workers_0(data_root):
    ds = SegmentationDataset(data_root, None, voxel_size=VOXEL, max_voxels=3000)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, num_workers=0,
                                         collate_fn=collate_segmentation)
    batch = next(iter(loader))
    offsets = batch["voxel_offsets"]
    assert len(batch["scene_ids"]) == 2 and offsets[-1] == len(batch["coordinates"]) == len(batch["labels"])
    for b in range(2):
        rows = batch["coordinates"][offsets[b]:offsets[b + 1]]
        assert (rows[:, 0] == b).all() and len(rows) <= 3000
        voxel_labels = batch["labels"][offsets[b]:offsets[b + 1]]
        inverse = batch["inverse_maps"][b]
        assert len(inverse) == len(batch["point_labels"][b]) and inverse.max() < len(voxel_labels)
    assert batch["features"].shape == (len(batch["coordinates"]), 3)
