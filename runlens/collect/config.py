"""The config snapshot a job is stored with, and the settings its ``monitoring:`` section implies.

A run's config is the evidence a recommendation points into ("set ``dataloader_num_workers`` to 4"), so it is
stored with the job exactly as the run saw it, minus secrets: it goes through ``runlens.core.redact.redact`` before it
leaves this module. A config that cannot be read is the user's input error and raises ``ConfigError`` with one
line that says where (the YAML/JSON parser's line and column), never a parser traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
from pathlib import Path
from typing import Any, Mapping, Union

from runlens.core.errors import ConfigError
from runlens.core.redact import redact
from runlens.core.settings import Settings, settings_from_env, settings_from_monitoring_section

ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any], None]

_MAX_DEPTH = 64


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """A deep copy of ``value`` made of JSON types only.

    Configs and event details hold Paths, enums, ``torch.dtype``, tuples and numpy scalars; the store keeps JSON,
    so anything else becomes its ``str()``. Dict keys become strings. Non-finite floats stay floats (Python's
    json round-trips them); cycles and absurd depth are cut with a marker instead of recursing forever.
    """
    if _depth > _MAX_DEPTH:
        return "<too deep>"
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or bool subclass becomes a plain int
    if isinstance(value, float):
        return float(value)
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v, _depth + 1) for v in items]
    if isinstance(value, Path):
        return str(value)
    # numpy scalars and 0-d arrays: a number, not "np.float64(0.1)". Tensors are left to str() on purpose:
    # .item() on a CUDA tensor would sync the device, and configs do not hold tensors.
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return to_jsonable(value.item(), _depth + 1)
    return str(value)


def _mapping_of(config: Any) -> Mapping[str, Any] | None:
    """Mapping-like configs: a dict, an OmegaConf DictConfig, a dataclass (HF TrainingArguments), a Namespace."""
    if isinstance(config, Mapping):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        # Not dataclasses.asdict: it deep-copies every field, and some (TrainingArguments) hold uncopyable objects.
        return {f.name: getattr(config, f.name, None) for f in dataclasses.fields(config)}
    if isinstance(config, argparse.Namespace):
        return vars(config)
    return None


def _parse_error(exc: Exception, kind: str) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"invalid {kind} at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid {kind}: {' '.join(str(exc).split())}"


def _read_file(path: Path) -> Any:
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(shown, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(shown, "is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(shown, "not a text file (expected YAML or JSON)") from None
    except OSError as exc:
        raise ConfigError(shown, exc.strerror or str(exc)) from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(shown, _parse_error(exc, "JSON")) from None
    if suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(shown, f"invalid TOML: {str(exc).splitlines()[0]}") from None
    import yaml  # YAML is a superset of JSON, so .yaml, .yml and unknown suffixes all go here

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(shown, _parse_error(exc, "YAML")) from None


def load_config(config: ConfigSource) -> tuple[dict[str, Any] | None, str | None]:
    """Snapshot a run's config: a YAML/JSON/TOML file, or a mapping (dict, DictConfig, dataclass, Namespace).

    Args:
        config: a path to a config file, a mapping, or None.

    Returns:
        ``(snapshot, path)``: the snapshot is a JSON-only deep copy with secret-named keys redacted; ``path`` is
        the file's absolute path, or None when ``config`` was not a file.

    Raises:
        ConfigError: the file is missing, unreadable, malformed, or does not hold a mapping at the top level.
    """
    if config is None:
        return None, None
    mapping = _mapping_of(config)
    if mapping is not None:
        return redact(to_jsonable(mapping)), None
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(repr(config)[:80], f"expected a path or a mapping, got {type(config).__name__}")
    path = Path(config).expanduser()
    data = _read_file(path)
    if data is None:  # an empty file is an empty config, not an error
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), f"expected a mapping at the top level, got {type(data).__name__}")
    return redact(to_jsonable(data)), str(path.resolve())


def resolve_settings(config: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> Settings:
    """Settings in DESIGN.md's order: defaults < the config's ``monitoring:`` section < RUNLENS_* env < overrides.

    Raises:
        ConfigError: a ``monitoring:`` value or an environment variable that is not a valid number.
        TypeError: an override that is not a Settings field (a typo in ``Monitor(samle_interval=...)``).
    """
    section = config.get("monitoring") if isinstance(config, Mapping) else None
    settings = settings_from_monitoring_section(section, Settings())
    settings = settings_from_env(settings, environ)
    if overrides:
        check_setting_names(overrides)
        settings = settings.replace(**overrides)
    return settings


def check_setting_names(overrides: Mapping[str, Any]) -> None:
    """Raise TypeError for a name that is not a Settings field (a typo in ``Monitor(samle_interval=...)``)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown runlens setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")

