"""When things happened in a loaded job: the run's time bounds, the main rank's steps, the step at a moment, the
sample nearest a moment, and the data-wait share of the training window.

Multi-rank jobs write each step once per rank; every figure here reads one rank (the lowest), so curves and
sums do not count the same step N times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, finite, is_nan, memo


def time_bounds(data: JobData) -> tuple[float | None, float | None]:
    """(start, end) of the run: the job row's times, else the first/last thing recorded."""
    return memo(data, "time_bounds", lambda: _time_bounds(data))


def _time_bounds(data: JobData) -> tuple[float | None, float | None]:
    job = data.job
    stamps: list[float] = []
    for frame in (data.steps, data.samples, data.events):
        ts = finite(col(frame, "timestamp"))
        if ts.size:
            stamps += [float(ts.min()), float(ts.max())]
    start = job.get("started_at") or job.get("created_at") or (min(stamps) if stamps else None)
    end = job.get("ended_at") or (max(stamps) if stamps else None)
    if job.get("ended_at") is None and data.now is not None and job.get("status") == "running":
        end = max(end or 0.0, data.now)
    return (float(start) if start is not None else None, float(end) if end is not None else None)


def wall_seconds(data: JobData) -> float | None:
    start, end = time_bounds(data)
    if start is None or end is None or end <= start:
        return None
    return end - start


def main_rank_steps(data: JobData) -> pd.DataFrame:
    """Steps of one rank (the lowest, or the rows without one), ordered by step: multi-rank jobs write each
    step once per rank, and curves must not interleave them."""
    return memo(data, "main_rank_steps", lambda: _main_rank_steps(data))


def _main_rank_steps(data: JobData) -> pd.DataFrame:
    steps = data.steps
    if steps is None or steps.empty:
        return pd.DataFrame(columns=["step", "timestamp"])
    if "rank" in steps.columns and steps["rank"].notna().any():
        ranks = pd.to_numeric(steps["rank"], errors="coerce")
        lowest = ranks.min()
        steps = steps[(ranks == lowest) | ranks.isna()]
    if "step" in steps.columns and not steps["step"].is_monotonic_increasing:
        steps = steps.sort_values(["step", "timestamp"], kind="stable")
    return steps


def _step_clock(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, steps) of the main rank, sorted by timestamp, for lookups by time."""
    def build() -> tuple[np.ndarray, np.ndarray]:
        steps = main_rank_steps(data)
        ts, sn = col(steps, "timestamp"), col(steps, "step")
        ok = np.isfinite(ts) & np.isfinite(sn)
        ts, sn = ts[ok], sn[ok]
        order = np.argsort(ts, kind="stable")
        return ts[order], sn[order]
    return memo(data, "step_clock", build)


def steps_at(data: JobData, times: np.ndarray) -> np.ndarray:
    """For each time, the last step recorded at or before it (NaN before the first step)."""
    ts, sn = _step_clock(data)
    times = np.asarray(times, dtype=float)
    if ts.size == 0:
        return np.full(times.shape, np.nan)
    idx = np.searchsorted(ts, times + 1e-6, side="right") - 1
    out = np.where(idx >= 0, sn[np.clip(idx, 0, None)], np.nan)
    return out


def step_at(data: JobData, t: float | None) -> int | None:
    """The last step recorded at or before ``t``."""
    if t is None or is_nan(t):
        return None
    v = steps_at(data, np.array([t]))[0]
    return None if np.isnan(v) else int(v)


def sample_at(data: JobData, t: float | None, snapshot_id: Any = None) -> dict[str, Any] | None:
    """The sample with ``snapshot_id`` (an event's memory snapshot), else the nearest one at or before ``t``."""
    samples = data.samples
    if samples is None or samples.empty:
        return None
    if snapshot_id is not None and "id" in samples.columns and not is_nan(snapshot_id):
        hit = samples[samples["id"] == snapshot_id]
        if not hit.empty:
            return dict(hit.iloc[0])
    if t is None:
        return None
    ts = col(samples, "timestamp")
    before = np.nonzero(ts <= t + 1e-6)[0]
    i = int(before[-1]) if before.size else int(np.nanargmin(np.abs(ts - t)))
    return dict(samples.iloc[i])


def training_window(data: JobData, skip_first: int = 5) -> pd.DataFrame:
    """Steps after warm-up: the first steps include worker start-up and compilation, which are not the pace."""
    steps = main_rank_steps(data)
    if len(steps) <= skip_first * 2:
        return steps.iloc[1:] if len(steps) > 2 else steps
    return steps.iloc[skip_first:]


@dataclass(frozen=True)
class DataWait:
    """Data wait over the training window (warm-up steps excluded: they wait for workers to start)."""

    share: float
    data_seconds: float
    step_seconds: float
    steps: int
    first_step: int | None = None
    warmup_steps_excluded: int = 0


def data_wait(data: JobData) -> DataWait | None:
    """Share of step time spent waiting for the next batch: the sum of ``data_time_seconds`` over the sum of
    ``step_time_seconds`` across the training window."""
    steps = training_window(data)
    dt, st = col(steps, "data_time_seconds"), col(steps, "step_time_seconds")
    ok = np.isfinite(dt) & np.isfinite(st) & (st > 0)
    if ok.sum() < 3:
        return None
    d, s = float(dt[ok].sum()), float(st[ok].sum())
    sn = col(steps, "step")
    first = int(sn[ok][0]) if np.isfinite(sn[ok][0]) else None
    return DataWait(min(1.0, d / s), d, s, int(ok.sum()), first, len(main_rank_steps(data)) - len(steps))
