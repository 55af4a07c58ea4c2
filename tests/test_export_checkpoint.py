"""tools/export_checkpoint.py and the import of Pointcept checkpoints, without spconv: an exported file
read back through `model.init` gives the exporting network's outputs (whatever prefixes and wrapper
Pointcept saved it with), `--to minkowski` reads back through the MinkowskiEngine checkpoint reader,
and every refusal is one line with exit code 1 (2 for usage). tests/test_pointcept_spconv.py checks the
exported layout against spconv itself."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scene_kd.finetune.det.model import SparseDetector, init_backbone
from scene_kd.finetune.init_weights import init_from_checkpoint
from scene_kd.finetune.schema import FinetuneSegConfig
from scene_kd.finetune.seg import build_seg_model
from scene_kd.interop.export import export_checkpoint
from scene_kd.models import build_student
from scene_kd.models.spunet import SpUNet
from scene_kd.sparse import SparseTensor, batched_coordinates, get_backend, minkowski_available

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "export_checkpoint.py"
SMALL = {"base_channels": 8, "channels": (8, 16, 16, 24, 24, 16, 12, 12), "layers": (1, 2, 1, 2, 1, 1, 1, 2)}


def load_tool():
    spec = importlib.util.spec_from_file_location("export_checkpoint_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random kernels, biases, batch-norm affine parameters and running statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var") or name.endswith("bn.weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():  # kernels [volume, in, out] / [in, out] at He scale
                scale = 0.1 if t.dim() < 2 else (2.0 / t[0].numel()) ** 0.5
                t.copy_(torch.randn(t.shape, generator=g) * scale)
    return net.eval()


def voxel_input(in_channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = [torch.unique(torch.randint(0, 20, (n, 3), generator=g), dim=0) for n in (200, 150)]
    coords = batched_coordinates(items)
    return torch.rand(len(coords), in_channels, generator=g), coords


def outputs(net, feats, coords):
    with torch.no_grad():
        return net.eval()(SparseTensor(feats, coords)).F


def spunet_checkpoint(tmp_path, out_channels=5, **kwargs) -> tuple[Path, SpUNet]:
    net = randomize(SpUNet(in_channels=3, out_channels=out_channels, **{**SMALL, **kwargs}), seed=1)
    path = tmp_path / "seg.pth"
    torch.save({"student_name": "SpUNet-v1m1", "num_classes": out_channels, "model": net.state_dict()}, path)
    return path, net


def rewrap(src: Path, dst: Path, wrap) -> Path:
    """The exported Pointcept file under other prefixes / wrappers, as Pointcept's runs save it."""
    state = {k[len("backbone."):]: v for k, v in torch.load(src)["state_dict"].items()}
    torch.save(wrap(state), dst)
    return dst


WRAPPERS = {
    "as exported (backbone.)": lambda s: {"state_dict": {f"backbone.{k}": v for k, v in s.items()}},
    "DDP (module.backbone.)": lambda s: {"epoch": 3,
                                         "state_dict": {f"module.backbone.{k}": v for k, v in s.items()}},
    "bare SpUNetBase": lambda s: dict(s),
    "bare DDP SpUNetBase (module.)": lambda s: {f"module.{k}": v for k, v in s.items()},
    "with pretraining heads": lambda s: {"state_dict": {**{f"module.backbone.{k}": v for k, v in s.items()},
                                                       "module.mask_token": torch.zeros(1, 6)}},
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_export_then_init_gives_the_same_network(tmp_path, wrapper):
    path, net = spunet_checkpoint(tmp_path)
    export_checkpoint(path, "pointcept-spunet", tmp_path / "pointcept.pth")
    file = rewrap(tmp_path / "pointcept.pth", tmp_path / "wrapped.pth", WRAPPERS[wrapper])
    fresh = SpUNet(in_channels=3, out_channels=5, **SMALL)
    report = init_from_checkpoint(fresh, file, student="SpUNet-v1m1")
    assert report.head_loaded and not (report.missing or report.unexpected or report.shape_mismatch)
    feats, coords = voxel_input(3)
    torch.testing.assert_close(outputs(fresh, feats, coords), outputs(net, feats, coords), rtol=0, atol=1e-6)
    # Every tensor, the batch-norm statistics too, came back unchanged (the layouts are permutations).
    pairs = zip(fresh.state_dict().values(), net.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_no_head_export_and_init_refusals_name_the_file(tmp_path):
    path, _ = spunet_checkpoint(tmp_path)
    file = tmp_path / "pointcept.pth"
    export_checkpoint(path, "pointcept-spunet", file, include_head=False)
    assert not any(k.startswith("backbone.final.") for k in torch.load(file)["state_dict"])
    minkunet = build_student("MinkUNet14A", in_channels=3, out_channels=5)
    with pytest.raises(ValueError, match=rf"^{file}: a Pointcept SpUNet-v1m1 checkpoint, but model.student "
                                         r"is MinkUNet14A; set model.student=SpUNet-v1m1"):
        init_from_checkpoint(minkunet, file, student="MinkUNet14A")
    other_widths = SpUNet(in_channels=3, out_channels=5)
    with pytest.raises(ValueError, match=r"does not fit the model: .* shape mismatch \(conv_input.0.kernel"):
        init_from_checkpoint(other_widths, file, student="SpUNet-v1m1")


def test_segmentation_and_detection_init_from_a_pointcept_file_of_default_widths(tmp_path):
    net = randomize(build_student("SpUNet-v1m1", in_channels=3, out_channels=None), seed=2)
    pretraining = {"student_name": "SpUNet-v1m1", "student": net.state_dict(), "config": {}}
    torch.save(pretraining, tmp_path / "pre.pth")
    export_checkpoint(tmp_path / "pre.pth", "pointcept-spunet", tmp_path / "pointcept.pth")
    file = rewrap(tmp_path / "pointcept.pth", tmp_path / "ddp.pth", WRAPPERS["DDP (module.backbone.)"])
    cfg = OmegaConf.merge(OmegaConf.structured(FinetuneSegConfig), {"model": {
        "student": "SpUNet-v1m1", "num_classes": 20, "init": str(file)}})
    model, _, note = build_seg_model(cfg)
    assert f"{len(net.state_dict())} tensors loaded; head freshly initialised" in note
    feats, coords = voxel_input(3)
    with torch.no_grad():
        levels = model.eval().decoder_features(SparseTensor(feats, coords), (1,))
        torch.testing.assert_close(levels[1].F, outputs(net, feats, coords), rtol=0, atol=1e-6)
    backbone = build_student("SpUNet-v1m1", in_channels=3, out_channels=None)
    detector = SparseDetector(backbone, strides=(2, 4, 8))
    summary = init_backbone(detector, file, student="SpUNet-v1m1")
    assert summary.startswith(f"{len(net.state_dict())} backbone tensors loaded")


def test_input_channels_are_widened_with_zero_weights(tmp_path):
    path, net = spunet_checkpoint(tmp_path)
    export_checkpoint(path, "pointcept-spunet", tmp_path / "six.pth", in_channels=6)
    assert torch.load(tmp_path / "six.pth")["state_dict"]["backbone.conv_input.0.weight"].shape[-1] == 6
    wide = SpUNet(in_channels=6, out_channels=5, **SMALL)
    init_from_checkpoint(wide, tmp_path / "six.pth")
    feats, coords = voxel_input(3)
    normals = torch.nn.functional.normalize(torch.randn(len(feats), 3), dim=1)
    widened = outputs(wide, torch.cat([feats, normals], 1), coords)
    torch.testing.assert_close(widened, outputs(net, feats, coords), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["pretraining", "segmentation"])
def test_minkowski_export_reads_back_through_the_minkowski_checkpoint_reader(tmp_path, kind):
    out_channels = None if kind == "pretraining" else 4
    net = randomize(build_student("MinkUNet14A", in_channels=3, out_channels=out_channels), seed=3)
    if kind == "pretraining":
        entry = {"student": net.state_dict()}
    else:
        entry = {"model": net.state_dict(), "num_classes": 4}
    torch.save({"student_name": "MinkUNet14A", "config": {}, **entry}, tmp_path / "ckpt.pth")
    export_checkpoint(tmp_path / "ckpt.pth", "minkowski", tmp_path / "me.pth")
    written = torch.load(tmp_path / "me.pth")
    assert written["arch"] == "MinkUNet14A" and list(written["state_dict"]) == list(net.state_dict())
    fresh = build_student("MinkUNet14A", in_channels=3, out_channels=out_channels)
    report = init_from_checkpoint(fresh, tmp_path / "me.pth", student="MinkUNet14A")
    assert report.head_loaded == (kind == "segmentation") and not report.missing
    feats, coords = voxel_input(3)
    torch.testing.assert_close(outputs(fresh, feats, coords), outputs(net, feats, coords), rtol=0, atol=1e-6)


@pytest.mark.skipif(not minkowski_available(),
                    reason="needs MinkowskiEngine (tools/install_minkowski_engine.sh)")
def test_minkowski_export_loads_strictly_into_minkowski_engine(tmp_path):
    net = randomize(build_student("MinkUNet14A", in_channels=3, out_channels=4), seed=4)
    segmentation = {"student_name": "MinkUNet14A", "num_classes": 4, "model": net.state_dict()}
    torch.save(segmentation, tmp_path / "seg.pth")
    export_checkpoint(tmp_path / "seg.pth", "minkowski", tmp_path / "me.pth")
    me_net = build_student("MinkUNet14A", in_channels=3, out_channels=4, backend="minkowski")
    me_net.load_state_dict(torch.load(tmp_path / "me.pth")["state_dict"], strict=True)
    feats, coords = voxel_input(3)
    with torch.no_grad():
        me_out = me_net.eval()(get_backend("minkowski").sparse_tensor(feats, coords))
    theirs = dict(zip(map(tuple, me_out.C.tolist()), me_out.F, strict=True))
    in_our_order = torch.stack([theirs[tuple(c)] for c in coords.tolist()])
    torch.testing.assert_close(in_our_order, outputs(net, feats, coords), rtol=1e-4, atol=1e-4)


def run_tool(capsys, *argv) -> tuple[int, str, str]:
    code = load_tool().main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_minkunet_to_pointcept_is_refused_in_one_line(tmp_path, capsys):
    net = build_student("MinkUNet14A", in_channels=3, out_channels=None)
    pretraining = {"student_name": "MinkUNet14A", "student": net.state_dict(), "config": {}}
    torch.save(pretraining, tmp_path / "mink.pth")
    code, out, err = run_tool(capsys, str(tmp_path / "mink.pth"), "--to", "pointcept-spunet", "--out",
                              str(tmp_path / "x.pth"))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"export_checkpoint: error: {tmp_path / 'mink.pth'}: ")
    assert "MinkUNet14A" in err and "different functions" in err and "no exact conversion" in err
    assert not (tmp_path / "x.pth").exists()


def test_spunet_to_minkowski_and_other_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    path, _ = spunet_checkpoint(tmp_path)
    cases = {
        "MinkowskiEngine has no counterpart": [str(path), "--to", "minkowski"],
        "checkpoint not found": [str(tmp_path / "missing.pth"), "--to", "pointcept-spunet"],
        "no such directory": [str(path), "--to", "pointcept-spunet", "--out", str(tmp_path / "no" / "x.pth")],
    }
    torch.save({"student_name": "SpUNet-v1m1", "strides": [2, 4], "model": {}}, tmp_path / "det.pth")
    cases["a detection checkpoint"] = [str(tmp_path / "det.pth"), "--to", "pointcept-spunet"]
    for expected, argv in cases.items():
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "x.pth")]
        code, _, err = run_tool(capsys, *argv)
        assert code == 1 and err.count("\n") == 1 and expected in err, (expected, err)
    assert not (tmp_path / "x.pth").exists()
    for usage_error in (["--to", "onnx"], ["--to", "minkowski", "--in-channels", "0"]):
        with pytest.raises(SystemExit) as usage:  # argparse's usage errors exit 2 themselves
            load_tool().main([str(path), "--out", str(tmp_path / "x.pth"), *usage_error])
        assert usage.value.code == 2 and "error:" in capsys.readouterr().err


def test_existing_out_is_kept_unless_force_and_a_failed_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    path, _ = spunet_checkpoint(tmp_path)
    out = tmp_path / "pointcept.pth"
    out.write_bytes(b"keep me")
    code, _, err = run_tool(capsys, str(path), "--to", "pointcept-spunet", "--out", str(out))
    assert code == 1 and "already exists; pass --force" in err and out.read_bytes() == b"keep me"
    code, stdout, _ = run_tool(capsys, str(path), "--to", "pointcept-spunet", "--out", str(out), "--force")
    assert code == 0 and stdout.startswith(f"wrote {out}")
    assert "backbone.conv_input.0.weight" in torch.load(out)["state_dict"]

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    code, _, err = run_tool(capsys, str(path), "--to", "pointcept-spunet", "--out", str(tmp_path / "new.pth"))
    assert code == 1 and "No space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pointcept.pth", "seg.pth"]


def test_help_explains_every_flag():
    done = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    flags = ("--to", "pointcept-spunet", "minkowski", "--out", "--force", "--no-head", "--in-channels",
             "--debug")
    for flag in flags:
        assert flag in done.stdout, flag
