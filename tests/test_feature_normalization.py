"""Input features and their colour normalization (`data.color_norm`, `data.in_features`): hand-computed
features of each choice in every dataset, today's default unchanged bit for bit, the config keys'
one-line errors, and the refusal to finetune a checkpoint with another normalization than its own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scene_kd.config import ConfigError, build_config
from scene_kd.data.det_dataset import DetectionDataset
from scene_kd.data.pretrain_dataset import PretrainDataset
from scene_kd.data.scenes import check_checkpoint_features, input_features, recorded_feature_settings
from scene_kd.data.seg_dataset import SegmentationDataset
from scene_kd.distill.schema import PretrainConfig
from scene_kd.finetune.det.schema import FinetuneDetConfig
from scene_kd.finetune.schema import FinetuneSegConfig

COLORS = np.array([[0, 51, 255], [255, 102, 0], [153, 204, 51]], dtype=np.uint8)
NORMALS = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
# rgb / 127.5 - 1 and rgb / 255, by hand
SYMMETRIC = [[-1, -0.6, 1], [1, -0.2, -1], [0.2, 0.6, -0.6]]
UNIT = [[0, 0.2, 1], [1, 0.4, 0], [0.6, 0.8, 0.2]]


def test_input_features_hand_computed():
    np.testing.assert_allclose(input_features(COLORS), SYMMETRIC, atol=1e-6)
    np.testing.assert_allclose(input_features(COLORS, color_norm="unit"), UNIT, atol=1e-6)
    with_normals = input_features(COLORS, NORMALS, color_norm="unit")
    assert with_normals.dtype == np.float32 and with_normals.shape == (3, 6)
    np.testing.assert_allclose(with_normals, np.concatenate([UNIT, NORMALS], axis=1), atol=1e-6)
    # The default is exactly what scene_kd always fed (existing checkpoints see the same inputs), and
    # "unit" exactly Pointcept's NormalizeColor on its float32 colours.
    np.testing.assert_array_equal(input_features(COLORS), COLORS.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(input_features(COLORS, color_norm="unit"), COLORS.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"^data\.color_norm must be one of \['symmetric', 'unit'\], got 'rgb01'$"):
        input_features(COLORS, color_norm="rgb01")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """One processed scene of three points, 1 m apart (one voxel each), in train and val."""
    root = tmp_path_factory.mktemp("features")
    scene = root / "scene9000_00"
    scene.mkdir()
    arrays = {
        "coord": np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], np.float32), "color": COLORS, "normal": NORMALS,
        "segment20": np.array([0, 1, 2], np.int64), "segment200": np.full(3, -1, np.int64),
        "instance": np.array([0, 0, 1], np.int64), "axis_align": np.eye(4),
    }
    for name, array in arrays.items():
        np.save(scene / f"{name}.npy", array)
    (scene / "manifest.json").write_text(json.dumps({"scene_id": scene.name, "frame_ids": [0]}))
    (root / "splits").mkdir()
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text(scene.name + "\n")
    return root


def by_x(sample: dict) -> np.ndarray:
    """The sample's features in the order of the points (x = 0, 1, 2)."""
    return sample["feats"].numpy()[np.argsort(sample["coords"][:, 0].numpy(), kind="stable")]


@pytest.mark.parametrize("color_norm, colors", [("symmetric", SYMMETRIC), ("unit", UNIT)])
def test_datasets_feed_the_chosen_normalization(tiny_root, color_norm, colors):
    expected = np.concatenate([colors, NORMALS], axis=1)
    seg = SegmentationDataset(tiny_root, "train", voxel_size=0.5, augment=False, max_voxels=None,
                              in_features="rgb+normal", color_norm=color_norm)
    np.testing.assert_allclose(by_x(seg[0]), expected, atol=1e-6)
    det = DetectionDataset(tiny_root, "train", voxel_size=0.5, augment=False, in_features="rgb+normal",
                           color_norm=color_norm)
    np.testing.assert_allclose(by_x(det[0]), expected, atol=1e-6)
    pre = PretrainDataset(tiny_root, "train", mode="scene", voxel_size=0.5, augment=False,
                          in_features="rgb+normal", color_norm=color_norm)
    sample = pre[0]  # the scene has no frame files: no pairs, but the student's input is there
    np.testing.assert_allclose(by_x(sample), expected, atol=1e-6)
    rgb_only = SegmentationDataset(tiny_root, "train", voxel_size=0.5, augment=False, max_voxels=None,
                                   color_norm=color_norm)
    np.testing.assert_allclose(by_x(rgb_only[0]), colors, atol=1e-6)


def test_pretraining_normals_rotate_with_the_points(tiny_root):
    pre = PretrainDataset(tiny_root, "train", mode="scene", voxel_size=0.01, augment={"rotate_z": np.pi,
                          "scale": None, "flip_x": 0.0, "flip_y": 0.0}, in_features="rgb+normal", color_norm="unit")
    sample = pre[0]
    rotation = sample["meta"]["point_transform"][:3, :3]
    feats = sample["feats"].numpy()
    order = np.argsort(feats[:, 0], kind="stable")  # the points' red channel: 0, 0.6, 1 for points 0, 2, 1
    np.testing.assert_allclose(feats[order, 3:], NORMALS[[0, 2, 1]] @ rotation.T, atol=1e-6)


def test_bad_values_are_refused(tiny_root):
    with pytest.raises(ValueError, match="data.color_norm must be one of"):
        SegmentationDataset(tiny_root, "train", color_norm="pointcept")
    with pytest.raises(ValueError, match="data.color_norm must be one of"):
        DetectionDataset(tiny_root, "train", color_norm="pointcept")
    with pytest.raises(ValueError, match=r"^data.in_features=rgb\+normal needs data.mode=scene"):
        PretrainDataset(tiny_root, "train", mode="frame", in_features="rgb+normal")


@pytest.mark.parametrize("schema", [FinetuneSegConfig, FinetuneDetConfig, PretrainConfig])
def test_config_keys(schema):
    cfg = build_config(schema, None, {})
    assert (cfg.data.in_features, cfg.data.color_norm) == ("rgb", "symmetric")  # today's behaviour
    assert build_config(schema, None, {"data": {"color_norm": "unit"}}).data.color_norm == "unit"
    with pytest.raises(ConfigError) as caught:
        build_config(schema, None, {"data": {"color_norm": "rgb/255"}})
    assert str(caught.value) == "data.color_norm must be one of ['symmetric', 'unit'], got 'rgb/255'"
    with pytest.raises(ConfigError, match=r"^data.in_features must be one of \['rgb', 'rgb\+normal'\], got 'xyz'$"):
        build_config(schema, None, {"data": {"in_features": "xyz"}})


def test_pretraining_channels_follow_the_features():
    ok = {"data": {"in_features": "rgb+normal", "mode": "scene"}, "student": {"in_channels": 6}}
    assert build_config(PretrainConfig, None, ok).student.in_channels == 6
    with pytest.raises(ConfigError, match=r"^student.in_channels must be 6 for data.in_features=rgb\+normal, got 3$"):
        build_config(PretrainConfig, None, {"data": {"in_features": "rgb+normal", "mode": "scene"}})
    with pytest.raises(ConfigError, match="needs data.mode=scene"):
        build_config(PretrainConfig, None, {"data": {"in_features": "rgb+normal"}, "student": {"in_channels": 6}})


def test_checkpoint_normalization_is_checked(tiny_root):
    pretrained = {"student_name": "MinkUNet14A", "student": {}, "config": {"data": {"color_norm": "unit"}}}
    check_checkpoint_features(pretrained, "ckpt.pth", color_norm="unit")
    with pytest.raises(ValueError) as caught:
        check_checkpoint_features(pretrained, "ckpt.pth", color_norm="symmetric")
    assert str(caught.value) == ("ckpt.pth: trained with data.color_norm=unit (its config), but this run has "
                                 "data.color_norm=symmetric; set data.color_norm=unit to feed the inputs it was "
                                 "trained on")
    # A checkpoint from before the key existed was fed rgb / 127.5 - 1 (and colours only).
    older = {"student_name": "MinkUNet14A", "student": {}, "config": {"data": {"root": "x"}}}
    assert recorded_feature_settings(older["config"]) == {"in_features": "rgb", "color_norm": "symmetric"}
    check_checkpoint_features(older, "old.pth", color_norm="symmetric", in_features="rgb")
    with pytest.raises(ValueError, match=r"data.color_norm=symmetric \(its config\).*data.color_norm=unit"):
        check_checkpoint_features(older, "old.pth", color_norm="unit")
    with pytest.raises(ValueError, match=r"data.in_features=rgb \(its config\).*data.in_features=rgb\+normal"):
        check_checkpoint_features(older, "old.pth", color_norm="symmetric", in_features="rgb+normal")
    check_checkpoint_features({"state_dict": {"w": torch.zeros(1)}}, "me.pth", color_norm="unit")  # records nothing


@pytest.mark.parametrize("color_norm, in_features", [("unit", "rgb"), ("symmetric", "rgb+normal")])
def test_feature_pictures_feed_what_the_checkpoint_was_fed(tiny_root, tmp_path, color_norm, in_features):
    """The student of a checkpoint pretrained with other input features sees them in the pictures too:
    its features equal the network's output on hand-made inputs of that kind."""
    from scene_kd.models import build_student
    from scene_kd.sparse import SparseTensor
    from scene_kd.transfer.pictures import student_point_features

    channels = 6 if in_features == "rgb+normal" else 3
    torch.manual_seed(0)
    net = build_student("MinkUNet14A", in_channels=channels, out_channels=None).eval()
    path = tmp_path / "pretrained.pth"
    torch.save({"student_name": "MinkUNet14A", "student": net.state_dict(),
                "config": {"data": {"color_norm": color_norm, "in_features": in_features}}}, path)
    colors = UNIT if color_norm == "unit" else SYMMETRIC
    feats = np.concatenate([colors, NORMALS], 1) if in_features == "rgb+normal" else np.asarray(colors)
    coords = torch.tensor([[0, 0, 0, 0], [0, 10, 0, 0], [0, 20, 0, 0]], dtype=torch.int32)  # 1 m apart at 10 cm
    with torch.no_grad():
        expected = net(SparseTensor(torch.tensor(feats, dtype=torch.float32), coords)).F.numpy()
    got = student_point_features(path, "MinkUNet14A", tiny_root, "scene9000_00", voxel_size=0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
