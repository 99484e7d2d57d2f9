"""``metrics_timeline``: the series and events the report draws (shape in runlens.analyze.contract).

A 24-hour run has millions of steps and tens of thousands of samples; the report must stay under 2 MB and a
browser must draw it instantly, so each series is cut to at most ``MAX_POINTS`` points with the peak-keeping
MinMax downsampler (runlens.analyze.downsample) and events to ``MAX_EVENTS``. Figures (peaks, thresholds) come
from the raw rows, never from the drawn points: ``peaks`` records each series' raw maximum and when it happened.

x values: memory series and events are UNIX seconds (``start_time`` is the origin the report subtracts);
training series are step numbers.

Zones: ``zones`` names the pool(s) that bind the run (``binding_resource``, see
runlens.analyze.measures.memory.binding) and the warning/critical levels on each, so the chart shades GPU
zones on the GPU line when the GPU is what fills, and RAM zones when RAM does. ``thresholds`` keeps its first
meaning (the levels on system RAM) for readers that predate ``zones``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze.downsample import minmax_downsample
from runlens.analyze.health import main_rank
from runlens.analyze.jobdata import JobData
from runlens.analyze import measures as m
from runlens.analyze.measures import col
from runlens.core.numbers import parse_finite

__all__ = ["CRITICAL_EVENTS", "MAX_EVENTS", "MAX_POINTS", "build_timeline", "event_label", "event_severity"]

MAX_POINTS = 1500   # per series: ~27 KB of SVG per 800-point series, so the report stays near a 2 MB bound
MAX_EVENTS = 200

# (timeline name, samples column)
MEMORY_COLUMNS = (
    ("system_used_gb", "used_memory_gb"),
    ("main_process_gb", "main_process_memory_gb"),
    ("workers_gb", "worker_memory_gb"),
    ("gpu_used_gb", "gpu_memory_used_gb"),
    ("swap_used_gb", "swap_used_gb"),
)
GPU_DEVICE_SERIES = "gpu_device_used_gb"   # the fullest GPU, drawn when the job has several (the sum is not zoned)
GPU_JOB_SERIES = "gpu_job_gb"              # the job's own processes' memory on its GPUs, where recorded
CONTAINER_SERIES = "container_used_gb"     # the container's working set, drawn when its limit binds RAM
TRAINING_COLUMNS = ("loss", "learning_rate", "gradient_norm", "step_time_seconds", "data_time_seconds")

# Always drawn, whatever the cap: they are what a post-mortem is about.
CRITICAL_EVENTS = frozenset({"oom", "cuda_oom", "host_oom_suspected", "oom_abort", "exception", "hang_suspected",
                             "signal", "end"})
WARNING_EVENTS = frozenset({"oom_skip", "buffer_overflow", "monitoring_budget_exceeded", "monitoring_over_budget",
                            "batch_size_change", "batch_size_changed"})
_ALWAYS_KEEP = CRITICAL_EVENTS | {"start"}


def build_timeline(data: JobData, *, total_memory_gb: float | None = None, gpu_total_memory_gb: float | None = None,
                   max_points: int = MAX_POINTS, max_events: int = MAX_EVENTS) -> dict[str, Any]:
    """The ``metrics_timeline`` section of the analysis document."""
    samples = _primary_host(data)
    steps = main_rank(data.steps)
    memory: dict[str, dict[str, list[Any]]] = {}
    peaks: dict[str, dict[str, float]] = {}
    s_ts = col(samples, "timestamp")
    for name, column in MEMORY_COLUMNS:
        y = col(samples, column)
        if name == "system_used_gb" and not np.isfinite(y).any():
            y = col(samples, "total_memory_gb") - col(samples, "available_memory_gb")
        if not np.isfinite(y).any():
            continue   # a series never recorded (no GPU, no workers) is left out, not drawn as a flat zero
        memory[name] = _series(s_ts, y, max_points)
        peaks[name] = _peak(s_ts, y)
    limit_source = m.memory_limit(data).source
    if limit_source == "cgroup":
        y = col(samples, m.CONTAINER_WORKING_SET_COLUMN)
        if np.isfinite(y).any():
            memory[CONTAINER_SERIES] = _series(s_ts, y, max_points)
            peaks[CONTAINER_SERIES] = _peak(s_ts, y)
    own = m.job_gpu_series(data)
    if own is not None:
        memory[GPU_JOB_SERIES] = _series(own.timestamps, own.used, max_points)
        peaks[GPU_JOB_SERIES] = _peak(own.timestamps, own.used)
    binding = m.binding(data)
    zones = [_zone(data, pool, memory, peaks, max_points, total_memory_gb, gpu_total_memory_gb)
             for pool in (binding.pools if binding is not None else ())]

    training: dict[str, dict[str, list[Any]]] = {}
    x_steps = col(steps, "step")
    for name in TRAINING_COLUMNS:
        y = col(steps, name)
        if not np.isfinite(y).any():
            continue
        training[name] = _series(x_steps, y, max_points)
        peaks[name] = _peak(x_steps, y, x_name="step")

    starts = [v for v in (_min(s_ts), _min(col(steps, "timestamp")), parse_finite(data.job.get("started_at")))
              if v is not None]
    thresholds: dict[str, Any] = {
        "warning_ratio": data.settings.memory_warning_threshold,
        "critical_ratio": data.settings.memory_critical_threshold,
        "warning_gb": None, "critical_gb": None,
    }
    if total_memory_gb:
        thresholds["warning_gb"] = round(data.settings.memory_warning_threshold * total_memory_gb, 4)
        thresholds["critical_gb"] = round(data.settings.memory_critical_threshold * total_memory_gb, 4)
    return {
        "start_time": min(starts) if starts else None,
        "memory": memory,
        "total_memory_gb": total_memory_gb,
        "gpu_total_memory_gb": gpu_total_memory_gb,
        "memory_limit_source": limit_source,   # addition: "cgroup" when total_memory_gb is a container's limit
        "thresholds": thresholds,
        # Additions to the contract: the pool(s) whose zones are drawn, and each zone's levels and limit.
        "binding_resource": binding.resource if binding is not None else None,
        "binding_reason": binding.reason if binding is not None else None,
        "zones": zones,
        "training": training,
        "events": timeline_events(data, max_events),
        "raw_counts": {"samples": len(data.samples), "steps": len(data.steps), "events": len(data.events)},
        "peaks": peaks,   # addition to the contract: raw maxima per series, {"value", "x"}
    }


def _zone(data: JobData, pool: m.MemorySeries, memory: dict[str, dict[str, list[Any]]],
          peaks: dict[str, dict[str, float]], max_points: int, host_total: float | None,
          gpu_total: float | None) -> dict[str, Any]:
    """The warning/critical levels on one binding pool, and the drawn series they apply to.

    The limit is the summary's figure where it has one (the container's limit for RAM, the fullest device's
    total for a GPU), so the zones, the summary and the chart's total line agree. A GPU pool on a job with
    several devices is one device, drawn as its own series: the summed ``gpu_used_gb`` has no device's limit.
    """
    if pool.kind == "gpu":
        resource, limit, series = "gpu", gpu_total or pool.total, "gpu_used_gb"
        if series not in memory or m.gpu_device_count(data) > 1:
            series = GPU_DEVICE_SERIES
            memory[series] = _series(pool.timestamps, pool.used, max_points)
            peaks[series] = _peak(pool.timestamps, pool.used)
    else:
        resource = "unified" if m.unified(data) else "host"
        limit, series = host_total or pool.total, "system_used_gb"
        if pool.source == "cgroup" and CONTAINER_SERIES in memory:
            series = CONTAINER_SERIES   # the container's working set is what its limit applies to
    warn, crit = data.settings.memory_warning_threshold, data.settings.memory_critical_threshold
    return {
        "resource": resource, "series": series, "device_index": pool.device, "limit_gb": limit,
        "limit_source": pool.source,
        "warning_ratio": warn, "critical_ratio": crit,
        "warning_gb": round(warn * limit, 4) if limit else None,
        "critical_gb": round(crit * limit, 4) if limit else None,
        "peak_gb": pool.peak, "peak_ratio": pool.peak / limit if pool.peak is not None and limit else None,
    }


def timeline_events(data: JobData, max_events: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """At most ``max_events`` events for drawing: every critical one (start, end, OOMs, exceptions, hangs,
    signals), then the others spread evenly over the run."""
    ev = data.events
    if ev is None or ev.empty:
        return []
    types = ev["event_type"].astype(str).to_numpy()
    ts = pd.to_numeric(ev["timestamp"], errors="coerce").to_numpy(float)
    placed = np.isfinite(ts)
    keep_always = np.flatnonzero(placed & np.isin(types, list(_ALWAYS_KEEP)))
    others = np.flatnonzero(placed & ~np.isin(types, list(_ALWAYS_KEEP)))
    if keep_always.size > max_events:
        # Thousands of OOM-skips or exceptions: the first and the last ones tell the story.
        half = max_events // 2
        keep_always = np.concatenate([keep_always[:half], keep_always[-(max_events - half):]])
    room = max_events - keep_always.size
    if others.size > room:
        others = others[np.linspace(0, others.size - 1, room).round().astype(int)] if room > 0 else others[:0]
    chosen = np.unique(np.concatenate([keep_always, others]))
    status = str(data.job.get("status") or "")
    details = ev["details"].tolist()
    out = []
    for i in chosen.tolist():
        d = details[i] if isinstance(details[i], dict) else {}
        etype = str(types[i])
        out.append({"timestamp": float(ts[i]), "type": etype, "label": event_label(etype, d),
                    "severity": event_severity(etype, d, status)})
    return out


def event_severity(event_type: str, details: dict[str, Any], job_status: str = "") -> str:
    if event_type == "end":
        st = str(details.get("status") or job_status or "")
        return "info" if st in ("succeeded", "completed", "running", "") else "critical"
    if event_type == "signal":
        return "critical"
    if event_type in CRITICAL_EVENTS:
        return "critical"
    if event_type in WARNING_EVENTS:
        return "warning"
    return "info"


def event_label(event_type: str, details: dict[str, Any]) -> str:
    """A short label for a marker: "eval start", "exception: RuntimeError", "hang (dataloader)"."""
    if event_type in ("phase_start", "phase_end"):
        name = details.get("phase") or details.get("name") or "phase"
        return f"{name} {'start' if event_type == 'phase_start' else 'end'}"
    if event_type == "exception":
        return f"exception: {details.get('type') or 'error'}"[:60]
    if event_type in ("oom", "cuda_oom", "host_oom_suspected", "oom_abort", "oom_skip"):
        return {"host_oom_suspected": "host OOM kill?", "oom_skip": "OOM (batch skipped)"}.get(event_type, "OOM")
    if event_type == "hang_suspected":
        phase = details.get("phase")
        return f"hang ({phase})" if phase else "hang"
    if event_type == "signal":
        return str(details.get("name") or details.get("signal") or "signal")[:40]
    if event_type == "end":
        return f"end ({details['status']})" if details.get("status") else "end"
    if event_type in ("batch_size_change", "batch_size_changed"):
        old, new = details.get("old", details.get("from")), details.get("new", details.get("to"))
        return f"batch size {old} -> {new}" if new is not None else "batch size change"
    name = details.get("name") or details.get("event")
    return (f"{event_type}: {name}" if name and name != event_type else event_type)[:60]


def _series(x: np.ndarray, y: np.ndarray, max_points: int) -> dict[str, list[Any]]:
    xs, ys = minmax_downsample(x, y, max_points)
    return {"x": xs, "y": ys}


def _peak(x: np.ndarray, y: np.ndarray, x_name: str = "timestamp") -> dict[str, float]:
    i = int(np.nanargmax(y))
    return {"value": float(y[i]), x_name: float(x[i]) if math.isfinite(x[i]) else None}  # type: ignore[dict-item]


def _primary_host(data: JobData) -> pd.DataFrame:
    """One host's samples for drawing: lines from two machines interleaved would zig-zag between them."""
    s = data.samples
    if s is None or s.empty or "host" not in s.columns:
        return s
    hosts = s["host"].dropna()
    if hosts.nunique() <= 1:
        return s
    job_host = data.job.get("host")
    host = job_host if job_host in set(hosts) else hosts.mode().iloc[0]
    return s[(s["host"] == host) | s["host"].isna()]




def _min(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(a.min()) if a.size else None


