"""Teachers: shapes and strides at a non-square input, frozen semantics, local weights, MaskCLIP features."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scene_kd.models.teachers import TEACHERS, build_teacher, freeze_teacher
from scene_kd.models.teachers.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from scene_kd.models.teachers.clip import ClipResNetTeacher, clip_text_embeddings

H, W = 240, 320


def images(batch=2, height=H, width=W, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def normalized(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def halve_ceil(n, times):  # torchvision's stride-2 convolutions (kernel 3, padding 1) and max pool
    for _ in range(times):
        n = math.ceil(n / 2)
    return n


def torchvision_features(model, x, layer):
    x = normalized(x, IMAGENET_MEAN, IMAGENET_STD)
    x = model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))))
    return model.layer4(x) if layer == "layer4" else x


@pytest.fixture(scope="module")
def torchvision_resnet():
    from torchvision.models import resnet50

    torch.manual_seed(0)
    model = resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong load would show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def clip_rn50(tmp_path_factory):
    """A random open_clip RN50 and its state dict saved as a local checkpoint."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("RN50", pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "rn50_random.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def clip_vit():
    return build_teacher("clip", model="ViT-B-16", allow_random=True)


def assert_frozen(teacher):
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    parent = nn.Sequential(nn.Linear(2, 2), teacher)
    parent.train()
    assert parent[0].training
    assert not any(m.training for m in teacher.modules()), "a parent's .train() unfroze the teacher"


@pytest.mark.parametrize("layer,channels,stride,halvings", [("layer4", 2048, 32, 5), ("layer3", 1024, 16, 4)])
def test_resnet50_shapes_strides_and_frozen(layer, channels, stride, halvings):
    teacher = build_teacher("resnet50", layer=layer, allow_random=True)
    assert (teacher.out_channels, teacher.stride, teacher.embed_dim) == (channels, stride, None)
    assert_frozen(teacher)
    bn = teacher.body.bn1
    before = bn.running_mean.clone()
    nn.Sequential(teacher).train()
    features = teacher(images())
    assert features.shape == (2, channels, halve_ceil(H, halvings), halve_ceil(W, halvings))
    assert features.dtype == torch.float32 and not features.requires_grad
    assert torch.equal(bn.running_mean, before), "batch-norm statistics changed in a forward pass"


def test_resnet50_imagenet_state_dict_file_gives_the_in_memory_features(torchvision_resnet, tmp_path):
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(torchvision_resnet.state_dict(), path)  # includes fc.*, which the teacher drops
    x = images(batch=1, height=96, width=128)
    for layer in ("layer4", "layer3"):
        teacher = build_teacher("resnet50", weights=str(path), layer=layer)
        with torch.no_grad():
            expected = torchvision_features(torchvision_resnet, x, layer)
        torch.testing.assert_close(teacher(x), expected, atol=1e-5, rtol=1e-5)


def test_resnet50_moco_checkpoint_loads_the_query_encoder(torchvision_resnet, tmp_path):
    query = {k: v for k, v in torchvision_resnet.state_dict().items() if not k.startswith("fc.")}
    state = {f"module.encoder_q.{k}": v for k, v in query.items()}
    state.update({f"module.encoder_k.{k}": v + 1.0 if v.is_floating_point() else v for k, v in query.items()})
    state.update(
        {  # MoCo v2's MLP head, to be dropped
            "module.encoder_q.fc.0.weight": torch.randn(2048, 2048),
            "module.encoder_q.fc.0.bias": torch.randn(2048),
            "module.encoder_q.fc.2.weight": torch.randn(128, 2048),
            "module.encoder_q.fc.2.bias": torch.randn(128),
            "module.queue": torch.randn(128, 16),
            "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        }
    )
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, path)
    teacher = build_teacher("resnet50", weights=str(path))
    x = images(batch=1, height=96, width=128)
    with torch.no_grad():
        expected = torchvision_features(torchvision_resnet, x, "layer4")
    torch.testing.assert_close(teacher(x), expected, atol=1e-5, rtol=1e-5)


def test_weights_errors_name_the_path_and_how_to_get_them(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet50.pth") as error:
        build_teacher("resnet50", weights=str(missing))
    assert "IMAGENET1K_V2" in str(error.value) and "moco_v2_800ep" in str(error.value)
    with pytest.raises(FileNotFoundError, match="nowhere/clip.pt") as error:
        build_teacher("clip", model="ViT-B-16", weights=str(tmp_path / "nowhere" / "clip.pt"))
    assert "pretrained=" in str(error.value)
    with pytest.raises(ValueError, match="weights are required"):
        build_teacher("resnet50")
    with pytest.raises(ValueError, match="weights are required"):
        build_teacher("clip", model="RN50")
    bad = tmp_path / "not_a_resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not_a_resnet50.pth"):
        build_teacher("resnet50", weights=str(bad))


def test_clip_pretrained_tag_is_looked_up_in_the_local_cache_only(clip_rn50, tmp_path):
    with pytest.raises(FileNotFoundError, match="not in the local cache") as error:
        build_teacher("clip", model="RN50", pretrained="openai", cache_dir=str(tmp_path))
    assert "RN50.pt" in str(error.value)
    with pytest.raises(ValueError, match="not an open_clip pretrained tag"):
        build_teacher("clip", model="RN50", pretrained="no-such-tag", cache_dir=str(tmp_path))
    # open_clip keeps URL downloads as cache_dir/<basename of the URL>
    model, path = clip_rn50
    (tmp_path / "RN50.pt").write_bytes(path.read_bytes())
    teacher = build_teacher("clip", model="RN50", pretrained="openai", cache_dir=str(tmp_path))
    torch.testing.assert_close(teacher.visual.layer1[0].conv1.weight, model.visual.layer1[0].conv1.weight)


def test_clip_rn50_local_weights_shapes_and_clip_space(clip_rn50):
    model, path = clip_rn50
    teacher = build_teacher("clip", model="RN50", weights=str(path), clip_space=True)
    assert (teacher.out_channels, teacher.stride, teacher.embed_dim) == (1024, 32, 1024)
    assert_frozen(teacher)
    layer4 = freeze_teacher(ClipResNetTeacher(teacher.visual, clip_space=False))
    assert (layer4.out_channels, layer4.stride, layer4.embed_dim) == (2048, 32, None)
    x = images()
    features = layer4(x)
    assert features.shape == (2, 2048, H // 32, W // 32)  # CLIP's anti-aliasing average pools floor
    with torch.no_grad():
        v = model.visual
        expected = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(normalized(x, CLIP_MEAN, CLIP_STD))))))
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)

    embedded = teacher(x)
    assert embedded.shape == (2, 1024, H // 32, W // 32)
    pool = model.visual.attnpool
    with torch.no_grad():
        at_one_cell = pool.c_proj(pool.v_proj(features[1, :, 3, 7]))
    torch.testing.assert_close(embedded[1, :, 3, 7], at_one_cell, atol=1e-4, rtol=1e-4)


def test_clip_vit_b16_shapes_and_strides(clip_vit):
    assert (clip_vit.out_channels, clip_vit.stride, clip_vit.embed_dim) == (512, 16, 512)
    assert_frozen(clip_vit)
    assert clip_vit(images(batch=1)).shape == (1, 512, H // 16, W // 16)
    # sides that are not multiples of the patch are resized to the nearest multiples: 250 -> 256, 330 -> 336
    assert clip_vit(images(batch=1, height=250, width=330)).shape == (1, 512, 16, 21)
    assert clip_vit.positional_embedding((14, 14)) is clip_vit.visual.positional_embedding
    assert clip_vit.positional_embedding((15, 20)).shape == (1 + 15 * 20, 768)


def test_clip_vit_dense_features_are_maskclip_value_path(clip_vit):
    """One token done step by step from open_clip's modules, at the native 224 x 224 (no interpolation)."""
    visual = clip_vit.visual
    x = images(batch=1, height=224, width=224, seed=3)
    features = clip_vit(x)
    assert features.shape == (1, 512, 14, 14)
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        before_last = visual.forward_intermediates(
            normalized(x, CLIP_MEAN, CLIP_STD), indices=[len(blocks) - 2], intermediates_only=True
        )["image_intermediates"][0]  # [1, 768, 14, 14], open_clip's own embedding and blocks
        last = blocks[-1]
        token = before_last[0, :, 5, 9]
        width = token.shape[0]
        y = F.layer_norm(token, (width,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps)
        value = last.attn.in_proj_weight[2 * width :] @ y + last.attn.in_proj_bias[2 * width :]
        token = token + last.attn.out_proj.weight @ value + last.attn.out_proj.bias
        y = F.layer_norm(token, (width,), last.ln_2.weight, last.ln_2.bias, last.ln_2.eps)
        token = token + last.mlp.c_proj(last.mlp.gelu(last.mlp.c_fc(y)))
        token = F.layer_norm(token, (width,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
        expected = token @ visual.proj
    torch.testing.assert_close(features[0, :, 5, 9], expected, atol=1e-4, rtol=1e-4)


def test_clip_vit_l14_config_resolves():
    import open_clip

    vision = open_clip.get_model_config("ViT-L-14")["vision_cfg"]
    assert (vision["patch_size"], vision["width"], open_clip.get_model_config("ViT-L-14")["embed_dim"]) == (
        14,
        1024,
        768,
    )
    with pytest.raises(ValueError, match="CLIP-space only"):
        build_teacher("clip", model="ViT-B-16", allow_random=True, clip_space=False)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_teacher("clip", model="ViT-Q-99", allow_random=True)


def test_clip_text_embeddings(clip_rn50):
    import open_clip

    model, path = clip_rn50
    names = ["chair", "table", "wall"]
    embeddings = clip_text_embeddings(
        "RN50", str(path), names, templates=("a photo of a {}.", "a {} in a room.")
    )
    assert embeddings.shape == (3, 1024)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    single = clip_text_embeddings("RN50", str(path), names, templates=("a {} in a room.",))
    with torch.no_grad():
        expected = F.normalize(
            model.encode_text(open_clip.get_tokenizer("RN50")([f"a {n} in a room." for n in names]))
        )
    torch.testing.assert_close(single, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="template"):
        clip_text_embeddings("RN50", str(path), names, templates=("no placeholder",))
    with pytest.raises(ValueError, match="weights are required"):
        clip_text_embeddings("RN50", None, names)


def test_import_teacher_from_a_user_module(tmp_path, monkeypatch):
    (tmp_path / "my_lab_teacher.py").write_text(
        "from torch import nn\n"
        "def make(channels=8, weights=None):\n"
        "    assert weights in (None, 'given.pth')\n"
        "    return nn.Sequential(nn.Conv2d(3, channels, 4, stride=4), nn.BatchNorm2d(channels))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    teacher = build_teacher(
        "import", target="my_lab_teacher:make", factory_kwargs={"channels": 8}, out_channels=8, stride=4
    )
    assert (teacher.out_channels, teacher.stride, teacher.embed_dim) == (8, 4, None)
    assert_frozen(teacher)
    x = images()
    features = teacher(x)
    assert features.shape == (2, 8, H // 4, W // 4)
    with torch.no_grad():
        expected = teacher.module(normalized(x, IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(features, expected)

    # the engine's uniform call passes weights and allow_random; weights reach the factory
    build_teacher(
        "import",
        target="my_lab_teacher:make",
        out_channels=8,
        stride=4,
        weights="given.pth",
        allow_random=False,
    )
    wrong = build_teacher("import", target="my_lab_teacher:make", out_channels=16, stride=4)
    with pytest.raises(ValueError, match="out_channels=16"):
        wrong(x)
    with pytest.raises(ValueError, match="package.module:factory"):
        build_teacher("import", target="my_lab_teacher.make", out_channels=8, stride=4)
    with pytest.raises(ImportError, match="no_such_module"):
        build_teacher("import", target="no_such_module:make", out_channels=8, stride=4)


def test_unknown_teacher_and_bad_images():
    assert set(TEACHERS) == {"resnet50", "clip", "dinov2", "frame_encoder", "import"}
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("dino")
    teacher = build_teacher("resnet50", layer="layer3", allow_random=True)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        teacher(torch.rand(3, H, W))
    with pytest.raises(ValueError, match="uint8"):
        teacher(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_runs_in_bf16_and_returns_float32(clip_vit):
    x = images(batch=2)
    reference = clip_vit(x)
    teacher = clip_vit.to("cuda")
    try:
        features = teacher(x.cuda())
        assert features.dtype == torch.float32 and features.shape == reference.shape
        cosine = F.cosine_similarity(features.cpu(), reference, dim=1)
        assert cosine.min() > 0.98
    finally:
        clip_vit.to("cpu")
