"""SparseTensor construction checks, voxelization, pooling and skip concatenation, by hand."""

import pytest
import torch

from scene_kd.sparse import (
    SparseConvolution,
    SparseConvolutionTranspose,
    SparseGlobalAvgPooling,
    SparseGlobalMaxPooling,
    SparseTensor,
    batched_coordinates,
    cat,
    sparse_quantize,
)


def coords_of(rows):
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize(
    "features,coordinates,message",
    [
        (torch.zeros(2, 1), torch.tensor([[0, 0.5, 0, 0], [0, 1, 0, 0]]), "integer"),
        (torch.zeros(2, 1), torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.int32), "batch column"),
        (torch.zeros(3, 1), coords_of([[0, 0, 0, 0], [0, 1, 0, 0]]), "differ in length"),
        (torch.zeros(2, 1), coords_of([[0, 1, 2, 3], [0, 1, 2, 3]]), "duplicate"),
        (torch.zeros(2, 1), coords_of([[-1, 0, 0, 0], [0, 1, 0, 0]]), "batch indices"),
        (torch.zeros(2), coords_of([[0, 0, 0, 0], [0, 1, 0, 0]]), r"\[N, C\]"),
        (torch.zeros(1, 1), coords_of([[0, 10**6, 0, 0]]), "spatial coordinates"),
    ],
)
def test_bad_input_is_a_clear_value_error(features, coordinates, message):
    with pytest.raises(ValueError, match=message):
        SparseTensor(features, coordinates)


def test_coordinates_must_be_multiples_of_the_tensor_stride():
    with pytest.raises(ValueError, match="multiples of 2"):
        SparseTensor(torch.zeros(1, 1), coords_of([[0, 1, 0, 0]]), tensor_stride=2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kernel_size=3, stride=2, dilation=2), "cannot be dilated"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=(3, 3, 3)), "per-axis"),
        (dict(kernel_size=3, stride=0), "stride"),
    ],
)
def test_layers_reject_what_they_cannot_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseConvolution(2, 2, **kwargs)


def test_layer_input_checks():
    x = SparseTensor(torch.zeros(2, 3), coords_of([[0, 0, 0, 0], [0, 1, 0, 0]]))
    with pytest.raises(ValueError, match="expects 2 input channels"):
        SparseConvolution(2, 2)(x)
    with pytest.raises(ValueError, match="needs that stride's coordinates"):
        SparseConvolutionTranspose(3, 2, kernel_size=2, stride=2)(
            SparseTensor(torch.zeros(1, 3), coords_of([[0, 0, 0, 0]]), tensor_stride=2))
    y = SparseTensor(torch.zeros(2, 3), coords_of([[0, 0, 0, 0], [0, 1, 0, 0]]))
    with pytest.raises(ValueError, match="same coordinate set"):
        cat(x, y)  # equal coordinates, but a different input: MinkowskiEngine refuses this too
    with pytest.raises(ValueError, match="same coordinate set"):
        _ = x + y


def test_sparse_quantize_by_hand():
    points = torch.tensor([[0.01, 0.01, 0.01], [0.015, 0.0, 0.0], [0.03, 0.0, 0.0], [-0.01, 0.0, 0.0]])
    voxels, unique_map, inverse_map = sparse_quantize(points, 0.02)
    assert voxels.tolist() == [[-1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert unique_map.tolist() == [3, 0, 2]  # the lowest point index of each voxel
    assert inverse_map.tolist() == [1, 1, 2, 0]
    with pytest.raises(ValueError, match="NaN or infinite"):
        sparse_quantize(torch.tensor([[float("nan"), 0.0, 0.0]]), 0.02)
    with pytest.raises(ValueError, match="shape"):
        sparse_quantize(torch.zeros(4, 2), 0.02)


def test_features_back_to_points_through_the_inverse_map():
    points = torch.tensor([[0.01, 0.0, 0.0], [0.011, 0.0, 0.0], [0.05, 0.0, 0.0]])
    voxels, unique_map, inverse_map = sparse_quantize(points, 0.02)
    x = SparseTensor(torch.tensor([[1.0], [2.0]]), batched_coordinates([voxels]))
    assert x.features_at(inverse_map).flatten().tolist() == [1.0, 1.0, 2.0]


def test_batched_coordinates():
    c = batched_coordinates([torch.tensor([[1, 2, 3]]), torch.zeros(0, 3, dtype=torch.long), torch.tensor([[4, 5, 6]])])
    assert c.tolist() == [[0, 1, 2, 3], [2, 4, 5, 6]]
    assert c.dtype == torch.int32


def test_global_pooling_by_hand_with_an_empty_batch_item():
    coords = coords_of([[2, 0, 0, 0], [0, 1, 0, 0], [2, 5, 0, 0], [0, 0, 3, 0], [2, 1, 1, 1]])
    feats = torch.tensor([[1.0, -1.0], [2.0, 0.0], [3.0, 5.0], [4.0, 1.0], [8.0, -3.0]])
    x = SparseTensor(feats, coords)
    avg = SparseGlobalAvgPooling()(x)
    assert avg.C[:, 0].tolist() == [0, 2]
    torch.testing.assert_close(avg.F, torch.tensor([[3.0, 0.5], [4.0, 1.0 / 3.0]]))
    mx = SparseGlobalMaxPooling()(x)
    torch.testing.assert_close(mx.F, torch.tensor([[4.0, 1.0], [8.0, 5.0]]))


def test_stride_one_output_keeps_rows_and_cat_joins_channels():
    coords = coords_of([[0, 3, 1, 0], [0, 0, 0, 0], [1, 2, 2, 2]])
    x = SparseTensor(torch.randn(3, 2), coords)
    y = SparseConvolution(2, 4, kernel_size=3)(x)
    assert torch.equal(y.C, coords) and y.coordinate_set is x.coordinate_set
    joined = cat(y, x)
    assert joined.F.shape == (3, 6)
    torch.testing.assert_close(joined.F[:, 4:], x.F)


def test_kernel_maps_are_cached_per_input():
    coords = coords_of([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    x = SparseTensor(torch.randn(3, 2), coords)
    a, b = SparseConvolution(2, 2, kernel_size=3), SparseConvolution(2, 2, kernel_size=3)
    a(x)
    b(x)
    assert len(x.coordinate_manager._kernel_maps) == 1


@pytest.mark.parametrize("kernel_size, dilation, shuffled", [(3, 1, False), (3, 2, True), (5, 1, True), (1, 1, False),
                                                             (2, 1, True)])
def test_kernel_map_pairs_match_a_brute_force_search(kernel_size, dilation, shuffled):
    """Every offset's pairs, also those a symmetric kernel derives by exchanging input and output
    rows, equal a search of every (output, input) coordinate pair; rows in key order or shuffled."""
    from scene_kd.sparse.coords import kernel_offsets
    from scene_kd.sparse.kernel_map import CoordinateManager

    generator = torch.Generator().manual_seed(kernel_size * 10 + dilation)
    cells = torch.randint(0, 6, (120, 3), generator=generator)
    batch = torch.randint(0, 2, (120, 1), generator=generator)
    coords = torch.unique(torch.cat([batch, cells], dim=1), dim=0)
    if shuffled:
        coords = coords[torch.randperm(len(coords), generator=generator)]
    manager = CoordinateManager()
    points = manager.insert(coords.int(), 1)
    assert points.rows_in_key_order == (not shuffled)
    kmap = manager.kernel_map(points, points, kernel_size, dilation)
    rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
    offsets = kernel_offsets(kernel_size) * dilation
    start = 0
    for k, offset in enumerate(offsets.tolist()):
        expected = {(rows[(c[0], c[1] + offset[0], c[2] + offset[1], c[3] + offset[2])], j)
                    for j, c in enumerate(coords.tolist())
                    if (c[0], c[1] + offset[0], c[2] + offset[1], c[3] + offset[2]) in rows}
        got = list(zip(kmap.in_rows[start:start + kmap.counts[k]].tolist(),
                       kmap.out_rows[start:start + kmap.counts[k]].tolist(), strict=True))
        assert len(got) == len(set(got)) and set(got) == expected, k
        start += kmap.counts[k]
    assert start == len(kmap.in_rows) == len(kmap.out_rows)
    centre = (len(offsets) - 1) // 2 if kernel_size % 2 else None
    assert kmap.identity_offset == centre
