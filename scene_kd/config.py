"""Configs: OmegaConf structured schemas, recipe files that override one base, command-line overrides.

A recipe YAML names the file it overrides with `_base_: default.yaml` (relative to the recipe) and holds
only what differs. `load_config(Schema, path, overrides)` merges schema defaults <- base chain <-
recipe <- `key=value` overrides; an unknown key or a value of the wrong type is a `ConfigError` that
names the key and the file. The resolved config is saved next to every run (`save_config`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scene_kd.atomic import write_text_atomic
from scene_kd.config_ranges import range_errors

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        mark = getattr(err, "problem_mark", None)  # yaml's position of the problem, 0-based
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return cfg


def _recipe_chain(path: Path) -> list[tuple[Path, DictConfig]]:
    """[(file, its config without _base_)] from the root base to `path`."""
    chain: list[tuple[Path, DictConfig]] = []
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None:
        current = current.resolve()
        if current in seen:
            raise ConfigError(f"{current}: {BASE_KEY} chain loops back to this file")
        seen.add(current)
        cfg = _read_yaml(current)
        base = cfg.pop(BASE_KEY, None)
        chain.append((current, cfg))
        current = (current.parent / str(base)) if base is not None else None
    return chain[::-1]


def _open_free_form_mappings(cfg: DictConfig) -> DictConfig:
    """Let `dict[str, Any]` fields (builder options) take new keys; dataclass sections stay closed."""
    for key in cfg.keys():
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            if node._metadata.object_type in (dict, None):
                OmegaConf.set_struct(node, False)
            else:
                _open_free_form_mappings(node)
    return cfg


def _merge(schema_cfg: DictConfig, other: DictConfig | dict, source: str) -> DictConfig:
    try:
        return _open_free_form_mappings(OmegaConf.merge(schema_cfg, other))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f" (key '{key}')" if key else ""
        raise ConfigError(f"{source}{where}: {err.msg if hasattr(err, 'msg') else err}".split("\n")[0]) from err


def _schema_and_recipe(schema: type, path: str | os.PathLike | None) -> DictConfig:
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_free_form_mappings(cfg)
    if path is not None:
        for file, part in _recipe_chain(Path(path)):
            cfg = _merge(cfg, part, str(file))
    return cfg


def load_config(schema: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults <- recipe chain of `path` <- `overrides` (["optim.lr=0.1", ...]); read-only result.
    A value outside its range (`scene_kd/config_ranges.py`) is a ConfigError naming the key."""
    cfg = _schema_and_recipe(schema, path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.01")
        try:
            parsed = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {err}") from err
        cfg = _merge(cfg, parsed, f"override {item!r}")
    return _checked(cfg)


def _checked(cfg: DictConfig) -> DictConfig:
    """`cfg` made read-only after its numeric keys are checked against `config_ranges.RANGES`."""
    errors = range_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def build_config(
    schema: type, path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> DictConfig:
    """Schema defaults <- recipe chain of `path` <- `overrides`, a nested dict such as
    {"data": {"voxel_size": 0.05}}: how library code builds a config (never from "key=value"
    strings). Unknown keys and wrong types are `ConfigError`s as in `load_config`; read-only result."""
    cfg = _schema_and_recipe(schema, path)
    if overrides:
        cfg = _merge(cfg, overrides, "overrides")
    return _checked(cfg)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, to_yaml(cfg))


def as_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """A config node as plain Python containers (resolved); any other value as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
