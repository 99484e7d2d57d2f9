"""Memory in a container: the summary, the thresholds, the timeline's zones and the OOM verdict use the memory
cgroup's limit where it is below the host's RAM, and say so; a kill the cgroup counted is critical."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sample_jobs import T0, job_data

from runlens.analyze import measures as m
from runlens.analyze.analysis import build_analysis
from runlens.analyze.jobdata import JobData
from runlens.report.terminal import format_summary

HOST_GB = 23.5
N = 40


def container_job(working_set: np.ndarray | float | None, *, limit: float | None = 2.25,
                  kills: list[int] | None = None, host_used: float = 3.0, job: dict[str, Any] | None = None,
                  events: list[dict[str, Any]] | None = None) -> JobData:
    ts = T0 + np.arange(N) * 5.0
    samples = pd.DataFrame({
        "timestamp": ts, "total_memory_gb": HOST_GB, "used_memory_gb": host_used,
        "available_memory_gb": HOST_GB - host_used, "main_process_memory_gb": 0.3,
        "worker_memory_gb": 1.6, "worker_count": 4,
        "container_memory_limit_gb": limit,
        "container_memory_working_set_gb": working_set,
        "container_oom_kills": kills if kills is not None else 0,
    })
    steps = pd.DataFrame({"step": np.arange(N * 2), "timestamp": T0 + np.arange(N * 2) * 2.5,
                          "step_time_seconds": 2.5, "loss": np.linspace(2.0, 1.0, N * 2)})
    return job_data(samples=samples, steps=steps, events=events,
                    job={"ended_at": float(ts[-1]) + 1.0, **(job or {})})


def recs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in doc["recommendations"]}


KILLED = {"status": "failed", "exit_code": 137, "exit_signal": 9,
          "status_reason": "killed by the kernel's OOM killer at the container's memory limit"}


def test_pressure_is_judged_against_the_container_limit_and_says_so() -> None:
    """2.0 GiB of a 2.25 GiB container on a 23.5 GiB host: 89 % of the limit, not 13 % of the host."""
    data = container_job(np.linspace(0.8, 2.0, N))
    doc = build_analysis(data)
    s = doc["summary"]
    assert s["memory_limit_source"] == "cgroup"
    assert s["total_memory_gb"] == pytest.approx(2.25) and s["peak_memory_gb"] == pytest.approx(2.0)
    assert s["peak_memory_ratio"] == pytest.approx(2.0 / 2.25)
    peak = recs(doc)["memory.peak"]
    assert peak["severity"] == "warning" and peak["title"] == "Container memory peaked at 89% of its limit"
    assert "/ 2.25 GiB container limit (89%)" in peak["impact"]
    assert peak["evidence"]["memory_limit_source"] == "cgroup"
    tl = doc["metrics_timeline"]
    assert tl["memory_limit_source"] == "cgroup" and tl["binding_resource"] == "host"
    (zone,) = tl["zones"]
    assert zone["series"] == "container_used_gb" and zone["limit_source"] == "cgroup"
    assert zone["limit_gb"] == pytest.approx(2.25) and zone["warning_gb"] == pytest.approx(0.85 * 2.25)
    assert max(tl["memory"]["container_used_gb"]["y"]) == pytest.approx(2.0)
    assert "system_used_gb" in tl["memory"]     # the host's line is still drawn, without zones
    assert "2.0 / 2.2 GiB container limit (89%)" in format_summary(doc)


def test_a_kill_the_cgroup_counted_is_critical_and_named() -> None:
    """The batch ramp: the cgroup's oom_kill counter rises, the child dies of SIGKILL; the last sample before the
    kill showed only 60 % of the limit (memory doubled between two samples), and it is still critical."""
    used = np.linspace(0.2, 1.35, N)
    data = container_job(used, kills=[0] * (N - 1) + [1], job=KILLED)
    doc = build_analysis(data)
    assert doc["summary"]["health_score"] == "critical"
    oom = recs(doc)["memory.oom"]
    assert oom["severity"] == "critical"
    assert oom["title"].startswith("Training was killed by the OOM killer at its container's memory limit")
    assert "/ 2.25 GiB container limit" in oom["impact"]
    assert "the container's memory cgroup counted 1 OOM kill" in oom["impact"]
    assert oom["evidence"]["container_oom_kills"] == 1 and oom["evidence"]["memory_limit_source"] == "cgroup"
    (o,) = m.oom_occurrences(data)       # the SIGKILL is explained, no longer a separate suspicion
    assert o.source == "cgroup" and o.kind == "host" and o.timestamp == pytest.approx(T0 + (N - 1) * 5.0)
    assert "memory.peak" not in recs(doc)   # memory.oom reports this memory


def test_the_collectors_confirmed_kill_event_alone_is_critical() -> None:
    """A kill between the last sample and the child's death: only the count runlens collect read afterwards."""
    end = T0 + N * 5.0
    data = container_job(np.linspace(0.2, 1.0, N), job=KILLED, events=[
        {"timestamp": end, "event_type": "host_oom_suspected",
         "details": {"confirmed": True, "container_oom_kills": 1, "container_memory_limit_gb": 2.25}}])
    doc = build_analysis(data)
    oom = recs(doc)["memory.oom"]
    assert oom["severity"] == "critical" and "OOM killer" in oom["title"]
    assert doc["summary"]["health_score"] == "critical"
    assert [o.source for o in m.oom_occurrences(data)] == ["cgroup"]


def test_a_sigkill_without_a_cgroup_count_and_low_memory_stays_a_suspicion() -> None:
    """No limit, no count: a SIGKILL with RAM at 13 % may be a scheduler's; a warning, as before."""
    data = container_job(None, limit=None, kills=None, job=KILLED)
    data.samples = data.samples.drop(columns=["container_oom_kills"])
    doc = build_analysis(data)
    oom = recs(doc)["memory.oom"]
    assert oom["severity"] == "warning" and oom["title"].startswith("Training ran out of memory")
    assert doc["summary"]["memory_limit_source"] == "host"
    assert doc["summary"]["total_memory_gb"] == pytest.approx(HOST_GB)


def test_a_limit_above_the_hosts_ram_is_not_the_limit() -> None:
    """A pod allowed 64 GiB on a 23.5 GiB node runs out of the node's RAM first."""
    doc = build_analysis(container_job(np.full(N, 1.0), limit=64.0))
    assert doc["summary"]["memory_limit_source"] == "host"
    assert doc["summary"]["total_memory_gb"] == pytest.approx(HOST_GB)
    assert doc["summary"]["peak_memory_gb"] == pytest.approx(3.0)   # the host's RAM used
    assert "container_used_gb" not in doc["metrics_timeline"]["memory"]


def test_a_job_recorded_before_the_samples_carried_the_cgroup_uses_the_environments_limit() -> None:
    data = container_job(None, limit=None, kills=None, host_used=1.9,
                         job={"environment": {"cgroup_memory_limit_gb": 2.0}})
    data.samples = data.samples.drop(columns=["container_memory_limit_gb", "container_memory_working_set_gb",
                                              "container_oom_kills"])
    s = build_analysis(data)["summary"]
    assert s["memory_limit_source"] == "cgroup" and s["total_memory_gb"] == pytest.approx(2.0)
    assert s["peak_memory_gb"] == pytest.approx(1.9)
    ram = m.ram_series(data)
    assert ram is not None and ram.source == "cgroup" and ram.limit_words == "GiB container limit"
