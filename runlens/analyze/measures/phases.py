"""Phase intervals from ``phase_start``/``phase_end`` events, and which phase was open at a moment.

The phase names themselves (what counts as evaluation, checkpointing, start-up) are the shared vocabulary in
``runlens.core.phases``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, details_of, finite, memo
from runlens.analyze.measures.timing import main_rank_steps, time_bounds
from runlens.core.phases import OVERHEAD_PHASES


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def phase_name(details: Mapping[str, Any]) -> str:
    return str(details.get("phase") or details.get("name") or "phase").lower()


def phases(data: JobData) -> list[Phase]:
    """Phase intervals from phase_start/phase_end events (a phase still open at the end runs to the run's end)."""
    return memo(data, "phases", lambda: _phases(data))


def merged_intervals(intervals: Iterable[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals as sorted, disjoint (starts, ends)."""
    starts: list[float] = []
    ends: list[float] = []
    for a, b in sorted(intervals):
        if starts and a <= ends[-1]:
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    return np.array(starts, dtype=float), np.array(ends, dtype=float)


def overhead_intervals(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """Merged eval/sampling/save phase intervals."""
    return memo(data, "overhead_intervals",
                lambda: merged_intervals((p.start, p.end) for p in phases(data) if p.name in OVERHEAD_PHASES))


def overlaps(a: np.ndarray, b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each [a, b], whether it overlaps one of the sorted disjoint intervals (starts, ends)."""
    if starts.size == 0:
        return np.zeros(np.shape(a), dtype=bool)
    idx = np.searchsorted(starts, b, side="right") - 1
    return (idx >= 0) & (ends[np.clip(idx, 0, None)] >= a)


def _phases(data: JobData) -> list[Phase]:
    ev = data.events_of("phase_start", "phase_end")
    if ev is None or ev.empty:
        return []
    open_: dict[str, list[float]] = {}
    out: list[Phase] = []
    for row in ev.to_dict("records"):
        d = details_of(row)
        name, t = phase_name(d), float(row["timestamp"])
        if row["event_type"] == "phase_start":
            open_.setdefault(name, []).append(t)
        else:
            starts = open_.get(name)
            duration = d.get("duration") if d.get("duration") is not None else d.get("duration_seconds")
            if starts:
                start = starts.pop()
            elif isinstance(duration, (int, float)):
                start = t - float(duration)
            else:
                continue
            out.append(Phase(name, start, t))
    _, end = time_bounds(data)
    for name, starts in open_.items():
        for s in starts:
            out.append(Phase(name, s, max(s, end or s)))
    return sorted(out, key=lambda p: p.start)


def phase_at(data: JobData, t: float | None) -> str:
    """The innermost phase open at ``t``; "train" once steps were recorded, "startup" before the first step."""
    if t is not None:
        inside = [p for p in phases(data) if p.start - 1e-6 <= t <= p.end + 1e-6]
        if inside:
            return max(inside, key=lambda p: p.start).name
    first = finite(col(main_rank_steps(data), "timestamp"))
    if t is not None and first.size and t >= first.min() - 1e-6:
        return "train"
    return "startup"
