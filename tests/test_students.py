"""Students: MinkowskiEngine's module names and shapes, per-voxel output at stride 1, and learning."""

import pytest
import torch

from scene_kd.models import STUDENTS, build_student
from scene_kd.sparse import SparseTensor, batched_coordinates, sparse_quantize


def toy_scene(n_points=4000, seed=0, voxel_size=0.05):
    """A floor and a box voxelized at `voxel_size`; label 1 on the box, 0 on the floor."""
    g = torch.Generator().manual_seed(seed)
    floor = torch.rand(n_points, 3, generator=g) * torch.tensor([2.0, 2.0, 0.0])
    box = torch.rand(n_points // 2, 3, generator=g) * torch.tensor([0.5, 0.5, 0.6]) + torch.tensor([0.7, 0.7, 0.15])
    points = torch.cat([floor, box])
    labels = torch.cat([torch.zeros(n_points), torch.ones(n_points // 2)]).long()
    voxels, unique_map, inverse_map = sparse_quantize(points, voxel_size)
    return voxels, labels[unique_map], points, inverse_map


def test_minkunet18a_names_and_shapes_are_minkowski_engines():
    sd = build_student("MinkUNet18A", in_channels=3, out_channels=20).state_dict()
    expected = {
        "conv0p1s1.kernel": (125, 3, 32),  # kernel 5
        "bn0.bn.running_mean": (32,),
        "conv1p1s2.kernel": (8, 32, 32),
        "block1.0.conv1.kernel": (27, 32, 32),
        "block1.1.norm2.bn.weight": (32,),
        "block2.0.downsample.0.kernel": (32, 64),  # 1x1x1: [in, out]
        "block4.1.conv2.kernel": (27, 256, 256),
        "convtr4p16s2.kernel": (8, 256, 128),
        "bntr4.bn.weight": (128,),
        "block5.0.conv1.kernel": (27, 256, 128),  # 128 (up) + 128 (skip) in
        "block5.0.downsample.0.kernel": (256, 128),
        "convtr7p2s2.kernel": (8, 96, 96),
        "block8.0.conv1.kernel": (27, 128, 96),  # 96 + 32 (conv0 skip)
        "final.kernel": (96, 20),
        "final.bias": (1, 20),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.endswith("conv1p1s2.bias") for k in sd)


def test_res16unet34c_differs_where_it_should():
    net = build_student("Res16UNet34C", in_channels=3, out_channels=20)
    sd = net.state_dict()
    assert tuple(sd["conv0p1s1.kernel"].shape) == (27, 3, 32)  # first kernel 3, not 5
    assert net.bn0.bn.momentum == 0.02
    assert sum(1 for k in sd if k.startswith("block4.") and k.endswith("conv1.kernel")) == 6  # 34: (2,3,4,6,...)
    assert tuple(sd["convtr5p8s2.kernel"].shape) == (8, 256, 128)  # block5 width 256 -> 128


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_every_student_gives_per_voxel_features_at_stride_one(name):
    torch.manual_seed(0)
    voxels, _, _, _ = toy_scene(600)
    coords = batched_coordinates([voxels, voxels[: len(voxels) // 2]])
    net = build_student(name, in_channels=3, out_channels=5).eval()
    with torch.no_grad():
        out = net(SparseTensor(torch.rand(coords.shape[0], 3), coords))
    assert out.F.shape == (coords.shape[0], 5) and out.stride == 1
    assert torch.equal(out.C, coords)
    assert torch.isfinite(out.F).all()


def test_backbone_without_final_layer_returns_decoder_features():
    net = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    assert net.final is None and net.feature_channels == 96
    voxels, _, _, _ = toy_scene(300)
    out = net(SparseTensor(torch.rand(len(voxels), 3), batched_coordinates([voxels])))
    assert out.F.shape == (len(voxels), 96)


def test_unknown_student_names_the_choices():
    with pytest.raises(ValueError, match="MinkUNet18A"):
        build_student("MinkUNet99Z")


def test_a_student_learns_a_geometric_labelling():
    """Fitting floor-vs-box from geometry alone (constant input features) drives the loss down."""
    torch.manual_seed(0)
    voxels, labels, points, inverse_map = toy_scene(3000, voxel_size=0.1)
    coords = batched_coordinates([voxels])
    net = build_student("MinkUNet14A", in_channels=1, out_channels=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        out = net(SparseTensor(torch.ones(len(voxels), 1), coords))
        loss = torch.nn.functional.cross_entropy(out.F, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    net.eval()
    with torch.no_grad():
        per_point = net(SparseTensor(torch.ones(len(voxels), 1), coords)).features_at(inverse_map)
    point_labels = (points[:, 2] > 0.02).long()
    assert (per_point.argmax(1) == point_labels).float().mean() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """The torch backend on CUDA gives the CPU's outputs and gradients (float32)."""
    torch.manual_seed(0)
    voxels, labels, _, _ = toy_scene(2000)
    coords = batched_coordinates([voxels, voxels[::2]])
    feats = torch.rand(coords.shape[0], 3)
    cpu_net = build_student("Res16UNet34C", in_channels=3, out_channels=4)
    gpu_net = build_student("Res16UNet34C", in_channels=3, out_channels=4).cuda()
    gpu_net.load_state_dict(cpu_net.state_dict())
    outs = []
    for net, device in ((cpu_net, "cpu"), (gpu_net, "cuda")):
        out = net(SparseTensor(feats.to(device), coords.to(device)))
        out.F.square().mean().backward()
        outs.append(out.F.detach().cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-4)
    for (name, p), q in zip(cpu_net.named_parameters(), gpu_net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad.cpu(), rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
