"""How the report shows a value, and how much of it: the filters its templates use and the caps that keep
the page bounded.

Every filter is safe with None and with a value of the wrong type (a partial or hand-written document): it
shows a dash, never ``0.0 GiB``, which would be a claim. Durations, sizes and times come from
``runlens.core.humanize``, as everywhere else in runlens; this module adds only what is the report's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jinja2

from runlens.analyze.contract import SEVERITY_ORDER
from runlens.core import humanize
from runlens.core.numbers import finite_number as number

__all__ = [
    "DASH", "as_list", "as_mapping", "as_text", "clip", "clip_middle", "fmt_duration", "fmt_gb", "fmt_minutes",
    "fmt_number", "fmt_pct", "fmt_timestamp", "fmt_value", "health_class", "number", "register_filters",
    "severity_class", "status_tone",
]

# Caps that keep the report bounded (a 24 h run can log thousands of errors with long tracebacks).
MAX_LOG_ERRORS = 200
MAX_TRACEBACK_CHARS = 3_000
MAX_MESSAGE_CHARS = 600
MAX_HANGS = 20
MAX_STACK_CHARS = 20_000
MAX_RECOMMENDATIONS = 50
MAX_VALUE_CHARS = 300
MAX_CONFIG_CHARS = 60_000
MAX_TABLE_ROWS = 200

DASH = "—"

_STATUS_TONE = {
    "succeeded": "good",
    "completed": "good",
    "finished": "good",
    "running": "info",
    "timed_out": "warning",
    "interrupted": "warning",
    "stalled": "warning",
    "failed": "critical",
    "crashed": "critical",
    "killed": "critical",
    "oom": "critical",
}


def register_filters(env: jinja2.Environment) -> None:
    """Every formatting rule the templates use, in one place, each one safe with None."""
    env.filters.update(
        gb=fmt_gb,
        duration=fmt_duration,
        minutes=fmt_minutes,
        pct=fmt_pct,
        ts=fmt_timestamp,
        num=fmt_number,
        severity_class=severity_class,
        health_class=health_class,
        tone=status_tone,
        value=fmt_value,
    )


def fmt_gb(value: Any) -> str:
    """``119.2 GiB``; a dash for a missing reading (never ``0.0 GiB``, which would be a claim)."""
    return humanize.gb(number(value), missing=DASH)


def fmt_duration(seconds: Any) -> str:
    """``2h 03m``, ``4m 12s``, ``12.3s``, ``42 ms``: the precision a reader needs at each scale."""
    return humanize.duration_fine(number(seconds), missing=DASH)


def fmt_minutes(minutes: Any) -> str:
    """A duration given in minutes (the summary's ``duration_minutes``), formatted like ``duration``."""
    f = number(minutes)
    return fmt_duration(None if f is None else f * 60.0)


def fmt_pct(ratio: Any) -> str:
    """A 0..1 ratio as a percentage, with a decimal only where it matters (``0.4%`` vs ``99%``)."""
    f = number(ratio)
    if f is None:
        return DASH
    p = f * 100
    if p == 0:
        return "0%"
    if abs(p) < 1:
        return f"{p:.2f}%" if abs(p) >= 0.01 else "<0.01%"
    if abs(p) < 10:
        return f"{p:.1f}%"
    return f"{p:.0f}%"


def fmt_timestamp(value: Any) -> str:
    """UNIX seconds to local ``YYYY-MM-DD HH:MM:SS`` (the footer names the time zone)."""
    return humanize.local_time(number(value), missing=DASH)


def fmt_number(value: Any, digits: int = 0) -> str:
    """Thousands separators: ``1,234``; a dash for missing."""
    f = number(value)
    if f is None:
        return DASH
    return f"{f:,.{digits}f}"


def severity_class(value: Any) -> str:
    return f"sev-{value}" if value in SEVERITY_ORDER else "sev-info"


def health_class(value: Any) -> str:
    return f"health-{value}" if value in ("good", "warning", "critical") else "health-unknown"


def status_tone(status: Any) -> str:
    """The colour family of a job status: good, warning, critical or info."""
    return _STATUS_TONE.get(str(status).lower(), "info") if status else "info"


def fmt_value(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """A config literal as the reader would type it: strings bare, everything else as JSON; bounded."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return clip(text, limit)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_middle(text: str, limit: int) -> str:
    """Keep the head and the tail: a traceback's cause is at its end, its context at its start."""
    if len(text) <= limit:
        return text
    head = limit // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n… {omitted:,} characters omitted …\n{text[-tail:]}"


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def as_text(value: Any) -> str:
    return "" if value is None else str(value)
