"""The torch sparse engine against dense `conv3d` / `conv_transpose3d` on small grids: values and
gradients, kernel sizes 1/2/3, strides 1/2, dilation, batch > 1 with an empty batch item."""

import pytest
import torch
import torch.nn.functional as F

from scene_kd.sparse import (
    SparseConvolution,
    SparseConvolutionTranspose,
    SparseTensor,
    kernel_offsets,
)


@pytest.fixture(autouse=True)
def float64_by_default():
    """The dense comparisons run in double precision (1e-10); restore the default afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def random_occupancy(grid: int, batch_items: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    """int32 [N, 4] coordinates: random voxels of a grid^3 box for each listed batch index."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in batch_items:
        occupied = torch.rand(grid, grid, grid, generator=g) < density
        xyz = occupied.nonzero()
        rows.append(torch.cat([torch.full((xyz.shape[0], 1), b), xyz], dim=1))
    coords = torch.cat(rows).int()
    return coords[torch.randperm(coords.shape[0], generator=g)]  # rows in no particular order


def to_dense(features: torch.Tensor, coords: torch.Tensor, batch: int, grid: int, stride: int = 1) -> torch.Tensor:
    """Scatter [N, C] features into a dense [B, C, X, Y, Z] grid (differentiably)."""
    dense = features.new_zeros(batch, grid, grid, grid, features.shape[1])
    c = coords.long()
    dense = dense.index_put((c[:, 0], c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride), features)
    return dense.permute(0, 4, 1, 2, 3)


def gather_dense(dense: torch.Tensor, coords: torch.Tensor, stride: int) -> torch.Tensor:
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride]


def dense_weight(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME kernel [k^3, in, out] -> conv3d weight [out, in, kx, ky, kz] (DESIGN.md's oracle)."""
    cin, cout = kernel.shape[-2:]
    return kernel.reshape(k, k, k, cin, cout).permute(4, 3, 2, 1, 0)


def test_kernel_offset_order_matches_minkowski():
    off3 = kernel_offsets(3)
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                k = (dx + 1) + 3 * (dy + 1) + 9 * (dz + 1)
                assert off3[k].tolist() == [dx, dy, dz]
    off2 = kernel_offsets(2)
    assert [off2[dx + 2 * dy + 4 * dz].tolist() for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)] == [
        [dx, dy, dz] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
    assert kernel_offsets(1).tolist() == [[0, 0, 0]]


CASES = [
    # kernel, stride, dilation
    (1, 1, 1),
    (3, 1, 1),
    (3, 1, 2),
    (5, 1, 1),
    (2, 2, 1),
    (3, 2, 1),
    (1, 2, 1),
]


@pytest.mark.parametrize("kernel_size,stride,dilation", CASES)
def test_convolution_matches_dense_conv3d(kernel_size, stride, dilation):
    grid, batch, cin, cout = 8, 3, 3, 4
    coords = random_occupancy(grid, batch_items=(0, 2), density=0.3, seed=kernel_size * 10 + stride + dilation)
    feats = torch.randn(coords.shape[0], cin, requires_grad=True)
    conv = SparseConvolution(cin, cout, kernel_size=kernel_size, stride=stride, dilation=dilation, bias=True)
    out = conv(SparseTensor(feats, coords))

    # Expected output coordinates: the input's (stride 1) or floor(c / 2) * 2 (stride 2).
    expected_coords = coords.clone()
    expected_coords[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
    assert out.stride == stride
    assert set(map(tuple, out.C.tolist())) == set(map(tuple, expected_coords.tolist()))
    if stride == 1:
        assert torch.equal(out.C, coords)

    feats_dense = feats.detach().clone().requires_grad_(True)
    dense_in = to_dense(feats_dense, coords, batch, grid)
    kernel = conv.kernel if conv.kernel.dim() == 3 else conv.kernel[None]
    weight = dense_weight(kernel, kernel_size).detach().clone().requires_grad_(True)
    pad = dilation * (kernel_size // 2) if kernel_size % 2 == 1 else 0
    dense_out = F.conv3d(dense_in, weight, conv.bias.detach().reshape(-1), stride=stride, padding=pad,
                         dilation=dilation)
    expected = gather_dense(dense_out, out.C, stride)
    torch.testing.assert_close(out.F, expected, rtol=1e-10, atol=1e-10)

    probe = torch.randn_like(out.F)
    (out.F * probe).sum().backward()
    (expected * probe).sum().backward()
    torch.testing.assert_close(feats.grad, feats_dense.grad, rtol=1e-10, atol=1e-10)
    kernel_grad = conv.kernel.grad if conv.kernel.dim() == 3 else conv.kernel.grad[None]
    torch.testing.assert_close(dense_weight(kernel_grad, kernel_size), weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.bias.grad.reshape(-1), probe.sum(dim=0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_transposed_convolution_matches_dense_conv_transpose3d(kernel_size):
    grid, batch, cin, cout = 8, 2, 3, 5
    fine = random_occupancy(grid, batch_items=(0, 1), density=0.35, seed=7 + kernel_size)
    x = SparseTensor(torch.randn(fine.shape[0], cin), fine)
    down = SparseConvolution(cin, cin, kernel_size=2, stride=2)(x)  # stride 2, coords floor(c/2)*2
    coarse_feats = torch.randn(len(down), cin, requires_grad=True)
    coarse = down.replace_features(coarse_feats)
    up = SparseConvolutionTranspose(cin, cout, kernel_size=kernel_size, stride=2)
    out = up(coarse)
    assert out.stride == 1 and out.coordinate_set is x.coordinate_set  # onto the encoder's coordinates

    coarse_dense_feats = coarse_feats.detach().clone().requires_grad_(True)
    dense_in = to_dense(coarse_dense_feats, down.C, batch, grid // 2, stride=2)
    k = kernel_size
    weight = up.kernel.reshape(k, k, k, cin, cout).permute(3, 4, 2, 1, 0)  # [in, out, kx, ky, kz]
    pad = 1 if k == 3 else 0
    dense_out = F.conv_transpose3d(dense_in, weight, stride=2, padding=pad, output_padding=1 if k == 3 else 0)
    expected = gather_dense(dense_out, out.C, 1)
    torch.testing.assert_close(out.F, expected, rtol=1e-10, atol=1e-10)

    probe = torch.randn_like(out.F)
    (out.F * probe).sum().backward()
    (expected * probe).sum().backward()
    torch.testing.assert_close(coarse_feats.grad, coarse_dense_feats.grad, rtol=1e-10, atol=1e-10)


def test_stride_two_then_stride_one_at_coarse_stride_uses_scaled_offsets():
    """A kernel-3 convolution at tensor stride 2 gathers neighbours 2 voxels apart."""
    grid = 8
    coords = random_occupancy(grid, batch_items=(0,), density=0.5, seed=3)
    x = SparseTensor(torch.randn(coords.shape[0], 2), coords)
    down = SparseConvolution(2, 2, kernel_size=2, stride=2)(x)
    conv = SparseConvolution(2, 3, kernel_size=3)
    out = conv(down)
    dense = to_dense(down.F, down.C, 1, grid // 2, stride=2)
    expected = gather_dense(F.conv3d(dense, dense_weight(conv.kernel, 3), padding=1), out.C, 2)
    torch.testing.assert_close(out.F, expected, rtol=1e-10, atol=1e-10)


def test_empty_input_and_empty_batch_item():
    conv = SparseConvolution(2, 3, kernel_size=3)
    empty = SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32))
    assert conv(empty).F.shape == (0, 3)
    down = SparseConvolution(2, 3, kernel_size=2, stride=2)(empty)
    assert down.F.shape == (0, 3)
