"""A processed scene's `manifest.json`: how it is written, and the settings it records so that a
later run with other settings never takes the scene for done (see docs/data_format.md).

The settings are the options that change what preprocessing writes: `frame_skip`, `color_size`
(--image-size), `jpeg_quality`, `depth_png` and `label_map_sha256` (a digest of the raw category ->
ScanNet200 map read from the label tsv, null without a tsv), plus the manifest's `format_version`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scene_kd.scannet.errors import ScanNetFormatError

FORMAT_VERSION = 2  # 2: adds label_map_sha256 and has_axis_alignment
MANIFEST_NAME = "manifest.json"
SETTING_KEYS = ("format_version", "frame_skip", "color_size", "jpeg_quality", "depth_png", "label_map_sha256")


def manifest_json(manifest: dict) -> str:
    """One key a line, each value (lists included) on its key's line."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in manifest.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def label_map_digest(raw_to_seg200: dict[str, int] | None) -> str | None:
    """sha256 of the raw category -> ScanNet200 index map (sorted, as JSON); None without one."""
    if raw_to_seg200 is None:
        return None
    text = json.dumps(sorted((str(k), int(v)) for k, v in raw_to_seg200.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scene_settings(
    frame_skip: int,
    image_size: tuple[int, int],
    jpeg_quality: int,
    depth_png: str,
    raw_to_seg200: dict[str, int] | None,
) -> dict:
    """The settings a manifest records, keyed as in the manifest (SETTING_KEYS order)."""
    return {
        "format_version": FORMAT_VERSION,
        "frame_skip": int(frame_skip),
        "color_size": [int(image_size[0]), int(image_size[1])],
        "jpeg_quality": int(jpeg_quality),
        "depth_png": depth_png,
        "label_map_sha256": label_map_digest(raw_to_seg200),
    }


def read_scene_manifest(scene_dir: Path) -> dict:
    """The manifest of an existing processed scene directory; a missing or unreadable one is a
    ScanNetFormatError naming it (the directory is not a finished scene of this format)."""
    path = scene_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScanNetFormatError(
            f"{path}: missing: {scene_dir} is not a finished processed scene; delete it to redo the scene"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScanNetFormatError(
            f"{path}: unreadable manifest ({e}); delete {scene_dir} to redo the scene"
        ) from e
    if not isinstance(manifest, dict):
        raise ScanNetFormatError(f"{path}: not a JSON object; delete {scene_dir} to redo the scene")
    return manifest


def setting_differences(manifest: dict, settings: dict) -> list[str]:
    """How a manifest's recorded settings differ from `settings`, one "key recorded (this run: value)"
    each; a key the manifest lacks (an older format) counts as different."""
    differences = []
    for key, wanted in settings.items():
        recorded = manifest.get(key, "not recorded")
        if recorded != wanted:
            differences.append(f"{key} {json.dumps(recorded)} (this run: {json.dumps(wanted)})")
    return differences


def check_scene_settings(scene_dir: Path, settings: dict) -> dict:
    """The manifest of `scene_dir` when it was made with `settings`; otherwise a ValueError that
    names the manifest and each differing setting."""
    manifest = read_scene_manifest(scene_dir)
    differences = setting_differences(manifest, settings)
    if differences:
        raise ValueError(
            f"{scene_dir / MANIFEST_NAME}: made with other settings: {'; '.join(differences)}. "
            f"{REFUSAL_ADVICE}"
        )
    return manifest


REFUSAL_ADVICE = (
    "Preprocessing never mixes settings in one output directory: rerun with the recorded settings, "
    "use another --out, or delete the scene directories to redo them with the new settings"
)
