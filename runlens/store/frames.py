"""A job's rows as pandas frames, fast enough for runs of millions of steps; and the stored analyses.

The analyzer reads whole tables of one job, so the ORM and ``Row`` objects are pure overhead: the query is
compiled once by SQLAlchemy (so it stays dialect-neutral) and run on the raw DBAPI cursor, and each chunk of
tuples goes through ``np.array(chunk, dtype=float64)`` (bounded transient memory). CPU seconds for 1,000,000
step rows x 11 columns from SQLite (bench/results DB, best of two, the shared 2-core dev box): SQLAlchemy rows
into a DataFrame 8.5 s, ``pd.read_sql`` 3.8 s, raw cursor + ``DataFrame.from_records`` 3.2 s, this module 2.6 s.
Nearly all of what is left is sqlite3 making Python floats. (Scanning the job's rowid range instead of the
(job_id, timestamp) index was tried and measured no faster.)

All tables are read inside one read transaction, so a job that is still being written (WAL, a concurrent
writer) is seen as one consistent snapshot: no step whose events are missing, no sample newer than the steps.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Boolean, Float, Integer, Table, bindparam, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from runlens._version import __version__
from runlens.store.store import TABLES, Store, driver_errors

__all__ = ["JobFrames", "latest_analysis", "load_frames", "save_analysis"]

_CHUNK = 200_000  # rows per fetchmany: ~60 MB of tuples at most for the widest table

# Columns per table in the frames (job_id is dropped: every row has the same one).
STEP_COLUMNS = ("id", "step", "timestamp", "loss", "batch_size", "gradient_norm", "learning_rate",
                "step_time_seconds", "data_time_seconds", "rank", "tokens", "thread_cpu_seconds", "source")
EVENT_COLUMNS = ("id", "timestamp", "event_type", "details", "memory_snapshot_id", "host", "rank", "step")
COST_COLUMNS = ("id", "timestamp", "operation", "calls", "total_seconds", "on_training_thread", "host", "rank")


def _columns(table: str) -> tuple[str, ...]:
    return tuple(c.name for c in TABLES[table].columns if c.name != "job_id")


SAMPLE_COLUMNS = _columns("metrics_samples")
GPU_COLUMNS = _columns("gpu_samples")


@dataclass
class JobFrames:
    """One consistent read of a job: the job row and its tables as frames (empty frames keep their columns)."""

    job: dict[str, Any]
    steps: pd.DataFrame
    samples: pd.DataFrame
    events: pd.DataFrame
    gpus: pd.DataFrame
    costs: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)   # seconds per table, for the bench


def load_frames(store: Store, job_id: str) -> JobFrames:
    """Read everything recorded about ``job_id`` into frames, in one read transaction.

    ``steps`` gets one ``x_<name>`` column per key found in its ``extras`` JSON (only when some row has extras);
    ``events.details`` holds dicts (``{}`` when empty); ``costs`` keeps the latest cumulative row per
    (operation, host, rank), since the collector appends running totals.

    Raises:
        JobNotFound: no such job.
        StoreUnavailable: the database cannot be read.
    """
    job = store.get_job(job_id)
    timings: dict[str, float] = {}
    with driver_errors(store), _read_snapshot(store.engine) as cur:
        def timed(name: str, fn: Any) -> pd.DataFrame:
            t0 = time.perf_counter()
            frame = fn()
            timings[name] = time.perf_counter() - t0
            return frame

        samples = timed("samples", lambda: _frame(cur, store.engine, "metrics_samples", SAMPLE_COLUMNS, job_id,
                                                  order=("timestamp", "id")))
        steps = timed("steps", lambda: _steps(cur, store.engine, job_id))
        events = timed("events", lambda: _events(cur, store.engine, job_id))
        gpus = timed("gpus", lambda: _frame(cur, store.engine, "gpu_samples", GPU_COLUMNS, job_id,
                                            order=("timestamp", "device_index")))
        costs = timed("costs", lambda: _costs(cur, store.engine, job_id))
    return JobFrames(job=job, steps=steps, samples=samples, events=events, gpus=gpus, costs=costs, timings=timings)


class _read_snapshot:
    """A raw DBAPI cursor inside one read transaction (SQLite: BEGIN; PostgreSQL: REPEATABLE READ)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.raw: Any = None

    def __enter__(self) -> Any:
        self.raw = self.engine.raw_connection()
        cur = self.raw.cursor()
        name = self.engine.dialect.name
        if name == "sqlite":
            # pysqlite starts no transaction for a SELECT; without one, each query would see a different
            # state of a job that is still being written.
            if not getattr(self.raw.driver_connection, "in_transaction", False):
                cur.execute("BEGIN")
        elif name == "postgresql":
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        self.cur = cur
        return cur

    def __exit__(self, *exc: object) -> None:
        try:
            self.cur.close()
            self.raw.rollback()  # read-only: nothing to keep
        finally:
            self.raw.close()


def _compile(engine: Engine, stmt: Select[Any], job_id: str) -> tuple[str, Any]:
    compiled = stmt.compile(dialect=engine.dialect)
    params = compiled.construct_params({"job_id": job_id})
    if compiled.positional:
        return str(compiled), tuple(params[k] for k in (compiled.positiontup or []))
    return str(compiled), params


def _kind(table: str, column: str) -> str:
    """How a column is gathered: "int", "float", "bool" through numpy; "object" for text and JSON."""
    ctype = TABLES[table].c[column].type
    if isinstance(ctype, Boolean):
        return "bool"
    if isinstance(ctype, Integer):
        return "int"
    if isinstance(ctype, Float):
        return "float"
    return "object"


def _fetch(cur: Any, sql: str, params: Any, table: str, columns: Sequence[str]) -> pd.DataFrame:
    """Run ``sql`` and build a frame; numeric columns go through numpy directly (None becomes NaN).

    ``np.array(rows, dtype=float64)`` converts a chunk of tuples in C, about twice as fast as
    ``DataFrame.from_records``; text and JSON columns are gathered as Python objects. Integer columns without
    gaps become int64 (ids, steps), booleans without gaps bool; with gaps both stay float with NaN.
    """
    kinds = [_kind(table, c) for c in columns]
    numeric = [i for i, k in enumerate(kinds) if k != "object"]
    objects = [i for i, k in enumerate(kinds) if k == "object"]
    num_parts: list[np.ndarray[Any, Any]] = []
    obj_parts: list[list[tuple[Any, ...]]] = []
    with _gc_paused():
        cur.execute(sql, params)
        while True:
            chunk = cur.fetchmany(_CHUNK)
            if not chunk:
                break
            if objects:
                cols = list(zip(*chunk))
                obj_parts.append([cols[i] for i in objects])
                if numeric:
                    num_parts.append(np.array([cols[i] for i in numeric], dtype=np.float64).T)
            else:
                num_parts.append(np.array(chunk, dtype=np.float64))
    data: dict[str, Any] = {}
    if numeric:
        block = np.concatenate(num_parts) if num_parts else np.empty((0, len(numeric)))
        for j, i in enumerate(numeric):
            data[columns[i]] = _typed(np.ascontiguousarray(block[:, j]), kinds[i])
    for j, i in enumerate(objects):
        values: list[Any] = []
        for part in obj_parts:
            values.extend(part[j])
        data[columns[i]] = pd.Series(values, dtype=object)
    return pd.DataFrame(data, columns=list(columns))


def _typed(col: np.ndarray[Any, Any], kind: str) -> np.ndarray[Any, Any]:
    if kind == "float" or not col.size or np.isnan(col).any():
        return col
    return col.astype(bool) if kind == "bool" else col.astype(np.int64)


class _gc_paused:
    """Pause the cyclic GC while millions of tuples are made: they hold no cycles, and every generation-0
    collection would walk the survivors again."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was:
            gc.enable()


def _select(table: str, columns: Sequence[str], order: Sequence[str]) -> Select[Any]:
    t: Table = TABLES[table]
    return (select(*(t.c[c] for c in columns)).where(t.c.job_id == bindparam("job_id"))
            .order_by(*(t.c[c] for c in order)))


def _frame(cur: Any, engine: Engine, table: str, columns: Sequence[str], job_id: str,
           order: Sequence[str]) -> pd.DataFrame:
    sql, params = _compile(engine, _select(table, columns, order), job_id)
    return _fetch(cur, sql, params, table, columns)


def _steps(cur: Any, engine: Engine, job_id: str) -> pd.DataFrame:
    """Steps in time order; the extras JSON is read by a second query over only the rows that have it."""
    frame = _frame(cur, engine, "step_metrics", STEP_COLUMNS, job_id, order=("timestamp", "id"))
    t = TABLES["step_metrics"]
    stmt = (select(t.c.id, t.c.extras).where(t.c.job_id == bindparam("job_id"))
            .where(t.c.extras.is_not(None)).order_by(t.c.id))
    sql, params = _compile(engine, stmt, job_id)
    extras = _fetch(cur, sql, params, "step_metrics", ("id", "extras"))
    if extras.empty:
        return frame
    positions = pd.Index(frame["id"]).get_indexer(extras["id"])
    keep = positions >= 0
    return _expand_extras(frame, positions[keep], extras["extras"][keep].tolist())


def _expand_extras(frame: pd.DataFrame, positions: np.ndarray[Any, Any], texts: list[Any]) -> pd.DataFrame:
    """Add ``x_<name>`` columns for the user's extra scalars at the rows (``positions``) that have any.

    The strings are joined into one JSON array and parsed in one call: one ``json.loads`` per row costs
    about three times more on a million rows.
    """
    if not texts:
        return frame
    if all(isinstance(v, str) for v in texts):
        try:
            parsed: list[Any] = json.loads("[" + ",".join(texts) + "]")
        except ValueError:  # one malformed row must not lose the others
            parsed = [_loads(v) for v in texts]
    else:  # drivers with native JSON (psycopg) already return dicts
        parsed = [_loads(v) for v in texts]
    dicts = [p if isinstance(p, dict) else {} for p in parsed]
    keys: dict[str, None] = {}
    for d in dicts[:1000]:   # the keys of the first rows give the column order
        keys.update(dict.fromkeys(d))
    keys.update(dict.fromkeys(set().union(*dicts)))
    n = len(frame)
    columns: dict[str, Any] = {}
    for key in keys:
        name = f"x_{key}"
        if name in frame.columns:
            continue
        values = [d.get(key) for d in dicts]
        try:
            dense = np.full(n, np.nan)
            dense[positions] = np.array(values, dtype=np.float64)
            columns[name] = dense
        except (TypeError, ValueError):
            # Not all numbers (a string the user logged, a list): keep the values as they are.
            col = np.full(n, None, dtype=object)
            col[positions] = _object_array(values)
            columns[name] = col
    if not columns:
        return frame
    return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)


def _object_array(values: list[Any]) -> np.ndarray[Any, Any]:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):   # item by item: numpy would try to broadcast nested lists
        out[i] = v
    return out


def _loads(text: Any) -> Any:
    if not isinstance(text, (str, bytes)):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def _events(cur: Any, engine: Engine, job_id: str) -> pd.DataFrame:
    frame = _frame(cur, engine, "training_events", EVENT_COLUMNS, job_id, order=("timestamp", "id"))
    details = [d if isinstance(d, dict) else {} for d in map(_loads, frame["details"].tolist())]
    frame["details"] = pd.Series(details, index=frame.index, dtype=object)
    return frame


def _costs(cur: Any, engine: Engine, job_id: str) -> pd.DataFrame:
    """The latest row per (operation, host, rank): the collector appends running totals, not increments."""
    t = TABLES["monitoring_costs"]
    latest = (select(func.max(t.c.id)).where(t.c.job_id == bindparam("job_id"))
              .group_by(t.c.operation, t.c.host, t.c.rank))
    stmt = (select(*(t.c[c] for c in COST_COLUMNS)).where(t.c.id.in_(latest.scalar_subquery()))
            .order_by(t.c.operation, t.c.id))
    sql, params = _compile(engine, stmt, job_id)
    frame = _fetch(cur, sql, params, "monitoring_costs", COST_COLUMNS)
    if len(frame) and frame["on_training_thread"].dtype != bool:
        frame["on_training_thread"] = frame["on_training_thread"].fillna(1.0).astype(bool)
    return frame


# -- stored analyses -----------------------------------------------------------------------------------------


def save_analysis(store: Store, job_id: str, analysis: dict[str, Any]) -> int:
    """Store one analysis as an AnalysisReport row; returns its id.

    The document is split into the columns DESIGN.md lists (summary, recommendations, log_errors, peak memory,
    health) for SQL readers, and kept whole in ``analysis`` so ``runlens report`` re-renders without
    re-analysing.
    """
    summary = analysis.get("summary") or {}
    row = {
        "job_id": job_id,
        "created_at": float(analysis.get("generated_at") or time.time()),
        "summary": summary,
        "recommendations": analysis.get("recommendations") or [],
        "log_errors": analysis.get("log_errors") or [],
        "peak_memory_gb": summary.get("peak_memory_gb"),
        "health_score": summary.get("health_score"),
        "analysis": analysis,
        "runlens_version": str(analysis.get("runlens_version") or __version__),
    }
    with store.begin() as conn:
        return store.insert_returning_ids(conn, "analysis_reports", [row])[0]


def latest_analysis(store: Store, job_id: str) -> dict[str, Any] | None:
    """The newest stored analysis document of ``job_id``, or None when it was never analysed."""
    rows = store.rows("analysis_reports", job_id, order_by="id", columns=("id", "analysis"), limit=1,
                      descending=True)
    if not rows or not rows[0]["analysis"]:
        return None
    return dict(rows[0]["analysis"])

