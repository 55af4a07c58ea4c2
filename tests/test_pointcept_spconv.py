"""scene_kd's SpUNet-v1m1 and its Pointcept export against spconv 2.x itself: Pointcept's own network
(tests/reference/pointcept_spunet.py) loads the exported weights strictly and computes the same
outputs (float32 and float64); each kernel layout (1x1x1 submanifold, 3x3x3, 5x5x5, stride-2, inverse) is checked against
spconv's layers in both directions; a Pointcept checkpoint loads through `model.init`.

spconv's CPU forward is correct only with one torch thread (docs/sparse_backends.md): every test here
runs with one, and spconv has no CPU backward, so only forward passes are compared.
"""

import pytest
import torch

spconv = pytest.importorskip("spconv.pytorch",
                             reason="needs spconv 2.x (pip install -e .[dev]), the oracle of these tests")

from reference.pointcept_spunet import SpUNetBase  # noqa: E402
from torch_threads import one_torch_thread  # noqa: E402, F401 (autouse fixture)

from scene_kd.finetune.init_weights import init_from_checkpoint  # noqa: E402
from scene_kd.interop.export import export_checkpoint  # noqa: E402
from scene_kd.interop.spconv_layout import kernel_from_spconv, kernel_to_spconv  # noqa: E402
from scene_kd.models import build_student  # noqa: E402
from scene_kd.sparse import SparseConvolution, SparseConvolutionTranspose, SparseTensor  # noqa: E402

IN, CLASSES = 6, 13


def voxel_cloud(seed: int, per_item=(180, 140), extent: int = 24) -> torch.Tensor:
    """int32 [N, 4] (batch, x, y, z): unique voxels of 2 batch items, grouped by batch (Pointcept's
    offsets)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for b, n in enumerate(per_item):
        xyz = torch.unique(torch.randint(0, extent, (n, 3), generator=g), dim=0)
        items.append(torch.cat([torch.full((len(xyz), 1), b), xyz], 1))
    return torch.cat(items).int()


def pointcept_input(coords: torch.Tensor, feats: torch.Tensor) -> dict:
    counts = torch.bincount(coords[:, 0].long())
    return {"grid_coord": coords[:, 1:].long(), "feat": feats, "offset": torch.cumsum(counts, 0)}


def randomize_batch_norms(net: torch.nn.Module, seed: int) -> None:
    """Random affine parameters and running statistics, so that eval mode tests them too."""
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict().items():
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", "bn.bias")):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif name.endswith("bn.weight"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)


def spconv_tensor(coords, feats):
    return spconv.SparseConvTensor(feats, coords.contiguous(), (coords[:, 1:].max(0).values + 96).tolist(),
                                   int(coords[:, 0].max()) + 1)


def test_exported_spunet_loads_strictly_into_pointcepts_network_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    net = build_student("SpUNet-v1m1", in_channels=IN, out_channels=CLASSES)
    randomize_batch_norms(net, seed=1)
    for name, p in net.named_parameters():  # non-zero biases of the head, weights of every scale
        if name == "final.bias":
            torch.nn.init.normal_(p)
    checkpoint = tmp_path / "seg.pth"
    torch.save({"student_name": "SpUNet-v1m1", "num_classes": CLASSES, "model": net.state_dict()}, checkpoint)
    export_checkpoint(checkpoint, "pointcept-spunet", tmp_path / "pointcept.pth")
    exported = torch.load(tmp_path / "pointcept.pth")["state_dict"]
    assert all(k.startswith("backbone.") for k in exported)

    reference = SpUNetBase(IN, CLASSES)
    reference.load_state_dict({k[len("backbone."):]: v for k, v in exported.items()}, strict=True)
    coords = voxel_cloud(seed=2)
    feats = torch.rand(len(coords), IN)
    net.eval()
    reference.eval()
    with torch.no_grad():
        ours = net(SparseTensor(feats, coords)).F
        theirs = reference(pointcept_input(coords, feats))
    assert ours.std() > 0.1  # a meaningful comparison, not two near-zero outputs
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    # Training mode: batch statistics, and the running statistics both update with momentum 0.01.
    net.train()
    reference.train()
    with torch.no_grad():
        ours, theirs = net(SparseTensor(feats, coords)).F, reference(pointcept_input(coords, feats))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    theirs_stats = reference.state_dict()
    for name, value in net.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(value, theirs_stats[name.replace(".bn.", ".")], rtol=1e-4, atol=1e-5)


def test_exported_spunet_matches_pointcepts_network_in_float64(tmp_path):
    """In float64 the two networks agree to rounding far below float32's: the same function, not a near one."""
    torch.manual_seed(3)
    net = build_student("SpUNet-v1m1", in_channels=IN, out_channels=CLASSES)
    randomize_batch_norms(net, seed=4)
    torch.nn.init.normal_(net.final.bias)  # outputs of size one, so that 1e-10 is a tight bound
    checkpoint = tmp_path / "seg.pth"
    torch.save({"student_name": "SpUNet-v1m1", "num_classes": CLASSES, "model": net.state_dict()}, checkpoint)
    export_checkpoint(checkpoint, "pointcept-spunet", tmp_path / "pointcept.pth")
    exported = torch.load(tmp_path / "pointcept.pth")["state_dict"]
    reference = SpUNetBase(IN, CLASSES)
    reference.load_state_dict({k[len("backbone."):]: v for k, v in exported.items()}, strict=True)
    net, reference = net.double().eval(), reference.double().eval()
    coords = voxel_cloud(seed=5)
    feats = torch.rand(len(coords), IN, dtype=torch.float64)
    with torch.no_grad():
        ours = net(SparseTensor(feats, coords)).F
        theirs = reference(pointcept_input(coords, feats))
    assert ours.dtype == theirs.dtype == torch.float64 and ours.std() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_a_pointcept_checkpoint_initialises_scene_kd_to_pointcepts_outputs(tmp_path):
    torch.manual_seed(3)
    reference = SpUNetBase(IN, CLASSES)
    randomize_batch_norms(reference, seed=4)  # Pointcept's BN names have no .bn: weight/bias left as built
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("weight") and p.dim() == 5:
                p.normal_(0.0, (2.0 / (p[0].numel())) ** 0.5)  # He scale, so that signals survive the depth
    reference.eval()
    path = tmp_path / "model_last.pth"  # as Pointcept saves it under DDP
    state = {f"module.backbone.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 800, "state_dict": state, "best_metric_value": 0.7}, path)
    net = build_student("SpUNet-v1m1", in_channels=IN, out_channels=CLASSES)
    report = init_from_checkpoint(net, path, student="SpUNet-v1m1")
    assert report.head_loaded and not report.missing
    coords = voxel_cloud(seed=5)
    feats = torch.rand(len(coords), IN)
    with torch.no_grad():
        ours = net.eval()(SparseTensor(feats, coords)).F
        theirs = reference(pointcept_input(coords, feats))
    assert theirs.std() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


SUBMANIFOLD = [(1, "the 1x1x1 shortcut `proj` and the head `final`"), (3, "every block"), (5, "the stem")]


@pytest.mark.parametrize("kernel_size,where", SUBMANIFOLD)
def test_submanifold_kernels_match_spconv_both_ways(kernel_size, where):
    torch.manual_seed(kernel_size)
    coords = voxel_cloud(seed=6, extent=10)
    feats = torch.randn(len(coords), 5)
    ours = SparseConvolution(5, 7, kernel_size=kernel_size)
    # padding=1 whatever the kernel size, as Pointcept's stem and head: submanifold layers ignore it
    theirs = spconv.SubMConv3d(5, 7, kernel_size, padding=1, bias=False)
    assert (ours.kernel.dim() == 2) == (kernel_size == 1)  # [in, out] for 1x1x1, else [volume, in, out]
    with torch.no_grad():
        theirs.weight.copy_(kernel_to_spconv(ours.kernel))
        expected = theirs(spconv_tensor(coords, feats)).features
        torch.testing.assert_close(ours(SparseTensor(feats, coords)).F, expected, rtol=1e-5, atol=1e-5)
        # spconv -> scene_kd: fresh spconv weights, read back.
        theirs.weight.normal_()
        ours.kernel.copy_(kernel_from_spconv(theirs.weight, matrix_product=kernel_size == 1))
        expected = theirs(spconv_tensor(coords, feats)).features
        torch.testing.assert_close(ours(SparseTensor(feats, coords)).F, expected, rtol=1e-5, atol=1e-5)


def test_spconv_applies_a_1x1x1_kernel_as_a_reshape_not_a_transpose():
    """The quirk itself: the weight [out, 1, 1, 1, in] is used as `weight.view(in, out)`, so the naive
    layout (a transpose, right for every larger kernel) gives other outputs."""
    torch.manual_seed(7)
    coords = voxel_cloud(seed=8, extent=10)
    feats = torch.randn(len(coords), 5)
    kernel = torch.randn(5, 7)  # scene_kd [in, out]: features @ kernel
    layer = spconv.SubMConv3d(5, 7, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(kernel.t().reshape(7, 1, 1, 1, 5))  # the transpose: what [out, ..., in] suggests
        transposed = layer(spconv_tensor(coords, feats)).features
        layer.weight.copy_(kernel_to_spconv(kernel))
        reshaped = layer(spconv_tensor(coords, feats)).features
    torch.testing.assert_close(reshaped, feats @ kernel, rtol=1e-5, atol=1e-5)
    assert (transposed - feats @ kernel).abs().max() > 0.1


def test_stride_two_and_inverse_kernels_match_spconv_both_ways():
    torch.manual_seed(9)
    coords = voxel_cloud(seed=10, extent=12)
    feats = torch.randn(len(coords), 4)
    down = SparseConvolution(4, 6, kernel_size=2, stride=2)
    up = SparseConvolutionTranspose(6, 3, kernel_size=2, stride=2)
    sp_down = spconv.SparseConv3d(4, 6, 2, stride=2, bias=False, indice_key="d")
    sp_up = spconv.SparseInverseConv3d(6, 3, 2, bias=False, indice_key="d")
    for direction in ("to_spconv", "from_spconv"):
        with torch.no_grad():
            if direction == "to_spconv":
                sp_down.weight.copy_(kernel_to_spconv(down.kernel))
                sp_up.weight.copy_(kernel_to_spconv(up.kernel))
            else:
                sp_down.weight.normal_()
                sp_up.weight.normal_()
                down.kernel.copy_(kernel_from_spconv(sp_down.weight, matrix_product=False))
                up.kernel.copy_(kernel_from_spconv(sp_up.weight, matrix_product=False))
            coarse = down(SparseTensor(feats, coords))
            sp_coarse = sp_down(spconv_tensor(coords, feats))
            # Same coarse voxels (spconv indexes them / 2) in another row order: compare by coordinate.
            ours = dict(zip(map(tuple, coarse.C.tolist()), coarse.F, strict=True))
            rows = zip(sp_coarse.indices.tolist(), sp_coarse.features, strict=True)
            theirs = {(b, 2 * x, 2 * y, 2 * z): f for (b, x, y, z), f in rows}
            assert ours.keys() == theirs.keys()
            torch.testing.assert_close(torch.stack([ours[k] for k in theirs]),
                                       torch.stack(list(theirs.values())), rtol=1e-5, atol=1e-5)
            # Back up onto the fine voxels, both from the same coarse features (spconv's row order).
            coarse_feats = torch.randn(len(sp_coarse.features), 6)
            row = {k: i for i, k in enumerate(theirs)}
            ours_up = up(coarse.replace_features(coarse_feats[[row[k] for k in ours]])).F
            theirs_up = sp_up(sp_coarse.replace_feature(coarse_feats)).features
            torch.testing.assert_close(ours_up, theirs_up, rtol=1e-5, atol=1e-5)
