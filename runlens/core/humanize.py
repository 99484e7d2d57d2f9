"""Durations, sizes and times as people read them in a terminal, an alert, a table cell or the report.

One home for each format, named for where it is read: ``duration`` (compact, for tables, status lines and
alerts), ``duration_fine`` (the report, from milliseconds to days), ``run_length`` (the terminal summary's
"how long did it run"), ``gb`` (GiB figures), ``size`` (a byte count such as free disk space) and
``local_time``. Memory is held in GiB (2**30 bytes, see ``runlens.core.units``) and labelled GiB wherever a
person reads it: the terminal, the report and the sentences of the analysis document. Each takes None for a reading that is missing and says so with ``missing`` rather than
printing a zero, which would be a claim. Inside a finding's sentence the analyzer uses ``gb_figure`` and
``duration_rough``.
"""

from __future__ import annotations

import math
from datetime import datetime

from runlens.core.units import GIB

MIB = float(1 << 20)


def duration(seconds: float | None, *, missing: str = "-") -> str:
    """``45s``, ``4m05s``, ``2h03m``: compact, for tables, status lines and alerts."""
    if seconds is None:
        return missing
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def duration_fine(seconds: float | None, *, missing: str = "-") -> str:
    """``42 ms``, ``12.3s``, ``4m 12s``, ``2h 03m``, ``3d 02h``: the precision a reader needs at each scale,
    for the report, where a step time of 42 ms and a run of two days sit on the same page."""
    if seconds is None or not math.isfinite(seconds):
        return missing
    f = max(0.0, float(seconds))
    if f == 0:
        return "0s"
    if f < 1:
        ms = f * 1000
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    if f < 60:
        return f"{f:.1f}s"
    total = round(f)
    if total < 3600:
        m, s = divmod(total, 60)
        return f"{m}m {s:02d}s"
    h, rest = divmod(total, 3600)
    if h < 48:
        return f"{h}h {rest // 60:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def run_length(minutes: float | None, *, missing: str = "unknown") -> str:
    """A run's length given in minutes (the summary's ``duration_minutes``): ``45 s``, ``12.5 min``,
    ``2.1 h (125 min)``, for the terminal summary."""
    if minutes is None or not math.isfinite(minutes):
        return missing
    seconds = minutes * 60
    if seconds < 90:
        return f"{seconds:.0f} s"
    if minutes < 90:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h ({minutes:.0f} min)"


def gb(value: float | None, total: float | None = None, *, missing: str = "-") -> str:
    """``119.2 / 120.0 GiB``, ``3.1 GiB``, ``1,234.6 GiB``: a GiB figure labelled as what it is (nvidia-smi's
    "MiB" and top's "GiB" are the same binary units)."""
    if value is None:
        return missing
    if total:
        return f"{value:,.1f} / {total:,.1f} GiB"
    return f"{value:,.1f} GiB"


def size(n_bytes: float) -> str:
    """A byte count such as free space on a mount: ``1.2 GiB`` from a GiB up, ``512 MiB`` below."""
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / MIB:.0f} MiB"


def local_time(t: float | None, *, missing: str = "-") -> str:
    """UNIX seconds as local ``YYYY-MM-DD HH:MM:SS``; ``missing`` for None or a time the OS cannot show."""
    if t is None:
        return missing
    try:
        return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return missing


def gb_figure(value: float | None) -> str:
    """``2.50``, ``12.3``: a GiB figure inside a sentence that names the unit itself (a finding's impact, "Saves
    ~2.50 GiB"), with two decimals below 10 so a small saving does not read as zero; ``?`` when unknown."""
    if value is None or not math.isfinite(value):
        return "?"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def duration_rough(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1.5 h``: a length inside a sentence (a finding's time lost), rounded as people
    say it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
