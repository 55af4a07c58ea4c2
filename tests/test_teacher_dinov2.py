"""DINOv2 teacher: random-weight timm DINOv2 ViTs saved in timm's layout and in the original torch.hub
layout, loaded through `teacher.name=dinov2 teacher.weights=FILE`; the dense map checked against timm's
own `forward_features` (the model's forward as the oracle), registers, ViT-g's SwiGLU, errors."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scene_kd.config import load_config
from scene_kd.distill.schema import PretrainConfig
from scene_kd.models.teachers import build_teacher
from scene_kd.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]
NATIVE = 98  # the test models' native size: a 7 x 7 patch grid (the released models: 518, 37 x 37)


def images(height, width, batch=2, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def imagenet_normalized(x):
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def random_timm_dinov2(name, img_size=NATIVE, seed=0, **kwargs):
    """timm's DINOv2 ViT with random weights, perturbed so that layer scales, tokens and positions all
    matter (timm initializes the layer scales at 1e-5, which would hide a wrong block)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, img_size=img_size, **kwargs).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith(".gamma"):
                param.uniform_(0.5, 1.0)
            else:
                param.add_(0.05 * torch.randn_like(param))
    return model


def timm_dense(model, x):
    """The oracle: timm's own forward_features, the patch tokens reshaped to [B, C, h, w]."""
    with torch.no_grad():
        tokens = model.forward_features(imagenet_normalized(x))[:, model.num_prefix_tokens:]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, x.shape[2] // 14, x.shape[3] // 14)


def to_hub_layout(timm_state, generator):
    """The facebookresearch/dinov2 torch.hub layout of a timm DINOv2 state dict, written from the
    original model's key names: `mask_token` [1, C]; with registers `register_tokens` and a `pos_embed`
    that again holds the class position (timm folds it into `cls_token`); ViT-g's SwiGLU as `mlp.w12`
    (fc1) and `mlp.w3` (fc2)."""
    hub = {}
    for key, value in timm_state.items():
        if timm_state["cls_token"].shape[-1] == 1536:
            key = re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", key))
        hub[key] = value.clone()
    width = timm_state["cls_token"].shape[-1]
    hub["mask_token"] = torch.zeros(1, width)
    if "reg_token" in hub:
        cls_position = torch.randn(1, 1, width, generator=generator)
        hub["register_tokens"] = hub.pop("reg_token")
        hub["pos_embed"] = torch.cat([cls_position, timm_state["pos_embed"]], dim=1)
        hub["cls_token"] = timm_state["cls_token"] - cls_position
    return hub


def build_from_config(weights, **options):
    """As tools/pretrain.py builds the teacher from `teacher.*` (name, weights, allow_random, options)."""
    overrides = [f"teacher.weights={weights}"] + [f"teacher.options.{k}={v}" for k, v in options.items()]
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/ppkt_dinov2_vitb14.yaml", overrides)
    assert cfg.teacher.name == "dinov2"
    return build_teacher(cfg.teacher.name, weights=cfg.teacher.weights, allow_random=cfg.teacher.allow_random,
                         **cfg.teacher.options)


@pytest.fixture(scope="module")
def vits14(tmp_path_factory):
    model = random_timm_dinov2("vit_small_patch14_dinov2")
    path = tmp_path_factory.mktemp("dinov2") / "vit_small_patch14_dinov2.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def vits14_reg4(tmp_path_factory):
    model = random_timm_dinov2("vit_small_patch14_reg4_dinov2", seed=1)
    path = tmp_path_factory.mktemp("dinov2") / "vit_small_patch14_reg4_dinov2.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_timm_state_dict_through_the_recipe_gives_timm_forward_features(vits14):
    model, path = vits14
    teacher = build_from_config(path)
    assert (teacher.out_channels, teacher.stride, teacher.embed_dim, teacher.registers) == (384, 14, None, 0)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    x = images(NATIVE, NATIVE)
    torch.testing.assert_close(teacher(x), timm_dense(model, x), atol=1e-5, rtol=1e-5)
    # a ScanNet frame: 240 x 320 runs at the nearest multiples of 14, 238 x 322 -> 17 x 23 cells
    assert teacher(images(240, 320, batch=1)).shape == (1, 384, 17, 23)


def test_other_sizes_match_timm_dynamic_img_size_and_the_dinov2_formula(vits14, tmp_path):
    """pos_interpolation="timm" is timm's dynamic_img_size forward exactly; the default "dinov2" is the
    original interpolate_pos_encoding (no registers: bicubic with scale factor (g + 0.1) / M, no
    antialias), checked here by a timm model whose grid-sized pos_embed is set from that formula."""
    import timm

    model, path = vits14
    x = images(126, 168)  # a 9 x 12 grid
    dynamic = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=NATIVE,
                                dynamic_img_size=True).eval()
    dynamic.load_state_dict(model.state_dict())
    timm_mode = build_teacher("dinov2", weights=path, pos_interpolation="timm")
    torch.testing.assert_close(timm_mode(x), timm_dense(dynamic, x), atol=1e-5, rtol=1e-5)

    sized = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=(126, 168)).eval()
    state = dict(model.state_dict())
    patches = state["pos_embed"][:, 1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, scale_factor=((9 + 0.1) / 7, (12 + 0.1) / 7), mode="bicubic",
                            antialias=False)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], resized.flatten(2).transpose(1, 2)], dim=1)
    sized.load_state_dict(state)
    default = build_teacher("dinov2", weights=path)
    torch.testing.assert_close(default(x), timm_dense(sized, x), atol=1e-5, rtol=1e-5)
    assert (default(x) - timm_mode(x)).abs().max() > 1e-4  # the two interpolations do differ
    fixed = build_teacher("dinov2", weights=path, image_size=(126, 168))
    torch.testing.assert_close(fixed(images(120, 160)), default(F.interpolate(
        images(120, 160), size=(126, 168), mode="bilinear", align_corners=False)), atol=1e-5, rtol=1e-5)


def test_hub_layout_and_safetensors_give_the_same_features(vits14, tmp_path):
    from safetensors.torch import save_file

    model, _ = vits14
    hub_path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(to_hub_layout(model.state_dict(), torch.Generator().manual_seed(0)), hub_path)
    safetensors_path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(safetensors_path))
    x = images(NATIVE, NATIVE, seed=1)
    expected = timm_dense(model, x)
    for path in (hub_path, safetensors_path):
        torch.testing.assert_close(build_teacher("dinov2", weights=path)(x), expected, atol=1e-5, rtol=1e-5)


def test_registers_in_both_layouts(vits14_reg4, tmp_path):
    model, path = vits14_reg4
    hub_path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    hub = to_hub_layout(model.state_dict(), torch.Generator().manual_seed(1))
    assert hub["register_tokens"].shape == (1, 4, 384) and hub["pos_embed"].shape == (1, 1 + 49, 384)
    torch.save(hub, hub_path)
    x = images(NATIVE, NATIVE, seed=2)
    expected = timm_dense(model, x)
    for file in (path, hub_path):
        teacher = build_from_config(file)
        assert teacher.registers == 4 and teacher.vit.num_prefix_tokens == 5
        torch.testing.assert_close(teacher(x), expected, atol=1e-5, rtol=1e-5)
    # with registers the original code resizes to the size, antialiased: timm's resampling exactly
    import timm

    dynamic = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=NATIVE,
                                dynamic_img_size=True).eval()
    dynamic.load_state_dict(model.state_dict())
    x = images(70, 126, seed=3)
    torch.testing.assert_close(build_teacher("dinov2", weights=hub_path)(x), timm_dense(dynamic, x),
                               atol=1e-5, rtol=1e-5)


def test_vitg_swiglu_in_the_hub_layout(tmp_path):
    """ViT-g's packed SwiGLU (hub `mlp.w12` / `mlp.w3`), on a 1-block ViT-g (the depth is read from the
    keys)."""
    model = random_timm_dinov2("vit_giant_patch14_dinov2", img_size=56, depth=1)
    path = tmp_path / "dinov2_vitg14_depth1.pth"
    hub = to_hub_layout(model.state_dict(), torch.Generator().manual_seed(2))
    assert hub["blocks.0.mlp.w12.weight"].shape == (8192, 1536) and "blocks.0.mlp.fc1.weight" not in hub
    torch.save(hub, path)
    teacher = build_teacher("dinov2", weights=path)
    assert teacher.out_channels == 1536 and len(teacher.vit.blocks) == 1
    x = images(56, 56, batch=1)
    torch.testing.assert_close(teacher(x), timm_dense(model, x), atol=1e-4, rtol=1e-4)


def test_wrong_files_and_settings_are_one_line_errors(vits14, tmp_path):
    from torchvision.models import resnet18

    resnet = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(ValueError, match="resnet18.pth' is not a DINOv2 ViT state dict: expected") as error:
        build_teacher("dinov2", weights=resnet)
    assert "\n" not in str(error.value) and "conv1.weight" in str(error.value)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.pth' as a torch checkpoint of tensors") as error:
        build_teacher("dinov2", weights=text)
    assert "\n" not in str(error.value)
    model, path = vits14
    patch16 = tmp_path / "patch16.pth"
    state = dict(model.state_dict())
    state["patch_embed.proj.weight"] = torch.zeros(384, 3, 16, 16)
    torch.save(state, patch16)
    with pytest.raises(ValueError, match=r"patch16.pth' has patch_embed.proj.weight of shape \(384, 3, 16,"):
        build_teacher("dinov2", weights=patch16)
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in model.state_dict().items() if k != "blocks.3.attn.qkv.weight"}, broken)
    with pytest.raises(ValueError, match="broken.pth' .read as a timm DINOv2 state dict. does not") as error:
        build_teacher("dinov2", weights=broken)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="not model='dinov2_vitb14'"):
        build_teacher("dinov2", weights=path, model="dinov2_vitb14")
    with pytest.raises(FileNotFoundError, match=r"missing.pth' does not exist.*dinov2_vitb14_pretrain.pth"):
        build_teacher("dinov2", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="weights are required"):
        build_teacher("dinov2")
    with pytest.raises(ValueError, match="needs model="):
        build_teacher("dinov2", allow_random=True)
    with pytest.raises(ValueError, match="unknown model 'dinov2_vitq14'"):
        build_teacher("dinov2", allow_random=True, model="dinov2_vitq14")
    with pytest.raises(ValueError, match="pos_interpolation"):
        build_teacher("dinov2", weights=path, pos_interpolation="nearest")
    with pytest.raises(ValueError, match="multiples of 14"):
        build_teacher("dinov2", weights=path, image_size=(100, 140))


def test_random_released_variant_by_name():
    teacher = build_teacher("dinov2", allow_random=True, model="dinov2_vits14_reg")
    assert teacher.registers == 4 and teacher.vit.pos_embed.shape == (1, 37 * 37, 384)  # the 518-pixel grid
    assert len(teacher.vit.blocks) == 12
    assert teacher(images(56, 70, batch=1)).shape == (1, 384, 4, 5)
