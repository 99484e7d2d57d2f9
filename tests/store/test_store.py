"""The store on real SQLite files: every table round-trips, migrate-on-open upgrades old files and refuses newer
ones without touching them, concurrent first opens do not race, and the batch writer bounds its memory."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from runlens.core.errors import SchemaTooNew
from runlens.store import Store, open_store
from runlens.store.engine import create_store_engine
from runlens.store.migrate import HEAD_REVISION, KNOWN_REVISIONS, _alembic_config, upgrade
from runlens.store.writer import BatchWriter


def _path(db_url: str) -> Path:
    return Path(db_url.removeprefix("sqlite:///"))


def _subset(row: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in expected}


def test_every_table_round_trips(store: Store) -> None:
    job = {"status": "running", "started_at": 100.5, "argv": ["train.py", "--lr", "1e-4"],
           "config": {"lr": 1e-4, "nested": {"workers": 2}}, "config_dialect": "generic",
           "config_path": "/x/config.yaml", "world_size": 2, "settings": {"sample_interval": 5.0},
           "environment": {"cpu_count": 8}, "log_path": "/x/log.txt"}
    job_id = store.create_job(name="round trip", **job)
    store.update_job(job_id, status="succeeded", ended_at=200.0, exit_code=0, status_reason=None, last_step=9)
    got = store.get_job(job_id)
    assert _subset(got, job | {"status": "succeeded"}) == job | {"status": "succeeded"}
    assert got["name"] == "round trip" and got["ended_at"] == 200.0 and got["exit_code"] == 0
    assert got["runlens_version"] and got["host"] and got["pid"] and got["last_step"] == 9

    sample = {"timestamp": 101.0, "total_memory_gb": 31.2, "used_memory_gb": 12.5, "available_memory_gb": 18.7,
              "swap_used_gb": 0.0, "main_process_memory_gb": 3.25, "worker_memory_gb": 1.5, "worker_count": 2,
              "gpu_memory_used_gb": 10.0, "gpu_utilization_percent": 97.0, "cpu_utilization_percent": 55.5,
              "host": "h", "rank": 1, "swap_in_gb_per_s": 0.0, "gpu_memory_total_gb": 24.0,
              "cuda_allocated_gb": 8.0, "cuda_reserved_gb": 9.0, "cuda_max_allocated_gb": 9.5,
              "memory_pressure_some_avg10": 0.5, "memory_pressure_full_avg10": 0.0, "unified_memory": False,
              "process_cpu_percent": 101.0}
    gpu = {"timestamp": 101.0, "device_index": 0, "name": "NVIDIA A10G", "memory_used_gb": 10.0,
           "memory_total_gb": 24.0, "utilization_percent": 97.0, "temperature_c": 61.0, "power_w": 180.5}
    event = {"timestamp": 102.0, "event_type": "checkpoint_saved", "details": {"path": "/ckpt", "n": [1, 2]},
             "host": "h", "rank": 1, "step": 5}
    step = {"step": 5, "timestamp": 102.5, "loss": 0.75, "batch_size": 8, "gradient_norm": 1.5,
            "learning_rate": 1e-4, "step_time_seconds": 0.2, "data_time_seconds": 0.01, "rank": 1,
            "tokens": 4096.0, "extras": {"acc": 0.5}}
    cost = {"timestamp": 103.0, "operation": "step", "calls": 10, "total_seconds": 1e-5,
            "on_training_thread": True, "host": "h", "rank": 1}
    report = {"created_at": 104.0, "summary": {"health_score": "B"}, "recommendations": [{"title": "t"}],
              "log_errors": [], "peak_memory_gb": 12.5, "health_score": "B", "analysis": {"version": 1},
              "runlens_version": "0.1.0"}
    with store.begin() as conn:
        (sample_id,) = store.insert_returning_ids(conn, "metrics_samples", [{**sample, "job_id": job_id}])
        store.insert_many(conn, "gpu_samples", [{**gpu, "job_id": job_id, "sample_id": sample_id}])
        store.insert_many(conn, "training_events", [{**event, "job_id": job_id, "memory_snapshot_id": sample_id}])
        store.insert_steps(conn, job_id, [step])
        store.insert_many(conn, "monitoring_costs", [{**cost, "job_id": job_id}])
        store.insert_many(conn, "analysis_reports", [{**report, "job_id": job_id}])

    for table, expected in [("metrics_samples", sample), ("gpu_samples", gpu), ("training_events", event),
                            ("step_metrics", step), ("monitoring_costs", cost), ("analysis_reports", report)]:
        (row,) = store.rows(table, job_id)
        assert _subset(row, expected) == expected, table
    assert store.rows("gpu_samples", job_id)[0]["sample_id"] == sample_id
    assert store.rows("training_events", job_id)[0]["memory_snapshot_id"] == sample_id
    (listed,) = store.list_jobs()
    assert listed["steps"] == 1 and listed["peak_memory_gb"] == 12.5

    store.delete_job(job_id)
    assert store.count("jobs") == 0 and store.count("step_metrics") == 0


def test_sqlite_store_has_wal_and_the_named_indexes(store: Store, db_url: str) -> None:
    conn = sqlite3.connect(_path(db_url))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"ix_step_metrics_job_id_step", "ix_step_metrics_job_id_timestamp",
            "ix_metrics_samples_job_id_timestamp", "ix_training_events_job_id_timestamp"} <= indexes


def test_head_revision_matches_the_alembic_scripts(db_url: str) -> None:
    from alembic.script import ScriptDirectory

    engine = create_store_engine(db_url)
    with engine.connect() as conn:
        scripts = ScriptDirectory.from_config(_alembic_config(conn))
    engine.dispose()
    assert scripts.get_heads() == [HEAD_REVISION]
    assert sorted(r.revision for r in scripts.walk_revisions()) == sorted(KNOWN_REVISIONS)


def test_an_older_schema_is_migrated_on_open_with_its_data(db_url: str) -> None:
    engine = create_store_engine(db_url)
    with engine.begin() as conn:
        upgrade(conn, "0001")
        conn.execute(text("INSERT INTO jobs (job_id, name, status, created_at) "
                          "VALUES ('old-1', 'old', 'succeeded', 1.0)"))
        conn.execute(text("INSERT INTO step_metrics (job_id, step, timestamp, loss) "
                          "VALUES ('old-1', 3, 2.0, 0.5)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
    engine.dispose()

    store = open_store(db_url, create=False)
    job = store.get_job("old-1")
    assert job["name"] == "old" and job["status"] == "succeeded" and job["settings"] is None
    assert store.rows("step_metrics", "old-1")[0]["loss"] == 0.5
    with store.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD_REVISION
    store.create_job(name="new", environment={"cpu_count": 2})  # the 0002 columns are usable
    store.close()


def test_a_newer_schema_is_refused_and_the_file_left_untouched(db_url: str) -> None:
    open_store(db_url).close()
    path = _path(db_url)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()  # the last connection checkpoints the WAL into the main file
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew) as info:
        open_store(db_url, create=False)
    assert info.value.found == "9999" and info.value.known == HEAD_REVISION
    assert "pip install -U runlens" in str(info.value)
    assert path.read_bytes() == before


_OPENER = """
import sys, time
from pathlib import Path
from runlens.store import open_store
url, barrier = sys.argv[1], Path(sys.argv[2])
(barrier / f"ready-{sys.argv[3]}").touch()
while not (barrier / "go").exists():
    time.sleep(0.001)
store = open_store(url)
store.create_job(name="opener")
print("ok")
"""


@pytest.mark.slow
def test_eight_processes_opening_a_fresh_database_at_once(tmp_path: Path, db_url: str, child_env: dict[str, str],
                                                         start_together: Any) -> None:
    script = tmp_path / "opener.py"
    script.write_text(_OPENER)
    barrier = tmp_path / "barrier"
    procs = start_together([[sys.executable, str(script), db_url, str(barrier), str(i)] for i in range(8)],
                           barrier, child_env)
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err
    conn = sqlite3.connect(_path(db_url))
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD_REVISION,)]
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 8
    conn.close()


# -- the batch writer -------------------------------------------------------------------------------------


def test_writer_close_drains_everything_in_order(store: Store) -> None:
    job_id = store.create_job(name="w")
    writer = BatchWriter(store, job_id, flush_interval=10.0).start()
    key = writer.put_sample({"timestamp": 1.0, "used_memory_gb": 2.0})
    writer.put_event({"timestamp": 1.5, "event_type": "e"}, key)
    for i in range(5000):
        writer.put_step({"step": i, "timestamp": float(i)})
    writer.put_costs([{"timestamp": 2.0, "operation": "step", "calls": 5000, "total_seconds": 0.01}])
    writer.update_job(status="succeeded")
    writer.close()
    assert not writer.alive and writer.buffered_rows() == 0
    assert store.count("step_metrics", job_id) == 5000
    (event,) = store.rows("training_events", job_id)
    assert event["memory_snapshot_id"] == store.rows("metrics_samples", job_id)[0]["id"]
    job = store.get_job(job_id)
    assert job["status"] == "succeeded" and job["last_step"] == 4999 and job["heartbeat_at"] == 1.0


def test_writer_bounds_memory_by_dropping_samples_first_and_says_so(store: Store, db_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """While the store is locked the buffer stays under max_rows, oldest samples go first, steps survive, and
    the drop is recorded as a buffer_overflow event once writes succeed again."""
    monkeypatch.setattr("runlens.store.engine.SQLITE_BUSY_TIMEOUT_MS", 100)
    job_id = store.create_job(name="bounded")
    warnings: list[str] = []
    writer = BatchWriter(store, job_id, flush_interval=0.05, max_rows=60, warn=warnings.append).start()
    locker = sqlite3.connect(_path(db_url))
    locker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(50):
            writer.put_sample({"timestamp": float(i)})
        for i in range(40):
            writer.put_step({"step": i, "timestamp": float(i)})
        deadline = time.monotonic() + 5
        while writer.stats.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert writer.buffered_rows() <= 60
    finally:
        locker.rollback()
        locker.close()
    writer.close()
    assert writer.stats.samples_dropped == 30 and writer.stats.steps_dropped == 0
    assert store.count("step_metrics", job_id) == 40 and store.count("metrics_samples", job_id) == 20
    (overflow,) = [e for e in store.rows("training_events", job_id) if e["event_type"] == "buffer_overflow"]
    assert overflow["details"]["samples_dropped"] == 30
    assert len(warnings) == 2 and "cannot write to the store" in warnings[0] and "again" in warnings[1]


def test_writer_flush_waits_for_a_flush_that_started_after_the_call(store: Store) -> None:
    job_id = store.create_job(name="flush")
    writer = BatchWriter(store, job_id, flush_interval=30.0).start()
    writer.put_step({"step": 0, "timestamp": 0.0})
    assert writer.flush(timeout=5)
    assert store.count("step_metrics", job_id) == 1
    writer.close()


def test_writer_on_cycle_hook_runs_on_the_writer_thread(store: Store, wait_until: Any) -> None:
    job_id = store.create_job(name="hook")
    seen: list[str] = []
    writer = BatchWriter(store, job_id, flush_interval=0.02,
                         on_cycle=lambda: seen.append(threading.current_thread().name)).start()
    wait_until(lambda: len(seen) >= 3)
    writer.close()
    assert seen and set(seen) == {"runlens-writer"}


def test_writer_stores_events_that_differ_in_keys_or_hold_non_json(store: Store) -> None:
    """One odd event (fewer keys, a Path in its details) must not make the whole batch unwritable."""
    job_id = store.create_job(name="odd")
    writer = BatchWriter(store, job_id, flush_interval=10.0).start()
    writer.put_event({"timestamp": 1.0, "event_type": "full", "details": {}, "host": "h", "rank": 0, "step": 3})
    writer.put_event({"timestamp": 2.0, "event_type": "bare"})
    writer.put_event({"timestamp": 3.0, "event_type": "odd", "details": {"path": Path("/x")}})
    writer.put_costs([{"timestamp": 4.0, "operation": "a", "calls": 1, "total_seconds": 0.1, "host": "h"},
                      {"timestamp": 4.0, "operation": "b", "total_seconds": 0.2}])
    writer.close()
    assert writer.stats.failures == 0
    events = {e["event_type"]: e for e in store.rows("training_events", job_id)}
    assert events["full"]["step"] == 3 and events["bare"]["host"] is None
    assert events["odd"]["details"] == {"unserializable": "{'path': PosixPath('/x')}"}
    costs = {c["operation"]: c for c in store.rows("monitoring_costs", job_id)}
    assert costs["b"]["calls"] == 0 and costs["b"]["on_training_thread"] is True  # column defaults, not NULL


def test_a_new_store_whose_creation_failed_half_way_is_made_again(db_url: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite runs the migrations' DDL outside a transaction: a creation that fails after the first table must
    not leave a file that no later open can migrate ("table jobs already exists")."""
    from sqlalchemy import text as sql_text
    from sqlalchemy.exc import OperationalError

    from runlens.store import migrate

    real_upgrade = migrate.upgrade
    calls = []

    def flaky_upgrade(conn, revision="head"):  # type: ignore[no-untyped-def]
        calls.append(revision)
        if len(calls) == 1:
            conn.execute(sql_text("CREATE TABLE jobs (job_id TEXT PRIMARY KEY)"))
            raise OperationalError("CREATE TABLE metrics_samples", {}, Exception("disk I/O error"))
        real_upgrade(conn, revision)

    monkeypatch.setattr(migrate, "upgrade", flaky_upgrade)
    store = open_store(db_url)
    try:
        assert len(calls) == 2
        job_id = store.create_job(name="after-a-failed-creation")
        assert store.get_job(job_id)["name"] == "after-a-failed-creation"
    finally:
        store.close()
    reopened = open_store(db_url, create=False)
    reopened.close()
