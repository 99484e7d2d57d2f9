"""``runlens demo`` end to end, as a newcomer runs it: a real CPU training job under ``runlens collect``,
analysed, with an HTML report. The troubled run's recommendations must come from its measurements: the figures
in their evidence and impact are compared with the samples and steps stored for the job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runlens.demo.run import scenario_config, worker_cache_mb
from runlens.store import open_store

pytestmark = pytest.mark.slow

needs_torch = pytest.mark.needs_torch


def run_demo_cli(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "runlens", "demo", "--out", str(tmp_path / "demo"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return proc.stdout


def stored_analysis(tmp_path: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    store = open_store(str(tmp_path / "demo" / "runlens.db"), create=False)
    jobs = store.list_jobs()
    assert len(jobs) == 1
    job = store.get_job(jobs[0]["job_id"])
    reports = store.rows("analysis_reports", job["job_id"])
    assert len(reports) == 1
    return store, job, reports[0]["analysis"]


def report_path(stdout: str) -> Path:
    match = re.search(r"^Report: (.+)$", stdout, re.M)
    assert match, stdout[-2000:]
    return Path(match.group(1).strip())


@needs_torch
def test_troubled_demo_findings_follow_from_its_measurements(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """The troubled run really diverges, waits for data and holds worker memory; the report says so with the
    stored numbers: worker PSS from the samples, the data-wait share from the steps, the divergence step."""
    stdout = run_demo_cli(tmp_path, child_env, "--scenario", "troubled", "--steps", "160")
    html = report_path(stdout)
    assert html.exists() and html.stat().st_size > 10_000
    store, job, analysis = stored_analysis(tmp_path)
    assert job["name"] == "demo-troubled" and job["status"] == "succeeded"
    assert job["log_path"] and Path(job["log_path"]).exists()
    recs = {r["id"]: r for r in analysis["recommendations"]}
    assert analysis["summary"]["health_score"] == "critical"
    assert "memory.workers" in recs or "throughput.input_bound" in recs, list(recs)

    samples = store.rows("metrics_samples", job["job_id"])
    steps = store.rows("step_metrics", job["job_id"], order_by="step")
    config = job["config"]
    cache_gb = config["data"]["worker_cache_mb"] / 1024

    if "memory.workers" in recs:
        rec = recs["memory.workers"]
        ev = rec["evidence"]
        peak = max(samples, key=lambda s: s["worker_memory_gb"] or 0)
        assert ev["worker_memory_gb"] == pytest.approx(peak["worker_memory_gb"], rel=1e-6)
        assert ev["worker_count"] == peak["worker_count"] == config["data"]["num_workers"] == 4
        # Each worker really holds its cache (private pages) plus its own share of the interpreter.
        assert cache_gb <= ev["per_worker_gb"] <= cache_gb + 0.5
        assert rec["config_path"] == "data.num_workers" and rec["current_value"] == 4
        saved = ev["per_worker_gb"] * (4 - rec["recommended_value"])
        assert rec["impact_value"] == pytest.approx(saved, rel=0.01)
        assert f"{saved:.2f}"[:3] in rec["impact"]

    if "throughput.input_bound" in recs:
        ev = recs["throughput.input_bound"]["evidence"]
        # Steps with both timings (the first step has no step time; its data wait is the workers' start-up).
        timed = [s for s in steps if s["step_time_seconds"] and s["data_time_seconds"] is not None]
        data = np.array([s["data_time_seconds"] for s in timed])
        step = np.array([s["step_time_seconds"] for s in timed])
        assert ev["data_wait_share"] == pytest.approx(data.sum() / step.sum(), abs=0.1)
        assert ev["data_wait_seconds"] == pytest.approx(data.sum(), rel=0.25)
        assert f"{ev['data_wait_share'] * 100:.0f}%" in recs["throughput.input_bound"]["title"]
        assert ev["num_workers"] == 4

    rec = recs["training.nonfinite"]
    first_bad = next(
        s["step"]
        for s in steps
        if s["loss"] is None
        or s["gradient_norm"] is None
        or not np.isfinite(s["gradient_norm"])
        or (s["extras"] or {}).get("nonfinite")
    )
    assert rec["evidence"]["step"] == first_bad
    assert rec["config_path"] == "optimizer.learning_rate" and rec["current_value"] == 0.15
    assert rec["recommended_value"] < 0.15

    assert "Health:" in stdout and "CRITICAL" in stdout
    assert "data.num_workers" in stdout or "prefetch_factor" in stdout


@needs_torch
def test_healthy_demo_is_good(tmp_path: Path, child_env: dict[str, str]) -> None:
    """The same job well configured: health good, nothing above an informational note.

    Timing findings (a slower pace, stalls) are measurements of the machine too: a neighbour that takes the
    CPU for a few seconds of a 10-second run is a real slowdown. One rerun in a fresh folder tells that apart
    from a run that is really unhealthy; both attempts' findings are shown on failure.
    """
    attempts = []
    for attempt in range(2):
        folder = tmp_path / f"attempt-{attempt}"
        folder.mkdir()
        stdout = run_demo_cli(folder, child_env, "--scenario", "healthy", "--steps", "200")
        assert report_path(stdout).exists()
        _, _, analysis = stored_analysis(folder)
        assert analysis["summary"]["steps_completed"] == 200
        attempts.append([(r["id"], r["severity"], r["impact"]) for r in analysis["recommendations"]])
        if analysis["summary"]["health_score"] == "good":
            break
    assert analysis["summary"]["health_score"] == "good", attempts
    assert {severity for _, severity, _ in attempts[-1]} <= {"info"}, attempts


def test_numpy_backend_runs_without_torch(tmp_path: Path, child_env: dict[str, str]) -> None:
    """`runlens demo` from a bare install: the NumPy model and its multiprocessing loader are recorded too,
    worker memory included."""
    stdout = run_demo_cli(
        tmp_path, child_env, "--scenario", "troubled", "--steps", "60", "--backend", "numpy"
    )
    assert "with numpy" in stdout
    store, job, analysis = stored_analysis(tmp_path)
    assert analysis["summary"]["steps_completed"] == 60
    counts = [s["worker_count"] for s in store.rows("metrics_samples", job["job_id"]) if s["worker_count"]]
    assert counts and max(counts) == 4


def test_worker_cache_is_sized_from_memory_and_capped() -> None:
    """A quarter of the memory in use, 1-4 GB in all, never more than a quarter of what is available."""

    class VM:
        def __init__(self, total_gb: float, available_gb: float) -> None:
            self.total, self.available = total_gb * 2**30, available_gb * 2**30

    assert worker_cache_mb(4, VM(24, 22)) == 256  # 2 GB used -> the 1 GB floor
    assert worker_cache_mb(4, VM(64, 32)) == 1024  # 32 GB used -> the 4 GB cap
    assert worker_cache_mb(4, VM(16, 2)) == 128  # little free -> a quarter of it
    cfg = scenario_config("troubled", steps=100, cache_mb=300)
    assert cfg["data"]["worker_cache_mb"] == 300 and cfg["optimizer"]["warmup_steps"] == 75
    with pytest.raises(ValueError):
        scenario_config("bogus")
