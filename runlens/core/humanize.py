"""Durations and sizes as people read them in a terminal, an alert or a table cell."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``45s``, ``4m05s``, ``2h03m``: compact, for tables, status lines and alerts; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def gb(value: float | None, total: float | None = None) -> str:
    """``119.2 / 120.0 GB`` (or ``3.1 GB``); ``-`` when unknown. GB here means GiB, as nvidia-smi and top show."""
    if value is None:
        return "-"
    if total:
        return f"{value:.1f} / {total:.1f} GB"
    return f"{value:.1f} GB"
