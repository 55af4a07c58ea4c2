"""Faults of training and checkpoints end as a clear error or an announced recovery, never silently:
a disk that fills while a checkpoint is written, a truncated or missing last.pth, and a checkpoint of
another job or student given to --eval-only, --init or a resume (issue 14)."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pair_checks import make_processed_scans

from scene_kd.cli import run_tool
from scene_kd.config import load_config
from scene_kd.engine import checkpoint as checkpoint_module
from scene_kd.engine.checkpoint import load_checkpoint, load_latest_checkpoint, save_checkpoint
from scene_kd.engine.trainer import refuse_used_run_dir
from scene_kd.eval.zeroshot import load_pretrained_concept_model
from scene_kd.finetune.det import run as det_run
from scene_kd.finetune.det.schema import FinetuneDetConfig
from scene_kd.finetune.init_weights import init_from_checkpoint
from scene_kd.finetune.schema import FinetuneSegConfig
from scene_kd.finetune.seg import build_seg_model, run_finetune_seg
from scene_kd.models import build_student

REPO = Path(__file__).resolve().parents[1]
TORCH_WRITER_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed_scans(tmp_path_factory.mktemp("faults"), num_scenes=2, num_frames=4)


def seg_args(root, out_dir, *extra):
    return [f"data.root={root}", "data.train_split=null", "data.val_split=null", "data.voxel_size=0.1",
            "data.batch_size=2", "data.num_workers=0", "data.augment=false", "model.student=MinkUNet14A",
            "optim.lr=0.05", "schedule.name=constant", f"train.out_dir={out_dir}", "train.progress=false",
            "train.tensorboard=false", "train.log_every=10", "train.eval_every=0", "eval.write_predictions=false",
            *extra]


def seg_config(root, out_dir, *extra):
    return load_config(FinetuneSegConfig, None, seg_args(root, out_dir, *extra))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def fills_the_disk(monkeypatch, fail_on: str, error: BaseException):
    """torch.save writes part of a file whose name contains `fail_on`, then raises `error`, as on a full disk."""
    save = torch.save

    def partial_save(obj, f, *args, **kwargs):
        if fail_on in Path(f).name:
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 4096)
            raise error
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", partial_save)


def test_disk_full_in_the_first_checkpoint_then_resume_from_the_intact_step_file(processed, tmp_path, monkeypatch,
                                                                                 capsys):
    # torch's own error, with a file system that has no space left when the write fails.
    fills_the_disk(monkeypatch, "last", RuntimeError(TORCH_WRITER_ERROR))
    monkeypatch.setattr(checkpoint_module, "free_space", lambda directory: (4096, 10 * 2**30))
    cfg = seg_config(processed, tmp_path, "train.max_steps=4", "train.checkpoint_every=2")
    assert run_tool(lambda argv: run_finetune_seg(cfg), [], name="finetune_seg") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("finetune_seg: error: disk full"), err
    ckpts = tmp_path / "checkpoints"
    assert f"last.pth not written in {ckpts} (4.0 KiB free of 10.0 GiB" in err, err
    assert leftovers(ckpts) == [] and sorted(p.name for p in ckpts.iterdir()) == ["step_00000002.pth"]

    monkeypatch.undo()  # space is freed
    result = run_finetune_seg(cfg)
    out = capsys.readouterr().out
    assert "last.pth is missing: resuming from" in out and "step_00000002.pth" in out, out
    assert "at step 2" in out and result.step == 4
    assert load_checkpoint(ckpts / "last.pth")["step"] == 4 and leftovers(ckpts) == []


def test_disk_full_errno_in_a_step_file_leaves_the_previous_checkpoints(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 2, {"step": 2})
    fills_the_disk(monkeypatch, "step_00000004", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="disk full") as caught:
        save_checkpoint(tmp_path, 4, {"step": 4})
    assert caught.value.errno == errno.ENOSPC and str(tmp_path) in str(caught.value)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "step_00000002.pth"]
    assert load_checkpoint(tmp_path / "last.pth")["step"] == 2


def test_truncated_last_checkpoint_falls_back_to_the_newest_step_file(processed, tmp_path, capsys):
    run_finetune_seg(seg_config(processed, tmp_path, "train.max_steps=4", "train.checkpoint_every=2"))
    last = tmp_path / "checkpoints" / "last.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    result = run_finetune_seg(seg_config(processed, tmp_path, "train.max_steps=6", "train.checkpoint_every=2"))
    out = capsys.readouterr().out
    assert "last.pth is unreadable" in out and "resuming from" in out and "step_00000004.pth instead" in out, out
    assert "at step 4" in out and result.step == 6
    assert load_checkpoint(last)["step"] == 6


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    save_checkpoint(tmp_path, 2, {"step": 2})
    for path in tmp_path.iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no intact checkpoint to resume from \(last.pth is unreadable .*"
                                         r"step_00000002.pth is unreadable"):
        load_latest_checkpoint(tmp_path)
    assert load_latest_checkpoint(tmp_path / "nothing") is None


def detection_checkpoint(path: Path) -> Path:
    backbone = build_student("MinkUNet14A", in_channels=3, out_channels=None).state_dict()
    model = {**{f"backbone.{k}": v for k, v in backbone.items()}, "head.cls.weight": torch.zeros(18, 96)}
    torch.save({"step": 1, "model": model, "student_name": "MinkUNet14A", "strides": [2, 4, 8], "config": {}}, path)
    return path


def test_eval_only_of_a_detection_checkpoint_in_segmentation_is_one_line(processed, tmp_path):
    checkpoint = detection_checkpoint(tmp_path / "det_best.pth")
    proc = subprocess.run([sys.executable, str(REPO / "tools/finetune_seg.py"), *seg_args(processed, tmp_path),
                           "--eval-only", str(checkpoint), "--eval-out", str(tmp_path / "ev")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("finetune_seg: error: ") and str(checkpoint) in lines[0]
    assert "a detection checkpoint of MinkUNet14A at strides [2, 4, 8]" in lines[0]
    assert "needs a segmentation checkpoint of MinkUNet14A with 20 classes" in lines[0]
    assert not (tmp_path / "ev").exists()


def test_eval_only_of_a_segmentation_checkpoint_in_detection(processed, tmp_path):
    model = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    torch.save({"step": 1, "model": model.state_dict(), "student_name": "MinkUNet14A", "num_classes": 20,
                "config": {}}, tmp_path / "seg_best.pth")
    cfg = load_config(FinetuneDetConfig, None, [f"data.root={processed}", "data.train_split=null",
                                                 "data.val_split=null", "model.student=MinkUNet14A",
                                                 f"train.out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"seg_best.pth: a segmentation checkpoint of MinkUNet14A with 20 classes, "
                                         r"but detection evaluation needs a detection checkpoint of MinkUNet14A"):
        det_run.evaluate_checkpoint(cfg, tmp_path / "seg_best.pth", tmp_path / "ev")


def test_init_from_a_checkpoint_of_another_student(processed, tmp_path):
    other = build_student("MinkUNet18A", in_channels=3, out_channels=None)
    path = tmp_path / "pretrained_18a.pth"
    torch.save({"student": other.state_dict(), "student_name": "MinkUNet18A", "config": {}}, path)
    # refused by name before any weight is loaded, whatever model.init_strict says
    for strict in ("true", "false"):
        with pytest.raises(ValueError, match=r"pretrained_18a.pth: a pretraining checkpoint of MinkUNet18A, but "
                                             r"model.init needs a pretraining or segmentation checkpoint of MinkUNet14A"):
            build_seg_model(seg_config(processed, tmp_path, f"model.init={path}", f"model.init_strict={strict}"))
    model = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    with pytest.raises(ValueError, match=r"pretrained_18a.pth: a pretraining checkpoint of MinkUNet18A, but "
                                         r"model.init needs a pretraining or segmentation checkpoint of MinkUNet14A"):
        init_from_checkpoint(model, path, student="MinkUNet14A")
    with pytest.raises(ValueError, match=r"det.pth: a detection checkpoint .* but model.init needs a pretraining or "
                                         r"segmentation checkpoint"):
        init_from_checkpoint(model, detection_checkpoint(tmp_path / "det.pth"))


def test_resume_with_another_student_names_the_checkpoint(processed, tmp_path):
    run_finetune_seg(seg_config(processed, tmp_path, "train.max_steps=2", "train.checkpoint_every=2"))
    (tmp_path / "config.yaml").unlink()  # without it the launcher cannot compare the settings first
    with pytest.raises(ValueError, match=r"last.pth: a segmentation checkpoint of MinkUNet14A with 20 classes, but "
                                         r"resuming this run needs a segmentation checkpoint of MinkUNet18A"):
        run_finetune_seg(seg_config(processed, tmp_path, "train.max_steps=4", "train.checkpoint_every=2",
                                    "model.student=MinkUNet18A"))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["step"] == 2
    assert not (tmp_path / "config.yaml").exists()  # the refused run wrote nothing


def test_a_run_directory_with_step_files_only_is_not_reused_silently(tmp_path):
    save_checkpoint(tmp_path / "checkpoints", 2, {"step": 2})
    (tmp_path / "checkpoints" / "last.pth").unlink()
    with pytest.raises(FileExistsError, match="train.resume is false"):
        refuse_used_run_dir(tmp_path, resume=False)


def test_zeroshot_of_a_finetuning_checkpoint_names_the_file(tmp_path):
    model = build_student("MinkUNet14A", in_channels=3, out_channels=20)
    torch.save({"model": model.state_dict(), "student_name": "MinkUNet14A", "num_classes": 20}, tmp_path / "seg.pth")
    with pytest.raises(ValueError, match=r"seg.pth: a segmentation checkpoint of MinkUNet14A with 20 classes, but "
                                         r"zero-shot segmentation needs a pretraining checkpoint"):
        load_pretrained_concept_model(tmp_path / "seg.pth")
