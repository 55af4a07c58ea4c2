"""Projection heads: shapes, unit norms, and pixel sampling equal to upsample-then-index."""

import pytest
import torch
import torch.nn.functional as F

from scene_kd.models.heads import PointProjection, UpsamplingProjection, sample_pixel_features


def upsample_then_index(features, image_index, rows, cols, size):
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)[
        image_index, :, rows, cols
    ]


def test_sample_pixel_features_hand_computed():
    features = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # [1, 1, 2, 2] upsampled to 4 x 4
    rows, cols = torch.tensor([0, 1, 3]), torch.tensor([0, 2, 3])
    # (1, 2): source row 1.5 * 0.5 - 0.5 = 0.25, column 2.5 * 0.5 - 0.5 = 0.75:
    # 0.75 * (0.25 * 0 + 0.75 * 1) + 0.25 * (0.25 * 2 + 0.75 * 3) = 1.25; (0, 0) clamps to 0; (3, 3) to 3.
    got = sample_pixel_features(features, torch.zeros(3, dtype=torch.long), rows, cols, (4, 4))
    assert got[:, 0].tolist() == [0.0, 1.25, 3.0]


@pytest.mark.parametrize("coarse,size", [((8, 10), (240, 320)), ((15, 20), (240, 320)), ((7, 10), (50, 23))])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_sample_pixel_features_equals_upsample_then_index(coarse, size, dtype, atol):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 6, *coarse, generator=generator, dtype=dtype)
    m = 2000
    image_index = torch.randint(0, 3, (m,), generator=generator)
    rows = torch.randint(0, size[0], (m,), generator=generator)
    cols = torch.randint(0, size[1], (m,), generator=generator)
    rows[:4] = torch.tensor([0, 0, size[0] - 1, size[0] - 1])  # the four corners
    cols[:4] = torch.tensor([0, size[1] - 1, 0, size[1] - 1])
    got = sample_pixel_features(features, image_index, rows, cols, size)
    assert got.shape == (m, 6) and got.dtype == dtype
    torch.testing.assert_close(
        got, upsample_then_index(features, image_index, rows, cols, size), atol=atol, rtol=0
    )


def test_sample_pixel_features_rejects_mismatched_pairs():
    with pytest.raises(ValueError, match=r"\[M\]"):
        sample_pixel_features(
            torch.zeros(1, 2, 3, 3),
            torch.zeros(4, dtype=torch.long),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            (9, 9),
        )


@pytest.mark.parametrize(
    "mode,factor,coarse",
    [("bilinear", None, (8, 10)), ("transposed", 16, (15, 20)), ("transposed", 32, (8, 10))],
)
def test_upsampling_projection_shapes_norms_and_sampling(mode, factor, coarse):
    torch.manual_seed(0)
    head = UpsamplingProjection(32, mode=mode, upsample_factor=factor)
    features = torch.randn(2, 32, *coarse)
    dense = head(features, (240, 320))
    assert dense.shape == (2, 128, 240, 320)
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, 240, 320))

    image_index = torch.tensor([0, 1, 1, 0])
    rows, cols = torch.tensor([0, 17, 239, 120]), torch.tensor([0, 300, 319, 5])
    sampled = head.sample(features, image_index, rows, cols, (240, 320))
    torch.testing.assert_close(sampled, dense[image_index, :, rows, cols], atol=1e-5, rtol=0)

    sampled.sum().backward()
    assert head.projection.weight.grad is not None and head.projection.weight.grad.abs().sum() > 0


def test_upsampling_projection_argument_errors():
    with pytest.raises(ValueError, match="upsample_factor"):
        UpsamplingProjection(8, mode="transposed")
    with pytest.raises(ValueError, match="only used by mode='transposed'"):
        UpsamplingProjection(8, upsample_factor=16)
    with pytest.raises(ValueError, match="mode"):
        UpsamplingProjection(8, mode="nearest")


@pytest.mark.parametrize("hidden", [None, 64])
def test_point_projection_shapes_and_norms(hidden):
    torch.manual_seed(0)
    head = PointProjection(96, hidden=hidden)
    embeddings = head(torch.randn(500, 96))
    assert embeddings.shape == (500, 128)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(500))
    if hidden is not None:
        assert isinstance(head.projection[1], torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match=r"\[N, 96\]"):
        head(torch.randn(5, 32))
