"""The SpUNet-v1m1 student without spconv: Pointcept's module names and shapes (read off Pointcept's
spconv_unet_v1m1_base.py), the students' interface (per-voxel output, decoder levels, no head),
learning, and its use in pretraining (the recipe, PPKT's heads) and detection. Equality with Pointcept's
own network is tests/test_pointcept_spconv.py."""

from pathlib import Path

import pytest
import torch

from scene_kd.config import load_config
from scene_kd.distill.pretrain import build_ppkt
from scene_kd.distill.schema import PretrainConfig
from scene_kd.finetune.det.model import SparseDetector
from scene_kd.models import build_student
from scene_kd.models.spunet import SpUNet, spunet_kwargs_from_state
from scene_kd.sparse import SparseTensor, batched_coordinates, sparse_quantize

REPO = Path(__file__).resolve().parents[1]
SMALL = {"base_channels": 8, "channels": (8, 16, 16, 24, 24, 16, 12, 12), "layers": (1, 2, 1, 2, 1, 1, 1, 2)}


def toy_scene(n_points=2000, seed=0, voxel_size=0.1):
    """A floor and a box voxelized at `voxel_size`; label 1 on the box, 0 on the floor."""
    g = torch.Generator().manual_seed(seed)
    floor = torch.rand(n_points, 3, generator=g) * torch.tensor([2.0, 2.0, 0.0])
    box = torch.rand(n_points // 2, 3, generator=g) * torch.tensor([0.5, 0.5, 0.6])
    box = box + torch.tensor([0.7, 0.7, 0.15])
    labels = torch.cat([torch.zeros(n_points), torch.ones(n_points // 2)]).long()
    voxels, unique_map, _ = sparse_quantize(torch.cat([floor, box]), voxel_size)
    return voxels, labels[unique_map]


def test_names_and_shapes_are_pointcepts():
    """Pointcept's names with scene_kd's leaves: `<m>.kernel` [volume, in, out] ([in, out] for 1x1x1)
    where spconv has `<m>.weight`, batch norms under `.bn`."""
    net = build_student("SpUNet-v1m1", in_channels=6, out_channels=20)
    sd = net.state_dict()
    expected = {
        "conv_input.0.kernel": (125, 6, 32),  # SubMConv3d kernel 5
        "conv_input.1.bn.weight": (32,),
        "down.0.0.kernel": (8, 32, 32),  # SparseConv3d kernel 2 stride 2: enc_channels -> channels[s]
        "down.1.0.kernel": (8, 32, 64),  # the stride-2 conv widens (MinkUNet's keeps the width)
        "down.3.0.kernel": (8, 128, 256),
        "enc.0.block1.conv2.kernel": (27, 32, 32),
        "enc.3.block5.conv1.kernel": (27, 256, 256),  # layers (2, 3, 4, 6, ...)
        "up.3.0.kernel": (8, 256, 256),  # SparseInverseConv3d channels[4] <- channels[3]
        "up.2.0.kernel": (8, 256, 128),
        "up.0.0.kernel": (8, 96, 96),
        "dec.3.block0.conv1.kernel": (27, 256 + 128, 256),  # upsampled first, then the skip
        "dec.3.block0.proj.0.kernel": (384, 256),  # 1x1 shortcut where widths differ: [in, out]
        "dec.3.block0.proj.1.bn.running_var": (256,),
        "dec.0.block0.conv1.kernel": (27, 96 + 32, 96),
        "dec.0.block1.bn2.bn.bias": (96,),
        "final.kernel": (96, 20),
        "final.bias": (1, 20),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(".proj." in k for k in sd if k.startswith("enc."))  # identity shortcuts in the encoder
    assert sum(1 for k in sd if k.endswith("proj.0.kernel")) == 4  # dec[s].block0 only
    assert not any(k.endswith("bias") and ".bn." not in k and not k.startswith("final.") for k in sd)
    norms = [m.bn for m in net.modules() if hasattr(m, "bn")]
    assert norms and all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in norms)


def test_config_is_read_back_from_a_state_dict():
    net = SpUNet(in_channels=4, out_channels=7, **SMALL)
    assert spunet_kwargs_from_state(net.state_dict()) == {"in_channels": 4, "out_channels": 7, **SMALL}
    no_head = SpUNet(in_channels=3, out_channels=None, **SMALL).state_dict()
    assert spunet_kwargs_from_state(no_head)["out_channels"] is None
    with pytest.raises(ValueError, match="no down.2.0.kernel"):
        spunet_kwargs_from_state({k: v for k, v in no_head.items() if not k.startswith("down.2.")})


def test_per_voxel_output_and_decoder_levels():
    torch.manual_seed(0)
    voxels, _ = toy_scene(600, voxel_size=0.05)
    coords = batched_coordinates([voxels, voxels[: len(voxels) // 2]])
    feats = torch.rand(len(coords), 3)
    net = build_student("SpUNet-v1m1", in_channels=3, out_channels=5).eval()
    with torch.no_grad():
        out = net(SparseTensor(feats, coords))
    assert out.F.shape == (len(coords), 5) and out.stride == 1 and torch.equal(out.C, coords)
    assert torch.isfinite(out.F).all()

    backbone = build_student("SpUNet-v1m1", in_channels=3, out_channels=None)
    assert backbone.final is None and backbone.feature_channels == 96
    ran = []
    for name in ("up.1", "up.2"):
        backbone.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    levels = backbone.decoder_features(SparseTensor(feats, coords), (8, 4))
    assert ran == ["up.2"]  # 8 -> 4 runs, 4 -> 2 does not: the decoder stops at the finest stride asked
    for stride, level in levels.items():
        assert level.stride == stride and level.F.shape[1] == backbone.decoder_channels(stride)
    assert [backbone.decoder_channels(s) for s in (8, 4, 2, 1)] == [256, 128, 96, 96]
    with pytest.raises(ValueError, match="strides"):
        backbone.decoder_features(SparseTensor(feats, coords), (3,))


def test_spunet_learns_a_geometric_labelling():
    """Fitting floor-vs-box from geometry alone (constant input features) drives the loss down."""
    torch.manual_seed(0)
    voxels, labels = toy_scene(2000)
    coords = batched_coordinates([voxels])
    net = SpUNet(in_channels=1, out_channels=2, **SMALL)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(25):
        logits = net(SparseTensor(torch.ones(len(voxels), 1), coords)).F
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_recipe_builds_a_spunet_ppkt_student_that_trains():
    recipe = load_config(PretrainConfig, REPO / "configs/pretrain/ppkt_spunet.yaml")
    assert recipe.student.name == "SpUNet-v1m1" and recipe.data.voxel_size == 0.02
    assert recipe.teacher.name == "resnet50" and recipe.loss.temperature == 0.04
    cfg = load_config(PretrainConfig, None, [
        "student.name=SpUNet-v1m1", "teacher.name=import", "teacher.allow_random=true", "head.embed_dim=16",
        "teacher.options={target: 'tests.fixtures.small_teacher:small_cnn', out_channels: 32, stride: 4, "
        "factory_kwargs: {out_channels: 32, width: 16}}"])
    trainable, teacher = build_ppkt(cfg, torch.device("cpu"))
    assert trainable.head3d.in_channels == trainable.student.feature_channels == 96
    voxels, _ = toy_scene(400)
    coords = batched_coordinates([voxels])
    images = torch.rand(1, 3, 32, 48)
    g = torch.Generator().manual_seed(0)
    pairs = torch.stack([torch.randint(0, len(voxels), (64,), generator=g), torch.zeros(64, dtype=torch.long),
                         torch.randint(0, 32, (64,), generator=g),
                         torch.randint(0, 48, (64,), generator=g)], 1)  # (voxel, image, row, column)
    with torch.no_grad():
        teacher_map = teacher(images)
    loss = trainable(torch.rand(len(voxels), 3), coords, teacher_map, pairs, (32, 48))["loss_ppkt"]
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for name, p in trainable.student.named_parameters() if name.startswith("conv_input.")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_spunet_is_a_detection_backbone():
    backbone = SpUNet(in_channels=3, out_channels=None, **SMALL)
    detector = SparseDetector(backbone, strides=(2, 4, 8), num_classes=3, head_channels=16)
    assert detector.unused_backbone_modules() == ["up.0", "dec.0"]
    unused = [p for name, p in backbone.named_parameters() if name.startswith(("up.0.", "dec.0."))]
    assert unused and not any(p.requires_grad for p in unused)
    voxels, _ = toy_scene(600, voxel_size=0.05)
    levels = detector(SparseTensor(torch.rand(len(voxels), 3), batched_coordinates([voxels])))
    assert [level.stride for level in levels] == [2, 4, 8]
    assert all(level.cls_logits.shape == (len(level.coordinates), 3) for level in levels)
