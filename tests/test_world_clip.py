"""The in-world CLIP: image-text pairs cut from labelled frames (checked by hand and against the
library's frame labels on a tiny synthetic scan set), training with open_clip's ClipLoss (the loss
falls; an interrupted run resumes to the same weights), loading the checkpoint back through the CLIP
teacher by name with an open_clip model-config file (the same embeddings as the in-memory model, no
download, open_clip's registry untouched), the evaluation on hand-made cases, and the tool."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)

from scene_kd.config import load_config
from scene_kd.distill.pretrain import build_student_and_teacher
from scene_kd.distill.schema import PretrainConfig
from scene_kd.models.teachers import build_teacher
from scene_kd.models.teachers.clip import (
    ClipViTTeacher,
    build_clip_teacher,
    clip_text_embeddings,
    load_clip_model,
)
from scene_kd.transfer import world_clip
from scene_kd.transfer.frame_labels import load_labelled_frames
from scene_kd.transfer.world_clip import (
    dense_text_predictions,
    evaluate_world_clip,
    normalize_clip_images,
    pixel_scores,
    tiny_clip_config,
    to_float_images,
    train_world_clip,
    zero_shot_accuracy,
)
from scene_kd.transfer.world_clip_data import (
    CROP,
    FRAME,
    REGION,
    PairSettings,
    build_pair_set,
    crop_box,
    instance_boxes,
    make_pairs,
    region_boxes,
    resize_image,
)

NAMES = ["wall", "floor", "chair", "table"]
TINY = tiny_clip_config(image_size=32, patch_size=8, width=32, layers=2, head_width=16, embed_dim=32,
                        text_width=32, text_heads=2, text_layers=1, context_length=16)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def hand_frame() -> dict:
    """One 48 x 40 frame: a chair (instance 3, class 2) labelled on every other pixel of rows 10-19,
    cols 5-14; a table (instance 5, class 3) on rows 0-9, cols 40-47; a wall (instance 7, class 0)
    on rows 30-39; two pixels of instance 9 (too few for a crop); the rest unlabelled."""
    rng = np.random.default_rng(0)
    labels = np.full((40, 48), -1)
    instances = np.full((40, 48), -1)
    labels[10:20:2, 5:15:2], instances[10:20:2, 5:15:2] = 2, 3  # 25 pixels, box (5, 10, 14, 19) + 1
    labels[0:10, 40:48], instances[0:10, 40:48] = 3, 5  # 80 pixels
    labels[30:40, :], instances[30:40, :] = 0, 7  # 480 pixels
    labels[25, 20:22], instances[25, 20:22] = 1, 9  # 2 pixels
    return {"images": rng.integers(0, 256, (1, 40, 48, 3), dtype=np.uint8), "labels": labels[None],
            "instances": instances[None], "scene_index": np.array([0]), "frame_ids": np.array([12]),
            "scene_ids": ["scene0000_00"]}


def test_crop_boxes_and_captions_by_hand():
    frame = hand_frame()
    assert instance_boxes(frame["labels"][0], frame["instances"][0], min_pixels=8, min_side=8) == [
        (2, 3, (5, 10, 14, 19)), (3, 5, (40, 0, 48, 10)), (0, 7, (0, 30, 48, 40))]
    # Chair: longer side 9, x 1.4 -> 13 (round(12.6)); x: (5 + 14 - 13) // 2 = 3; y: (10 + 19 - 13) // 2 = 8.
    assert crop_box((5, 10, 14, 19), (48, 40), margin=0.2) == (3, 8, 16, 21)
    # Table at the top-right corner: side 14 shifted inside: x (88 - 14) // 2 = 37 -> 48 - 14 = 34; y -> 0.
    assert crop_box((40, 0, 48, 10), (48, 40), margin=0.2) == (34, 0, 48, 14)
    # Wall: side round(48 x 1.4) capped at 48; the frame is only 40 high, so y spans it all.
    assert crop_box((0, 30, 48, 40), (48, 40), margin=0.2) == (0, 0, 48, 40)

    settings = PairSettings(image_size=16, frame_size=(48, 40), crop_margin=0.2, caption_min_fraction=0.1,
                            region_side=0)
    pairs = make_pairs(frame, NAMES, settings, seed=3, crop_templates=("a photo of a {}.",),
                       frame_templates=("a room with {}.",))
    assert pairs["kind"].tolist() == [CROP, CROP, CROP, FRAME]
    assert pairs["class_index"].tolist() == [2, 3, 0, -1]
    assert pairs["boxes"].tolist() == [[3, 8, 16, 21], [34, 0, 48, 14], [0, 0, 48, 40], [0, 0, 48, 40]]
    assert pairs["texts"][:3] == ["a photo of a chair.", "a photo of a table.", "a photo of a wall."]
    # Labelled pixels: wall 480, table 80, chair 25, floor 2 of 587; >= 10 %: wall (82 %) and table (14 %).
    assert pairs["texts"][3] in ("a room with a wall and a table.", "a room with a table and a wall.")
    assert pairs["classes"].tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [1, 0, 0, 1]]
    image = frame["images"][0]
    np.testing.assert_array_equal(pairs["images"][0], resize_image(image[8:21, 3:16], 16))
    np.testing.assert_array_equal(pairs["images"][3], resize_image(image, 16))
    assert pairs["images"].shape == (4, 16, 16, 3) and pairs["frame_index"].tolist() == [0, 0, 0, 0]

    # Deterministic given the seed; templates and caption order are drawn from it.
    several = make_pairs(frame, NAMES, settings, seed=3)
    assert several["texts"] == make_pairs(frame, NAMES, settings, seed=3)["texts"]
    assert any(several["texts"] != make_pairs(frame, NAMES, settings, seed=s)["texts"] for s in range(4, 8))


def test_region_crops_by_hand():
    frame = hand_frame()
    labels = frame["labels"][0]
    # Every 10 x 10 window around a wall, chair or table pixel sees only that class (or nothing); the floor
    # has 2 pixels, too few.
    regions = region_boxes(labels, 10, np.random.default_rng(0), min_purity=0.5, min_pixels=8)
    assert [cls for cls, _ in regions] == [0, 2, 3]
    for cls, (x0, y0, x1, y1) in regions:
        assert x1 - x0 == y1 - y0 == 10 and 0 <= x0 and x1 <= 48 and 0 <= y0 and y1 <= 40
        window = labels[y0:y1, x0:x1]
        assert set(window[window >= 0].tolist()) == {cls}
    # A checkerboard of two classes: no 6 x 6 window has one class on 60 % of its labelled pixels.
    checker = np.indices((20, 20)).sum(0) % 2
    assert region_boxes(checker, 6, np.random.default_rng(0), min_purity=0.6, min_pixels=4) == []
    pairs = make_pairs(frame, NAMES, PairSettings(image_size=16, frame_size=(48, 40), region_side=0.25), seed=0)
    picked = np.nonzero(pairs["kind"] == REGION)[0]
    assert pairs["class_index"][picked].tolist() == [0, 2, 3]
    assert all(NAMES[c] in pairs["texts"][i] for i, c in zip(picked, [0, 2, 3], strict=True))
    assert (pairs["boxes"][picked, 2] - pairs["boxes"][picked, 0]).tolist() == [10, 10, 10]  # 0.25 x 40


def test_region_crops_at_several_sides():
    frame = hand_frame()
    one = make_pairs(frame, NAMES, PairSettings(image_size=16, frame_size=(48, 40), region_side=0.25), seed=0)
    both = make_pairs(frame, NAMES, PairSettings(image_size=16, frame_size=(48, 40), region_side=(0.25, 0.5)),
                      seed=0)
    first, picked = np.nonzero(one["kind"] == REGION)[0], np.nonzero(both["kind"] == REGION)[0]
    # The first side's regions come first and are those of that side alone (the same draws).
    np.testing.assert_array_equal(both["boxes"][picked[:3]], one["boxes"][first])
    # Then the 20-pixel windows (0.5 x 40): each class with at least half of a window's labelled pixels.
    sides = both["boxes"][picked, 2] - both["boxes"][picked, 0]
    assert sides[:3].tolist() == [10, 10, 10] and set(sides[3:].tolist()) == {20} and len(picked) > 3
    for i in picked[3:]:
        x0, y0, x1, y1 = both["boxes"][i]
        seen = frame["labels"][0][y0:y1, x0:x1]
        seen = seen[seen >= 0]
        assert np.count_nonzero(seen == both["class_index"][i]) >= 0.5 * seen.size
    no_regions = make_pairs(frame, NAMES, PairSettings(image_size=16, frame_size=(48, 40), region_side=(0,)), seed=0)
    assert not np.any(no_regions["kind"] == REGION)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """Three synthetic scans (two train, one val), 6 frames each at 80 x 60."""
    from scene_kd.transfer.pipeline import TransferSettings, prepare_synthetic_data

    settings = TransferSettings(num_scenes=3, val_fraction=0.34, num_frames=12, frame_skip=2, image_size=(80, 60),
                                scene_percents=[], point_counts=[])
    return prepare_synthetic_data(tmp_path_factory.mktemp("world"), settings, seed=0, progress=False)


def test_pair_set_of_synthetic_scans_matches_the_frame_labels(tiny_world):
    settings = PairSettings(image_size=32, frame_size=(80, 60), min_crop_pixels=6, min_crop_side=6)
    pairs, frames = build_pair_set(tiny_world, "train", None, settings, seed=0)
    val_pairs, val_frames = build_pair_set(tiny_world, "val", None, settings, seed=0)
    assert not set(frames["scene_ids"]) & set(val_frames["scene_ids"]) and len(frames["scene_ids"]) == 2
    # The classes are those of the library's projected frame labels (same points, same depth test).
    np.testing.assert_array_equal(frames["labels"], load_labelled_frames(tiny_world, "train", (80, 60))["labels"])
    assert (frames["labels"] >= 0).mean() > 0.05
    crops = np.nonzero(pairs["kind"] == CROP)[0]
    assert len(crops) >= 10 and np.count_nonzero(pairs["kind"] == FRAME) == len(frames["images"])
    for i in crops:
        f, cls = pairs["frame_index"][i], pairs["class_index"][i]
        x0, y0, x1, y1 = pairs["boxes"][i]
        # Some instance of this class has its labelled pixels inside the crop box, and enough of them.
        labels, instances = frames["labels"][f], frames["instances"][f]
        inside = [k for k in np.unique(instances[labels == cls])
                  if (rows_cols := np.nonzero(instances == k))[0].size >= 6
                  and rows_cols[1].min() >= x0 and rows_cols[1].max() < x1
                  and rows_cols[0].min() >= y0 and rows_cols[0].max() < y1]
        assert inside, f"pair {i}: no instance of class {cls} inside {pairs['boxes'][i]}"
    for i in np.nonzero(pairs["kind"] == REGION)[0]:
        x0, y0, x1, y1 = pairs["boxes"][i]
        window = frames["labels"][pairs["frame_index"][i]][y0:y1, x0:x1]
        seen = window[window >= 0]
        assert np.count_nonzero(seen == pairs["class_index"][i]) >= settings.min_region_purity * seen.size
    from scene_kd.transfer.world_clip_data import seg20_class_names

    names = seg20_class_names()
    for i in np.nonzero(pairs["kind"] == FRAME)[0]:
        labels = frames["labels"][pairs["frame_index"][i]]
        fractions = np.bincount(labels[labels >= 0], minlength=20) / np.count_nonzero(labels >= 0)
        named = np.nonzero(pairs["classes"][i])[0]
        assert set(named) <= set(np.nonzero(fractions >= settings.caption_min_fraction)[0])
        assert all(f"a {names[k]}" in pairs["texts"][i] or f"an {names[k]}" in pairs["texts"][i] for k in named)
    assert len(val_pairs["texts"]) > 0


def color_pairs(count: int = 48, size: int = 32, seed: int = 0) -> dict:
    """Pairs whose text says which of four colors dominates the image (a task a tiny CLIP learns fast)."""
    rng = np.random.default_rng(seed)
    colors = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 40]])
    names = ["red", "green", "blue", "yellow"]
    cls = np.arange(count) % 4
    images = np.clip(colors[cls][:, None, None, :] + rng.normal(0, 25, (count, size, size, 3)), 0, 255)
    return {"images": images.astype(np.uint8), "texts": [f"a photo of a {names[k]} thing." for k in cls],
            "kind": np.zeros(count, dtype=np.int64), "class_index": cls}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    model, metrics = train_world_clip(color_pairs(), out, model_config=TINY, steps=40, batch_size=16, lr=3e-3,
                                      checkpoint_every=20, seed=0, progress=False)
    return out, model, metrics


def test_training_reduces_the_clip_loss(trained):
    out, _, metrics = trained
    losses = metrics["loss"]
    # 4 captions repeat in a batch of 16, so the loss cannot go below about ln 4 (from about ln 16).
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert json.loads((out / "model_config.json").read_text()) == TINY
    state = torch.load(out / "world_clip.pt", weights_only=True)
    assert set(state) == {"state_dict"} and "visual.proj" in state["state_dict"]
    assert not list(out.glob(".*tmp*")) and not list((out / "checkpoints").glob(".*tmp*"))


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    pairs = color_pairs(count=24)
    kwargs = dict(model_config=TINY, steps=6, batch_size=8, checkpoint_every=3, seed=1, progress=False)
    _, straight = train_world_clip(pairs, tmp_path / "straight", **kwargs)
    original = world_clip.step_generator

    def interrupt_at_step_4(seed, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(seed, step)

    monkeypatch.setattr(world_clip, "step_generator", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_world_clip(pairs, tmp_path / "resumed", **kwargs)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(world_clip, "step_generator", original)
    _, resumed = train_world_clip(pairs, tmp_path / "resumed", **kwargs)
    assert resumed["loss"] == straight["loss"]
    a = torch.load(tmp_path / "straight" / "world_clip.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "world_clip.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="other settings .*steps"):
        train_world_clip(pairs, tmp_path / "resumed", **{**kwargs, "steps": 8})


def test_the_checkpoint_loads_through_the_clip_teacher_path(trained, no_network):
    out, model, _ = trained
    weights, config = out / "world_clip.pt", out / "model_config.json"
    models_before = open_clip.list_models()
    # Exactly what pretraining does for teacher.name=clip teacher.weights=FILE teacher.options.model=CONFIG.
    cfg = load_config(PretrainConfig, None, ["teacher.name=clip", f"teacher.weights={weights}",
                                             f"teacher.options.model={config}"])
    teacher = build_student_and_teacher(cfg)[1]
    by_name = build_teacher("clip", weights=str(weights), model=str(config))
    assert isinstance(teacher, ClipViTTeacher) and teacher.embed_dim == 32 and teacher.stride == 8
    images = to_float_images(color_pairs(count=4, seed=5)["images"])
    with torch.no_grad():
        expected_image = model.encode_image(normalize_clip_images(images))
        expected_dense = ClipViTTeacher(model.visual).eval()(images)
    dense, embedding = teacher.encode(images)
    torch.testing.assert_close(by_name.encode(images)[1], embedding, rtol=0, atol=0)
    torch.testing.assert_close(embedding, expected_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense, expected_dense, rtol=1e-5, atol=1e-5)
    assert dense.shape == (4, 32, 4, 4)

    templates = ("a photo of a {}.", "a {} thing.")
    text = clip_text_embeddings(str(config), weights, ["red", "blue"], templates)
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)([t.format(n) for n in ["red", "blue"]
                                                                       for t in templates])
    with torch.no_grad():
        oracle = F.normalize(model.encode_text(tokens), dim=-1).view(2, 2, -1).mean(1)
    torch.testing.assert_close(text, F.normalize(oracle, dim=-1), rtol=1e-5, atol=1e-5)
    # A custom config is not registered in open_clip's global model list.
    assert open_clip.list_models() == models_before and open_clip.get_model_config(config.stem) is None


def test_model_config_files_errors_and_wrapped_format(tmp_path, trained):
    out, model, _ = trained
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build_clip_teacher(str(tmp_path / "missing.json"), weights=out / "world_clip.pt")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_clip_model(str(bad), allow_random=True)
    bad.write_text(json.dumps({"vision_cfg": {}}))
    with pytest.raises(ValueError, match="bad.json.*embed_dim"):
        load_clip_model(str(bad), allow_random=True)
    with pytest.raises(ValueError, match="pretrained tags"):
        load_clip_model(str(out / "model_config.json"), pretrained="openai")
    with pytest.raises(ValueError, match="weights are required.*model_config.json"):
        load_clip_model(str(out / "model_config.json"))
    other = tiny_clip_config(image_size=32, patch_size=8, width=48, layers=2, head_width=16, embed_dim=32,
                             text_width=32, text_heads=2, text_layers=1, context_length=16)
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="cannot load .*world_clip.pt"):
        load_clip_model(str(tmp_path / "other.json"), weights=out / "world_clip.pt")
    # open_clip's open_clip_config.json layout ({"model_cfg": ...}) reads the same.
    wrapped = tmp_path / "open_clip_config.json"
    wrapped.write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    loaded = load_clip_model(str(wrapped), weights=out / "world_clip.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def random_clip_files(tmp_path: Path, vision: dict, seed: int = 0) -> tuple[Path, Path, torch.nn.Module]:
    """(model config file, weights file, the open_clip model) of TINY with `vision` merged into its
    vision_cfg, random weights, the class embedding and every bias non-zero (a test sees them)."""
    config = json.loads(json.dumps(TINY))
    config["vision_cfg"].update(vision)
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = world_clip.clip_from_config_file(path).eval()
    with torch.no_grad():
        for name, param in model.visual.named_parameters():
            if name.endswith("bias") or name.startswith("ln_"):
                param.add_(0.1 * torch.randn_like(param))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "weights.pt")
    return path, tmp_path / "weights.pt", model


@pytest.mark.parametrize("vision", [{"pool_type": "tok"}, {"pool_type": "avg"},
                                    {"pool_type": "avg", "final_ln_after_pool": True},
                                    {"pool_type": "tok", "no_ln_pre": True}])
def test_vit_teacher_follows_open_clip_pool_type(tmp_path, vision, no_network):
    config, weights, model = random_clip_files(tmp_path, vision)
    teacher = build_clip_teacher(config, weights=weights)
    assert teacher.pool_type == vision["pool_type"]
    images = to_float_images(color_pairs(count=3, seed=2)["images"])  # 32 x 32: the native grid, 4 x 4
    dense, embedding = teacher.encode(images)
    visual = model.visual
    with torch.no_grad():
        expected = model.encode_image(normalize_clip_images(images))  # open_clip's own forward and pooling
        last = visual.transformer.resblocks[-1]
        before_last, after_last = visual.forward_intermediates(
            normalize_clip_images(images), indices=[0, 1], intermediates_only=True, output_fmt="NLC",
        )["image_intermediates"]  # the patch tokens after block 0 and after block 1 (the last)
        if vision["pool_type"] == "tok":  # MaskCLIP: the value path of the last block, token by token
            x = before_last + last.attn.out_proj(F.linear(last.ln_1(before_last), last.attn.in_proj_weight[2 * 32:],
                                                          last.attn.in_proj_bias[2 * 32:]))
            tokens = x + last.mlp(last.ln_2(x))
        else:  # the tokens open_clip's mean pools
            tokens = after_last
        expected_dense = (visual.ln_post(tokens) @ visual.proj).transpose(1, 2).reshape(3, 32, 4, 4)
    torch.testing.assert_close(embedding, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense, expected_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher(images), dense, rtol=0, atol=0)
    if vision == {"pool_type": "avg"}:  # linear after ln_post: the mean of the dense map is the embedding
        torch.testing.assert_close(dense.mean(dim=(2, 3)), embedding, rtol=1e-5, atol=1e-5)
    if vision["pool_type"] == "tok":  # the class token is not the mean of the patch tokens
        assert not torch.allclose(dense.mean(dim=(2, 3)), embedding, atol=1e-3)
    assert teacher(to_float_images(color_pairs(count=1, size=48)["images"])).shape == (1, 32, 6, 6)


@pytest.mark.parametrize("vision, named", [({"pool_type": "none"}, "pool_type 'none'"),
                                           ({"attentional_pool": True, "attn_pooler_heads": 2,
                                             "attn_pooler_queries": 4}, "attentional pooler")])
def test_vit_teacher_refuses_pools_without_a_dense_reading(tmp_path, vision, named):
    config, weights, _ = random_clip_files(tmp_path, vision)
    with pytest.raises(ValueError, match=f"model_config.json.*{named}.*supported ViT pool types"):
        build_clip_teacher(config, weights=weights)


def test_tiny_clip_config_pool_type():
    assert tiny_clip_config()["vision_cfg"]["pool_type"] == "avg"
    assert tiny_clip_config(pool_type="tok")["vision_cfg"]["pool_type"] == "tok"
    with pytest.raises(ValueError, match="pool_type.*'none'"):
        tiny_clip_config(pool_type="none")


def test_zero_shot_accuracy_and_dense_predictions_by_hand():
    text = torch.eye(3)
    images = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.2, 1.0, 0.0], [3.0, 0.0, 0.0]])
    scores = zero_shot_accuracy(images, text, torch.tensor([0, 2, 0, 0]))
    assert scores["predictions"].tolist() == [0, 2, 1, 0]
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["mean_class_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    # A 2 x 2 map: left column along class 0, right column along class 1 (lengths differ: cosine).
    features = torch.tensor([[[5.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])[None]
    pred = dense_text_predictions(features, text, (4, 4))
    # Bilinear, align_corners=False: output columns 0, 1 lie nearer the left cell, 2, 3 the right one.
    assert pred.tolist() == [[[0, 0, 1, 1]] * 4]
    labels = np.array([[0, 0, 1, -1], [0, 1, 1, -1], [0, 0, 2, 2], [-1, -1, -1, -1]])
    result = pixel_scores(pred[0].numpy(), labels, 3)
    # 10 labelled pixels. Class 0: labelled 5, predicted 6 (cols 0-1), both 5 -> 5/6; class 1: labelled 3,
    # predicted 4, both 2 -> 2/5; class 2: labelled 2, never predicted -> 0. Accuracy (5 + 2) / 10.
    assert result["iou"] == pytest.approx([5 / 6, 0.4, 0.0])
    assert result["miou"] == pytest.approx((5 / 6 + 0.4) / 3) and result["accuracy"] == pytest.approx(0.7)


def test_evaluation_matches_the_in_memory_model(trained):
    out, model, _ = trained
    pairs = color_pairs(count=12, seed=7)
    names = ["red", "green", "blue", "yellow"]
    # Frames whose every pixel is labelled with the image's color class.
    frames = {"images": pairs["images"], "labels": np.repeat(pairs["class_index"][:, None, None], 32, 1).repeat(32, 2)}
    result = evaluate_world_clip(out / "world_clip.pt", out / "model_config.json", pairs, frames,
                                 class_names=names, templates=("a photo of a {} thing.",))
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)([f"a photo of a {n} thing." for n in names])
    images = to_float_images(pairs["images"])
    with torch.no_grad():
        text = model.encode_text(tokens)
        image = model.encode_image(normalize_clip_images(images))
        dense = ClipViTTeacher(model.visual).eval()(images)
    expected = zero_shot_accuracy(image, text, torch.from_numpy(pairs["class_index"]))
    assert result["crop_accuracy"] == pytest.approx(expected["accuracy"])
    assert result["crop_accuracy"] > 0.9  # the colors were learnt
    pixels = pixel_scores(dense_text_predictions(dense, text, (32, 32)).numpy(), frames["labels"], 4)
    assert result["pixel_miou"] == pytest.approx(pixels["miou"]) and result["chance"] == 0.25
    assert result["crops"] == 12 and result["frames"] == 12


def _tool():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import train_world_clip as tool
    finally:
        sys.path.pop(0)
    return tool


def test_tool_trains_measures_and_reports_bad_input(tiny_world, tmp_path, capsys):
    tool = _tool()
    out = tmp_path / "run"
    code = tool.main(["--data", str(tiny_world), "--out", str(out), "--steps", "3", "--batch-size", "8",
                      "--image-size", "32", "--width", "32", "--layers", "1", "--head-width", "16",
                      "--embed-dim", "16", "--text-width", "32", "--text-heads", "2", "--text-layers", "1",
                      "--frame-size", "80x60", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "zero-shot accuracy" in printed and "pixel mIoU" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["zero_shot_crop_accuracy"] <= 1 and 0 <= metrics["pixel_miou"] <= 1
    assert (out / "world_clip.pt").is_file() and (out / "model_config.json").is_file()
    assert json.loads((out / "model_config.json").read_text())["vision_cfg"]["pool_type"] == "avg"

    assert tool.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("train_world_clip: error:") and "nowhere" in error and "\n" not in error
    broken = tmp_path / "broken"
    shutil.copytree(tiny_world, broken)
    scene = sorted(p for p in broken.iterdir() if (p / "instance.npy").is_file())[0]
    (scene / "instance.npy").write_bytes(b"not an array")
    assert tool.main(["--data", str(broken), "--out", str(tmp_path / "y"), "--frame-size", "80x60",
                      "--no-progress"]) == 1
    error = capsys.readouterr().err.strip()
    assert str(scene / "instance.npy") in error and "\n" not in error
