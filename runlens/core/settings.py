"""One settings object, defaults that need no configuration.

Precedence, lowest first: the defaults here, a ``monitoring:`` section in the job's config, environment
variables (``RUNLENS_*``), and explicit arguments (CLI flags, ``Monitor(...)`` keywords).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from runlens.core.errors import ConfigError

DEFAULT_DB_URL = "sqlite:///runlens.db"


@dataclass(frozen=True)
class Settings:
    """Every tunable of runlens, with the default used when nothing overrides it."""

    db: str = DEFAULT_DB_URL
    sample_interval: float = 5.0
    flush_interval: float = 1.0
    flush_rows: int = 2000
    buffer_max_rows: int = 200_000
    monitoring_budget: float = 0.05
    # Hang detection: the calibration, its defaults and their sources are described in runlens.collect.watchdog.
    startup_grace: float = 20 * 60.0
    hang_timeout: float | None = None          # fixed soft timeout; None = self-calibrating
    uncalibrated_timeout: float = 300.0
    calibrated_min: float = 120.0
    calibrated_max: float = 15 * 60.0
    calibration_steps: int = 20
    warmup_steps: int = 5
    calibration_factor: float = 5.0            # x the slowest recent step interval (NVRx x5, PortOS x6)
    calibration_window: int = 100              # ... over the last this many step intervals
    phase_budgets: dict[str, float] = field(
        default_factory=lambda: {"eval": 1800.0, "validate": 1800.0, "sample": 1800.0, "save": 1800.0,
                                 "checkpoint": 1800.0, "predict": 1800.0}
    )
    kill_grace: float = 30.0
    hard_timeout: float | None = None          # runlens collect kills after this long without progress
    no_output_timeout: float | None = None     # runlens collect kills a child silent this long (off: None)
    stack_signal: str = "SIGUSR2"
    hang_detection: bool = True                # the Monitor's watchdog thread and faulthandler timer
    stacks_dir: str | None = None              # faulthandler stacks files; None: next to the store / log
    memory_warning_threshold: float = 0.85
    memory_critical_threshold: float = 0.95
    disabled: bool = False                     # monitoring: enabled: false, or RUNLENS_DISABLE=1
    # Analyse a job when it ends: runlens collect in its own process, a Monitor's own job in a detached one.
    analyze_on_complete: bool = True
    # runlens collect reads steps from the child's progress lines; a regular expression with named groups (step,
    # loss, lr, ...) for a format of the user's own, tried before the built-in ones.
    progress_pattern: str | None = None
    # Generic-dialect mapping: runlens concept -> dotted path in the user's config.
    config_paths: dict[str, str] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Settings":
        """Return a copy with ``changes`` applied; None values are ignored so unset flags don't override."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ENV = {
    "RUNLENS_DB": ("db", str),
    "RUNLENS_SAMPLE_INTERVAL": ("sample_interval", float),
    "RUNLENS_FLUSH_INTERVAL": ("flush_interval", float),
    "RUNLENS_HANG_TIMEOUT": ("hang_timeout", float),
    "RUNLENS_STARTUP_GRACE": ("startup_grace", float),
    "RUNLENS_STACKS_DIR": ("stacks_dir", str),
}

# Boolean environment variables: name -> Settings field.
_ENV_SWITCHES = {"RUNLENS_ANALYZE_ON_COMPLETE": "analyze_on_complete"}

_MONITORING_KEYS = {
    "sample_interval": "sample_interval", "sample_interval_seconds": "sample_interval",
    "flush_interval": "flush_interval", "flush_interval_seconds": "flush_interval",
    "monitoring_budget": "monitoring_budget", "hang_timeout": "hang_timeout",
    "startup_grace": "startup_grace", "memory_warning_threshold": "memory_warning_threshold",
    "memory_critical_threshold": "memory_critical_threshold", "kill_grace": "kill_grace",
    "hard_timeout": "hard_timeout", "no_output_timeout": "no_output_timeout",
    "uncalibrated_timeout": "uncalibrated_timeout", "calibrated_min": "calibrated_min",
    "calibrated_max": "calibrated_max",
}

# Switches of the ``monitoring:`` section: key -> (Settings field, whether the field is the key's negation).
_MONITORING_SWITCHES = {
    "enabled": ("disabled", True),
    "analyze_on_complete": ("analyze_on_complete", False),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_switch(value: Any) -> bool | None:
    """A boolean setting from YAML (``true``), JSON, TOML or an environment variable (``1``, ``off``); None
    when the value says neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def settings_from_monitoring_section(section: Mapping[str, Any] | None, base: Settings | None = None) -> Settings:
    """Apply a config's ``monitoring:`` section (unknown keys are ignored; ``paths`` maps the generic dialect)."""
    base = base or Settings()
    if not section:
        return base
    if not isinstance(section, Mapping):
        raise ConfigError("monitoring", "the 'monitoring' section must be a mapping")
    changes: dict[str, Any] = {}
    for key, attr in _MONITORING_KEYS.items():
        if key in section and section[key] is not None:
            try:
                changes[attr] = float(section[key])
            except (TypeError, ValueError):
                raise ConfigError("monitoring", f"monitoring.{key} must be a number, got {section[key]!r}") from None
    for key, (attr, negated) in _MONITORING_SWITCHES.items():
        if key in section and section[key] is not None:
            switch = parse_switch(section[key])
            if switch is None:
                raise ConfigError("monitoring", f"monitoring.{key} must be true or false, got {section[key]!r}")
            changes[attr] = not switch if negated else switch
    pattern = section.get("progress_pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("monitoring", f"monitoring.progress_pattern must be a regular expression, got {pattern!r}")
        changes["progress_pattern"] = pattern
    paths = section.get("paths") or section.get("config_paths")
    if paths:
        if not isinstance(paths, Mapping):
            raise ConfigError("monitoring", "monitoring.paths must map runlens names to config paths")
        changes["config_paths"] = {str(k): str(v) for k, v in paths.items()}
    return base.replace(**changes)


def settings_from_env(base: Settings | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    base = base or Settings()
    environ = os.environ if environ is None else environ
    changes: dict[str, Any] = {}
    for name, (attr, kind) in _ENV.items():
        raw = environ.get(name)
        if raw:
            try:
                changes[attr] = kind(raw)
            except ValueError:
                raise ConfigError(name, f"environment variable {name}={raw!r} is not a valid {kind.__name__}") from None
    for name, attr in _ENV_SWITCHES.items():
        raw = environ.get(name, "").strip()
        if raw:
            switch = parse_switch(raw)
            if switch is None:
                raise ConfigError(name, f"environment variable {name}={raw!r} is not 1 or 0 (true/false, on/off)")
            changes[attr] = switch
    if env_disabled(environ):
        changes["disabled"] = True
    return base.replace(**changes)


def timeout_or_off(value: float | None) -> float | None:
    """A timeout setting in seconds, or None for off: unset, 0 and negative values switch it off."""
    return float(value) if value is not None and value > 0 else None


def env_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """``RUNLENS_DISABLE`` is set to 1, true or yes: runlens records nothing in this process."""
    environ = os.environ if environ is None else environ
    return environ.get("RUNLENS_DISABLE", "").strip().lower() in ("1", "true", "yes")


def resolve_db_url(db: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The store URL: ``db`` argument, then ``RUNLENS_DB``, then ``sqlite:///runlens.db``; a bare path is a SQLite file."""
    environ = os.environ if environ is None else environ
    raw = db or environ.get("RUNLENS_DB") or DEFAULT_DB_URL
    if "://" not in raw:
        raw = "sqlite:///" + str(Path(raw).expanduser().resolve())
    return raw
