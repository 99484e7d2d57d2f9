"""The same store on a real PostgreSQL server: migrations, the writer, concurrent writers, the CLI.

The server comes from Debian's packages: .ci/run starts it and exports RUNLENS_TEST_PG_URL; run locally, the
fixture starts one itself through .ci/start-postgres.sh.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from runlens.core.errors import SchemaTooNew
from runlens.store import open_store
from runlens.store.migrate import HEAD_REVISION, upgrade
from runlens.store.writer import BatchWriter

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server_url() -> str:
    url = os.environ.get("RUNLENS_TEST_PG_URL")
    if not url:
        out = subprocess.run(["bash", str(ROOT / ".ci" / "start-postgres.sh")], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.fail(f"PostgreSQL tests need a server: {out.stderr.strip()} (CI starts one in .ci/run)")
        url = out.stdout.strip()
    return url


@pytest.fixture
def pg_url(server_url: str):
    """A fresh, empty database on the server for each test, dropped afterwards."""
    name = f"runlens_test_{secrets.token_hex(4)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server_url.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_new_database_is_created_at_head(pg_url: str) -> None:
    store = open_store(pg_url)
    with store.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD_REVISION
        tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'")).scalars())
    assert {"jobs", "metrics_samples", "gpu_samples", "training_events", "step_metrics",
            "monitoring_costs", "analysis_reports"} <= tables
    store.close()


def test_older_schema_is_upgraded_with_data_kept(pg_url: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        upgrade(conn, "0001")
        conn.execute(text("INSERT INTO jobs (job_id, name, status, created_at) VALUES ('old', 'old', 'succeeded', 1)"))
    engine.dispose()
    store = open_store(pg_url)
    job = store.get_job("old")
    assert job["name"] == "old" and job["heartbeat_at"] is None
    store.close()


def test_newer_schema_is_refused(pg_url: str) -> None:
    open_store(pg_url).close()
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew) as info:
        open_store(pg_url)
    assert "9999" in str(info.value) and "upgrade runlens" in str(info.value)


def test_writer_round_trip_on_postgres(pg_url: str) -> None:
    store = open_store(pg_url)
    job_id = store.create_job(name="pg", config={"lr": 0.1})
    writer = BatchWriter(store, job_id, flush_interval=0.1,
                         step_converter=lambda r: {"step": r[0], "timestamp": r[1], "loss": r[2],
                                                   "extras": {"scale": 2.0}}).start()
    key = writer.put_sample({"timestamp": time.time(), "used_memory_gb": 3.5, "total_memory_gb": 16.0},
                            [{"device_index": 0, "memory_used_gb": 1.0}, {"device_index": 1, "memory_used_gb": 2.0}])
    writer.put_event({"timestamp": time.time(), "event_type": "start", "details": {"argv": ["x"]}}, key)
    for i in range(5000):
        writer.put_step((i, time.time(), 1.0 / (i + 1)))
    assert writer.flush()
    writer.close()
    assert store.count("step_metrics", job_id) == 5000
    steps = store.rows("step_metrics", job_id, limit=1)
    assert steps[0]["extras"] == {"scale": 2.0}
    (event,) = store.rows("training_events", job_id)
    (sample,) = store.rows("metrics_samples", job_id)
    assert event["memory_snapshot_id"] == sample["id"]
    assert sorted(g["memory_used_gb"] for g in store.rows("gpu_samples", job_id)) == [1.0, 2.0]
    assert store.get_job(job_id)["last_step"] == 4999
    store.close()


_WRITER_SCRIPT = """
import sys, time
from runlens.store import open_store
from runlens.store.writer import BatchWriter
store = open_store(sys.argv[1])
job = sys.argv[2]
w = BatchWriter(store, job, flush_interval=0.05,
                step_converter=lambda r: {"step": r[0], "timestamp": r[1], "rank": r[2]}).start()
for i in range(int(sys.argv[4])):
    w.put_step((i, time.time(), int(sys.argv[3])))
w.close()
print(w.stats.failures)
"""


@pytest.mark.slow
def test_four_processes_write_one_job_without_loss(pg_url: str) -> None:
    store = open_store(pg_url)
    job_id = store.create_job(name="multi", world_size=4)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, pg_url, job_id, str(rank), "3000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "0"
    assert store.count("step_metrics", job_id) == 12_000
    ranks = {r["rank"] for r in store.rows("step_metrics", job_id, columns=["rank"])}
    assert ranks == {0, 1, 2, 3}
    store.close()


def test_cli_jobs_against_postgres(pg_url: str) -> None:
    store = open_store(pg_url)
    store.create_job(name="listed-on-pg")
    store.close()
    out = subprocess.run([sys.executable, "-m", "runlens", "jobs", "--db", pg_url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "listed-on-pg" in out.stdout


def test_unreachable_server_is_one_line(server_url: str) -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/none"
    out = subprocess.run([sys.executable, "-m", "runlens", "jobs", "--db", url], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr
