"""By hand, where a Pointcept checkout exists: the test oracle `pointcept_spunet.SpUNetBase` against
Pointcept's own SpUNet-v1m1 (same keys, shapes and order; outputs and running statistics in float64,
eval and training mode, random weights, two widths). Needs spconv, torch_geometric, timm.

    python tests/reference/check_against_pointcept.py ~/Pointcept
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.pointcept_spunet import SpUNetBase  # noqa: E402
from test_pointcept_spconv import pointcept_input, voxel_cloud  # noqa: E402

from scene_kd.interop.pointcept_checkout import import_pointcept  # noqa: E402

NETWORKS = [(6, 13, {}), (3, 20, {"base_channels": 16, "channels": (16, 32, 64, 64, 64, 48, 32, 32),
                                  "layers": (1, 2, 1, 2, 1, 1, 2, 1)})]


def random_state(reference: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in reference.items():
        if not value.is_floating_point():
            out[key] = value
        elif key.endswith("running_var"):
            out[key] = torch.rand(value.shape, generator=g, dtype=value.dtype) + 0.5
        else:
            scale = 0.1 if key.endswith(("running_mean", "bias")) else 0.3
            out[key] = torch.randn(value.shape, generator=g, dtype=value.dtype) * scale
    return out


def main(root: str) -> int:
    torch.set_num_threads(1)  # spconv's CPU forward is only correct with one thread
    code = import_pointcept(root)
    print(f"Pointcept {code.root} (commit {code.commit})")
    for seed, (in_channels, classes, widths) in enumerate(NETWORKS):
        theirs = code.build_model({"type": "SpUNet-v1m1", "in_channels": in_channels, "num_classes": classes,
                                   **widths}).double()
        ours = SpUNetBase(in_channels, classes, **widths).double()
        a, b = theirs.state_dict(), ours.state_dict()
        assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a), set(a) ^ set(b)
        state = random_state(a, seed)
        theirs.load_state_dict(state)
        ours.load_state_dict(state)
        coords = voxel_cloud(seed=seed, per_item=(900, 700), extent=30)
        feats = torch.rand(len(coords), in_channels, dtype=torch.float64)
        for train in (False, True):
            theirs.train(train)
            ours.train(train)
            with torch.no_grad():
                x, y = theirs(pointcept_input(coords, feats)), ours(pointcept_input(coords, feats))
            diff = float((x - y).abs().max())
            print(f"network {seed} ({len(a)} tensors), {len(coords)} voxels, {'train' if train else 'eval'}: "
                  f"max |diff| {diff:.1e} of max |output| {float(x.abs().max()):.3g}")
            assert diff <= 1e-9 * float(x.abs().max())
        sa, sb = theirs.state_dict(), ours.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa if k.endswith(("running_mean", "running_var")))
    print("the oracle is Pointcept's network")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
