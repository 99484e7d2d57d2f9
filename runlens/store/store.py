"""The Store: the one object the rest of runlens talks to for reading and writing a runlens database.

It takes and returns plain data (dicts, lists, DataFrames), so nothing outside ``runlens/store`` imports
SQLAlchemy. Database errors become ``StoreUnavailable`` with the reason, never a driver traceback.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator, Mapping, Sequence

from sqlalchemy import Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError, SQLAlchemyError

from runlens._version import __version__
from runlens.core.errors import JobNotFound, StoreUnavailable
from runlens.core.redact import redact, redact_job_fields, redact_url
from runlens.core.settings import resolve_db_url
from runlens.store import models
from runlens.store.bulk import StepColumns, StepInserter
from runlens.store.engine import create_store_engine
from runlens.store.migrate import ensure_schema, verify_schema

TABLES: dict[str, Table] = {
    "jobs": models.Job.__table__,  # type: ignore[dict-item]
    "metrics_samples": models.MetricsSample.__table__,  # type: ignore[dict-item]
    "gpu_samples": models.GpuSample.__table__,  # type: ignore[dict-item]
    "training_events": models.TrainingEvent.__table__,  # type: ignore[dict-item]
    "step_metrics": models.StepMetric.__table__,  # type: ignore[dict-item]
    "monitoring_costs": models.MonitoringCost.__table__,  # type: ignore[dict-item]
    "analysis_reports": models.AnalysisReport.__table__,  # type: ignore[dict-item]
}

JOB_STATUSES = ("running", "succeeded", "failed", "timed_out", "never_started")


def new_job_id(name: str, now: float | None = None) -> str:
    """A readable, unique id: name + local timestamp + 6 random hex digits (``lora-run-20261122-110642-3fa9c1``)."""
    stamp = datetime.fromtimestamp(now or time.time()).strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")[:80] or "run"
    return f"{slug}-{stamp}-{secrets.token_hex(3)}"


class Store:
    """A migrated runlens database reached through ``url`` (any SQLAlchemy URL)."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._steps = StepInserter(TABLES["step_metrics"])

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction; database errors surface as StoreUnavailable."""
        try:
            with self.open_connection() as conn, conn.begin():
                yield conn
        except (OperationalError, DatabaseError) as exc:
            raise StoreUnavailable(self.shown_url, error_reason(exc)) from exc

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        try:
            with self.open_connection() as conn:
                yield conn
        except (OperationalError, DatabaseError) as exc:
            raise StoreUnavailable(self.shown_url, error_reason(exc)) from exc

    def open_connection(self) -> Connection:
        """A new connection, past SQLite's one racy moment.

        When the last connection to a WAL database closes it checkpoints and deletes the ``-wal`` and ``-shm``
        files; a connection whose first read meets that moment can get ``SQLITE_PROTOCOL`` ("locking
        protocol"), which SQLite documents as transient (https://www.sqlite.org/rescode.html#protocol). Seen
        under load when a reader opened the store just as ``runlens collect`` closed it. The first read is
        made here and retried; once this connection is open, no other close is the last one.
        """
        if self.engine.dialect.name != "sqlite":
            return self.engine.connect()
        for attempt in range(5):
            conn = self.engine.connect()
            try:
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
                conn.rollback()   # end the probe's implicit transaction: the caller starts its own
                return conn
            except OperationalError as exc:
                conn.close()
                if "locking protocol" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    def held_connection(self) -> "HeldConnection":
        """One connection for a writer thread to keep across its transactions (see ``HeldConnection``)."""
        return HeldConnection(self)

    # -- writing -------------------------------------------------------------------------------------

    def insert_many(self, conn: Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany of ``rows`` into ``table`` on an open transaction (rows may differ in their keys).

        Event details are redacted here (``_redacted_events``), the one place every event passes on its way in.
        """
        if rows:
            conn.execute(insert(TABLES[table]), _uniform_rows(TABLES[table], _redacted_events(table, rows)))

    def insert_steps(self, conn: Connection, job_id: str,
                     rows: StepColumns | Sequence[Mapping[str, Any]]) -> None:
        """The hot write path: step rows (dicts, or the batch writer's columns) as multi-row ``INSERT ... VALUES``
        statements straight to the driver (``runlens.store.bulk`` says why not ``executemany``).

        Steps are nearly all of a run's rows; skipping SQLAlchemy's per-row parameter processing keeps the
        Python work per row small (bench/bench_collect.py, bench/bench_tightloop.py). Values are bound as
        before: NaN becomes NULL in SQLite, +-inf is stored.
        """
        self._steps.insert(conn, job_id, rows if isinstance(rows, StepColumns) else StepColumns.from_rows(rows))

    def insert_returning_ids(self, conn: Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert ``rows`` and return their ids in order (for samples that events and GPU rows point to)."""
        if not rows:
            return []
        t = TABLES[table]
        result = conn.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True),
                              _uniform_rows(t, _redacted_events(table, rows)))
        return [int(r[0]) for r in result]

    def create_job(self, *, name: str, job_id: str | None = None, **fields: Any) -> str:
        now = time.time()
        job_id = job_id or new_job_id(name, now)
        row = {
            "job_id": job_id, "name": name, "status": "running", "created_at": now,
            "host": socket.gethostname(), "pid": os.getpid(), "runlens_version": __version__,
        }
        row.update(redact_job_fields(fields))   # argv, config, environment: secrets never reach the database
        with self.begin() as conn:
            conn.execute(insert(TABLES["jobs"]), [row])
        return job_id

    def update_job(self, job_id: str, conn: Connection | None = None, **fields: Any) -> None:
        stmt = update(TABLES["jobs"]).where(TABLES["jobs"].c.job_id == job_id).values(**redact_job_fields(fields))
        if conn is not None:
            conn.execute(stmt)
            return
        with self.begin() as c:
            c.execute(stmt)

    # -- reading -------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> dict[str, Any]:
        jobs = TABLES["jobs"]
        with self.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return dict(row)

    def check_writable(self) -> None:
        """Write a job row inside a transaction that is then rolled back: proves the store takes writes (a
        read-only file, a read-only replica, a full disk) without leaving anything behind.

        Raises:
            SQLAlchemyError (or the driver's error): the write failed.
        """

        class _Rollback(Exception):
            pass

        try:
            with self.begin() as conn:
                conn.execute(TABLES["jobs"].insert(), [{"job_id": "runlens-write-probe", "name": "runlens-probe",
                                                        "status": "never_started", "created_at": time.time()}])
                raise _Rollback
        except _Rollback:
            return

    def job_exists(self, job_id: str) -> bool:
        jobs = TABLES["jobs"]
        with self.connect() as conn:
            return conn.execute(select(jobs.c.job_id).where(jobs.c.job_id == job_id)).first() is not None

    def list_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent jobs, newest first, with their steps and peak memory, in one statement.

        ``steps`` is per rank (the most any rank recorded) and ``ranks`` how many ranks recorded steps (1 for a
        job without ranks): a job of N ranks writes each step N times. Only the listed jobs' rows are grouped,
        so the answer stays fast however many jobs and steps the store holds.
        """
        jobs, steps, samples = TABLES["jobs"], TABLES["step_metrics"], TABLES["metrics_samples"]
        page = select(jobs.c.job_id).order_by(jobs.c.created_at.desc()).limit(limit).scalar_subquery()
        per_rank = (select(steps.c.job_id, func.count().label("n"), func.max(steps.c.step).label("max_step"))
                    .where(steps.c.job_id.in_(page)).group_by(steps.c.job_id, steps.c.rank).subquery())
        step_q = (select(per_rank.c.job_id, func.max(per_rank.c.n).label("steps"),
                         func.count().label("ranks"), func.max(per_rank.c.max_step).label("max_step"))
                  .group_by(per_rank.c.job_id).subquery())
        peak_q = (select(samples.c.job_id, func.max(samples.c.used_memory_gb).label("peak_memory_gb"),
                         func.max(samples.c.total_memory_gb).label("total_memory_gb"),
                         func.max(samples.c.gpu_memory_used_gb).label("peak_gpu_memory_gb"),
                         func.max(samples.c.timestamp).label("last_sample_at"))
                  .where(samples.c.job_id.in_(page)).group_by(samples.c.job_id).subquery())
        q = (select(jobs, step_q.c.steps, step_q.c.ranks, step_q.c.max_step, peak_q.c.peak_memory_gb,
                    peak_q.c.total_memory_gb, peak_q.c.peak_gpu_memory_gb, peak_q.c.last_sample_at)
             .select_from(jobs.outerjoin(step_q, step_q.c.job_id == jobs.c.job_id)
                          .outerjoin(peak_q, peak_q.c.job_id == jobs.c.job_id))
             .order_by(jobs.c.created_at.desc()).limit(limit))
        with self.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def rows(self, table: str, job_id: str, order_by: str = "id", columns: Sequence[str] | None = None,
             where: Mapping[str, Any] | None = None, limit: int | None = None,
             descending: bool = False) -> list[dict[str, Any]]:
        """Rows of one job from ``table`` as dicts, for tests and debugging; runlens's own code uses the named
        queries above, and analysis uses frames."""
        t = TABLES[table]
        cols = [t.c[c] for c in columns] if columns else [t]
        q = select(*cols).where(t.c.job_id == job_id)
        for k, v in (where or {}).items():
            q = q.where(t.c[k] == v)
        order = t.c[order_by].desc() if descending else t.c[order_by]
        q = q.order_by(order)
        if limit is not None:
            q = q.limit(limit)
        with self.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # -- the few reads the watchers need (status, watch, the hang guard): named, so no caller knows tables --

    def recent_events(self, job_id: str, limit: int = 50, event_type: str | None = None,
                      with_details: bool = True) -> list[dict[str, Any]]:
        """The job's newest events first (``id``, ``timestamp``, ``event_type`` and ``details``), optionally of
        one type."""
        t = TABLES["training_events"]
        cols = [t.c.id, t.c.timestamp, t.c.event_type] + ([t.c.details] if with_details else [])
        q = select(*cols).where(t.c.job_id == job_id)
        if event_type is not None:
            q = q.where(t.c.event_type == event_type)
        q = q.order_by(t.c.timestamp.desc(), t.c.id.desc()).limit(limit)
        with self.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def recent_steps(self, job_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The job's last ``limit`` step rows as written, newest first: ``id``, ``step``, ``loss``,
        ``batch_size``, ``step_time_seconds``."""
        t = TABLES["step_metrics"]
        q = (select(t.c.id, t.c.step, t.c.loss, t.c.batch_size, t.c.step_time_seconds)
             .where(t.c.job_id == job_id).order_by(t.c.id.desc()).limit(limit))
        with self.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def rank_progress(self, job_id: str) -> list[dict[str, Any]]:
        """Each rank's ``rank``, ``steps`` (rows), ``last_step`` and ``last_at`` (its newest step's time), in
        rank order; one row with rank None for steps without one. Empty before the first step."""
        t = TABLES["step_metrics"]
        q = (select(t.c.rank, func.count().label("steps"), func.max(t.c.step).label("last_step"),
                    func.max(t.c.timestamp).label("last_at"))
             .where(t.c.job_id == job_id).group_by(t.c.rank).order_by(t.c.rank))
        with self.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def latest_sample(self, job_id: str) -> dict[str, Any] | None:
        """The job's newest system sample (every column), or None before the first."""
        t = TABLES["metrics_samples"]
        q = select(t).where(t.c.job_id == job_id).order_by(t.c.timestamp.desc()).limit(1)
        with self.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row is not None else None

    # -- the reads of the web UI (runlens ui): a page of jobs, their figures, what changed since a poll -------

    def find_jobs(self, limit: int = 50, *, status: str | None = None, name: str | None = None,
                  before: str | None = None) -> list[dict[str, Any]]:
        """One page of jobs, newest first, without their config, argv and environment (a list shows none).

        Args:
            status: only jobs with this stored status (one of ``JOB_STATUSES``).
            name: only jobs whose name contains this, in any case.
            before: a job id: only the jobs listed after it (created before it), for the next page.

        Raises:
            JobNotFound: ``before`` names no job.
        """
        jobs = TABLES["jobs"]
        q = select(*(c for c in jobs.c if c.name not in ("config", "argv", "environment")))
        if status is not None:
            q = q.where(jobs.c.status == status)
        if name:
            q = q.where(func.lower(jobs.c.name).contains(name.lower(), autoescape=True))
        with self.connect() as conn:
            if before is not None:
                mark = conn.execute(select(jobs.c.created_at).where(jobs.c.job_id == before)).first()
                if mark is None:
                    raise JobNotFound(before)
                q = q.where(or_(jobs.c.created_at < mark[0],
                                and_(jobs.c.created_at == mark[0], jobs.c.job_id < before)))
            q = q.order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc()).limit(limit)
            return [dict(r) for r in conn.execute(q).mappings()]

    def job_figures(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per job: ``steps`` (per rank: the most any rank recorded), ``ranks``, ``peak_memory_gb``,
        ``total_memory_gb``, ``peak_gpu_memory_gb`` and ``last_sample_at``. Only these jobs' rows are grouped."""
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, dict[str, Any]] = {j: {"steps": None, "ranks": None, "peak_memory_gb": None,
                                              "total_memory_gb": None, "peak_gpu_memory_gb": None,
                                              "last_sample_at": None} for j in ids}
        if not ids:
            return out
        steps, samples = TABLES["step_metrics"], TABLES["metrics_samples"]
        per_rank = (select(steps.c.job_id, func.count().label("n")).where(steps.c.job_id.in_(ids))
                    .group_by(steps.c.job_id, steps.c.rank).subquery())
        step_q = (select(per_rank.c.job_id, func.max(per_rank.c.n).label("steps"), func.count().label("ranks"))
                  .group_by(per_rank.c.job_id))
        peak_q = (select(samples.c.job_id, func.max(samples.c.used_memory_gb).label("peak_memory_gb"),
                         func.max(samples.c.total_memory_gb).label("total_memory_gb"),
                         func.max(samples.c.gpu_memory_used_gb).label("peak_gpu_memory_gb"),
                         func.max(samples.c.timestamp).label("last_sample_at"))
                  .where(samples.c.job_id.in_(ids)).group_by(samples.c.job_id))
        with self.connect() as conn:
            for q in (step_q, peak_q):
                for r in conn.execute(q).mappings():
                    out[r["job_id"]].update({k: v for k, v in r.items() if k != "job_id"})
        return out

    def job_health(self, job_ids: Sequence[str]) -> dict[str, str | None]:
        """Per job, the health of its newest stored analysis (None when never analysed)."""
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, str | None] = dict.fromkeys(ids)
        if ids:
            t = TABLES["analysis_reports"]
            newest = select(func.max(t.c.id)).where(t.c.job_id.in_(ids)).group_by(t.c.job_id).scalar_subquery()
            with self.connect() as conn:
                out.update(dict(conn.execute(select(t.c.job_id, t.c.health_score).where(t.c.id.in_(newest))).all()))
        return out

    def data_marker(self, job_id: str) -> tuple[Any, ...]:
        """What changes when a job records anything: its newest step (time, number), sample, event and
        analysis. Each is one index lookup, so a cache can ask on every request whether it is stale."""
        steps, samples, events, reports = (TABLES[t] for t in ("step_metrics", "metrics_samples",
                                                                "training_events", "analysis_reports"))
        q = select(*(select(f).where(t.c.job_id == job_id).scalar_subquery() for t, f in (
            (steps, func.max(steps.c.timestamp)), (steps, func.max(steps.c.step)),
            (samples, func.max(samples.c.timestamp)), (events, func.max(events.c.timestamp)),
            (reports, func.max(reports.c.created_at)))))
        with self.connect() as conn:
            return tuple(conn.execute(q).one())

    def events_since(self, job_id: str, since: float | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The job's events after ``since`` (all without it), oldest first, at most the newest ``limit``."""
        t = TABLES["training_events"]
        q = select(t.c.id, t.c.timestamp, t.c.event_type, t.c.details, t.c.rank, t.c.step).where(t.c.job_id == job_id)
        if since is not None:
            q = q.where(t.c.timestamp > since)
        q = q.order_by(t.c.timestamp.desc(), t.c.id.desc()).limit(limit)
        with self.connect() as conn:
            return [dict(r) for r in reversed(conn.execute(q).mappings().all())]

    def latest_analysis_id(self, job_id: str) -> int | None:
        """The id of the job's newest stored analysis, None when it was never analysed."""
        t = TABLES["analysis_reports"]
        with self.connect() as conn:
            return conn.execute(select(func.max(t.c.id)).where(t.c.job_id == job_id)).scalar()

    def count(self, table: str, job_id: str | None = None) -> int:
        t = TABLES[table]
        q = select(func.count()).select_from(t)
        if job_id is not None:
            q = q.where(t.c.job_id == job_id)
        with self.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def delete_job(self, job_id: str) -> None:
        with self.begin() as conn:
            for name in ("gpu_samples", "training_events", "step_metrics", "monitoring_costs",
                         "analysis_reports", "metrics_samples"):
                conn.execute(delete(TABLES[name]).where(TABLES[name].c.job_id == job_id))
            conn.execute(delete(TABLES["jobs"]).where(TABLES["jobs"].c.job_id == job_id))


class HeldConnection:
    """A connection the batch writer keeps open across flushes, opened on first use and dropped on any error.

    Why: a SQLite engine hands out a new connection per checkout (NullPool), so a transaction per flush paid a
    file open, four pragmas and the preparation of every statement again, and each of those calls releases
    the GIL and waits to take it back behind a busy training loop. Kept open, the driver's statement cache
    keeps the multi-row INSERTs prepared. Idle between transactions, it holds no lock. After an error the
    connection is closed, so a broken one (a restarted server) is never reused.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Connection | None = None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on the held connection; database errors surface as StoreUnavailable."""
        try:
            if self._conn is None:
                self._conn = self.store.open_connection()
            with self._conn.begin():
                yield self._conn
        except (OperationalError, DatabaseError) as exc:
            self.close()
            raise StoreUnavailable(self.store.shown_url, error_reason(exc)) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection must not hide the error that broke it
                pass


def _redacted_events(table: str, rows: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """Event rows with their details redacted (a start event's argv, an exception's message); other tables'
    rows as given."""
    if table != "training_events":
        return rows
    return [{**r, "details": redact(r["details"])} if r.get("details") else r for r in rows]


def _uniform_rows(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Give every row the same keys: SQLAlchemy's executemany compiles the first row's keys and rejects a later
    row that lacks one ("A value is required for bind parameter"), which would make a whole batch unwritable.
    A missing key gets its column's scalar default, else None."""
    keys: set[str] = set().union(*rows)
    if all(len(r) == len(keys) for r in rows):
        return [dict(r) for r in rows]
    fill: dict[str, Any] = {}
    for key in keys:
        column = table.c.get(key)
        default = column.default if column is not None else None
        fill[key] = default.arg if default is not None and getattr(default, "is_scalar", False) else None
    return [{**fill, **r} for r in rows]


@contextmanager
def driver_errors(store: Store) -> Iterator[None]:
    """Database errors as StoreUnavailable, so the CLI prints one line: SQLAlchemy's, and those of a raw DBAPI
    cursor (sqlite3, psycopg), which SQLAlchemy does not wrap (the frames and series readers use one)."""
    try:
        yield
    except (OperationalError, DatabaseError) as exc:
        raise StoreUnavailable(store.shown_url, error_reason(exc)) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2"):
            raise StoreUnavailable(store.shown_url, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) \
                from exc
        raise


def error_reason(exc: SQLAlchemyError) -> str:
    """The first line of the database's own message, for one-line errors."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_store(db: str | None = None, *, create: bool = True, migrate: bool = True,
               read_only: bool = False) -> Store:
    """Open (and if needed create and migrate) the store at ``db`` (URL or path; default from settings).

    Args:
        db: a SQLAlchemy URL or a bare SQLite path; None means ``RUNLENS_DB`` or ``./runlens.db``.
        create: create a missing SQLite file (collectors); readers pass False to get a clear error instead.
        migrate: bring the schema to head; a schema newer than this runlens raises SchemaTooNew.
        read_only: a reader that never writes (``runlens ui``): the database refuses this store's writes, nothing
            is created or migrated, and a schema other than head is refused with the fix.

    Raises:
        StoreUnavailable, SchemaTooNew
    """
    url = resolve_db_url(db)
    engine = create_store_engine(url, create=create and not read_only, read_only=read_only)
    try:
        if read_only:
            verify_schema(engine, url)
        elif migrate:
            ensure_schema(engine)
    except (OperationalError, DatabaseError) as exc:
        engine.dispose()
        raise StoreUnavailable(redact_url(url), error_reason(exc)) from None
    except Exception:
        engine.dispose()
        raise
    return Store(url, engine)
