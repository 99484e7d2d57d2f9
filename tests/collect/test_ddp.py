"""Data-parallel jobs as collected: each rank's training-thread CPU clock is read off the training thread and
stored on a step, and a real 2-rank gloo DDP job under ``runlens collect`` with one slow rank is analysed to
name that rank, counted per rank by ``runlens jobs``, and left without a straggler when balanced."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner

import runlens
from runlens.analyze.analysis import build_analysis
from runlens.analyze.load import load_job
from runlens.cli import cli
from runlens.collect.thread_cpu import MARK_MAX_AGE, StepCpuMarks, thread_cpu_clock
from runlens.store import Store, open_store

STRAGGLER = Path(__file__).resolve().parents[1] / "scripts" / "ddp_straggler.py"
linux_clock = pytest.mark.skipif(thread_cpu_clock() is None, reason="no per-thread CPU clock on this platform")


# -- the CPU clock ----------------------------------------------------------------------------------------

def test_a_reading_belongs_to_the_newest_step_buffered_when_it_was_taken() -> None:
    now = [0.0]
    readings = iter([1.5, 2.5, 3.5, 4.5])
    marks = StepCpuMarks(lambda: next(readings), clock=lambda: now[0])
    steps: list[tuple[int]] = [(1,), (2,)]
    marks.mark(steps)
    older, newest = steps
    steps.append((3,))                       # arrives after the reading: not its step
    assert marks.take(older) is None and marks.take(steps[2]) is None
    marks.mark(steps)                        # the reading still waits for its step: kept as it is
    assert marks.take(newest) == 1.5 and marks.take(newest) is None
    marks.mark(steps)
    assert marks.take(steps[2]) == 2.5
    marks.mark([(4,)])                       # 3.5 for a step that is dropped before it is converted ...
    now[0] += MARK_MAX_AGE + 1               # ... so a new reading replaces it once it is old
    steps = [(5,)]
    marks.mark(steps)
    assert marks.take(steps[0]) == 4.5


def test_no_clock_or_no_steps_means_no_reading() -> None:
    marks = StepCpuMarks(None)
    marks.mark([(1,)])
    assert marks.raw is None
    calls: list[int] = []
    marks = StepCpuMarks(lambda: float(calls.append(1) or 0))
    marks.mark([])
    assert calls == []


@linux_clock
def test_another_threads_cpu_clock_is_read_from_here(wait_until: Callable[..., Any]) -> None:
    started, done = threading.Event(), threading.Event()
    clock: list[Callable[[], float] | None] = []

    def busy() -> None:
        clock.append(thread_cpu_clock())
        started.set()
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
        done.wait(30)   # stays alive, so its clock can be read after the busy part

    t = threading.Thread(target=busy)
    t.start()
    try:
        started.wait(10)
        read = clock[0]
        assert read is not None
        wait_until(lambda: read() >= 0.05, message="the busy thread's CPU clock to pass 50 ms")
    finally:
        done.set()
        t.join()


@linux_clock
def test_the_monitor_stores_its_training_threads_cpu_on_some_steps(db_url: str) -> None:
    mon = runlens.Monitor(name="cpu-clock", db=db_url, flush_interval=0.05)
    with mon:
        for step in range(60):
            end = time.perf_counter() + 0.005
            while time.perf_counter() < end:
                pass
            mon.step(step, loss=1.0)
    store = open_store(db_url)
    rows = store.rows("step_metrics", str(mon.job_id), order_by="step", columns=("step", "thread_cpu_seconds"))
    readings = [(r["step"], r["thread_cpu_seconds"]) for r in rows if r["thread_cpu_seconds"] is not None]
    assert len(readings) >= 2, readings
    steps, cpu = np.array(readings).T
    assert (np.diff(cpu) >= 0).all()
    # 5 ms of CPU per step on the training thread (less only where the machine took the core away).
    per_step = (cpu[-1] - cpu[0]) / (steps[-1] - steps[0])
    assert 0.002 <= per_step <= 0.02, readings


# -- a real DDP job -----------------------------------------------------------------------------------------

def _collect_ddp(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[Store, str]:
    db = tmp_path / "runlens.db"
    argv = [sys.executable, "-m", "runlens", "collect", "--db", str(db), "--",
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(STRAGGLER), *args]
    run_env = {**env, "RUNLENS_FLUSH_INTERVAL": "0.2", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(argv, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = open_store(str(db), create=False)
    (job,) = store.list_jobs()
    return store, str(job["job_id"])


def _recommendations(store: Store, job_id: str) -> dict[str, dict[str, Any]]:
    doc = build_analysis(load_job(store, job_id))
    return {r["id"]: r for r in doc["recommendations"]}


@pytest.mark.slow
@pytest.mark.needs_torch
def test_a_slow_rank_of_a_gloo_ddp_job_is_named_and_steps_are_counted_per_rank(
        tmp_path: Path, child_env: dict[str, str]) -> None:
    store, job_id = _collect_ddp(tmp_path, child_env, "--steps", "120", "--slow-rank", "1", "--extra", "0.02")
    (job,) = store.list_jobs()
    assert (job["steps"], job["ranks"], job["world_size"]) == (120, 2, 2)
    result = CliRunner().invoke(cli, ["jobs", "--db", str(tmp_path / "runlens.db")])
    assert result.exit_code == 0, result.output
    assert "120 x 2 ranks" in result.output
    recs = _recommendations(store, job_id)
    assert "ranks.straggler" in recs, list(recs)
    ev = recs["ranks.straggler"]["evidence"]
    assert ev["rank"] == 1 and ev["signal"] == "cpu" and ev["host"]
    # 20 ms of CPU a step on rank 1 (counted on its CPU clock), about 1 ms on both ranks for the model.
    assert 0.015 <= ev["seconds_per_step"] <= 0.025, ev
    per_rank = {row["rank"]: row for row in ev["per_rank"]}
    assert per_rank[1]["busy_share"] > per_rank[0]["busy_share"]


@pytest.mark.slow
@pytest.mark.needs_torch
def test_a_balanced_gloo_ddp_job_has_no_straggler(tmp_path: Path, child_env: dict[str, str]) -> None:
    store, job_id = _collect_ddp(tmp_path, child_env, "--steps", "300", "--extra", "0")
    recs = _recommendations(store, job_id)
    assert "ranks.straggler" not in recs, recs.get("ranks.straggler")
    doc_ranks = store.rank_progress(job_id)
    assert [(r["rank"], r["steps"]) for r in doc_ranks] == [(0, 300), (1, 300)]
