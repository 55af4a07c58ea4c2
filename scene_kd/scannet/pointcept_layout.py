"""Pointcept's view of a processed output: `<out>/{train,val,test}/<scene>` (docs/data_format.md).

Pointcept's `ScanNetDataset` lists `glob(<data_root>/<split>/*)` and reads `coord.npy`, `color.npy`,
`normal.npy`, `segment20.npy` (or `segment200.npy`) and `instance.npy` of each directory; scene_kd's
scene directories already hold exactly those arrays, flat under `<out>/`. So the layout is one
relative symbolic link per scene, `<out>/<split>/<scene> -> ../<scene>`, in the split that Pointcept's
own preprocessing would give it (`pointcept_split`: train if `<out>/splits/train.txt` lists it, else
val if `val.txt` does, else test): one copy of the data, and scene_kd's own readers (which look for
`<out>/<scene>/manifest.json`) never see the links. Where a symbolic link cannot be made (a file
system without them), the entry is a directory of hard links (or, across devices, copies) of the six
arrays with a `.scene_kd_copy.json` marker recording the scene's manifest digest, so a later run
redoes a copy whose scene was redone. Entries are written under a hidden temporary name and renamed
into place. An entry this module did not make is never touched: `check_pointcept_layout` refuses
the run before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from scene_kd.atomic import atomic_directory, write_text_atomic
from scene_kd.scannet.manifest import MANIFEST_NAME
from scene_kd.scannet.out_lock import pid_alive
from scene_kd.scannet.splits import read_split

POINTCEPT_SPLITS = ("train", "val", "test")
POINTCEPT_ARRAYS = ("coord", "color", "normal", "segment20", "segment200", "instance")
COPY_MARKER = ".scene_kd_copy.json"
TMP_PREFIX = ".tmp-"


def split_members(out_root: str | os.PathLike) -> dict[str, set[str]] | None:
    """{"train": ids, "val": ids} from `<out_root>/splits/{train,val}.txt` (an empty set where one is
    missing); None when both are missing."""
    splits = Path(out_root) / "splits"
    if not any((splits / f"{s}.txt").is_file() for s in ("train", "val")):
        return None
    return {s: set(read_split(splits / f"{s}.txt")) if (splits / f"{s}.txt").is_file() else set()
            for s in ("train", "val")}


def pointcept_split(scene_id: str, members: dict[str, set[str]]) -> str:
    """The split directory Pointcept's preprocess_scannet.py puts a scene in: "train" when the train
    list has it, else "val" when the val list has it, else "test" (ScanNet's test scans)."""
    return "train" if scene_id in members["train"] else "val" if scene_id in members["val"] else "test"


def _manifest_digest(scene_dir: Path) -> str:
    return hashlib.sha256((scene_dir / MANIFEST_NAME).read_bytes()).hexdigest()


def entry_kind(entry: Path, scene_dir: Path) -> str:
    """What `<out>/<split>/<scene>` is: "missing"; "link" (a symbolic link to `../<scene>`, or one
    that resolves to the scene directory); "copy" (a directory with the copy marker); "foreign"
    (anything else: never touched)."""
    if entry.is_symlink():
        target = os.readlink(entry)
        if target == f"../{scene_dir.name}" or (scene_dir.exists() and entry.resolve() == scene_dir.resolve()):
            return "link"
        return "foreign"
    if not entry.exists():
        return "missing"
    return "copy" if entry.is_dir() and (entry / COPY_MARKER).is_file() else "foreign"


def check_pointcept_layout(out_root: str | os.PathLike, scene_ids: list[str]) -> None:
    """Refuse (one ValueError naming the entries) when `<out_root>/<split>` is not a directory of its
    own or `<out_root>/<split>/<scene>` of a scene in `scene_ids` exists and was not made here, so a
    run never replaces the user's files."""
    out_root = Path(out_root)
    problems = []
    for split in POINTCEPT_SPLITS:
        split_dir = out_root / split
        if split_dir.is_symlink() or (split_dir.exists() and not split_dir.is_dir()):
            problems.append(f"{split_dir}: not a directory of this output (a link or a file)")
            continue
        problems += [f"{split_dir / s}: not a link to ../{s} made by --pointcept-layout" for s in scene_ids
                     if entry_kind(split_dir / s, out_root / s) == "foreign"]
    if problems:
        listed = " | ".join(problems[:5]) + (f" | ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{out_root}: the Pointcept layout would replace {len(problems)} path(s) it did not "
                         f"make: {listed}. Move them away, or drop --pointcept-layout")


def _remove_entry(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    elif entry.is_dir():
        shutil.rmtree(entry)


def _copy_scene(scene_dir: Path, entry: Path) -> None:
    """`entry` as a directory of hard links (copies across devices) of the scene's arrays + marker."""
    if entry.is_symlink():
        entry.unlink()
    tmp = entry.with_name(f"{TMP_PREFIX}{entry.name}-{os.getpid()}")
    with atomic_directory(entry, tmp=tmp, replace=True) as staged:
        for name in POINTCEPT_ARRAYS:
            source = scene_dir / f"{name}.npy"
            try:
                os.link(source, staged / source.name)
            except OSError:
                shutil.copy2(source, staged / source.name)
        marker = {"scene_id": scene_dir.name, "manifest_sha256": _manifest_digest(scene_dir)}
        write_text_atomic(staged / COPY_MARKER, json.dumps(marker) + "\n")


def _place_entry(scene_dir: Path, entry: Path, kind: str) -> str:
    """Make `entry` a link to `../<scene>` (or, where links are impossible, a marked copy); returns
    "link" or "copy". A link or an up-to-date copy already there is kept."""
    if kind == "link":
        return "link"
    if kind == "copy":
        marker = json.loads((entry / COPY_MARKER).read_text(encoding="utf-8"))
        if marker.get("manifest_sha256") == _manifest_digest(scene_dir):
            return "copy"
    tmp = entry.with_name(f"{TMP_PREFIX}{entry.name}-{os.getpid()}")
    _remove_entry(tmp)
    try:
        os.symlink(f"../{scene_dir.name}", tmp, target_is_directory=True)
    except OSError:  # no symbolic links on this file system
        _copy_scene(scene_dir, entry)
        return "copy"
    if kind == "copy":
        shutil.rmtree(entry)
    os.replace(tmp, entry)
    return "link"


def _remove_stale_tmp(split_dir: Path) -> None:
    """Delete `.tmp-<scene>-<pid>` entries of `split_dir` left by killed runs (their pid is dead)."""
    if not split_dir.is_dir():
        return
    for entry in split_dir.iterdir():
        owner = entry.name.rsplit("-", 1)[-1]
        if entry.name.startswith(TMP_PREFIX) and owner.isdigit() and not pid_alive(int(owner)):
            _remove_entry(entry)


def write_pointcept_layout(out_root: str | os.PathLike, scene_ids: list[str]) -> list[str]:
    """Bring `<out_root>/{train,val,test}/<scene>` up to date for `scene_ids`: one entry for each
    processed scene (with a manifest) in its `pointcept_split`, and none elsewhere (a scene that
    failed, or changed split, loses its other entries). Entries of other scenes are not touched
    (shards share an output). Without `<out_root>/splits/{train,val}.txt` nothing is linked. Call
    `check_pointcept_layout` first. Returns notes for the run's summary."""
    out_root = Path(out_root)
    members = split_members(out_root)
    if members is None:
        return [f"Pointcept layout: nothing linked: no {out_root / 'splits'}/train.txt or val.txt (the "
                "ScanNet root has no scannetv2_train.txt / scannetv2_val.txt)"]
    counts = {split: 0 for split in POINTCEPT_SPLITS}
    copied, removed = 0, 0
    for split in POINTCEPT_SPLITS:
        _remove_stale_tmp(out_root / split)
    for scene_id in scene_ids:
        scene_dir = out_root / scene_id
        processed = (scene_dir / MANIFEST_NAME).is_file()
        for split in POINTCEPT_SPLITS:
            entry = out_root / split / scene_id
            kind = entry_kind(entry, scene_dir)
            if processed and split == pointcept_split(scene_id, members):
                entry.parent.mkdir(exist_ok=True)
                copied += _place_entry(scene_dir, entry, kind) == "copy"
                counts[split] += 1
            elif kind in ("link", "copy"):
                _remove_entry(entry)
                removed += 1
    listed = ", ".join(f"{split} {n}" for split, n in counts.items())
    return [f"Pointcept layout: {listed} scene(s) under {out_root}/{{train,val,test}}/"
            + (f" ({copied} as copies: no symbolic links here)" if copied else "")
            + (f"; {removed} stale entr(y/ies) removed" if removed else "")]


__all__ = [
    "COPY_MARKER",
    "POINTCEPT_ARRAYS",
    "POINTCEPT_SPLITS",
    "check_pointcept_layout",
    "entry_kind",
    "pointcept_split",
    "split_members",
    "write_pointcept_layout",
]
