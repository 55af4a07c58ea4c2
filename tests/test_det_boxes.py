"""scene_kd.box_geometry (conversions, volume, IoU, NMS) and scene_kd.scannet.boxes (ground-truth
boxes of a scan) against hand-worked values and the synthetic generator's known objects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pair_checks import RAW_SIZES, make_processed_scans

from scene_kd.box_geometry import (
    box_iou_3d,
    box_volume,
    center_size_to_corners,
    corners_to_center_size,
    nms_3d,
)
from scene_kd.scannet.boxes import instance_boxes, load_scene_boxes, seg20_to_det18
from scene_kd.scannet.labels import DET18_NAMES, DET18_NYU40_IDS, SEG20_NAMES, SEG20_NYU40_IDS, nyu40_to_det18
from scene_kd.synthetic import scene_room

UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]

# ---- conversions and volume ----------------------------------------------------------------------


def test_center_size_corners_by_hand_and_round_trip():
    center_size = torch.tensor([[1.0, 2.0, 3.0, 2.0, 4.0, 6.0], [0.5, -0.5, 1.0, 1.0, 1.0, 0.5]])
    corners = center_size_to_corners(center_size)
    assert corners.tolist() == [[0.0, 0.0, 0.0, 2.0, 4.0, 6.0], [0.0, -1.0, 0.75, 1.0, 0.0, 1.25]]
    assert torch.equal(corners_to_center_size(corners), center_size)
    rng = np.random.default_rng(0)
    lo = rng.uniform(-5, 5, (50, 3))
    boxes = np.concatenate([lo, lo + rng.uniform(0.1, 3, (50, 3))], axis=1)
    back = center_size_to_corners(corners_to_center_size(boxes))  # numpy in, torch out
    assert back.dtype == torch.float64
    np.testing.assert_allclose(back.numpy(), boxes, atol=1e-12)


def test_box_volume_and_degenerate_boxes():
    boxes = [[0, 0, 0, 2, 3, 4], [1, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]  # normal, inverted x, flat
    assert box_volume(boxes).tolist() == [24.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        box_volume([[0, 0, 0, 1, 1]])


# ---- IoU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "other, expected",
    [
        (UNIT, 1.0),  # identical
        ([2, 2, 2, 3, 3, 3], 0.0),  # disjoint
        ([1, 0, 0, 2, 1, 1], 0.0),  # touching along a face: zero-volume intersection
        ([0.25, 0.25, 0.25, 0.75, 0.75, 0.75], 0.125),  # nested: 0.5^3 / 1
        ([0.5, 0, 0, 1.5, 1, 1], 1 / 3),  # shifted by half: 0.5 / (1 + 1 - 0.5)
        ([0.5, 0.5, 0, 1.5, 1.5, 1], 0.25 / 1.75),  # shifted on two axes
        ([0, 0, 0, 1, 1, 0.5], 0.5),  # the lower half: 0.5 / 1
    ],
)
def test_box_iou_hand_worked(other, expected):
    iou = box_iou_3d([UNIT], [other])
    assert iou.shape == (1, 1)
    assert iou.item() == pytest.approx(expected, abs=1e-12)
    assert box_iou_3d([other], [UNIT]).item() == pytest.approx(expected, abs=1e-12)  # symmetric


def test_box_iou_partial_overlap_and_matrix_shape():
    # a = [0,2]^3 (volume 8), b = [1,3] x [1,3] x [0,2] (volume 8): intersection 1 x 1 x 2 = 2,
    # union 8 + 8 - 2 = 14.
    a = [[0, 0, 0, 2, 2, 2], [10, 10, 10, 11, 11, 11]]
    b = [[1, 1, 0, 3, 3, 2], UNIT, [10, 10, 10, 11, 11, 11]]
    iou = box_iou_3d(a, b)
    expected = [[2 / 14, 1 / 8, 0.0], [0.0, 0.0, 1.0]]
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou.numpy(), expected, atol=1e-12)


def test_box_iou_degenerate_is_zero_even_with_itself():
    flat = [[0, 0, 0, 1, 1, 0]]
    inverted = [[1, 1, 1, 0, 0, 0]]
    assert box_iou_3d(flat, flat).item() == 0.0
    assert box_iou_3d(inverted, inverted).item() == 0.0
    assert box_iou_3d(inverted, [UNIT]).item() == 0.0
    assert box_iou_3d(np.zeros((0, 6)), [UNIT]).shape == (0, 1)


def test_box_iou_keeps_float32_and_promotes_mixed():
    a32 = torch.tensor([UNIT], dtype=torch.float32)
    assert box_iou_3d(a32, a32).dtype == torch.float32
    assert box_iou_3d(a32, np.array([UNIT])).dtype == torch.float64


# ---- NMS -----------------------------------------------------------------------------------------
# A = [0,2]^3 (score 0.9, label 0); B = A shifted by 0.2 in x (0.8, label 1):
#   IoU(A, B) = 1.8*2*2 / (8 + 8 - 7.2) = 7.2 / 8.8 = 0.818;
# C far away (0.7, label 0); D = the lower half of A (0.95, label 0): IoU(D, A) = 4 / 8 = 0.5,
#   IoU(D, B) = 1.8*2*1 / (4 + 8 - 3.6) = 3.6 / 8.4 = 0.429.
NMS_BOXES = [[0, 0, 0, 2, 2, 2], [0.2, 0, 0, 2.2, 2, 2], [5, 5, 5, 6, 6, 6], [0, 0, 0, 2, 2, 1]]
NMS_SCORES = [0.9, 0.8, 0.7, 0.95]
NMS_LABELS = [0, 1, 0, 0]


def test_nms_hand_worked():
    # threshold 0.5: D kept; A (0.5, not above) kept; B suppressed by A (0.818); C kept.
    assert nms_3d(NMS_BOXES, NMS_SCORES, 0.5).tolist() == [3, 0, 2]
    # threshold 0.4: A suppressed by D (0.5), B by D (0.429).
    assert nms_3d(NMS_BOXES, NMS_SCORES, 0.4).tolist() == [3, 2]
    # class-aware: B (label 1) is never suppressed by label-0 boxes.
    assert nms_3d(NMS_BOXES, NMS_SCORES, 0.5, labels=NMS_LABELS).tolist() == [3, 0, 1, 2]
    assert nms_3d(NMS_BOXES, NMS_SCORES, 0.4, labels=NMS_LABELS).tolist() == [3, 1, 2]
    keep = nms_3d(torch.tensor(NMS_BOXES), torch.tensor(NMS_SCORES), 0.5)
    assert keep.dtype == torch.int64


def test_nms_edge_cases():
    assert nms_3d(np.zeros((0, 6)), np.zeros(0), 0.5).tolist() == []
    # equal scores: input order decides
    assert nms_3d([UNIT, UNIT, [3, 3, 3, 4, 4, 4]], [0.5, 0.5, 0.5], 0.5).tolist() == [0, 2]
    with pytest.raises(ValueError, match="scores"):
        nms_3d([UNIT], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="labels"):
        nms_3d([UNIT], [0.1], 0.5, labels=[0, 1])


def naive_nms(boxes, scores, threshold, labels=None):
    """Greedy NMS written out pair by pair, IoU from plain Python arithmetic."""

    def iou(a, b):
        inter = math.prod(max(0.0, min(a[k + 3], b[k + 3]) - max(a[k], b[k])) for k in range(3))
        vol = lambda c: math.prod(max(0.0, c[k + 3] - c[k]) for k in range(3))  # noqa: E731
        union = vol(a) + vol(b) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(
            iou(boxes[i], boxes[j]) <= threshold or (labels is not None and labels[i] != labels[j])
            for j in keep
        ):
            keep.append(i)
    return keep


@pytest.mark.parametrize("class_aware", [False, True])
def test_nms_matches_naive_on_random_boxes(class_aware):
    rng = np.random.default_rng(3)
    centers = rng.uniform(0, 3, (60, 3))
    sizes = rng.uniform(0.3, 1.5, (60, 3))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    scores = rng.permutation(60) / 60.0
    labels = rng.integers(0, 3, 60) if class_aware else None
    for threshold in (0.1, 0.25, 0.5):
        expected = naive_nms(
            boxes.tolist(), scores.tolist(), threshold, None if labels is None else labels.tolist()
        )
        assert nms_3d(boxes, scores, threshold, labels).tolist() == expected


# ---- ground-truth boxes of a scan ----------------------------------------------------------------


def test_seg20_to_det18_is_index_minus_two():
    det = seg20_to_det18(np.arange(-1, 21))
    assert det.tolist() == [-1, -1, -1] + list(range(18)) + [-1]
    # the same classes: the 20 without wall and floor (nyu40 39 is "otherfurniture" in the
    # segmentation table and VoteNet's "garbage bin" in detection)
    assert SEG20_NYU40_IDS[2:] == DET18_NYU40_IDS
    assert SEG20_NAMES[2:-1] == DET18_NAMES[:-1]
    assert nyu40_to_det18(np.array(SEG20_NYU40_IDS)).tolist() == det[1:21].tolist()


def test_instance_boxes_hand_worked():
    # axis_align: turn +90 degrees about z, (x, y, z) -> (-y, x, z), then move by (10, 0, 1).
    m = np.array([[0.0, -1, 0, 10], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]])
    coord = np.array(
        [
            [0, 0, 0], [1, 2, 3], [0.5, 1, 1],  # instance 4: chair, chair, ignore -> chair
            [5, 5, 0], [6, 6, 1],  # instance 1: wall (segment20 0) -> no box
            [2, 2, 2], [3, 3, 3], [2, 3, 2],  # instance 2: ignore x2, table -> ignore wins -> no box
            [7, 0, 0],  # instance 3: one point of toilet
            [9, 9, 9],  # no instance
        ],
        dtype=np.float32,
    )  # fmt: skip
    chair, table, toilet = SEG20_NAMES.index("chair"), SEG20_NAMES.index("table"), SEG20_NAMES.index("toilet")
    segment20 = np.array([chair, chair, -1, 0, 0, -1, -1, table, toilet, chair])
    instance = np.array([4, 4, 4, 1, 1, 2, 2, 2, 3, -1])
    boxes, labels, ids = instance_boxes(coord, segment20, instance, m)
    # instance 3: (7, 0, 0) -> (10, 7, 1); instance 4: (0,0,0) -> (10,0,1), (1,2,3) -> (8,1,4),
    # (0.5,1,1) -> (9,0.5,2)
    assert ids.tolist() == [3, 4]
    assert [DET18_NAMES[i] for i in labels] == ["toilet", "chair"]
    np.testing.assert_allclose(boxes, [[10, 7, 1, 10, 7, 1], [8, 0, 1, 10, 1, 4]], atol=1e-12)
    assert boxes.dtype == np.float64 and labels.dtype == np.int64 and ids.dtype == np.int64
    boxes, labels, ids = instance_boxes(coord, segment20, instance, m, min_points=2)
    assert ids.tolist() == [4]
    empty = instance_boxes(coord, segment20, np.full(len(coord), -1), m)
    assert [a.shape for a in empty] == [(0, 6), (0,), (0,)]
    with pytest.raises(ValueError, match="one entry per point"):
        instance_boxes(coord, segment20[:-1], instance, m)


@pytest.fixture(scope="module")
def processed_scene(tmp_path_factory):
    out = make_processed_scans(tmp_path_factory.mktemp("det_boxes"), num_scenes=1, num_frames=4)
    return out / "scene0000_00"


def test_scene_boxes_equal_the_generators_objects(processed_scene):
    room = scene_room(1, 0, RAW_SIZES["vertex_spacing"])  # make_processed_scans' seed and spacing
    known = room.boxes  # [K, 7] (cx, cy, cz, dx, dy, dz, nyu40), row k = instance k
    det = nyu40_to_det18(known[:, 6].astype(np.int64))
    in_det = np.flatnonzero(det >= 0)
    assert len(in_det) >= 5 and len(in_det) < len(known)  # walls / floor / others are left out
    gt = load_scene_boxes(processed_scene)
    assert gt["instance_ids"].tolist() == in_det.tolist()
    assert gt["labels"].tolist() == det[in_det].tolist()
    # The generator's box is the min/max of the same float32 vertices aligned in float64, so only
    # the centre/size round trip separates them.
    expected = center_size_to_corners(known[in_det, :6]).numpy()
    np.testing.assert_allclose(gt["boxes"], expected, rtol=0, atol=1e-9)
    # and they are boxes in the aligned frame: inside the room, floor at z = 0
    width, depth, height = room.size
    assert (gt["boxes"][:, :2] >= -np.array([width, depth]) / 2 - 1e-4).all()
    assert (gt["boxes"][:, 3:5] <= np.array([width, depth]) / 2 + 1e-4).all()
    assert gt["boxes"][:, 2].min() >= -1e-4 and gt["boxes"][:, 5].max() <= height + 1e-4


def test_load_scene_boxes_errors_name_the_file(processed_scene, tmp_path):
    scene = tmp_path / "scene0000_00"
    scene.mkdir()
    for name in ("coord.npy", "segment20.npy", "instance.npy", "axis_align.npy"):
        (scene / name).write_bytes((processed_scene / name).read_bytes())
    instance = np.load(scene / "instance.npy")
    np.save(scene / "instance.npy", instance[:-1])
    with pytest.raises(ValueError, match=r"instance\.npy: .* entries, but coord\.npy has"):
        load_scene_boxes(scene)
    np.save(scene / "instance.npy", instance)
    np.save(scene / "axis_align.npy", np.eye(3))
    with pytest.raises(ValueError, match=r"axis_align\.npy: expected shape \[4, 4\]"):
        load_scene_boxes(scene)
    (scene / "axis_align.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"axis_align\.npy"):
        load_scene_boxes(scene)
