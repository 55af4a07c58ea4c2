"""Detection pieces with hand-computed values: head shapes and units, the voxel-to-box assignment,
focal / IoU / centerness losses, box encoding, inference with NMS, and the dataset's box-preserving
augmentation and scene subsets."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pair_checks import make_processed_scans

from scene_kd.box_geometry import points_inside_boxes
from scene_kd.data.det_dataset import (
    DetAugmentation,
    DetectionDataset,
    collate_detection,
    transform_boxes,
)
from scene_kd.data.geometry import transform_points
from scene_kd.finetune.det.assign import assign_voxels, box_levels, centerness_targets
from scene_kd.finetune.det.losses import (
    axis_aligned_iou_loss,
    centerness_loss,
    detection_losses,
    sigmoid_focal_loss,
)
from scene_kd.finetune.det.model import DetectionHead, LevelOutput, SparseDetector, decode_boxes, encode_boxes
from scene_kd.finetune.det.postprocess import predict_boxes
from scene_kd.finetune.det.schema import DetLossConfig
from scene_kd.models import build_student
from scene_kd.scannet.boxes import load_scene_boxes
from scene_kd.scannet.splits import write_split
from scene_kd.sparse import SparseTensor, batched_coordinates, get_backend, minkowski_available
from scene_kd.sparse.fixtures import room_voxels


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("det_data"), num_scenes=2, num_frames=4)


# ---------------------------------------------------------------- head


def test_head_shapes_units_and_zero_raw_distance_is_one_level_voxel():
    head = DetectionHead(in_channels=[8, 16], strides=[2, 4], num_classes=18, head_channels=12)
    torch.nn.init.zeros_(head.regression.weight)
    coords = [torch.tensor([[0, 0, 2, 4], [0, 6, 0, 0], [1, 2, 2, 2], [1, 4, 0, 2], [0, 8, 8, 8]], dtype=torch.int32),
              torch.tensor([[0, 0, 0, 0], [1, 4, 8, 4], [1, 0, 4, 0]], dtype=torch.int32)]
    out = head([torch.randn(5, 8), torch.randn(3, 16)], coords)
    assert [lv.stride for lv in out] == [2, 4]
    for lv, n, stride, c in zip(out, (5, 3), (2, 4), coords, strict=True):
        assert lv.cls_logits.shape == (n, 18) and lv.centerness_logits.shape == (n,) and lv.distances.shape == (n, 6)
        torch.testing.assert_close(lv.centres, c[:, 1:].float() + stride / 2)
        torch.testing.assert_close(lv.distances, torch.full((n, 6), float(stride)))  # exp(0) x stride
    # Focal-loss prior: every class starts at probability 0.01.
    torch.testing.assert_close(torch.sigmoid(head.cls.bias), torch.full((18,), 0.01))


def test_detector_levels_follow_the_decoder_and_unused_stages_are_frozen():
    torch.manual_seed(0)
    backbone = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    model = SparseDetector(backbone, strides=[8, 2, 4], head_channels=16)
    assert model.strides == (2, 4, 8)
    assert model.unused_backbone_modules() == ["convtr7p2s2", "bntr7", "block8"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.convtr7p2s2.", "backbone.bntr7.", "backbone.block8.")) for n in frozen)
    coords = batched_coordinates([room_voxels(1200, seed=1, voxel_size=0.1), room_voxels(800, seed=2, voxel_size=0.1)])
    levels = model(SparseTensor(torch.rand(len(coords), 3), coords))
    assert [lv.stride for lv in levels] == [2, 4, 8]
    for lv in levels:
        assert (lv.coordinates[:, 1:] % lv.stride == 0).all()
        assert set(lv.coordinates[:, 0].tolist()) == {0, 1}
    sum(lv.cls_logits.sum() + lv.distances.sum() + lv.centerness_logits.sum() for lv in levels).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # DDP needs every used one


def test_decoder_features_equal_the_plain_forward():
    torch.manual_seed(1)
    net = build_student("MinkUNet14A", in_channels=3, out_channels=None).eval()
    coords = batched_coordinates([room_voxels(900, seed=3, voxel_size=0.1)])
    x = SparseTensor(torch.rand(len(coords), 3), coords)
    with torch.no_grad():
        full = net(x)
        levels = net.decoder_features(x, (1, 2, 4, 8))
    torch.testing.assert_close(levels[1].F, full.F, rtol=0, atol=0)
    assert [levels[s].F.shape[1] for s in (8, 4, 2, 1)] == [net.decoder_channels(s) for s in (8, 4, 2, 1)]
    with pytest.raises(ValueError, match="strides"):
        net.decoder_features(x, (16,))


# ---------------------------------------------------------------- boxes and assignment


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(50, 3, generator=g) * 10
    boxes = torch.cat([low, low + 0.1 + torch.rand(50, 3, generator=g) * 3], 1)
    points = boxes[:, :3] + torch.rand(50, 3, generator=g) * (boxes[:, 3:] - boxes[:, :3])
    distances = encode_boxes(points, boxes)
    assert (distances > 0).all()
    torch.testing.assert_close(decode_boxes(points, distances), boxes)


def test_assignment_by_hand():
    boxes = torch.tensor([[0.0, 0, 0, 4, 4, 4],  # A, volume 64, centre (2, 2, 2)
                          [1.0, 1, 1, 3, 3, 3]])  # B, volume 8, same centre
    points = torch.tensor([[2.0, 2, 2],  # in A and B, at the centre
                           [2.5, 2, 2],  # in A and B
                           [3.5, 2, 2],  # in A only
                           [0.5, 0.5, 0.5],  # in A only, far from the centre (beyond the top 3)
                           [5.0, 5, 5],  # outside
                           [4.0, 2, 2]])  # on A's face: not strictly inside
    inside = points_inside_boxes(points, boxes)
    assert inside.tolist() == [[True, True], [True, True], [True, False], [True, False], [False, False],
                               [False, False]]
    assigned = assign_voxels(points, torch.zeros(6, dtype=torch.long), boxes, num_levels=1, min_voxels=1, topk=3)
    # A picks rows 0, 1, 2 and B rows 0, 1; the shared rows take the smaller box B.
    assert assigned.tolist() == [1, 1, 0, -1, -1, -1]
    assert assign_voxels(points, torch.zeros(6, dtype=torch.long), boxes[:0], num_levels=1).tolist() == [-1] * 6


def test_box_level_rule_and_levels_restrict_candidates():
    # counts per (level, box): box 0 has [3, 2], box 1 [2, 1], box 2 [1, 5] with min_voxels 2
    levels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    inside = torch.zeros(10, 3, dtype=torch.bool)
    inside[[0, 1, 2, 3, 4], 0] = True
    inside[[0, 1, 5], 1] = True
    inside[[2, 3, 4, 5, 6, 7], 2] = True
    # box 0: enough at both levels -> the coarser (1); box 1: only at 0 -> 0; box 2: too few at the
    # finest already -> 0 (FCAF3D's rule walks from the finest level).
    assert box_levels(inside, levels, num_levels=2, min_voxels=2).tolist() == [1, 0, 0]
    boxes = torch.tensor([[0.0, 0, 0, 10, 10, 10]])
    points = torch.tensor([[1.0, 1, 1], [5, 5, 5], [5, 5, 5.5], [5, 5, 6], [5.5, 5, 5]])
    point_levels = torch.tensor([0, 0, 1, 1, 1])
    # Level 0 has 2 (< 3) voxels inside: the box stays at level 0, whose voxels are the only positives.
    assert assign_voxels(points, point_levels, boxes, num_levels=2, min_voxels=3, topk=18).tolist() == [0, 0, -1, -1, -1]
    # With min_voxels 2 both levels qualify: the box goes to level 1 and its 2 nearest voxels there.
    assert assign_voxels(points, point_levels, boxes, num_levels=2, min_voxels=2, topk=2).tolist() == [-1, -1, 0, -1, 0]


def test_centerness_targets():
    distances = torch.tensor([[1.0, 1, 1, 1, 1, 1], [1.0, 2, 2, 3, 2, 2], [1.0, 1, 2, 4, 1, 8]])
    expected = torch.tensor([1.0, math.sqrt(1 / 3), math.sqrt(1 / 4 * 1 * 2 / 8)])
    torch.testing.assert_close(centerness_targets(distances), expected)


# ---------------------------------------------------------------- losses


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0, math.log(3.0)]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    expected = torch.tensor([[0.25 * 0.5**2 * math.log(2), 0.75 * 0.5**2 * math.log(2), 0.25 * 0.25**2 * -math.log(0.75)]])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0), expected)
    # gamma 0, alpha 0.5: half the binary cross-entropy
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=0.5, gamma=0.0),
                               0.5 * torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none"))


def test_iou_and_diou_losses_by_hand():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2], [0.0, 0, 0, 1, 1, 1]])
    b = torch.tensor([[1.0, 0, 0, 3, 2, 2], [0.0, 0, 0, 1, 1, 1]])
    torch.testing.assert_close(axis_aligned_iou_loss(a, b), torch.tensor([2 / 3, 0.0]))  # 4 / (8 + 8 - 4)
    torch.testing.assert_close(axis_aligned_iou_loss(a, b, mode="diou"), torch.tensor([2 / 3 + 1 / 17, 0.0]))
    disjoint = axis_aligned_iou_loss(torch.tensor([[0.0, 0, 0, 1, 1, 1]]), torch.tensor([[2.0, 0, 0, 3, 1, 1]]))
    torch.testing.assert_close(disjoint, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="giou"):
        axis_aligned_iou_loss(a, b, mode="giou")
    torch.testing.assert_close(centerness_loss(torch.tensor([0.0]), torch.tensor([0.5])), torch.tensor([math.log(2)]))


def _level(stride, coords, cls, ctr, dist):
    coords = torch.tensor(coords, dtype=torch.int32)
    return LevelOutput(stride=stride, coordinates=coords, centres=coords[:, 1:].float() + stride / 2,
                       cls_logits=torch.tensor(cls, dtype=torch.float32), centerness_logits=torch.tensor(ctr),
                       distances=torch.tensor(dist, dtype=torch.float32))


def test_losses_of_a_perfect_prediction_and_of_no_boxes():
    cfg = OmegaConf.structured(DetLossConfig(assign_min_voxels=1, assign_topk=1))
    box = torch.tensor([[0.0, 0, 0, 2, 4, 2]])  # centre (1, 2, 1); the voxel at (0, 1, 0), stride 2, has centre (1, 2, 1)
    level = _level(2, [[0, 0, 1, 0], [0, 6, 6, 6]], [[-20.0, 20.0], [-20.0, -20.0]], [20.0, 0.0],
                   [[1, 2, 1, 1, 2, 1], [1, 1, 1, 1, 1, 1]])
    losses = detection_losses([level], [box], [torch.tensor([1])], cfg)
    assert float(losses["positives"]) == 1
    assert float(losses["loss_box"]) == pytest.approx(0.0, abs=1e-6)  # the decoded box is the box
    assert float(losses["loss_cls"]) < 1e-6
    assert float(losses["loss_ctr"]) < 1e-6  # target 1 (the voxel is at the centre), logit 20
    empty = detection_losses([level], [box[:0]], [torch.zeros(0, dtype=torch.long)], cfg)
    assert float(empty["loss_box"]) == 0 and float(empty["loss_ctr"]) == 0 and float(empty["positives"]) == 0


def test_predict_boxes_thresholds_decodes_and_suppresses_per_class():
    # Three voxels of scene 0 predicting overlapping boxes of class 0, one of class 1; a voxel of scene 1.
    dist = [[1, 1, 1, 1, 1, 1], [1.2, 1, 1, 0.8, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    cls = [[4.0, -9], [3.0, -9], [-9, 2.0], [-9, -9], [5.0, -9]]
    level = _level(1, [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 9, 9, 9], [1, 0, 0, 0]], cls, [0.0] * 5, dist)
    boxes, scores, labels = predict_boxes([level], 0, score_threshold=0.05, nms_iou=0.5, nms_pre=1000, max_boxes=10)
    # voxel 1 (IoU 7.2 / 8.8 with voxel 0, same class) is suppressed; voxel 3 is below the threshold
    half = torch.sigmoid(torch.tensor(0.0))
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([4.0, 2.0])) * half)
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(boxes, torch.tensor([[-0.5, -0.5, -0.5, 1.5, 1.5, 1.5]] * 2))
    _, _, labels_1 = predict_boxes([level], 1, score_threshold=0.05, nms_iou=0.5, nms_pre=1000, max_boxes=10)
    assert labels_1.tolist() == [0]


# ---------------------------------------------------------------- dataset


def _instance_points(processed, scene_id, dataset):
    scene = dataset.load_aligned(scene_id)
    gt = load_scene_boxes(processed / scene_id)
    instance = np.load(processed / scene_id / "instance.npy")
    return scene, [np.flatnonzero(instance == i) for i in gt["instance_ids"]]


@pytest.mark.parametrize("settings", [
    {"rotate_z": 0.0},  # quarter turns, flips, scale, translation: boxes move exactly
    {"rotate_z": 0.3},  # plus small rotations: boxes enclose the rotated boxes
])
def test_augmented_boxes_still_hold_their_instances_points(processed, settings):
    dataset = DetectionDataset(processed, None, voxel_size=0.05, augment=False)
    scene_id = dataset.scene_ids[0]
    scene, members = _instance_points(processed, scene_id, dataset)
    torch.testing.assert_close(torch.from_numpy(scene["boxes"]), torch.from_numpy(load_scene_boxes(processed / scene_id)["boxes"]))
    augmentation = DetAugmentation(**settings)
    turns = set()
    for seed in range(8):
        transform = augmentation.point_transform(np.random.default_rng(seed))
        points = transform_points(scene["points"], transform)
        boxes = transform_boxes(scene["boxes"], transform)
        for box, rows in zip(boxes, members, strict=True):
            assert (points[rows] >= box[:3] - 1e-9).all() and (points[rows] <= box[3:] + 1e-9).all()
        if settings["rotate_z"] == 0:
            # exact: the moved points span the moved box (no enlargement)
            spans = np.stack([np.concatenate([points[r].min(0), points[r].max(0)]) for r in members])
            np.testing.assert_allclose(spans, boxes, atol=1e-9)
            turns.add(int(round(math.degrees(math.atan2(transform[1, 0], transform[0, 0])))) % 360)
    if settings["rotate_z"] == 0:
        assert len(turns) > 1 and turns <= {0, 90, 180, 270}


def test_samples_voxelize_the_transformed_scene_and_map_back(processed):
    augmented = DetectionDataset(processed, None, voxel_size=0.05, augment=True, seed=3)
    plain = DetectionDataset(processed, None, voxel_size=0.05, augment=False)
    scene_id = augmented.scene_ids[1]
    scene, members = _instance_points(processed, scene_id, augmented)
    for dataset in (augmented, plain):
        sample = dataset[1]
        to_sample = np.linalg.inv(sample["to_aligned"].numpy())
        points = transform_points(scene["points"], to_sample)
        voxels = np.unique(np.floor(points / 0.05).astype(np.int64), axis=0)
        np.testing.assert_array_equal(voxels, np.unique(sample["coords"].numpy(), axis=0))
        boxes = sample["boxes"].numpy()
        for box, rows in zip(boxes, members, strict=True):
            assert (points[rows] >= box[:3] - 1e-4).all() and (points[rows] <= box[3:] + 1e-4).all()
        back = transform_boxes(boxes.astype(np.float64), sample["to_aligned"].numpy())
        np.testing.assert_allclose(back, scene["boxes"], atol=1e-4 if dataset is plain else 0.5)
        assert sample["labels"].tolist() == load_scene_boxes(processed / scene_id)["labels"].tolist()
    # Validation samples are only translated: mapping back is exact.
    assert np.allclose(plain[1]["to_aligned"].numpy()[:3, :3], np.eye(3))
    batch = collate_detection([plain[0], plain[1]])
    assert batch["voxel_offsets"].tolist() == [0, len(plain[0]["coords"]), len(plain[0]["coords"]) + len(plain[1]["coords"])]
    assert batch["coordinates"].shape == (batch["voxel_offsets"][-1], 4) and len(batch["boxes"]) == 2


def test_scene_subsets_select_the_scenes(processed, tmp_path):
    scenes = DetectionDataset(processed, None, augment=False).scene_ids
    write_split(tmp_path / "scenes_1pct.txt", [scenes[1]])
    dataset = DetectionDataset(processed, None, augment=False, scene_subset=tmp_path / "scenes_1pct.txt")
    assert dataset.scene_ids == [scenes[1]]
    write_split(tmp_path / "bad.txt", ["scene0999_00"])
    with pytest.raises(ValueError, match=r"bad.txt: 1 scene\(s\) not in split"):
        DetectionDataset(processed, None, scene_subset=tmp_path / "bad.txt")


@pytest.mark.skipif(not minkowski_available(),
                    reason="MinkowskiEngine is not installed (bash tools/install_minkowski_engine.sh)")
def test_minkowski_backend_gives_the_torch_backends_predictions_and_losses():
    torch.manual_seed(7)
    models = {name: SparseDetector(build_student("MinkUNet14A", in_channels=3, out_channels=None, backend=name),
                                   strides=[2, 4, 8]).eval() for name in ("torch", "minkowski")}
    models["minkowski"].load_state_dict(models["torch"].state_dict(), strict=True)
    coords = batched_coordinates([room_voxels(1500, seed=4, voxel_size=0.1), room_voxels(1000, seed=5, voxel_size=0.1)])
    feats = torch.rand(len(coords), 3)
    boxes = [torch.tensor([[5.0, 5, 0, 15, 12, 8], [20, 3, 0, 26, 30, 6]]), torch.tensor([[2.0, 2, 0, 30, 30, 20]])]
    labels = [torch.tensor([2, 4]), torch.tensor([1])]
    cfg = OmegaConf.structured(DetLossConfig(assign_min_voxels=4))
    outputs, losses = {}, {}
    for name, model in models.items():
        with torch.no_grad():
            levels = model(get_backend(name).sparse_tensor(feats, coords))
        outputs[name] = [(lv.coordinates.long(), torch.cat([lv.cls_logits, lv.centerness_logits[:, None], lv.distances], 1))
                         for lv in levels]
        losses[name] = detection_losses(levels, boxes, labels, cfg)
    for (tc, tv), (mc, mv) in zip(outputs["torch"], outputs["minkowski"], strict=True):
        def by_coords(c, v):
            key = ((c[:, 0] * 4096 + c[:, 1] + 2048) * 4096 + c[:, 2] + 2048) * 4096 + c[:, 3] + 2048
            order = torch.argsort(key)
            return c[order], v[order]
        tc, tv = by_coords(tc, tv)
        mc, mv = by_coords(mc, mv)
        assert torch.equal(tc, mc)
        torch.testing.assert_close(tv, mv, rtol=1e-4, atol=1e-4)
    assert float(losses["torch"]["positives"]) > 0
    for key, value in losses["torch"].items():
        torch.testing.assert_close(value, losses["minkowski"][key], rtol=1e-4, atol=1e-5)
