"""The spconv backend against the torch backend: same parameters and inputs give the same outputs, on
the same coordinates (stride 1: in the same row order), for every layer kind and whole students;
state_dicts are the same; layers spconv cannot match are refused; `backend="auto"` picks torch on CPU.

spconv's CPU build computes its forward pass correctly only with one torch thread and has no backward
(docs/sparse_backends.md), so the CPU tests run with one thread and compare forward passes only. The
CUDA tests (forward and backward, float32 and bfloat16 autocast, and the torch backend on CUDA against
CPU) are skipped with their reason where torch sees no GPU; benchmarks/device_check.sh runs them.
"""

import pytest
import torch

pytest.importorskip("spconv.pytorch", reason="needs spconv 2.x (pip install -e .[dev]; spconv-cu12x on GPUs)")

from torch_threads import one_torch_thread  # noqa: E402, F401 (autouse fixture)

from scene_kd.interop.spconv_layout import kernel_to_spconv  # noqa: E402
from scene_kd.models import build_student  # noqa: E402
from scene_kd.sparse import SparseTensor, get_backend  # noqa: E402
from scene_kd.sparse import spconv_backend as sb  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = dict(rtol=1e-5, atol=1e-5)
STUDENT_NAMES = ["MinkUNet14A", "Res16UNet34C", "MinkUNet34C", "SpUNet-v1m1"]


def voxel_cloud(seed: int, per_item=(260, 200), low: int = -13, high: int = 14) -> torch.Tensor:
    """int32 [N, 4] (batch, x, y, z): unique random voxels of 2 batch items around the origin
    (negative coordinates too), rows shuffled across the batch items."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for b, n in enumerate(per_item):
        xyz = torch.unique(torch.randint(low, high, (n, 3), generator=g), dim=0)
        items.append(torch.cat([torch.full((len(xyz), 1), b), xyz], 1))
    coords = torch.cat(items).int()
    return coords[torch.randperm(len(coords), generator=g)]


def by_coordinate(x) -> dict[tuple, torch.Tensor]:
    return dict(zip(map(tuple, x.C.tolist()), x.F, strict=True))


def assert_same_voxels_and_features(ours, ref, same_order: bool, **tol) -> None:
    """Same coordinate set (and row order when `same_order`) and the same features per coordinate."""
    assert ours.stride == ref.stride
    if same_order:
        assert torch.equal(ours.C.cpu(), ref.C.cpu())
        torch.testing.assert_close(ours.F, ref.F, **(tol or TOL))
        return
    a, b = by_coordinate(ours), by_coordinate(ref)
    assert a.keys() == b.keys()
    torch.testing.assert_close(torch.stack([a[k] for k in b]), torch.stack(list(b.values())), **(tol or TOL))


def layer_pair(kind: str, cin: int, cout: int, **kwargs):
    """The same layer built by the torch and the spconv backend, the spconv one with the torch one's
    state_dict."""
    ref = getattr(get_backend("torch"), kind)(cin, cout, **kwargs)
    ours = getattr(get_backend("spconv"), kind)(cin, cout, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


SUPPORTED = [
    ("conv", dict(kernel_size=1)),
    ("conv", dict(kernel_size=1, bias=True)),
    ("conv", dict(kernel_size=3)),
    ("conv", dict(kernel_size=3, bias=True)),
    ("conv", dict(kernel_size=5)),
    ("conv", dict(kernel_size=3, dilation=2)),
    ("conv", dict(kernel_size=2, stride=2)),
    ("conv_transpose", dict(kernel_size=2, stride=2)),
    ("conv_transpose", dict(kernel_size=2, stride=2, bias=True)),
]


def run_layer(kind, layer, down, backend, feats, coords):
    """The layer on a fresh input; a transposed convolution gets its coarse input from `down`."""
    x = get_backend(backend).sparse_tensor(feats, coords)
    return layer(down(x)) if kind == "conv_transpose" else layer(x)


@pytest.mark.parametrize("kind,kwargs", SUPPORTED)
def test_every_supported_convolution_matches_the_torch_backend(kind, kwargs):
    torch.manual_seed(0)
    cin, cout = 4, 6
    ours, ref = layer_pair(kind, cin, cout, **kwargs)
    down, down_ref = layer_pair("conv", cin, cin, kernel_size=2, stride=2)
    coords = voxel_cloud(seed=1)
    feats = torch.randn(len(coords), cin)
    with torch.no_grad():
        out = run_layer(kind, ours, down, "spconv", feats, coords)
        expected = run_layer(kind, ref, down_ref, "torch", feats, coords)
    assert isinstance(out, sb.SpconvTensor) and out.F.abs().max() > 0.1
    # Stride 1 keeps the input's rows; a transposed convolution returns to the encoder's rows.
    assert_same_voxels_and_features(out, expected, same_order=kwargs.get("stride", 1) == 1 or kind != "conv")
    if kind == "conv" and kwargs.get("stride", 1) == 2:
        # spconv's output at index i is MinkowskiEngine's floor(c / 2) * 2, negative coordinates too.
        assert out.C[:, 1:].min() < 0 and bool((out.C[:, 1:] % 2 == 0).all())


def test_two_downsamplings_and_back_keep_minkowski_coordinates_away_from_the_origin():
    """Coordinates far from 0 (the index origin is shifted) and 2 levels down: stride 4 = floor(c/4)*4."""
    torch.manual_seed(2)
    coords = voxel_cloud(seed=3, low=-1000, high=-973)
    coords[:, 2] += 1500
    feats = torch.randn(len(coords), 3)
    results = []
    for name in ("spconv", "torch"):
        b = get_backend(name)
        torch.manual_seed(4)
        layers = [b.conv(3, 5, kernel_size=2, stride=2), b.conv(5, 5, kernel_size=3),
                  b.conv(5, 7, kernel_size=2, stride=2), b.conv_transpose(7, 5, kernel_size=2, stride=2),
                  b.conv_transpose(5, 4, kernel_size=2, stride=2)]
        with torch.no_grad():
            x = b.sparse_tensor(feats, coords)
            s2 = layers[1](layers[0](x))
            s4 = layers[2](s2)
            up2 = layers[3](s4)
            results.append((s2, s4, up2, layers[4](up2)))
    for ours, ref in zip(results[0], results[1], strict=True):
        assert_same_voxels_and_features(ours, ref, same_order=ours.stride == 1)
    assert results[0][1].stride == 4 and bool((results[0][1].C[:, 1:] % 4 == 0).all())


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_addition_and_cat_match(training):
    torch.manual_seed(5)
    ours = get_backend("spconv").batch_norm(6, momentum=0.05)
    ref = get_backend("torch").batch_norm(6, momentum=0.05)
    ours.load_state_dict(ref.state_dict(), strict=True)
    conv, conv_ref = layer_pair("conv", 3, 6, kernel_size=3)
    relu, relu_ref = get_backend("spconv").relu(), get_backend("torch").relu()
    ours.train(training)
    ref.train(training)
    coords = voxel_cloud(seed=6)
    feats = torch.randn(len(coords), 3)
    outs = []
    for backend, c, n, r in (("spconv", conv, ours, relu), ("torch", conv_ref, ref, relu_ref)):
        with torch.no_grad():
            y = c(get_backend(backend).sparse_tensor(feats, coords))
            z = r(n(y)) + y
            outs.append(get_backend(backend).cat(z, y * 2.0))
    assert_same_voxels_and_features(outs[0], outs[1], same_order=True)
    torch.testing.assert_close(ours.bn.running_mean, ref.bn.running_mean, **TOL)
    torch.testing.assert_close(ours.bn.running_var, ref.bn.running_var, **TOL)


@pytest.mark.parametrize("kind", ["global_avg_pool", "global_max_pool"])
def test_global_pooling_matches(kind):
    coords = voxel_cloud(seed=7)
    feats = torch.randn(len(coords), 5)
    with torch.no_grad():
        out = getattr(get_backend("spconv"), kind)()(get_backend("spconv").sparse_tensor(feats, coords))
        ref = getattr(get_backend("torch"), kind)()(get_backend("torch").sparse_tensor(feats, coords))
    assert_same_voxels_and_features(out, ref, same_order=True)
    assert out.C.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0]]


def randomize_batch_norms(net: torch.nn.Module, seed: int) -> None:
    """Random affine parameters and running statistics, so that eval mode tests them too."""
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict().items():
        if name.endswith("running_var") or name.endswith("bn.weight"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", "bn.bias")):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def student_pair(name: str, seed: int):
    """(spconv student, torch student) with the same weights: He-scale kernels (SpUNet's own init is
    too small for a meaningful comparison) and random batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    ref = build_student(name, in_channels=3, out_channels=7, backend="torch")
    with torch.no_grad():
        for param_name, p in ref.named_parameters():
            if param_name.endswith("kernel"):
                p.normal_(0.0, (2.0 / (p.shape[-2] * (p.shape[0] if p.dim() == 3 else 1))) ** 0.5)
    randomize_batch_norms(ref, seed)
    ours = build_student(name, in_channels=3, out_channels=7, backend="spconv")
    shapes = [[(k, v.shape) for k, v in net.state_dict().items()] for net in (ours, ref)]
    assert shapes[0] == shapes[1]
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval(), ref.eval()


@pytest.mark.parametrize("name", STUDENT_NAMES)
def test_students_match_the_torch_backend_in_eval_mode(name):
    ours, ref = student_pair(name, seed=8)
    coords = voxel_cloud(seed=9)
    feats = torch.rand(len(coords), 3)
    with torch.no_grad():
        out = ours(ours.backend.sparse_tensor(feats, coords))
        expected = ref(ref.backend.sparse_tensor(feats, coords))
    assert out.F.std() > 0.05  # a meaningful comparison, not two near-zero outputs
    assert_same_voxels_and_features(out, expected, same_order=True, rtol=1e-4, atol=1e-4)
    # A checkpoint of the spconv student loads into a torch one and back (same names and shapes).
    ref.load_state_dict(ours.state_dict(), strict=True)


def test_decoder_features_at_every_stride_match():
    """Detection reads the decoder at strides 8, 4, 2, 1: same coordinates (ME's convention) and features."""
    ours, ref = student_pair("MinkUNet14A", seed=10)
    coords = voxel_cloud(seed=11)
    feats = torch.rand(len(coords), 3)
    with torch.no_grad():
        out = ours.decoder_features(ours.backend.sparse_tensor(feats, coords), (1, 2, 4, 8))
        expected = ref.decoder_features(ref.backend.sparse_tensor(feats, coords), (1, 2, 4, 8))
    for stride in (1, 2, 4, 8):
        assert out[stride].stride == stride
        assert_same_voxels_and_features(out[stride], expected[stride], same_order=stride == 1,
                                        rtol=1e-4, atol=1e-4)


UNSUPPORTED = [
    ("conv", dict(kernel_size=3, stride=2), "kernel_size=3 with stride=2"),
    ("conv", dict(kernel_size=1, stride=2), "kernel_size=1 with stride=2"),
    ("conv", dict(kernel_size=2), "even kernel"),
    ("conv_transpose", dict(kernel_size=3, stride=2), "transposed convolution with kernel_size=3"),
    ("conv_transpose", dict(kernel_size=3), "transposed convolution with kernel_size=3, stride=1"),
]


@pytest.mark.parametrize("kind,kwargs,message", UNSUPPORTED)
def test_layers_spconv_cannot_match_are_refused_when_built(kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        getattr(get_backend("spconv"), kind)(4, 4, **kwargs)


def test_spconv_weight_is_kernel_to_spconv_and_carries_gradients():
    for k in (2, 3, 5):
        kernel = torch.randn(k**3, 3, 4, requires_grad=True)
        weight = sb.spconv_weight(kernel)
        assert torch.equal(weight, kernel_to_spconv(kernel))
        weight.square().sum().backward()
        torch.testing.assert_close(kernel.grad, 2 * kernel.detach())


def test_cpu_guards_refuse_wrong_rows_and_missing_backward():
    conv = get_backend("spconv").conv(3, 4, kernel_size=3)
    coords = voxel_cloud(seed=12)
    x = get_backend("spconv").sparse_tensor(torch.rand(len(coords), 3), coords)
    with pytest.raises(RuntimeError, match="no CPU backward"):
        conv(x)  # the kernel requires grad and grad mode is on
    torch.set_num_threads(2)
    with torch.no_grad(), pytest.raises(RuntimeError, match="one torch thread"):
        conv(x)


@pytest.mark.parametrize("bad,message", [("float", "integer"), ("duplicate", "duplicate"),
                                         ("empty", "at least one voxel"), ("length", "differ in length")])
def test_bad_input_is_a_clear_value_error(bad, message):
    coords = voxel_cloud(seed=13)
    feats = torch.rand(len(coords), 3)
    if bad == "float":
        coords = coords.float()
    elif bad == "duplicate":
        coords[1] = coords[0]
    elif bad == "empty":
        coords, feats = coords[:0], feats[:0]
    else:
        feats = feats[1:]
    with pytest.raises(ValueError, match=message):
        get_backend("spconv").sparse_tensor(feats, coords)


def test_auto_is_the_torch_backend_on_cpu():
    assert sb.auto_backend_name("cpu") == "torch"
    coords = voxel_cloud(seed=14)
    feats = torch.rand(len(coords), 3)
    torch.manual_seed(15)
    net = build_student("MinkUNet14A", in_channels=3, out_channels=5, backend="auto").eval()
    ref = build_student("MinkUNet14A", in_channels=3, out_channels=5, backend="torch").eval()
    ref.load_state_dict(net.state_dict(), strict=True)
    x = net.backend.sparse_tensor(feats, coords)
    assert type(x) is SparseTensor
    out = net(x)  # on CPU with gradients: the torch backend's kernels, backward included
    out.F.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(out.F, ref(ref.backend.sparse_tensor(feats, coords)).F, rtol=0, atol=0)


def test_auto_keeps_a_model_spconv_cannot_match_on_the_torch_backend(monkeypatch):
    """Where auto would pick spconv (faked here: no GPU), a model with a layer spconv cannot match stays
    on the torch backend; a model without one gets spconv tensors."""
    monkeypatch.setattr(sb, "auto_backend_name", lambda device: "spconv")
    coords = voxel_cloud(seed=16)
    feats = torch.rand(len(coords), 3)
    matched, unmatched = get_backend("auto"), get_backend("auto")
    matched.conv(3, 4, kernel_size=2, stride=2)
    unmatched.conv(3, 4, kernel_size=3, stride=2)
    assert isinstance(matched.sparse_tensor(feats, coords), sb.SpconvTensor)
    assert type(unmatched.sparse_tensor(feats, coords)) is SparseTensor


# ----------------------------------------------------------------------------------------- CUDA


def probe(coords: torch.Tensor, channels: int) -> torch.Tensor:
    """A fixed function of the coordinates [N, channels], to weight outputs independently of row order."""
    a = torch.linspace(0.3, 1.7, 4 * channels, device=coords.device).reshape(4, channels)
    return torch.sin(coords.double() @ a.double()).float()


def forward_backward(module, backend, feats, coords, amp: torch.dtype | None = None):
    """(output sorted by coordinate, input gradient) after a backward of a probe-weighted mean."""
    x_feats = feats.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=amp or torch.bfloat16, enabled=amp is not None):
        out = module(backend.sparse_tensor(x_feats, coords))
    ((out.F.float() * probe(out.C, out.F.shape[1])).sum() / out.F.shape[0]).backward()
    order = torch.argsort(out.C[:, 0].long() << 48 | (out.C[:, 1].long() + 2**15) << 32
                          | (out.C[:, 2].long() + 2**15) << 16 | (out.C[:, 3].long() + 2**15))
    return out.F.detach().float()[order], x_feats.grad


def assert_grads_close(ours: torch.nn.Module, ref: torch.nn.Module, **tol) -> None:
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        q = ref_params[name]
        if q.grad is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
            continue
        torch.testing.assert_close(p.grad.float(), q.grad.float(), **tol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@needs_cuda
@pytest.mark.parametrize("kind,kwargs", SUPPORTED)
def test_cuda_layers_match_the_torch_backend_forward_and_backward(kind, kwargs):
    torch.manual_seed(20)
    ours, ref = layer_pair(kind, 4, 6, **kwargs)
    down, down_ref = layer_pair("conv", 4, 4, kernel_size=2, stride=2)
    for m in (ours, ref, down, down_ref):
        m.cuda()
    coords = voxel_cloud(seed=21).cuda()
    feats = torch.randn(len(coords), 4, device="cuda")

    def chain(layer, dn):
        return (lambda x: layer(dn(x))) if kind == "conv_transpose" else layer

    out, grad = forward_backward(chain(ours, down), get_backend("spconv"), feats, coords)
    ref_out, ref_grad = forward_backward(chain(ref, down_ref), get_backend("torch"), feats, coords)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)
    assert_grads_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert_grads_close(down, down_ref, rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("name", STUDENT_NAMES)
def test_cuda_students_match_the_torch_backend_in_float32(name):
    """Eval mode (running statistics; train-mode batch statistics over the few stride-16 rows amplify
    rounding, see tests/test_minkowski_backend.py): outputs, input and parameter gradients."""
    ours, ref = student_pair(name, seed=22)
    ours.cuda()
    ref.cuda()
    coords = voxel_cloud(seed=23, per_item=(1500, 1200), low=-30, high=30).cuda()
    feats = torch.rand(len(coords), 3, device="cuda")
    out, grad = forward_backward(ours, ours.backend, feats, coords)
    ref_out, ref_grad = forward_backward(ref, ref.backend, feats, coords)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)
    assert_grads_close(ours, ref, rtol=1e-3, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("name", ["MinkUNet14A", "Res16UNet34C"])
def test_cuda_students_under_bf16_autocast_stay_close_to_float32(name):
    """Training mode under bf16 autocast (spconv computes in float16 there): outputs, input gradients and
    every parameter gradient of both backends within 3 % (relative norm) of the float32 torch backend."""
    ours, ref = student_pair(name, seed=24)
    exact = build_student(name, in_channels=3, out_channels=7, backend="torch")
    exact.load_state_dict(ref.state_dict())
    nets = [m.cuda().train() for m in (ours, ref, exact)]
    coords = voxel_cloud(seed=25, per_item=(3000, 2500), low=-40, high=40).cuda()
    feats = torch.rand(len(coords), 3, device="cuda")
    results = [forward_backward(m, m.backend, feats, coords, amp=amp)
               for m, amp in zip(nets, (torch.bfloat16, torch.bfloat16, None), strict=True)]
    (out, grad), (ref_out, ref_grad), (x_out, x_grad) = results
    for a, label in ((out, "spconv"), (ref_out, "torch")):
        assert relative_error(a, x_out) < 3e-2, label
    assert relative_error(grad, x_grad) < 3e-2 and relative_error(ref_grad, x_grad) < 3e-2
    exact_params = dict(exact.named_parameters())
    for param_name, p in ours.named_parameters():
        assert relative_error(p.grad, exact_params[param_name].grad) < 3e-2, param_name


@needs_cuda
@pytest.mark.parametrize("name", ["MinkUNet14A", "SpUNet-v1m1"])
def test_cuda_torch_backend_matches_cpu(name):
    """The torch backend on CUDA gives its CPU outputs and gradients (float32, eval mode)."""
    _, cpu_net = student_pair(name, seed=26)
    gpu_net = build_student(name, in_channels=3, out_channels=7, backend="torch").eval()
    gpu_net.load_state_dict(cpu_net.state_dict())
    gpu_net.cuda()
    coords = voxel_cloud(seed=27)
    feats = torch.rand(len(coords), 3)
    x_feats = [feats.clone().requires_grad_(True), feats.cuda().requires_grad_(True)]
    outs = []
    for net, xf, device in ((cpu_net, x_feats[0], "cpu"), (gpu_net, x_feats[1], "cuda")):
        out = net(SparseTensor(xf, coords.to(device)))
        out.F.square().mean().backward()
        outs.append(out.F.detach().cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(x_feats[0].grad, x_feats[1].grad.cpu(), rtol=1e-3, atol=1e-4)
    assert_grads_close(gpu_net.cpu(), cpu_net, rtol=1e-3, atol=1e-4)


@needs_cuda
def test_cuda_auto_picks_spconv_when_its_cuda_build_imports():
    from spconv.cppconstants import CPU_ONLY_BUILD

    if CPU_ONLY_BUILD:
        pytest.skip("the installed spconv is its CPU build (pip install spconv-cu126 for CUDA)")
    assert sb.auto_backend_name("cuda") == "spconv"
    coords = voxel_cloud(seed=28).cuda()
    x = get_backend("auto").sparse_tensor(torch.rand(len(coords), 3, device="cuda"), coords)
    assert isinstance(x, sb.SpconvTensor)
