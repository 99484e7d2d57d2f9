"""Health and goodput: the worst severity is the health; the wall clock split into productive time and named
losses that sum to it; where the wall ends for running, stale and crashed jobs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sample_jobs import T0, finding, job_data

from runlens.analyze.health import LOST_PARTS, goodput, health_score, run_window
from runlens.analyze.jobdata import JobData


def test_health_score_is_the_worst_severity() -> None:
    assert health_score([]) == "good"
    assert health_score([finding("a", "info"), finding("b", "warning")]) == "warning"
    assert health_score([finding("a", "critical"), finding("b", "warning")]) == "critical"


def _goodput_job() -> JobData:
    """1000 s of wall: 100 s start-up, 800 one-second steps (0.1 s data wait each), an eval phase of 30 s inside
    a step, a 20 s stall, a hang at the end, and 2 s of monitoring on the training thread."""
    n = 800
    st = np.full(n, 1.0)
    st[400] = 31.0   # the eval phase below runs inside this step
    st[600] = 21.0   # a stall
    ts = T0 + 100.0 + np.cumsum(st)
    steps = pd.DataFrame({"step": np.arange(n), "timestamp": ts, "step_time_seconds": st,
                          "data_time_seconds": np.full(n, 0.1)})
    eval_start = ts[399] + 0.5
    end_of_steps = float(ts[-1])
    events = [
        {"timestamp": eval_start, "event_type": "phase_start", "details": {"name": "eval"}},
        {"timestamp": eval_start + 30.0, "event_type": "phase_end", "details": {"name": "eval"}},
        {"timestamp": end_of_steps + 50.0, "event_type": "hang_suspected",
         "details": {"seconds_since_progress": 50.0, "phase": "train"}},
    ]
    costs = pd.DataFrame({"operation": ["step", "thread:w"], "total_seconds": [2.0, 50.0],
                          "on_training_thread": [True, False]})
    return job_data(steps=steps, events=events, costs=costs,
                    job={"started_at": T0, "ended_at": end_of_steps + 60.0})


def test_goodput_parts_sum_to_wall_and_name_each_loss() -> None:
    data = _goodput_job()
    g = goodput(data)
    lost = g["lost_seconds"]
    assert set(lost) == set(LOST_PARTS)
    assert g["productive_seconds"] + sum(lost.values()) == pytest.approx(g["wall_seconds"], abs=1e-6)
    assert all(v >= 0 for v in lost.values())
    assert g["wall_seconds"] == pytest.approx(100.0 + 798 + 31 + 21 + 60)
    assert lost["startup"] == pytest.approx(100.0)
    assert lost["data_wait"] == pytest.approx(80.0)
    assert lost["eval_and_checkpoints"] == pytest.approx(30.0)
    # the stall's excess over the median step's 0.9 s of compute (20.9 - 0.9), plus the hang: 60 s from the
    # last step to the end, which no step covers
    assert lost["stalls_and_hangs"] == pytest.approx(20.0 + 60.0)
    assert lost["other"] == pytest.approx(0.0, abs=1e-6)
    assert lost["monitoring"] == pytest.approx(2.0)
    assert g["ratio"] == pytest.approx(g["productive_seconds"] / g["wall_seconds"])
    assert g["stall_steps"] == 1  # type: ignore[typeddict-item]


def test_goodput_clamps_overlapping_sources_to_the_wall() -> None:
    """Two ranks' steps, monitoring larger than anything: parts never exceed the wall, nothing is negative."""
    n = 100
    steps = pd.DataFrame({"step": np.tile(np.arange(n), 2), "rank": np.repeat([0, 1], n),
                          "timestamp": np.tile(T0 + 1 + np.arange(n) * 1.0, 2), "step_time_seconds": 1.0,
                          "data_time_seconds": 0.0})
    costs = pd.DataFrame({"operation": ["user"], "total_seconds": [500.0], "on_training_thread": [True]})
    g = goodput(job_data(steps=steps, costs=costs, job={"ended_at": T0 + 101.0}))
    assert g["productive_seconds"] + sum(g["lost_seconds"].values()) == pytest.approx(101.0)
    assert min(g["lost_seconds"].values()) >= 0 and g["productive_seconds"] >= 0


def test_unmatched_phase_start_runs_to_the_next_step() -> None:
    steps = pd.DataFrame({"step": [0, 1], "timestamp": [T0 + 10, T0 + 80], "step_time_seconds": [1.0, 60.0]})
    events = [{"timestamp": T0 + 15, "event_type": "phase_start", "details": {"name": "save"}}]
    g = goodput(job_data(steps=steps, events=events, job={"ended_at": T0 + 100}))
    assert g["lost_seconds"]["eval_and_checkpoints"] == pytest.approx(65.0)


def test_wall_of_running_and_crashed_jobs() -> None:
    steps = pd.DataFrame({"step": [0], "timestamp": [T0 + 50], "step_time_seconds": [1.0]})
    running = job_data(steps=steps, job={"status": "running", "ended_at": None, "heartbeat_at": T0 + 95},
                       now=T0 + 100)
    assert run_window(running) == (T0, T0 + 100, "now")
    # "running" but silent for an hour: the process died without an end event; the wall stops at its last sign
    stale = job_data(steps=steps, job={"status": "running", "ended_at": None, "heartbeat_at": T0 + 95},
                     now=T0 + 3700)
    assert run_window(stale) == (T0, T0 + 95, "last_seen")
    crashed = job_data(steps=steps, job={"status": "failed", "ended_at": None}, now=T0 + 3700)
    assert run_window(crashed) == (T0, T0 + 50, "last_seen")
