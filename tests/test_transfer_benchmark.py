"""The transfer benchmark's plumbing: `--quick` with every arm (main arms and ablations), the limited
scenes and limited points protocols, linear probes, full-label finetunes, zero-shot 3D and the 2D
fusion baseline end to end at toy size, with the stages in two worker processes; the record's rows,
the table, the pictures, and a rerun in one process that reuses every finished stage."""

import importlib.util
import json
from pathlib import Path

from scene_kd.transfer.arms import ARMS
from scene_kd.transfer.benchmark import CONCEPT_ARMS, summarize_runs

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["scenes_25pct", "points_20"]


def benchmark_tool():
    spec = importlib.util.spec_from_file_location("transfer_synthetic", REPO / "benchmarks" / "transfer_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_runs_every_arm_and_records_every_run(tmp_path):
    tool = benchmark_tool()
    record = tmp_path / "record" / "transfer_synthetic.json"
    argv = ["--work-dir", str(tmp_path / "work"), "--quick", "--seeds", "0", "--settings", *SETTINGS,
            "--teacher-steps", "3", "--clip-steps", "3", "--pretrain-steps", "2", "--finetune-steps", "1",
            "--threads", "1", "--no-progress", "--record", str(record)]
    assert tool.main([*argv, "--jobs", "2"]) == 0  # stages side by side in two worker processes
    data = json.loads(record.read_text())
    runs = data["runs"]
    assert all(set(r) >= {"world_seed", "seed", "arm", "setting", "miou"} for r in runs)
    assert all(0.0 <= r["miou"] <= 1.0 and r["world_seed"] == 0 for r in runs)
    got = {(r["arm"], r["setting"]) for r in runs}
    arms = list(ARMS)
    expected = {(arm, s) for arm in ["scratch", *arms] for s in SETTINGS}
    expected |= {(f"linear_probe_{arm}", "full_labels") for arm in arms}
    expected |= {("scratch", "full_labels"), ("ppkt_concept_clip", "full_labels")}
    expected |= {(f"zeroshot_{arm}", "zero_shot") for arm in CONCEPT_ARMS} | {("clip_2d_fusion", "zero_shot")}
    assert got == expected and len(runs) == len(expected)
    ablations = {name for name, arm in ARMS.items() if not arm.main}
    for r in runs:
        assert r["ablation"] == (r["arm"].removeprefix("linear_probe_").removeprefix("zeroshot_") in ablations)
    table = summarize_runs(runs)
    assert table["points_20"]["gain_ppkt_2d"]["n"] == 1
    assert "gain_linear_probe_ppkt_2d" not in table["full_labels"]  # a probe is not compared with a finetune
    work = tmp_path / "work"
    for name in ("table.md", "transfer_arms.png", "pretrain_curves.png", "features.png", "zeroshot.png"):
        assert (work / name).stat().st_size > 0, name
    assert (work / "world_clip" / "world_clip.pt").is_file() and (work / "world_clip" / "model_config.json").is_file()
    # A rerun in one process reuses every stage: the same rows, nothing retrained.
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("last.pth")}
    assert tool.main(argv) == 0
    assert json.loads(record.read_text())["runs"] == runs
    assert {p: p.stat().st_mtime_ns for p in work.rglob("last.pth")} == stamps


def test_unknown_setting_is_one_line(tmp_path, capsys):
    tool = benchmark_tool()
    assert tool.main(["--work-dir", str(tmp_path), "--quick", "--settings", "points_7"]) == 1
    assert "points_7" in capsys.readouterr().err
