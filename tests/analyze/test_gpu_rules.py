"""GPU-aware analysis on stored runs: which memory pool binds (and so which zones the timeline carries), and the
under-utilised GPU finding with the causes each run's evidence supports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from gpu_jobs import H200_TOTAL_GB, HOST_TOTAL_GB, analysis_of, gpu_job, rising

from runlens.analyze import measures as m
from runlens.analyze.jobdata import JobData
from runlens.analyze.load import load_job
from runlens.analyze.rules import gpu, throughput
from runlens.analyze.timeline import build_timeline
from runlens.store import Store


def zones_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {z["resource"]: z for z in doc["metrics_timeline"]["zones"]}


def gpu_finding(doc: dict[str, Any]) -> dict[str, Any] | None:
    hits = [r for r in doc["recommendations"] if r["id"] == "gpu.underutilized"]
    assert len(hits) <= 1
    return hits[0] if hits else None


# -- the binding pool drives the zones ------------------------------------------------------------------------

def test_gpu_bound_run_gets_gpu_zones_on_the_gpu_line(store: Store) -> None:
    """The H200 run: the GPU fills to 96 % of NVML's 140.4 GiB while RAM stays at a third: GPU zones only."""
    jid = gpu_job(store, gpu_used=rising(20.0, 135.0, 120), ram_used=40.0)
    tl = analysis_of(store, jid)["metrics_timeline"]
    assert tl["binding_resource"] == "gpu"
    (zone,) = tl["zones"]
    assert zone["resource"] == "gpu" and zone["series"] == "gpu_used_gb"
    assert zone["limit_gb"] == pytest.approx(140.4, abs=0.05)
    assert zone["warning_gb"] == pytest.approx(0.85 * H200_TOTAL_GB, abs=1e-3)
    assert zone["critical_gb"] == pytest.approx(0.95 * H200_TOTAL_GB, abs=1e-3)
    assert zone["peak_ratio"] == pytest.approx(135.0 / H200_TOTAL_GB)
    assert "GPU" in tl["binding_reason"] and "140.4 GiB" in tl["binding_reason"]
    # thresholds keep their first meaning: the levels on system RAM
    assert tl["thresholds"]["warning_gb"] == pytest.approx(0.85 * HOST_TOTAL_GB)


def test_host_bound_run_gets_host_zones(store: Store) -> None:
    jid = gpu_job(store, gpu_used=30.0, ram_used=rising(40.0, 118.0, 120))
    tl = analysis_of(store, jid)["metrics_timeline"]
    assert tl["binding_resource"] == "host"
    assert list(zones_of({"metrics_timeline": tl})) == ["host"]
    zone = tl["zones"][0]
    assert zone["series"] == "system_used_gb" and zone["limit_gb"] == pytest.approx(HOST_TOTAL_GB)
    assert zone["warning_gb"] == pytest.approx(tl["thresholds"]["warning_gb"])


def test_both_pools_above_70_percent_get_both_zones(store: Store) -> None:
    jid = gpu_job(store, gpu_used=rising(60.0, 120.0, 120), ram_used=rising(50.0, 100.0, 120))
    doc = analysis_of(store, jid)
    assert doc["metrics_timeline"]["binding_resource"] == "both"
    zones = zones_of(doc)
    assert set(zones) == {"host", "gpu"}
    assert zones["gpu"]["series"] == "gpu_used_gb" and zones["host"]["series"] == "system_used_gb"


def test_a_cuda_oom_binds_the_gpu_even_when_ram_is_fuller(store: Store) -> None:
    """RAM at 64 % is fuller by ratio than the GPU at 50 %, but the run died of a CUDA OOM: GPU zones."""
    jid = gpu_job(store, gpu_used=70.0, ram_used=80.0, cuda_oom=True, status="failed")
    tl = analysis_of(store, jid)["metrics_timeline"]
    assert tl["binding_resource"] == "gpu"
    assert [z["resource"] for z in tl["zones"]] == ["gpu"]
    assert tl["binding_reason"].startswith("CUDA out of memory")


def test_several_gpus_zone_the_fullest_device_not_the_sum(store: Store) -> None:
    jid = gpu_job(store, devices=2, gpu_used=[50.0, rising(60.0, 130.0, 120)], ram_used=40.0)
    tl = analysis_of(store, jid)["metrics_timeline"]
    (zone,) = tl["zones"]
    assert zone["resource"] == "gpu" and zone["device_index"] == 1
    assert zone["series"] == "gpu_device_used_gb"
    assert max(tl["memory"]["gpu_device_used_gb"]["y"]) == pytest.approx(130.0)
    assert max(tl["memory"]["gpu_used_gb"]["y"]) == pytest.approx(180.0)   # the sum stays, unzoned


def test_unified_memory_is_one_pool(store: Store) -> None:
    jid = gpu_job(store, devices=0, ram_used=rising(40.0, 110.0, 120))
    data = load_job(store, jid)
    data.samples["unified_memory"] = True
    tl = build_timeline(data, total_memory_gb=HOST_TOTAL_GB)
    assert tl["binding_resource"] == "unified"
    assert [(z["resource"], z["series"]) for z in tl["zones"]] == [("unified", "system_used_gb")]


def test_no_gpu_run_is_host_bound(store: Store) -> None:
    jid = gpu_job(store, devices=0, ram_used=50.0)
    doc = analysis_of(store, jid)
    assert doc["metrics_timeline"]["binding_resource"] == "host"
    assert gpu_finding(doc) is None


def test_the_jobs_own_gpu_memory_is_drawn_and_preferred_for_the_batch_cause(store: Store) -> None:
    """Where the collector recorded the job's own share (NVML's per-process list), it is a series of its own,
    and the small-batch cause reads it rather than the device's used memory (other processes' included)."""
    jid = gpu_job(store, gpu_used=100.0, util=55.0, ram_used=40.0)
    data = load_job(store, jid)
    data.samples = data.samples.assign(job_gpu_memory_gb=20.0)
    data.gpus = data.gpus.assign(job_gpu_memory_gb=20.0)
    tl = build_timeline(data, total_memory_gb=HOST_TOTAL_GB, gpu_total_memory_gb=H200_TOTAL_GB)
    assert max(tl["memory"]["gpu_job_gb"]["y"]) == pytest.approx(20.0)
    assert tl["binding_resource"] == "gpu"   # the device fills (100 of 140.4 GiB), whoever fills it
    (f,) = gpu.underutilized(data)
    (cause,) = [c for c in f.evidence["causes"] if c["cause"] == "small_batch"]
    assert cause["memory_source"] == "job" and cause["peak_gb"] == pytest.approx(20.0)


def test_job_gpu_memory_from_device_rows_sums_the_devices() -> None:
    gpus = pd.DataFrame({"timestamp": [1.0, 1.0, 2.0, 2.0], "device_index": [0, 1, 0, 1],
                         "memory_used_gb": 50.0, "memory_total_gb": 80.0, "job_gpu_memory_gb": [3.0, 4.0, 5.0, 6.0]})
    data = JobData(job={"job_id": "j"}, steps=pd.DataFrame(), samples=pd.DataFrame(), events=pd.DataFrame(),
                   gpus=gpus)
    ser = m.job_gpu_series(data)
    assert ser is not None and list(ser.used) == [7.0, 11.0] and ser.total == 160.0


# -- under-utilised GPU ------------------------------------------------------------------------------------------

def test_low_utilisation_with_data_wait_names_input_bound(store: Store) -> None:
    """40 % busy, 30 % of each step waiting for data, for 10 minutes: a warning naming input-bound, with the
    utilisation predicted without the wait (40 / 0.7 = 57 %)."""
    jid = gpu_job(store, n_samples=140, util=lambda i: 40.0 + (i % 3), gpu_used=30.0, n_steps=640,
                  step_time=1.0, data_time=0.3)
    doc = analysis_of(store, jid)
    f = gpu_finding(doc)
    assert f is not None and f["severity"] == "warning"
    causes = [c["cause"] for c in f["evidence"]["causes"]]
    assert causes[0] == "input_bound" and "small_batch" in causes
    assert f["evidence"]["gpu_utilization_percent"] == pytest.approx(41.0, abs=0.5)
    assert f["evidence"]["predicted_utilization_percent"] == pytest.approx(41.0 / 0.7, abs=1.0)
    assert "input-bound" in f["title"] and f["impact"].startswith("GPU busy 41% while training")
    assert "up to ~59% busy" in f["impact"]
    assert "Input-bound: 30% of step time" in f["action"]
    assert any("synchronisation" in n for n in f["evidence"]["not_measured"])
    assert f["category"] == "throughput" and f["impact_unit"] == "percent_time"
    assert any(r["id"] == "throughput.input_bound" for r in doc["recommendations"])


def test_the_h200_run_at_57_to_63_percent_is_remarked(store: Store) -> None:
    jid = gpu_job(store, util=lambda i: 57.0 + 6.0 * (i % 2), gpu_used=rising(20.0, 135.0, 120), n_steps=500,
                  data_time=0.01)
    f = gpu_finding(analysis_of(store, jid))
    assert f is not None and f["severity"] == "info"
    assert f["evidence"]["gpu_utilization_percent"] == pytest.approx(60.0, abs=0.5)
    assert f["evidence"]["causes"] == []   # memory was full and no data wait: no cause this run measured
    assert "torch.profiler" in f["action"]


def test_a_busy_gpu_has_no_finding(store: Store) -> None:
    jid = gpu_job(store, util=lambda i: 92.0 + (i % 5), n_steps=500, data_time=0.2)
    assert gpu_finding(analysis_of(store, jid)) is None


def test_zero_code_run_from_samples_alone(store: Store) -> None:
    """No steps (runlens collect -- CMD): the window is the run, less the idle start-up and shutdown; the data
    wait is said to be unmeasured; a main process at 100 % of a core is the CPU-bound cause."""
    def util(i: int) -> float:
        return 0.0 if i < 20 or i >= 110 else 50.0   # loading the model, then training, then saving

    jid = gpu_job(store, util=util, gpu_used=100.0, process_cpu=lambda i: 99.0 + (i % 2))
    f = gpu_finding(analysis_of(store, jid))
    assert f is not None
    ev = f["evidence"]
    assert ev["window"] == "run" and ev["gpu_utilization_percent"] == pytest.approx(50.0)
    assert ev["samples"] == 90
    assert [c["cause"] for c in ev["causes"]] == ["cpu_bound"]
    assert any(n.startswith("data wait") for n in ev["not_measured"])
    assert "while running" in f["title"]


def test_idle_devices_are_a_cause(store: Store) -> None:
    jid = gpu_job(store, devices=2, util=[90.0, 0.0], gpu_used=[100.0, 0.5], n_steps=500)
    f = gpu_finding(analysis_of(store, jid))
    assert f is not None
    (cause,) = f["evidence"]["causes"]
    assert cause["cause"] == "idle_devices" and cause["idle_devices"] == [1]
    assert f["evidence"]["per_device_percent"] == {"0": pytest.approx(90.0), "1": pytest.approx(0.0)}


def test_no_finding_without_utilisation_or_with_a_never_busy_gpu_and_no_steps(store: Store) -> None:
    assert gpu_finding(analysis_of(store, gpu_job(store, util=None))) is None
    assert gpu_finding(analysis_of(store, gpu_job(store, util=0.0))) is None


def test_the_throughput_rule_keeps_its_batch_size_change_and_this_one_stays_quiet(store: Store) -> None:
    """30 % busy, memory free and no data wait: throughput.gpu_underutilized already says "raise the batch";
    the same diagnosis is not given twice."""
    jid = gpu_job(store, util=30.0, gpu_used=20.0, n_steps=500)
    data = load_job(store, jid)
    assert throughput.gpu_underutilized(data) and gpu.underutilized(data) == []


def test_too_few_samples_say_nothing(store: Store) -> None:
    jid = gpu_job(store, n_samples=5, util=30.0, gpu_used=100.0)
    assert gpu.underutilized(load_job(store, jid)) == []


def test_samples_without_job_level_figures_fall_back_to_device_rows(store: Store) -> None:
    jid = gpu_job(store, util=55.0, gpu_used=100.0, n_steps=500)
    data = load_job(store, jid)
    data.samples["gpu_utilization_percent"] = np.nan
    (f,) = gpu.underutilized(data)
    assert f.evidence["gpu_utilization_percent"] == pytest.approx(55.0)
