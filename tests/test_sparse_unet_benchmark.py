"""The arithmetic count of benchmarks/sparse_unet.py: with one voxel in each of two batch items every
convolution has exactly two kernel-map pairs, so the forward FLOPs are 2 x 2 x the sum of C_in x C_out
over the convolutions' kernels (read from their parameter shapes), and the backward twice that less the
first layer's input gradient (the input features need none)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from scene_kd.models import build_student
from scene_kd.sparse import modules
from scene_kd.sparse.functional import sparse_convolution

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sparse_unet_benchmark", REPO / "benchmarks/sparse_unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_of_one_voxel_follow_the_kernel_shapes():
    benchmark = load_benchmark()
    coords = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.int32)  # batch items never meet
    feats = torch.rand(2, 3)
    forward, backward = benchmark.count_convolution_flops("MinkUNet14A", feats, coords)
    net = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    convolutions = [m for m in net.modules()
                    if isinstance(m, (modules.SparseConvolution, modules.SparseConvolutionTranspose))]
    macs = sum(m.kernel.shape[-2] * m.kernel.shape[-1] for m in convolutions)
    assert forward == 2 * 2 * macs
    first = convolutions[0]
    assert first.in_channels == 3
    assert backward == 2 * 2 * (2 * macs - first.kernel.shape[-2] * first.kernel.shape[-1])
    assert modules.sparse_convolution is sparse_convolution  # the count's wrapper is gone again
