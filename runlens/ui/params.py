"""The query parameters of ``runlens ui``'s pages and API, checked: a value that cannot be used is a
``BadParameter`` (HTTP 400) that names the parameter, never a 500 or a silently different answer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from runlens.core.errors import BadParameter

__all__ = ["get_choice", "get_float", "get_int", "get_job_ids", "get_text"]

MAX_TEXT = 200


def _one(query: Mapping[str, str], name: str) -> str | None:
    values = query.getlist(name) if hasattr(query, "getlist") else ([query[name]] if name in query else [])
    if len(values) > 1:
        raise BadParameter(name, "given more than once")
    return values[0] if values else None


def get_int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]``; ``default`` when absent or empty."""
    raw = _one(query, name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadParameter(name, f"{raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise BadParameter(name, f"{value} is outside {lo}..{hi}")
    return value


def get_float(query: Mapping[str, str], name: str) -> float | None:
    """A finite number (UNIX seconds for ``since``); None when absent or empty."""
    raw = _one(query, name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadParameter(name, f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise BadParameter(name, f"{raw!r} is not a finite number")
    return value


def get_choice(query: Mapping[str, str], name: str, choices: Sequence[str]) -> str | None:
    """One of ``choices``; None when absent or empty."""
    raw = _one(query, name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise BadParameter(name, f"{raw!r} is not one of {', '.join(choices)}")
    return raw


def get_text(query: Mapping[str, str], name: str, max_len: int = MAX_TEXT) -> str | None:
    """A short text (a name filter, a job id); None when absent or empty."""
    raw = _one(query, name)
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > max_len or any(ord(c) < 32 for c in raw):
        raise BadParameter(name, f"not a name of at most {max_len} printable characters")
    return raw.strip()


def get_job_ids(query: Mapping[str, str], name: str, lo: int, hi: int) -> list[str]:
    """Job ids, comma-separated (``jobs=a,b``) or repeated (``jobs=a&jobs=b``, what a form sends), distinct,
    between ``lo`` and ``hi`` of them."""
    values = query.getlist(name) if hasattr(query, "getlist") else ([query[name]] if name in query else [])
    ids = list(dict.fromkeys(p.strip() for v in values for p in v.split(",") if p.strip()))
    if not lo <= len(ids) <= hi:
        raise BadParameter(name, f"give {lo} to {hi} distinct job ids, comma-separated (got {len(ids)})")
    for job_id in ids:
        if len(job_id) > MAX_TEXT or any(ord(c) < 32 for c in job_id):
            raise BadParameter(name, "a job id of at most 200 printable characters")
    return ids
