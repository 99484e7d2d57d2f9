"""The same store on a real PostgreSQL server: migrations, the writer, frames and the analysis document,
concurrent writers (64 ranks into one job), the CLI.

The server comes from Debian's packages: .ci/run starts it and exports RUNLENS_TEST_PG_URL; run locally, the
``pg_url`` fixture (tests/conftest.py) starts one itself through .ci/start-postgres.sh, or skips where
PostgreSQL is not installed. Each test gets a database of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sample_jobs import make_job
from sqlalchemy import create_engine, text

from runlens.analyze import registry
from runlens.analyze.analysis import build_analysis
from runlens.analyze.load import load_job
from runlens.core.errors import SchemaTooNew
from runlens.store import Store, open_store
from runlens.store.frames import latest_analysis, load_frames, save_analysis
from runlens.store.migrate import HEAD_REVISION, upgrade
from runlens.store.writer import BatchWriter

pytestmark = pytest.mark.postgres


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


def test_frames_and_analysis_on_postgres(pg_store: Store, only_test_rules: dict[str, registry.Rule]) -> None:
    """Native JSON and booleans from psycopg load like SQLite's text: same frames, same document."""
    jid = make_job(pg_store, n_steps=50, n_samples=10)
    f = load_frames(pg_store, jid)
    assert len(f.steps) == 50 and f.steps["step"].dtype == np.int64
    assert f.steps["x_tokens_per_s"].iloc[3] == pytest.approx(103.0)
    assert f.events["details"].iloc[1] == {"status": "succeeded"}
    assert not f.costs.set_index("operation").loc["thread:runlens-writer", "on_training_thread"]
    doc = build_analysis(load_job(pg_store, jid))
    json.dumps(doc, allow_nan=False)
    assert doc["summary"]["steps_completed"] == 50
    rid = save_analysis(pg_store, jid, doc)
    assert rid and latest_analysis(pg_store, jid)["summary"]["steps_completed"] == 50  # type: ignore[index]


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


_RANK_SCRIPT = """
import os, sys, time
from pathlib import Path
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool
import runlens
import runlens.collect.monitor, runlens.collect.sampler, runlens.store.writer  # import before the race
barrier, rank, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
os.environ["RANK"] = rank   # what torchrun sets for each process it starts
# Name this process's connections, so it can count them on the server.
app = f"runlens-rank-{rank}"
os.environ["RUNLENS_DB"] = make_url(os.environ["RUNLENS_DB"]).update_query_dict(
    {"application_name": app}).render_as_string(hide_password=False)
(barrier / f"ready-{rank}").touch()
while not (barrier / "go").exists():
    time.sleep(0.001)
with runlens.Monitor(name="ranks", sample_interval=60) as mon:
    for step in range(steps):
        mon.step(step, loss=1.0 / (step + 1), lr=1e-4, batch_size=8)
    mon._writer.flush()
    probe = create_engine(make_url(os.environ["RUNLENS_DB"]).set(drivername="postgresql+psycopg"),
                          poolclass=NullPool)
    with probe.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a "
                                 "AND pid <> pg_backend_pid()"), {"a": app}).scalar_one()
    probe.dispose()
stats = mon._writer.stats
print(mon.job_id, mon.attached, stats.failures, stats.steps_written, stats.steps_dropped, held)
"""


@pytest.mark.slow
def test_sixty_four_ranks_write_one_job_without_loss_and_it_analyses(
        pg_url: str, tmp_path: Path, child_env: dict[str, str], start_together: Any) -> None:
    """64 processes (RANK 0..63, the way torchrun starts them under `runlens collect`) attach to one job and
    write 300 steps each at the same moment: no row is lost, each process holds one or two connections (the
    server's default max_connections is 100), and the job is then analysed in reasonable time."""
    world, steps = 64, 300
    store = open_store(pg_url)
    job_id = store.create_job(name="ranks", world_size=world, status="running", started_at=time.time())
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    barrier = tmp_path / "barrier"   # all import first, then open and write at the same moment
    argvs = [[sys.executable, str(script), str(barrier), str(rank), str(steps)] for rank in range(world)]
    env = {**child_env, "RUNLENS_JOB_ID": job_id, "RUNLENS_DB": pg_url, "WORLD_SIZE": str(world)}
    procs = start_together(argvs, barrier, env)
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        got_job, attached, failures, written, dropped, held = out.split()
        assert (got_job, attached, failures, written, dropped) == (job_id, "True", "0", str(steps), "0"), err
        assert 1 <= int(held) <= 2, f"one process holds {held} connections"
    store.update_job(job_id, status="succeeded", ended_at=time.time())
    assert store.count("step_metrics", job_id) == world * steps
    per_rank = Counter(r["rank"] for r in store.rows("step_metrics", job_id, columns=["rank"]))
    assert per_rank == {rank: steps for rank in range(world)}
    store.close()

    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "runlens", "analyze", job_id, "--db", pg_url, "--json"],
                         cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["job"]["job_id"] == job_id
    assert elapsed < 60, f"analyze took {elapsed:.1f} s"


def test_cli_jobs_against_postgres(pg_url: str) -> None:
    store = open_store(pg_url)
    store.create_job(name="listed-on-pg")
    store.close()
    out = subprocess.run([sys.executable, "-m", "runlens", "jobs", "--db", pg_url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "listed-on-pg" in out.stdout


def test_unreachable_server_is_one_line(pg_server: str) -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/none"
    out = subprocess.run([sys.executable, "-m", "runlens", "jobs", "--db", url], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr
