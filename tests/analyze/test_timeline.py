"""The drawn timeline: downsampled, but the peak and every critical event survive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sample_jobs import T0, job_data

from runlens.analyze.timeline import build_timeline


def test_timeline_downsamples_but_keeps_the_peak_and_every_critical_event() -> None:
    n = 100_000
    ts = T0 + np.arange(n) * 5.0
    used = 40 + 10 * np.sin(np.arange(n) / 100)
    used[77_777] = 119.2
    samples = pd.DataFrame({"timestamp": ts, "used_memory_gb": used, "total_memory_gb": 120.0,
                            "gpu_memory_used_gb": np.nan})
    steps = pd.DataFrame({"step": np.arange(n * 3), "timestamp": T0 + np.arange(n * 3) * 1.6,
                          "loss": np.linspace(3, 1, n * 3), "step_time_seconds": 1.6})
    steps.loc[123_456, "loss"] = 50.0
    events = [{"timestamp": T0 + i * 40.0, "event_type": "checkpoint_saved", "details": {}} for i in range(5000)]
    events += [{"timestamp": T0 + 1000.0 * k + 7, "event_type": "exception", "details": {"type": "E"}}
               for k in range(30)]
    events += [{"timestamp": float(ts[-1]), "event_type": "end", "details": {"status": "failed"}}]
    data = job_data(samples=samples, steps=steps, events=events, job={"ended_at": float(ts[-1])})
    tl = build_timeline(data, total_memory_gb=120.0)
    mem = tl["memory"]["system_used_gb"]
    assert len(mem["x"]) <= 1500 and max(mem["y"]) == pytest.approx(119.2)
    assert float(ts[77_777]) in mem["x"]
    assert "gpu_used_gb" not in tl["memory"]   # never recorded: left out, not a flat line
    assert len(tl["training"]["loss"]["x"]) <= 1500 and max(tl["training"]["loss"]["y"]) == 50.0
    assert tl["peaks"]["system_used_gb"] == {"value": pytest.approx(119.2), "timestamp": float(ts[77_777])}
    assert len(tl["events"]) <= 200
    kinds = [e["type"] for e in tl["events"]]
    assert kinds.count("exception") == 30 and kinds.count("end") == 1
    assert {e["severity"] for e in tl["events"] if e["type"] in ("exception", "end")} == {"critical"}
    assert tl["thresholds"]["critical_gb"] == pytest.approx(0.95 * 120.0)
    assert tl["raw_counts"] == {"samples": n, "steps": n * 3, "events": 5031}
    assert tl["start_time"] == T0
