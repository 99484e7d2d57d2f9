"""A job's steps and samples for the API: whole, or since a poll, cut to ``max_points`` rows that keep every
column's peaks.

Rows are picked, not averaged: for each drawn column the MinMax downsampler (runlens.analyze.downsample) keeps
each bucket's lowest and highest row, and the rows kept are the union over the columns, so the loss spike, the
slowest step and the memory peak all survive with the rest of their row (its step, its time). Whole series of a
job that is no longer written are kept between requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runlens.analyze.downsample import MIN_POINTS, minmax_downsample
from runlens.store.series import read_series
from runlens.store.store import Store
from runlens.ui.cache import Memo

__all__ = ["DEFAULT_POINTS", "MAX_POINTS", "MIN_REQUEST_POINTS", "SeriesReader", "peak_rows"]

DEFAULT_POINTS = 2000
MAX_POINTS = 20_000
MIN_REQUEST_POINTS = 64
_POSITION_COLUMNS = ("timestamp", "step", "rank")   # where a row is, not what it measured


def peak_rows(columns: Mapping[str, np.ndarray[Any, Any]], max_points: int) -> np.ndarray[Any, Any]:
    """Indices (sorted) of at most ``max_points`` rows that keep each measured column's minima and maxima."""
    n = len(next(iter(columns.values()))) if columns else 0
    if n <= max_points:
        return np.arange(n)
    # A column that never changes (a fixed learning rate) is kept by any row: it takes no share of the budget.
    measured = [c for name, c in columns.items()
                if name not in _POSITION_COLUMNS and np.isfinite(c).any() and np.nanmin(c) != np.nanmax(c)]
    if not measured:
        return np.unique(np.linspace(0, n - 1, max_points).astype(np.int64))
    budget = max(MIN_POINTS, max_points // len(measured))
    position = np.arange(n, dtype=np.float64)
    picked = [np.asarray(minmax_downsample(position, c, budget)[0], dtype=np.int64) for c in measured]
    rows = np.unique(np.concatenate([*picked, np.array([0, n - 1])]))
    if rows.size > max_points:   # more columns than the budget allows for: an even cut of the union
        rows = rows[np.unique(np.linspace(0, rows.size - 1, max_points).astype(np.int64))]
    return rows


def to_json_columns(columns: Mapping[str, np.ndarray[Any, Any]], rows: np.ndarray[Any, Any]) -> dict[str, list[Any]]:
    """Columns as JSON lists at ``rows``: NaN as null, whole-number columns (step, rank) as integers."""
    out: dict[str, list[Any]] = {}
    for name, values in columns.items():
        picked = values[rows]
        finite = np.isfinite(picked)
        if not finite.any():
            continue   # never recorded for this job: left out rather than a column of nulls
        if name in ("step", "rank", "batch_size", "worker_count") and np.all(picked[finite] == np.round(picked[finite])):
            out[name] = [int(v) if f else None for v, f in zip(picked.tolist(), finite.tolist())]
        else:
            out[name] = [v if f else None for v, f in zip(picked.tolist(), finite.tolist())]
    return out


class SeriesReader:
    """``/api/jobs/<id>/steps`` and ``/samples``: read, cut, and keep whole series of unchanged jobs."""

    def __init__(self, store: Store, size: int = 16) -> None:
        self.store = store
        self._whole = Memo(size)

    def read(self, kind: str, job_id: str, *, since: float | None = None,
             max_points: int = DEFAULT_POINTS) -> dict[str, Any]:
        """The response body: ``columns`` (lists, one per recorded column), ``count`` (rows after ``since``),
        ``returned``, ``downsampled``, and ``last_timestamp`` (the ``since`` of the next poll).

        Raises:
            JobNotFound, StoreUnavailable.
        """
        self.store.get_job(job_id)   # a 404 for an unknown job, not an empty series
        if since is None:
            key = (kind, job_id, max_points, self.store.data_marker(job_id))
            return self._whole.get(key, lambda: self._read(kind, job_id, None, max_points))
        return self._read(kind, job_id, since, max_points)

    def _read(self, kind: str, job_id: str, since: float | None, max_points: int) -> dict[str, Any]:
        columns = read_series(self.store, kind, job_id, since=since)
        n = len(columns["timestamp"])
        rows = peak_rows(columns, max_points)
        last = float(columns["timestamp"][-1]) if n else since
        return {"job_id": job_id, "kind": kind, "since": since, "count": n, "returned": int(rows.size),
                "downsampled": bool(rows.size < n), "last_timestamp": last,
                "columns": to_json_columns(columns, rows)}
