"""What a checkpoint holds, checked before its weights are loaded.

scene_kd writes three kinds of checkpoint; the job's `checkpoint_extra` entries tell them apart:
- pretraining (`scene_kd/distill/pretrain.py`): `student_name`, the student under `student`, `config`;
- segmentation (`scene_kd/finetune/seg.py`): `student_name`, `num_classes`, `config`, the net under `model`;
- detection (`scene_kd/finetune/det/run.py`): `student_name`, `strides`, `config`, the detector under `model`.
A checkpoint of none of them (a MinkowskiEngine training script's, a bare state_dict) has no known
kind and is not refused for that. Each refusal is one ValueError naming the file, what it holds and
what was expected, instead of `load_state_dict`'s list of every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

# The entries of a job's checkpoint that must agree with the checkpoint a job loads.
IDENTITY_ENTRIES = ("student_name", "num_classes", "strides")
# What `Trainer.resume` reads from a checkpoint.
TRAINING_ENTRIES = ("step", "model", "optimizer", "scheduler", "scaler")
# What to do with a checkpoint of another kind than an evaluation needs (`check_checkpoint(kind_advice=)`).
EVALUATION_ADVICE = {
    "pretraining": "finetune it first (tools/finetune_seg.py or tools/finetune_det.py --init)",
    "segmentation": "evaluate it with tools/finetune_seg.py --eval-only",
    "detection": "evaluate it with tools/finetune_det.py --eval-only",
}


def checkpoint_kind(entries: Mapping[str, Any]) -> str | None:
    """"pretraining", "segmentation" or "detection" for a scene_kd checkpoint (or a job's checkpoint
    entries), None for any other."""
    if "strides" in entries:
        return "detection"
    if "num_classes" in entries:
        return "segmentation"
    if "student_name" in entries and isinstance(entries.get("student"), Mapping):
        return "pretraining"
    return None


def _describe(kind: str | None, entries: Mapping[str, Any], unnamed: str = " of an unnamed student") -> str:
    if kind is None:
        return "a checkpoint of no scene_kd job (no student_name, num_classes or strides entry)"
    student = entries.get("student_name")
    text = f"a {kind} checkpoint" + (f" of {student}" if student else unnamed)
    if entries.get("num_classes") is not None:
        text += f" with {entries['num_classes']} classes"
    if entries.get("strides") is not None:
        text += f" at strides {list(entries['strides'])}"
    return text


def describe_checkpoint(entries: Mapping[str, Any]) -> str:
    """What a checkpoint holds, in words: "a segmentation checkpoint of MinkUNet14A with 20 classes"."""
    return _describe(checkpoint_kind(entries), entries)


def _same(a: Any, b: Any) -> bool:
    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
    return norm(a) == norm(b)


def check_checkpoint(entries: Mapping[str, Any], path: str | os.PathLike, *, kinds: Sequence[str | None],
                     purpose: str, advice: str = "", kind_advice: Mapping[str | None, str] | None = None,
                     **expected: Any) -> None:
    """Refuse the checkpoint at `path` (its loaded `entries`) for `purpose` (e.g. "segmentation
    evaluation") when its kind is not one of `kinds` (None among them: a checkpoint of no known kind
    is accepted) or when one of `expected` (student_name=, num_classes=, strides=; a None value is
    not checked) differs from the checkpoint's entry. The ValueError ends with `advice`, and when the
    kind is refused, with `kind_advice[the checkpoint's kind]`."""
    kind = checkpoint_kind(entries)
    differs = [k for k, v in expected.items() if v is not None and k in entries and not _same(entries[k], v)]
    if kind in kinds and not differs:
        return
    wanted_kind = " or ".join(k for k in kinds if k is not None) or "another"
    wanted = _describe(wanted_kind, {k: v for k, v in expected.items() if v is not None}, unnamed="")
    tips = [(kind_advice or {}).get(kind, "") if kind not in kinds else "", advice]
    tail = "".join(f"; {tip}" for tip in tips if tip)
    raise ValueError(f"{path}: {_describe(kind, entries)}, but {purpose} needs {wanted}{tail}")


def check_resumable(state: Mapping[str, Any], path: str | os.PathLike, job_entries: Mapping[str, Any]) -> None:
    """Refuse to resume a run of the job whose checkpoint entries are `job_entries` from the checkpoint
    at `path` when it is not a training checkpoint, or one of another kind, student, number of
    classes or strides."""
    missing = [k for k in TRAINING_ENTRIES if k not in state]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of a training run (no {', '.join(missing)} entry); "
                         "move it out of the run's checkpoints directory")
    kind = checkpoint_kind(job_entries)
    check_checkpoint(state, path, kinds=(kind,) if kind is not None else (checkpoint_kind(state),),
                     purpose="resuming this run", advice="restore the run's settings, or start a new run in "
                     "another train.out_dir", **{k: job_entries.get(k) for k in IDENTITY_ENTRIES})


def load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    """`module.load_state_dict(weights, strict=True)`; weights that do not fit are one ValueError naming
    `path`, `what` it should have been ("a segmentation checkpoint of MinkUNet14A with 20 classes") and
    the first keys missing, unexpected or of another shape."""
    own = module.state_dict()
    problems = {
        "missing": [k for k in own if k not in weights],
        "unexpected": [k for k in weights if k not in own],
        "of another shape": [k for k in own if k in weights and getattr(weights[k], "shape", None) is not None
                             and tuple(weights[k].shape) != tuple(own[k].shape)],
    }
    listed = "; ".join(f"{len(keys)} {name} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                       for name, keys in problems.items() if keys)
    if not listed:
        try:
            module.load_state_dict(weights, strict=True)
            return
        except RuntimeError as err:
            listed = str(err).strip().splitlines()[-1].strip()
    raise ValueError(f"{path}: not {what}, its weights do not fit: {listed}")
