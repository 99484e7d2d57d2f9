"""Loading a job into frames (steps with extras, samples, events, the latest costs), a job read while its writer
still appends, and the stored analysis rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sample_jobs import T0, make_job

from runlens.analyze.health import run_window
from runlens.analyze.load import load_job
from runlens.store import Store
from runlens.store.frames import latest_analysis, load_frames, save_analysis
from runlens.store.writer import BatchWriter


def test_frames_round_trip_with_extras_events_and_latest_costs(store: Store) -> None:
    jid = make_job(store, n_steps=300, n_samples=40)
    f = load_frames(store, jid)
    assert len(f.steps) == 300 and len(f.samples) == 40 and list(f.events["event_type"]) == ["start", "end"]
    assert f.steps["step"].dtype == np.int64 and f.steps["timestamp"].is_monotonic_increasing
    assert f.steps["loss"].iloc[0] == pytest.approx(2.0)
    # extras: numbers become a float column, strings stay strings, rows without extras are NaN/None.
    assert f.steps["x_tokens_per_s"].iloc[3] == pytest.approx(103.0)
    assert math.isnan(f.steps["x_tokens_per_s"].iloc[1])
    assert f.steps["x_phase"].iloc[0] == "train" and pd.isna(f.steps["x_phase"].iloc[1])
    assert f.samples["used_memory_gb"].max() == pytest.approx(30.0)
    assert f.events["details"].iloc[1] == {"status": "succeeded"}
    costs = f.costs.set_index("operation")
    assert costs.loc["step", "calls"] == 300 and costs.loc["step", "total_seconds"] == pytest.approx(0.02)
    assert not costs.loc["thread:runlens-writer", "on_training_thread"]


def test_frames_without_extras_have_no_x_columns_and_empty_tables_keep_columns(store: Store) -> None:
    jid = make_job(store, n_steps=5, n_samples=0, extras=False)
    f = load_frames(store, jid)
    assert not [c for c in f.steps.columns if c.startswith("x_")]
    assert f.samples.empty and "used_memory_gb" in f.samples.columns
    assert f.gpus.empty and "memory_used_gb" in f.gpus.columns


def test_frames_of_a_job_still_being_written(store: Store) -> None:
    """A running job (no end event) is read while its writer keeps appending: each read is a consistent
    snapshot, and the next read sees the new rows."""
    jid = store.create_job(name="live", started_at=T0)
    writer = BatchWriter(store, jid, flush_interval=0.02).start()
    try:
        for i in range(50):
            writer.put_step({"step": i, "timestamp": T0 + i, "step_time_seconds": 1.0})
        assert writer.flush()
        first = load_frames(store, jid)
        for i in range(50, 120):
            writer.put_step({"step": i, "timestamp": T0 + i, "step_time_seconds": 1.0})
            if i % 10 == 0:
                load_frames(store, jid)   # reads interleaved with commits never fail or tear
        assert writer.flush()
        second = load_frames(store, jid)
    finally:
        writer.close()
    assert len(first.steps) == 50 and len(second.steps) == 120
    assert first.job["status"] == "running" and first.job["ended_at"] is None
    data = load_job(store, jid, now=T0 + 130)
    assert run_window(data)[2] in ("now", "last_seen")


def test_save_and_latest_analysis(store: Store) -> None:
    jid = make_job(store, n_steps=3, n_samples=3)
    assert latest_analysis(store, jid) is None
    rid1 = save_analysis(store, jid, {"summary": {"health_score": "good", "peak_memory_gb": 1.0}, "n": 1})
    rid2 = save_analysis(store, jid, {"summary": {"health_score": "warning", "peak_memory_gb": 2.0}, "n": 2})
    assert rid2 > rid1
    assert latest_analysis(store, jid)["n"] == 2  # type: ignore[index]
    row = store.rows("analysis_reports", jid, order_by="id", descending=True, limit=1)[0]
    assert row["health_score"] == "warning" and row["peak_memory_gb"] == 2.0 and row["runlens_version"]
