"""The write path under load: few statements per batch, values stored as before, drops announced when they
happen, and a close that writes everything while the store keeps taking rows.

Timing figures (lag, call times, close time) belong to bench/bench_tightloop.py; these tests check behaviour
only, with slowness simulated where a test needs it.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import event

import runlens
from runlens.core.errors import StoreUnavailable
from runlens.store import Store, open_store
from runlens.store.bulk import MAX_ROWS_PER_STATEMENT, ValuesPlan, chunks
from runlens.store.writer import OVERFLOW_NOTICE_SECONDS, BatchWriter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _step_statements(store: Store) -> list[tuple[str, bool]]:
    """Every statement SQLAlchemy sends that inserts steps: (SQL, executemany)."""
    seen: list[tuple[str, bool]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "INSERT INTO step_metrics" in statement:
            seen.append((statement, executemany))

    event.listen(store.engine, "before_cursor_execute", before)
    return seen


def _steps(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {"step": i, "timestamp": float(i), "loss": 1.0 / (i + 1), "batch_size": 8}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, db_url: str) -> Iterator[Store]:
    url = db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()


# -- statements per batch ---------------------------------------------------------------------------------


def test_chunks_cover_every_row_with_few_distinct_sizes() -> None:
    for n in (1, 2, 3, 1000, 2048, 2049, 10_000, 20_000):
        parts = list(chunks(n, 2048))
        assert sum(count for _, count in parts) == n
        assert [start for start, _ in parts] == [sum(c for _, c in parts[:i]) for i in range(len(parts))]
        assert all(count & (count - 1) == 0 for _, count in parts)        # powers of two
        assert len(parts) <= -(-n // 2048) + 11


def test_values_plan_rounds_its_chunk_down_to_a_power_of_two() -> None:
    plan = ValuesPlan("INSERT INTO t (a, b) VALUES ", "(?, ?)", 2730)
    assert plan.max_rows == 2048
    assert plan.sql(3) == "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"


def test_a_batch_of_steps_is_inserted_with_a_bounded_number_of_statements(any_store: Store) -> None:
    """No per-row executemany for steps: a driver releases the GIL around each statement it runs, and a busy
    training loop makes every re-take wait a switch interval."""
    job_id = any_store.create_job(name="statements")
    seen = _step_statements(any_store)
    n = 10_000
    writer = BatchWriter(any_store, job_id, flush_interval=60.0, flush_rows=10 * n).start()
    for row in _steps(n):
        writer.put_step(row)
    assert writer.flush(timeout=30)
    writer.close()
    assert any_store.count("step_metrics", job_id) == n
    assert not any(many for _, many in seen)
    assert len(seen) <= -(-n // MAX_ROWS_PER_STATEMENT) + 11
    stored = any_store.rows("step_metrics", job_id, order_by="id")
    assert [r["step"] for r in stored] == list(range(n))   # in order
    assert stored[7]["loss"] == 1.0 / 8 and stored[7]["batch_size"] == 8 and stored[7]["job_id"] == job_id


def test_sqlite_runs_one_statement_per_chunk_not_per_row(store: Store) -> None:
    """What SQLite itself executes (its trace hook fires once per statement run, so once per row under
    executemany)."""
    runs: list[str] = []
    event.listen(store.engine, "connect",
                 lambda dbapi_conn, _record: dbapi_conn.set_trace_callback(
                     lambda sql: runs.append(sql[:40]) if "step_metrics" in sql else None))
    job_id = store.create_job(name="trace")
    writer = BatchWriter(store, job_id, flush_interval=60.0, flush_rows=100_000).start()
    for row in _steps(5000):
        writer.put_step(row)
    writer.close()
    assert store.count("step_metrics", job_id) == 5000
    assert 0 < len(runs) <= 5000 // MAX_ROWS_PER_STATEMENT + 11


def test_the_writer_keeps_one_connection_across_transactions(store: Store) -> None:
    """A connection per flush would pay the file open, the pragmas and every statement's preparation again."""
    job_id = store.create_job(name="held")
    opened: list[object] = []
    event.listen(store.engine, "connect", lambda dbapi_conn, _record: opened.append(dbapi_conn))
    writer = BatchWriter(store, job_id, flush_interval=60.0, steps_per_transaction=100).start()
    for row in _steps(1000):
        writer.put_step(row)
    assert writer.flush(timeout=30)
    writer.put_event({"timestamp": 1.0, "event_type": "later"})
    assert writer.flush(timeout=30)
    writer.close()
    assert writer.stats.flushes >= 11
    assert len(opened) == 1


# -- values ---------------------------------------------------------------------------------------------------


def test_non_finite_values_are_stored_as_before(any_store: Store) -> None:
    """SQLite keeps NaN as NULL and +-inf as floats, PostgreSQL keeps all three; extras go in as JSON text,
    with the converter's ``nonfinite`` record intact."""
    job_id = any_store.create_job(name="nonfinite")
    writer = BatchWriter(any_store, job_id, flush_interval=60.0).start()
    rows = [
        {"step": 0, "timestamp": 0.0, "loss": math.nan, "learning_rate": math.inf, "gradient_norm": -math.inf,
         "tokens": 1e308, "extras": {"acc": None, "nonfinite": {"loss": "nan", "acc": "inf"}}},
        {"step": 1, "timestamp": 1.0, "loss": 0.1 + 0.2, "learning_rate": 5e-324, "extras": None},
        {"step": 2, "timestamp": 1.7e9 + 0.123456789, "loss": -0.0},
    ]
    for row in rows:
        writer.put_step(row)
    writer.close()
    stored = any_store.rows("step_metrics", job_id, order_by="step")
    first = stored[0]
    if any_store.dialect == "sqlite":
        assert first["loss"] is None
    else:
        assert math.isnan(first["loss"])
    assert first["learning_rate"] == math.inf and first["gradient_norm"] == -math.inf and first["tokens"] == 1e308
    assert first["extras"] == {"acc": None, "nonfinite": {"loss": "nan", "acc": "inf"}}
    assert stored[1]["loss"] == 0.1 + 0.2 and stored[1]["learning_rate"] == 5e-324 and stored[1]["extras"] is None
    assert stored[2]["timestamp"] == 1.7e9 + 0.123456789 and stored[2]["gradient_norm"] is None


def test_rows_missing_columns_get_nulls(store: Store, db_url: str) -> None:
    """The wrapper's progress-line steps carry only some columns; what is missing or None is SQL NULL (on
    SQLite it is bound as NaN, which SQLite stores as NULL: the stored row must be the same)."""
    job_id = store.create_job(name="sparse")
    writer = BatchWriter(store, job_id, flush_interval=60.0).start()
    writer.put_step({"step": 3, "timestamp": 2.0})
    writer.put_step({"step": 4, "timestamp": 3.0, "loss": 0.5, "rank": 1, "batch_size": None})
    writer.close()
    a, b = store.rows("step_metrics", job_id, order_by="step")
    assert a["loss"] is None and a["rank"] is None and a["extras"] is None
    assert b["loss"] == 0.5 and b["rank"] == 1
    raw = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    types = raw.execute("SELECT typeof(loss), typeof(batch_size), typeof(rank), typeof(extras), typeof(step) "
                        "FROM step_metrics ORDER BY step").fetchall()
    raw.close()
    assert types == [("null", "null", "null", "null", "integer"), ("real", "null", "integer", "null", "integer")]


def test_steps_converted_as_columns_store_null_for_none(any_store: Store) -> None:
    """The Monitor's columns path: a None is NULL on both stores (bound as NaN only on SQLite, which stores that
    as NULL; PostgreSQL would keep a NaN), and only the columns some step has are bound."""
    job_id = any_store.create_job(name="columns")
    seen = _step_statements(any_store)
    converter = runlens.Monitor(name="converter")._convert_step   # never started: only its converter
    writer = BatchWriter(any_store, job_id, flush_interval=60.0, step_converter=converter).start()
    for i in range(10):
        writer.put_step((i, 100.0 + i, None if i == 3 else 0.5, None, None, None if i % 2 else 8, None,
                         None if i == 0 else 0.01, None, None))
    writer.close()
    stored = any_store.rows("step_metrics", job_id, order_by="id")
    assert [r["step"] for r in stored] == list(range(10))
    assert [r["loss"] for r in stored] == [0.5] * 3 + [None] + [0.5] * 6
    assert [r["batch_size"] for r in stored[:3]] == [8, None, 8]
    assert stored[0]["step_time_seconds"] is None and stored[1]["step_time_seconds"] == 0.01
    assert stored[5]["learning_rate"] is None and stored[5]["extras"] is None and stored[5]["job_id"] == job_id
    assert seen and not any("learning_rate" in sql for sql, _ in seen)


# -- bounds ---------------------------------------------------------------------------------------------------


def test_overflow_of_a_store_that_takes_rows_is_announced_when_it_happens(store: Store) -> None:
    """More waiting than the bound after a transaction means steps come faster than the store takes them: the
    oldest go, one warning says so at once, and a buffer_overflow event is in the store before close."""
    job_id = store.create_job(name="overflow")
    warnings: list[str] = []
    clock = FakeClock()
    writer = BatchWriter(store, job_id, flush_interval=60.0, flush_rows=10**9, max_rows=100,
                         steps_per_transaction=50, warn=warnings.append, clock=clock)
    for row in _steps(500):
        writer.put_step(row)
    writer.start()
    assert writer.flush(timeout=30)
    assert writer.stats.steps_dropped == 350
    assert store.count("step_metrics", job_id) == 150
    (overflow,) = store.recent_events(job_id, event_type="buffer_overflow")
    assert overflow["details"] == {"samples_dropped": 0, "steps_dropped": 350, "max_rows": 100,
                                   "reason": "steps are logged faster than the store takes them"}
    assert len(warnings) == 1 and "bounded at 100 rows" in warnings[0] and "350 steps" in warnings[0]
    kept = [r["step"] for r in store.rows("step_metrics", job_id, order_by="id", columns=["step"])]
    assert kept == list(range(50)) + list(range(400, 500))   # the oldest waiting were dropped

    # Drops that go on are rate-limited: no new warning or event within OVERFLOW_NOTICE_SECONDS ...
    for row in _steps(200, start=500):
        writer.put_step(row)
    assert writer.flush(timeout=30)
    assert writer.stats.steps_dropped == 350 + 50
    assert len(warnings) == 1 and len(store.recent_events(job_id, event_type="buffer_overflow")) == 1
    # ... and after it, both again with the running totals.
    clock.now += OVERFLOW_NOTICE_SECONDS
    for row in _steps(200, start=700):
        writer.put_step(row)
    assert writer.flush(timeout=30)
    assert len(warnings) == 2 and "450 steps" in warnings[1]
    assert writer.stats.steps_dropped == 450
    writer.close()
    latest = store.recent_events(job_id, event_type="buffer_overflow")[0]
    assert latest["details"]["steps_dropped"] == 450


def test_close_records_the_final_drop_totals(store: Store) -> None:
    job_id = store.create_job(name="totals")
    clock = FakeClock()
    writer = BatchWriter(store, job_id, flush_interval=60.0, flush_rows=10**9, max_rows=100,
                         steps_per_transaction=50, warn=lambda _msg: None, clock=clock)
    for row in _steps(500):
        writer.put_step(row)
    writer.start()
    assert writer.flush(timeout=30)
    for row in _steps(200, start=500):
        writer.put_step(row)
    writer.close()   # within the notice interval, but a close always records the totals
    totals = store.recent_events(job_id, event_type="buffer_overflow")[0]["details"]
    assert totals["steps_dropped"] == writer.stats.steps_dropped == 400
    assert store.count("step_metrics", job_id) == 700 - 400


def test_flush_writes_every_step_buffered_when_it_was_asked(store: Store) -> None:
    job_id = store.create_job(name="flush-all")
    writer = BatchWriter(store, job_id, flush_interval=60.0, flush_rows=10**9, steps_per_transaction=64).start()
    for row in _steps(1000):
        writer.put_step(row)
    assert writer.flush(timeout=30)
    assert store.count("step_metrics", job_id) == 1000
    assert writer.stats.steps_dropped == 0
    writer.close()


# -- close ------------------------------------------------------------------------------------------------------


def _slow_inserts(monkeypatch: pytest.MonkeyPatch, store: Store, seconds: float) -> list[int]:
    """Make every step insert take ``seconds`` longer (a slow disk or server); returns the batch sizes seen."""
    sizes: list[int] = []
    real = store.insert_steps
    pause = threading.Event()

    def slow(conn: Any, job_id: str, rows: Any) -> None:
        sizes.append(len(rows))
        pause.wait(seconds)
        real(conn, job_id, rows)

    monkeypatch.setattr(store, "insert_steps", slow)
    return sizes


def test_close_keeps_writing_while_the_store_makes_progress(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty transactions of 0.05 s each take longer than close's timeout, but each commits rows, so close
    waits for all of them instead of giving up on the rest."""
    job_id = store.create_job(name="slow-close")
    sizes = _slow_inserts(monkeypatch, store, 0.05)
    writer = BatchWriter(store, job_id, flush_interval=60.0, flush_rows=10**9, steps_per_transaction=100).start()
    for row in _steps(2000):
        writer.put_step(row)
    writer.close(timeout=0.3)
    assert not writer.alive
    assert store.count("step_metrics", job_id) == 2000
    assert len(sizes) == 20 and max(sizes) == 100


def test_close_with_a_deadline_returns_while_rows_remain(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                         wait_until: Callable[..., Any]) -> None:
    """A signal's grace period bounds close however the writing goes; the thread finishes on its own."""
    job_id = store.create_job(name="deadline")
    _slow_inserts(monkeypatch, store, 0.05)
    writer = BatchWriter(store, job_id, flush_interval=60.0, flush_rows=10**9, steps_per_transaction=100).start()
    for row in _steps(2000):
        writer.put_step(row)
    writer.close(timeout=30.0, deadline=0.1)
    assert writer.alive and writer.buffered_rows() > 0
    wait_until(lambda: not writer.alive, timeout=30)
    assert store.count("step_metrics", job_id) == 2000


def test_close_gives_up_on_a_store_that_stopped_taking_writes(store: Store, db_url: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               wait_until: Callable[..., Any]) -> None:
    """No commit within ``timeout``: close raises the store's error and leaves the rows buffered; the thread
    keeps retrying for a while, so a store that comes back still gets them."""
    monkeypatch.setattr("runlens.store.engine.SQLITE_BUSY_TIMEOUT_MS", 50)
    job_id = store.create_job(name="stalled")
    writer = BatchWriter(store, job_id, flush_interval=0.05, warn=lambda _msg: None).start()
    locker = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    locker.execute("BEGIN EXCLUSIVE")
    try:
        for row in _steps(10):
            writer.put_step(row)
        wait_until(lambda: writer.stats.failures > 0)
        with pytest.raises(StoreUnavailable):
            writer.close(timeout=0.2)
        assert writer.alive and writer.buffered_rows() == 10
    finally:
        locker.rollback()
        locker.close()
    wait_until(lambda: not writer.alive, timeout=30)
    assert store.count("step_metrics", job_id) == 10
