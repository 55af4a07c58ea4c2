"""Every tool and benchmark answers bad input the same way: a usage error (unknown key or flag, a
value out of range, a config file that is missing or not YAML) is argparse's `error:` line and exit
code 2; a failure (a missing data root, checkpoint or split, a file that is not a checkpoint) is one
line `<tool>: error: <file or key>: <what>` on stderr and exit code 1; no traceback (issue 14)."""

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/scene_kd"


def tool_main(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_under_test", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool_errors")
    (root / "bad.yaml").write_text("train: [1, 2\n")
    (root / "garbage.pth").write_bytes(b"not a checkpoint")
    (root / "a_file").write_text("x")
    return root


# (tool, argv with {tmp} for the fixture directory, exit code, text the error line must contain)
CASES = [
    ("tools/pretrain.py", ["--config", MISSING + ".yaml"], 2, f"{MISSING}.yaml: config file not found"),
    ("tools/pretrain.py", ["--config", "{tmp}/bad.yaml"], 2, "bad.yaml: not valid YAML at line 2, column 1"),
    ("tools/pretrain.py", ["bogus.key=1"], 2, "override 'bogus.key=1'"),
    ("tools/pretrain.py", ["train.max_steps=0"], 2, "train.max_steps must be >= 1, got 0"),
    ("tools/pretrain.py", [f"data.root={MISSING}", "train.out_dir={tmp}/pre", "teacher.allow_random=true"], 1,
     f"{MISSING}: processed dataset directory not found"),
    ("tools/finetune_seg.py", ["data.voxel_size=-1"], 2, "data.voxel_size must be > 0, got -1.0"),
    ("tools/finetune_seg.py", [f"data.root={MISSING}", "train.out_dir={tmp}/seg"], 1,
     f"{MISSING}: processed dataset directory not found"),
    ("tools/finetune_det.py", [f"data.root={MISSING}", "train.out_dir={tmp}/det"], 1,
     f"{MISSING}: processed dataset directory not found"),
    ("tools/evaluate_seg.py", ["--pred", MISSING, "--data", MISSING], 1, f"{MISSING}: no prediction .txt files"),
    ("tools/evaluate_det.py", ["--pred-dir", MISSING, "--data-root", MISSING], 1,
     f"{MISSING}: processed data root not found"),
    ("tools/zeroshot_seg.py", ["--checkpoint", MISSING, "--data-root", MISSING], 1, f"{MISSING}: checkpoint not found"),
    ("tools/zeroshot_seg.py", ["--checkpoint", "{tmp}/garbage.pth", "--data-root", MISSING], 1,
     "garbage.pth: not a readable checkpoint"),
    ("tools/preprocess_scannet.py", ["--scannet-root", MISSING, "--out", "{tmp}/pp"], 1,
     f"{MISSING}: ScanNet root is not a directory"),
    ("tools/make_data_efficient_subsets.py", [MISSING], 1, f"{MISSING}/splits/train.txt"),
    ("tools/make_synthetic_scannet.py", ["--out", "{tmp}/syn", "--scenes", "0"], 2, "need at least one scene"),
    ("tools/make_synthetic_scannet.py", ["--out", "{tmp}/syn", "--color-size", "axb"], 2, "expected WIDTHxHEIGHT"),
    ("tools/train_world_clip.py", ["--data", MISSING, "--out", "{tmp}/clip"], 1, f"{MISSING}/splits/train.txt"),
    ("tools/demo.py", ["--scenes", "0", "--out", "{tmp}/demo"], 2, "need --scenes >= 2"),
    ("tools/demo.py", ["--seed", "-1", "--out", "{tmp}/demo"], 2, "argument --seed: must be >= 0, got -1"),
    ("tools/train_world_clip.py", ["--data", MISSING, "--out", "{tmp}/clip", "--threads", "0"], 2,
     "argument --threads: must be >= 1, got 0"),
    ("tools/train_world_clip.py", ["--data", MISSING, "--out", "{tmp}/clip", "--layers", "two"], 2,
     "argument --layers: expected an integer, got 'two'"),
    ("tools/train_world_clip.py", ["--data", MISSING, "--out", "{tmp}/clip", "--min-region-purity", "1.5"], 2,
     "argument --min-region-purity: must be in [0, 1], got 1.5"),
    ("tools/train_world_clip.py", ["--data", MISSING, "--out", "{tmp}/clip", "--image-size", "60"], 2,
     "--image-size 60 must be a multiple of --patch-size 8"),
    ("tools/train_world_clip.py", ["--data", MISSING, "--out", "{tmp}/clip", "--dense-image-size", "13x8"], 2,
     "--dense-image-size sides must be multiples of --patch-size 8"),
    ("tools/evaluate_det.py", ["--pred-dir", MISSING, "--data-root", MISSING, "--iou-thresholds", "-0.1"], 2,
     "argument --iou-thresholds: must be in [0, 1), got -0.1"),
    ("tools/zeroshot_seg.py", ["--checkpoint", MISSING, "--data-root", MISSING, "--voxel-size", "0"], 2,
     "argument --voxel-size: must be > 0, got 0"),
    ("tools/zeroshot_seg.py", ["--checkpoint", MISSING, "--data-root", MISSING, "--chunk-voxels", "0"], 2,
     "argument --chunk-voxels: must be >= 1, got 0"),
    ("tools/make_synthetic_scannet.py", ["--out", "{tmp}/syn", "--workers", "0"], 2,
     "argument --workers: must be >= 1, got 0"),
    ("tools/make_data_efficient_subsets.py", [MISSING, "--scene-percents", "--point-counts"], 2,
     "--scene-percents and --point-counts are both empty"),
    ("tools/preprocess_scannet.py", ["--scannet-root", MISSING, "--out", "{tmp}/pp", "--image-size", "0x240"], 2,
     "sizes must be positive, got '0x240'"),
    ("tools/demo.py", ["--out", "{tmp}/a_file"], 1, "a_file/data"),
    ("tools/check_pointcept.py", [MISSING, "--pointcept-root", "{tmp}", "--data", MISSING], 1,
     "not a Pointcept checkout"),
    ("tools/check_pointcept.py", [MISSING, "--pointcept-root", MISSING, "--data", MISSING, "--scenes", "0"], 2,
     "--scenes must be >= 1"),
    ("benchmarks/transfer_synthetic.py", ["--work-dir", "{tmp}/tw", "--jobs", "0"], 2, "argument --jobs: must be >= 1, got 0"),
    ("benchmarks/transfer_synthetic.py", ["--work-dir", "{tmp}/tw", "--quick", "--settings", "points_7"], 1,
     "points_7"),
    ("benchmarks/transfer_synthetic.py", ["--work-dir", "{tmp}/tw", "--teacher-steps", "0"], 2,
     "argument --teacher-steps: must be >= 1, got 0"),
    ("benchmarks/sparse_unet.py", ["--models", "Nope"], 2, "invalid choice: 'Nope'"),
    ("benchmarks/preprocess.py", ["--vertices", "0"], 2, "argument --vertices: must be >= 4, got 0"),
    ("benchmarks/pretrain_throughput.py", ["--image-size", "0x0"], 2, "sizes must be positive, got '0x0'"),
    ("benchmarks/pretrain_throughput.py", ["--num-workers", "-1"], 2, "argument --num-workers: must be >= 0, got -1"),
    ("benchmarks/preprocess.py", ["--scenes", "0"], 2, "--scenes, --frames"),
    ("benchmarks/cpu_contention.py", ["--work-dir", "{tmp}/bc", "--steps", "2"], 2, "--steps must be at least 3"),
    ("benchmarks/cpu_contention.py", ["--work-dir", "{tmp}/bc", "--policies", "spin"], 2, "invalid choice: 'spin'"),
    ("benchmarks/pretrain_throughput.py", ["--student", "Nope"], 2, "invalid choice: 'Nope'"),
    ("benchmarks/pretrain_throughput.py", ["--recipes", "nope"], 2, "no such configs/pretrain/<name>.yaml"),
]


@pytest.mark.parametrize("tool, argv, code, expected", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(files, tool, argv, code, expected):
    argv = [arg.replace("{tmp}", str(files)) for arg in argv]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            got = tool_main(tool)(argv)
        except SystemExit as exit_:
            got = exit_.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert got == code, err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert lines and "error: " in lines[-1] and expected in lines[-1], lines
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith(f"{Path(tool).stem}: error: "), lines
