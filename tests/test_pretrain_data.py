"""scene_kd.data.augment, pretrain_dataset and collate: deterministic augmentations, samples in
both modes, pairs that still see their voxels after augmentation and batching, bad frames counted,
collate offsets, pair sampling."""

from __future__ import annotations

import math
import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from pair_checks import STORED_COLOR_SIZE, make_processed_scans, pixel_point_in_voxel, rederive_points

from scene_kd.data.augment import (
    Augmentation,
    ImageTransform,
    random_image_transform,
    random_point_transform,
)
from scene_kd.data.collate import collate_pretrain, sample_pairs
from scene_kd.data.correspondence import RGBDCamera
from scene_kd.data.pretrain_dataset import PretrainDataset
from scene_kd.scannet.codecs import encode_png16
from scene_kd.scannet.exported import ExportedFrameSource, write_matrix_txt

VOXEL = 0.05
TEACHER_SIZE = (128, 96)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("pretrain"), num_scenes=2)


@pytest.fixture(scope="module")
def broken_root(data_root, tmp_path_factory):
    """A copy of scene0000_00 with a lost-tracking pose, an empty depth map and a corrupt JPEG."""
    root = tmp_path_factory.mktemp("broken")
    scene = root / "scene0000_00"
    shutil.copytree(data_root / "scene0000_00", scene)
    ids = ExportedFrameSource(scene).frame_ids
    assert len(ids) == 4
    write_matrix_txt(scene / "pose" / f"{ids[1]}.txt", np.full((4, 4), -np.inf))
    depth = np.zeros((120, 160), np.uint16)
    (scene / "depth" / f"{ids[2]}.png").write_bytes(encode_png16(depth, "none"))
    (scene / "color" / f"{ids[3]}.jpg").write_bytes(b"not a jpeg")
    return root, ids


def dataset(root, **kw) -> PretrainDataset:
    kw = {"voxel_size": VOXEL, "image_size": TEACHER_SIZE, "min_pairs": 10, **kw}
    return PretrainDataset(root, **kw)


# ---------------------------------------------------------------------------------- augmentations


def test_point_transform_deterministic_and_rigid_up_to_scale():
    a = random_point_transform(np.random.default_rng(3))
    b = random_point_transform(np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    seen_flips = set()
    for seed in range(40):
        m = random_point_transform(np.random.default_rng(seed), scale=(0.8, 1.2))
        linear = m[:3, :3]
        s = abs(np.linalg.det(linear)) ** (1 / 3)
        assert 0.8 <= s <= 1.2
        np.testing.assert_allclose(linear.T @ linear, s * s * np.eye(3), atol=1e-12)
        np.testing.assert_allclose(linear[2], [0, 0, s], atol=1e-12)  # z only scaled
        np.testing.assert_array_equal(m[:3, 3], 0)
        seen_flips.add(bool(np.linalg.det(linear) < 0))
    assert seen_flips == {True, False}
    none = random_point_transform(np.random.default_rng(0), rotate_z=0, scale=None, flip_x=0, flip_y=0)
    np.testing.assert_array_equal(none, np.eye(4))
    flip = random_point_transform(np.random.default_rng(0), rotate_z=0, scale=None, flip_x=1, flip_y=0)
    np.testing.assert_array_equal(flip, np.diag([-1.0, 1, 1, 1]))


def test_image_transform_deterministic_and_inside():
    for seed in range(30):
        t = random_image_transform(np.random.default_rng(seed), (120, 90), TEACHER_SIZE, crop_scale=(0.3, 1.0))
        assert t == random_image_transform(np.random.default_rng(seed), (120, 90), TEACHER_SIZE, crop_scale=(0.3, 1.0))
        x0, y0, x1, y1 = t.box
        assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 90
        assert 0.3 * 120 * 90 * 0.9 <= (x1 - x0) * (y1 - y0) <= 120 * 90
        rows, cols = np.array([3.0, 50.2]), np.array([7.0, 99.9])
        back = t.inverse_pixels(*t.map_pixels(rows, cols))
        np.testing.assert_allclose(back, [rows, cols], atol=1e-12)
    flip = ImageTransform((8, 4), (8, 4), (0.0, 0.0, 8.0, 4.0), flip=True)
    np.testing.assert_array_equal(flip.map_pixels(np.array([1.0]), np.array([0.0, 2.0, 7.0]))[1], [7, 5, 0])
    image = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    np.testing.assert_array_equal(flip.apply_image(image), image[:, ::-1])
    np.testing.assert_array_equal(ImageTransform.identity((8, 4)).apply_image(image), image)
    with pytest.raises(ValueError, match="probability"):
        Augmentation(hflip=2.0)
    with pytest.raises(ValueError, match="crop_scale"):
        Augmentation(crop_scale=(0.5, 1.5))


@pytest.mark.parametrize("box", [(10.0, 5.0, 70.0, 50.0), (0.0, 0.0, 120.0, 90.0), (33.0, 2.0, 113.0, 62.0)])
@pytest.mark.parametrize("flip", [False, True])
def test_image_transform_matches_pixel_map(box, flip):
    """Cropping and resizing a linear ramp: every output pixel shows the input at `inverse_pixels`
    (Pillow's `resize(box=...)` samples where the pixel-centre convention says)."""
    w, h = 120, 90
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = np.stack([20 + 1.5 * xx, 10 + 2.5 * yy, 230 - xx - yy], axis=-1)
    t = ImageTransform((w, h), TEACHER_SIZE, box, flip)
    out = t.apply_image(ramp.astype(np.uint8)).astype(np.float64)
    assert out.shape == (TEACHER_SIZE[1], TEACHER_SIZE[0], 3)
    rows, cols = np.mgrid[0 : TEACHER_SIZE[1], 0 : TEACHER_SIZE[0]]
    src_r, src_c = t.inverse_pixels(rows, cols)
    expected = np.stack([20 + 1.5 * src_c, 10 + 2.5 * src_r, 230 - src_c - src_r], axis=-1)
    # away from the image border, where the filter support is clamped
    interior = (src_r > 2) & (src_r < h - 3) & (src_c > 2) & (src_c < w - 3)
    np.testing.assert_allclose(out[interior], expected[interior], atol=1.0)


# ---------------------------------------------------------------------------------- dataset


def test_frame_mode_samples(data_root):
    ds = dataset(data_root)
    frame_ids = [ExportedFrameSource(data_root / s).frame_ids for s in ("scene0000_00", "scene0001_00")]
    assert len(ds) == sum(len(f) for f in frame_ids)
    assert ds.index[0] == (0, frame_ids[0][0])
    sample = ds[1]
    assert sample["coords"].dtype == torch.int32 and sample["coords"].shape[1] == 3
    assert sample["feats"].dtype == torch.float32 and sample["feats"].shape == sample["coords"].shape
    assert sample["feats"].min() >= -1 and sample["feats"].max() <= 1
    assert sample["images"].shape == (1, 3, TEACHER_SIZE[1], TEACHER_SIZE[0]) and sample["images"].dtype == torch.float32
    assert 0 <= sample["images"].min() and sample["images"].max() <= 1
    pairs = sample["pairs"]
    assert pairs.dtype == torch.int64 and len(pairs) > 1000
    assert pairs[:, 0].min() >= 0 and pairs[:, 0].max() < len(sample["coords"])
    assert (pairs[:, 1] == 0).all()
    assert pairs[:, 2].max() < TEACHER_SIZE[1] and pairs[:, 3].max() < TEACHER_SIZE[0] and pairs[:, 2:].min() >= 0
    assert sample["counts"] == Counter(frames_used=1)
    assert sample["meta"]["scene_id"] == "scene0000_00" and sample["meta"]["frame_ids"] == [frame_ids[0][1]]
    # deterministic for a seed and an epoch; another epoch draws other augmentations
    again = ds[1]
    for key in ("coords", "feats", "images", "pairs"):
        assert torch.equal(sample[key], again[key])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["pairs"], sample["pairs"])
    # without augmentation the image is the stored one, resized
    plain = dataset(data_root, augment=False, image_size=None)[0]
    stored = ExportedFrameSource(data_root / "scene0000_00").read(frame_ids[0][0]).color
    np.testing.assert_allclose(plain["images"][0].permute(1, 2, 0).numpy(), stored / 255.0, atol=1e-6)
    assert plain["images"].shape[-2:] == (STORED_COLOR_SIZE[1], STORED_COLOR_SIZE[0])
    # feats are the colors of the kept voxel points: the stored image's colors
    assert plain["meta"]["point_transform"] is None
    assert dataset(data_root, augment={"hflip": 1.0, "crop_scale": None})[0]["meta"]["image_transforms"][0].flip


def test_scene_mode_samples(data_root):
    ds = dataset(data_root, mode="scene", frames_per_sample=3)
    assert len(ds) == 2
    sample = ds[1]
    points = np.load(data_root / "scene0001_00" / "coord.npy")
    num_images = len(sample["images"])
    assert num_images == 3 and sample["meta"]["frame_ids"] == sorted(sample["meta"]["frame_ids"])
    assert set(sample["pairs"][:, 1].tolist()) == {0, 1, 2}
    assert sample["pairs"][:, 0].max() < len(sample["coords"])
    # the student sees the whole scene: as many voxels as the scene's points occupy
    m = sample["meta"]["point_transform"]
    moved = points.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    assert len(sample["coords"]) == len(np.unique(np.floor(moved / VOXEL), axis=0))
    assert sample["counts"] == Counter(frames_used=3)
    # more frames than the scene has: all of them
    every = dataset(data_root, mode="scene", frames_per_sample=50)[0]
    assert len(every["meta"]["frame_ids"]) == len(ExportedFrameSource(data_root / "scene0000_00").frame_ids)


@pytest.mark.parametrize("mode", ["frame", "scene"])
def test_dataloader_batch_pairs_see_their_voxels(data_root, mode):
    """Through a DataLoader and collate: every sampled pair's teacher pixel, traced back through the
    sample's image transform to the depth map, is a 3D place inside the pair's voxel (frame mode),
    or in a voxel of scene points seen there (scene mode: within a voxel diagonal)."""
    ds = dataset(data_root, mode=mode, frames_per_sample=1 if mode == "frame" else 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=0, collate_fn=collate_pretrain)
    batch = next(iter(loader))
    assert batch["coordinates"].dtype == torch.int32 and batch["coordinates"].shape[1] == 4
    assert batch["features"].shape == (len(batch["coordinates"]), 3)
    pairs = sample_pairs(batch["pairs"], 4096, torch.Generator().manual_seed(0)).numpy()
    assert pairs.shape == (4096, 4)
    coords = batch["coordinates"].numpy()
    image_owner = [(b, k) for b, meta in enumerate(batch["meta"]) for k in range(len(meta["frame_ids"]))]
    assert len(image_owner) == len(batch["images"])
    checked = 0
    for image_index, (b, k) in enumerate(image_owner):
        meta = batch["meta"][b]
        chosen = pairs[pairs[:, 1] == image_index]
        assert (coords[chosen[:, 0], 0] == b).all()  # the voxel belongs to the image's sample
        source = ExportedFrameSource(data_root / meta["scene_id"])
        frame = source.read(meta["frame_ids"][k])
        camera = RGBDCamera.from_source(source)
        points, valid = rederive_points(
            chosen[:, 2], chosen[:, 3], meta["image_transforms"][k], frame.depth, camera.intrinsic_color,
            camera.intrinsic_depth, frame.camera_to_world, meta["point_transform"],
        )
        voxel = coords[chosen[:, 0], 1:]
        if mode == "frame":
            ok = pixel_point_in_voxel(points, valid, voxel, VOXEL)
        else:
            centre = (voxel[:, None, :] + 0.5) * VOXEL
            dist = np.where(valid, np.linalg.norm(points - centre, axis=2), np.inf).min(axis=1)
            ok = dist <= VOXEL * math.sqrt(3)
        assert ok.all(), f"{int((~ok).sum())} of {len(ok)} pairs of image {image_index} off their voxel"
        checked += len(chosen)
    assert checked == 4096


def test_bad_frames_skipped_and_counted(broken_root):
    root, ids = broken_root
    ds = dataset(root, augment=False)
    samples = [ds[i] for i in range(len(ds))]
    assert [s["counts"] for s in samples] == [
        Counter(frames_used=1), Counter(skipped_invalid_pose=1), Counter(skipped_no_depth=1),
        Counter(skipped_unreadable=1),
    ]
    for s in samples[1:]:
        assert s["pairs"].shape == (0, 4) and s["images"].shape == (0, 3, TEACHER_SIZE[1], TEACHER_SIZE[0])
        assert s["meta"]["frame_ids"] == []
    assert f"frame {ids[3]}" in samples[3]["meta"]["errors"][0]
    batch = collate_pretrain(samples)
    assert len(batch["images"]) == 1 and len(batch["meta"]) == 1
    assert batch["counts"] == Counter(
        frames_used=1, skipped_invalid_pose=1, skipped_no_depth=1, skipped_unreadable=1,
        samples_dropped_no_pairs=3,
    )
    scene = dataset(root, mode="scene", frames_per_sample=4)[0]
    assert scene["counts"] == Counter(frames_used=1, skipped_invalid_pose=1, skipped_no_depth=1, skipped_unreadable=1)
    assert scene["meta"]["frame_ids"] == [ids[0]] and len(scene["images"]) == 1
    assert set(scene["pairs"][:, 1].tolist()) == {0}
    too_few = dataset(root, mode="scene", frames_per_sample=4, min_pairs=10**7)[0]
    assert too_few["pairs"].shape == (0, 4) and too_few["counts"]["skipped_few_pairs"] == 1
    empty = collate_pretrain([too_few, samples[1]])
    assert empty["coordinates"].shape == (0, 4) and empty["pairs"].shape == (0, 4)
    assert empty["images"].shape == (0, 3, TEACHER_SIZE[1], TEACHER_SIZE[0]) and empty["meta"] == []


def test_collate_offsets_hand_checked():
    def sample(coords, images, pairs, counts):
        return {
            "coords": torch.tensor(coords, dtype=torch.int32),
            "feats": torch.arange(len(coords) * 3, dtype=torch.float32).reshape(-1, 3),
            "images": torch.full((images, 3, 2, 3), float(images)),
            "pairs": torch.tensor(pairs, dtype=torch.int64).reshape(-1, 4),
            "counts": Counter(counts),
            "meta": {"n": len(coords)},
        }

    a = sample([[0, 0, 0], [1, 0, 0]], 1, [[1, 0, 1, 2], [0, 0, 0, 0]], {"frames_used": 1})
    empty = sample([[5, 5, 5]], 0, [], {"skipped_no_depth": 1})
    b = sample([[2, 2, 2], [3, 3, 3], [4, 4, 4]], 2, [[2, 1, 1, 1], [0, 0, 1, 0]], {"frames_used": 2})
    batch = collate_pretrain([a, empty, b])
    assert batch["coordinates"].tolist() == [
        [0, 0, 0, 0], [0, 1, 0, 0], [1, 2, 2, 2], [1, 3, 3, 3], [1, 4, 4, 4],
    ]
    assert batch["coordinates"].dtype == torch.int32
    assert batch["features"].shape == (5, 3) and batch["features"][2].tolist() == [0, 1, 2]
    assert batch["images"].shape == (3, 3, 2, 3) and batch["images"][:, 0, 0, 0].tolist() == [1, 2, 2]
    assert batch["pairs"].tolist() == [[1, 0, 1, 2], [0, 0, 0, 0], [4, 2, 1, 1], [2, 1, 1, 0]]
    assert batch["counts"] == Counter(frames_used=3, skipped_no_depth=1, samples_dropped_no_pairs=1)
    assert batch["meta"] == [{"n": 2}, {"n": 3}]


def test_sample_pairs():
    pairs = torch.arange(40).reshape(10, 4)
    g = torch.Generator().manual_seed(1)
    some = sample_pairs(pairs, 6, g)
    assert some.shape == (6, 4) and len(torch.unique(some[:, 0])) == 6
    assert torch.equal(some, sample_pairs(pairs, 6, torch.Generator().manual_seed(1)))
    topped = sample_pairs(pairs, 25, np.random.default_rng(0))
    assert topped.shape == (25, 4) and set(topped[:, 0].tolist()) == set(pairs[:, 0].tolist())
    assert torch.equal(topped, sample_pairs(pairs, 25, np.random.default_rng(0)))
    assert sample_pairs(pairs[:0], 4096).shape == (0, 4)
    assert sample_pairs(pairs.numpy(), 10).shape == (10, 4)


def test_splits_and_pickling(data_root, tmp_path):
    assert dataset(data_root, split="train").scene_ids == ["scene0000_00"]
    assert dataset(data_root, split="val").scene_ids == ["scene0001_00"]
    assert dataset(data_root, split=["scene0001_00"]).scene_ids == ["scene0001_00"]
    split_file = tmp_path / "mine.txt"
    split_file.write_text("scene0001_00\nscene0000_00\n")
    assert dataset(data_root, split=split_file).scene_ids == ["scene0001_00", "scene0000_00"]
    assert dataset(data_root).scene_ids == ["scene0000_00", "scene0001_00"]
    with pytest.raises(FileNotFoundError, match="scene0999_00"):
        dataset(data_root, split=["scene0999_00"])
    with pytest.raises(FileNotFoundError, match="nosuchsplit"):
        dataset(data_root, split="nosuchsplit")
    with pytest.raises(ValueError, match="frames_per_sample"):
        dataset(data_root, frames_per_sample=2)
    with pytest.raises(ValueError, match="mode"):
        dataset(data_root, mode="pixels")
    ds = dataset(data_root, mode="scene", frames_per_sample=2)
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[0]["pairs"], ds[0]["pairs"])
