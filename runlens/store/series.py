"""A job's steps or samples as numeric columns, whole or since a time: what a live chart polls for.

The web UI asks for a job's series on every page and every poll, so this reads only the numeric columns it
draws, straight from the DBAPI cursor into numpy (as ``runlens.store.frames`` does for the analyzer): one
query, no ORM rows, None as NaN. ``since`` uses the ``(job_id, timestamp)`` index, so a poll of a
million-step run reads only the rows that are new.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sqlalchemy import bindparam, select

from runlens.store.store import TABLES, Store, driver_errors

__all__ = ["SAMPLE_SERIES", "STEP_SERIES", "read_series"]

STEP_SERIES = ("timestamp", "step", "rank", "loss", "step_time_seconds", "data_time_seconds", "learning_rate",
               "gradient_norm", "batch_size", "tokens")
SAMPLE_SERIES = ("timestamp", "rank", "used_memory_gb", "total_memory_gb", "available_memory_gb", "swap_used_gb",
                 "main_process_memory_gb", "worker_memory_gb", "worker_count", "gpu_memory_used_gb",
                 "gpu_memory_total_gb", "job_gpu_memory_gb", "gpu_utilization_percent", "cpu_utilization_percent",
                 "container_memory_working_set_gb", "container_memory_limit_gb")
_TABLES = {"steps": ("step_metrics", STEP_SERIES), "samples": ("metrics_samples", SAMPLE_SERIES)}


def read_series(store: Store, kind: str, job_id: str, *, since: float | None = None,
                limit: int | None = None, columns: Sequence[str] | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """``kind`` ("steps" or "samples") of ``job_id`` as float64 columns in time order (NaN where not recorded).

    Args:
        since: only rows with a timestamp after this (UNIX seconds).
        limit: at most this many rows, the oldest first after ``since``.
        columns: a subset of ``STEP_SERIES`` / ``SAMPLE_SERIES`` (default: all of them).

    Raises:
        StoreUnavailable: the database cannot be read.
    """
    table_name, known = _TABLES[kind]
    names = tuple(columns) if columns is not None else known
    unknown = set(names) - set(known)
    if unknown:
        raise ValueError(f"not a {kind} column: {sorted(unknown)}")
    t = TABLES[table_name]
    q = select(*(t.c[c] for c in names)).where(t.c.job_id == bindparam("job_id"))
    params: dict[str, Any] = {"job_id": job_id}
    if since is not None:
        q = q.where(t.c.timestamp > bindparam("since"))
        params["since"] = float(since)
    q = q.order_by(t.c.timestamp, t.c.id)
    if limit is not None:
        q = q.limit(int(limit))
    compiled = q.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": False})
    values = compiled.construct_params(params)
    args: Any = tuple(values[k] for k in (compiled.positiontup or [])) if compiled.positional else values
    raw = store.engine.raw_connection()
    try:
        with driver_errors(store):
            cur = raw.cursor()
            cur.execute(str(compiled), args)
            rows = cur.fetchall()
            cur.close()
    finally:
        raw.rollback()
        raw.close()
    block = np.array(rows, dtype=np.float64) if rows else np.empty((0, len(names)))
    return {name: np.ascontiguousarray(block[:, i]) for i, name in enumerate(names)}
