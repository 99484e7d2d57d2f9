"""Memory over time, one domain at a time: system RAM (or unified memory) and the fullest discrete GPU, which
of the two the job is most likely to run out of, and which pool binds (the one the memory chart draws its zones
for).

A job in a container (Docker, a Kubernetes pod, a Slurm allocation) is killed at its memory cgroup's limit, not
at the host's RAM. Where the collector recorded a cgroup limit below the host's RAM, the "system" domain is the
container: its working set (usage minus inactive file pages, what kubelet and ``docker stats`` count) against
its limit, and every figure derived from it (peak ratio, thresholds, zones, the binding pool, the OOM verdict)
says so (``MemorySeries.source``, ``memory_limit``).

GPU figures are the device's as NVML reports them (``memory_used_gb``: every process on the device, against
the device's total); where the collector also recorded the job's own share (``job_gpu_memory_gb``, from NVML's
per-process list) it is read as a series of its own. All figures are GiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, finite, memo
from runlens.analyze.measures.oom import oom_occurrences

# The job's process tree's memory on its GPUs (NVML's per-process list), in metrics_samples (all the job's
# devices) and gpu_samples (per device) where the collector records it.
JOB_GPU_COLUMN = "job_gpu_memory_gb"
# A pool whose peak passed this share of its limit binds too: both sets of zones are drawn.
BINDING_SHARE = 0.70
_HOST_OOM_KINDS = frozenset({"host", "cpu"})
# The job's memory cgroup, per sample (runlens.collect.cgroup): the binding limit (null without one), the
# working set measured against it (the OOM-kill count is read by ``oom``).
CONTAINER_LIMIT_COLUMN = "container_memory_limit_gb"
CONTAINER_WORKING_SET_COLUMN = "container_memory_working_set_gb"


@dataclass
class MemorySeries:
    """One memory domain over time: ``kind`` "gpu" (discrete device memory) or "system" (RAM, unified memory)."""

    kind: str
    timestamps: np.ndarray
    used: np.ndarray
    total: float | None
    device: int | None = None   # the NVML index of the GPU, when the series is one device's
    source: str = "host"        # what ``total`` is: "host" (RAM, a GPU's memory) or "cgroup" (a container's limit)

    @property
    def limit_words(self) -> str:
        """The unit and what the total is, for sentences: "GiB", or "GiB container limit"."""
        return "GiB container limit" if self.source == "cgroup" else "GiB"

    @property
    def peak(self) -> float | None:
        f = finite(self.used)
        return float(f.max()) if f.size else None

    @property
    def peak_time(self) -> float | None:
        if not np.isfinite(self.used).any():
            return None
        return float(self.timestamps[int(np.nanargmax(self.used))])

    @property
    def peak_ratio(self) -> float | None:
        p = self.peak
        return p / self.total if p is not None and self.total else None


def unified(data: JobData) -> bool:
    if data.samples is None or "unified_memory" not in data.samples.columns:
        return False
    return bool((pd.to_numeric(data.samples["unified_memory"], errors="coerce") > 0).any())


@dataclass(frozen=True)
class MemoryLimit:
    """The memory the job could use outside a GPU: ``total_gb`` and its ``source``, "cgroup" (the job's memory
    cgroup's limit, below the host's RAM) or "host" (the host's RAM)."""

    total_gb: float | None
    source: str


def _host_used(s: pd.DataFrame) -> np.ndarray:
    used = col(s, "used_memory_gb")
    if not np.isfinite(used).any():
        used = col(s, "total_memory_gb") - col(s, "available_memory_gb")
    return used


def _cgroup_limit(data: JobData) -> float | None:
    """The container's limit: the recorded samples' (their median: a resize mid-run is rare), else the one the
    environment record read at the start (jobs recorded before the samples carried it)."""
    limits = finite(col(data.samples, CONTAINER_LIMIT_COLUMN))
    limits = limits[limits > 0]
    if limits.size:
        return float(np.median(limits))
    env = data.job.get("environment")
    value = env.get("cgroup_memory_limit_gb") if isinstance(env, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def memory_limit(data: JobData) -> MemoryLimit:
    """The job's RAM limit: its container's when that is below the host's RAM (the wall an OOM kill hits), else
    the host's (the largest total the samples recorded)."""
    return memo(data, "memory_limit", lambda: _memory_limit(data))


def _memory_limit(data: JobData) -> MemoryLimit:
    totals = col(data.samples, "total_memory_gb")
    host = float(np.nanmax(totals)) if np.isfinite(totals).any() else None
    limit = _cgroup_limit(data)
    if limit is not None and (host is None or limit < host):
        return MemoryLimit(limit, "cgroup")
    return MemoryLimit(host, "host")


def _container_used(s: pd.DataFrame) -> np.ndarray | None:
    working = col(s, CONTAINER_WORKING_SET_COLUMN)
    return working if np.isfinite(working).any() else None


def ram_peak(data: JobData) -> tuple[float | None, float | None, str]:
    """(peak used, limit, source) for the summary, from raw samples: the container's working set against its
    limit (``source`` "cgroup"), or the host's RAM used (total - available) against its RAM ("host")."""
    s = data.samples
    lim = memory_limit(data)
    used = _container_used(s) if lim.source == "cgroup" else None
    if used is None:
        used = _host_used(s)
    peak = float(np.nanmax(used)) if np.isfinite(used).any() else None
    return peak, lim.total_gb, lim.source


def ram_series(data: JobData) -> MemorySeries | None:
    """System RAM used (total - available) over time against the host's RAM; in a container with a lower limit,
    the container's working set against that limit (``source`` "cgroup")."""
    return memo(data, "ram_series", lambda: _ram_series(data))


def _ram_series(data: JobData) -> MemorySeries | None:
    s = data.samples
    if s is None or s.empty:
        return None
    total = finite(col(s, "total_memory_gb"))
    tot = float(np.median(total)) if total.size else None
    lim = memory_limit(data)
    used = _host_used(s)
    source = "host"
    if lim.source == "cgroup":
        tot, source = lim.total_gb, "cgroup"
        # The container's own working set where recorded; an older job has only the host's figure.
        container = _container_used(s)
        used = container if container is not None else used
    if not np.isfinite(used).any():
        return None
    return MemorySeries("system", col(s, "timestamp"), used, tot, source=source)


def gpu_series(data: JobData) -> MemorySeries | None:
    """The fullest discrete GPU over time (per-device rows when recorded); None on unified memory or no GPU."""
    return memo(data, "gpu_series", lambda: _gpu_series(data))


def _gpu_series(data: JobData) -> MemorySeries | None:
    if unified(data):
        return None
    g = data.gpus
    if g is not None and not g.empty and np.isfinite(col(g, "memory_used_gb")).any():
        best: MemorySeries | None = None
        for _, dev in g.groupby("device_index") if "device_index" in g.columns else [(0, g)]:
            tot = finite(col(dev, "memory_total_gb"))
            index = finite(col(dev, "device_index"))
            ser = MemorySeries("gpu", col(dev, "timestamp"), col(dev, "memory_used_gb"),
                               float(np.median(tot)) if tot.size else None,
                               int(index[0]) if index.size else None)
            if best is None or (ser.peak_ratio or 0) > (best.peak_ratio or 0):
                best = ser
        return best
    s = data.samples
    used = col(s, "gpu_memory_used_gb")
    if not np.isfinite(used).any():
        return None
    tot = finite(col(s, "gpu_memory_total_gb"))
    return MemorySeries("gpu", col(s, "timestamp"), used, float(np.median(tot)) if tot.size else None)


def memory_domain(data: JobData) -> MemorySeries | None:
    """The memory the job is most likely to run out of: the fuller of GPU and RAM (by peak ratio)."""
    ram, gpu = ram_series(data), gpu_series(data)
    if gpu is not None and gpu.total and (ram is None or (gpu.peak_ratio or 0) >= (ram.peak_ratio or 0)):
        return gpu
    return ram or gpu


def gpu_device_count(data: JobData) -> int:
    """How many GPUs the per-device rows name (0 without per-device rows)."""
    g = data.gpus
    if g is None or g.empty or "device_index" not in g.columns:
        return 0
    return int(g["device_index"].nunique())


def job_gpu_series(data: JobData) -> MemorySeries | None:
    """The job's own GPU memory over time (all its devices together), where the collector recorded it; None
    where it did not (the device's used memory, ``gpu_series``, is then the only GPU figure)."""
    return memo(data, "job_gpu_series", lambda: _job_gpu_series(data))


def _job_gpu_series(data: JobData) -> MemorySeries | None:
    if unified(data):
        return None
    s = data.samples
    used = col(s, JOB_GPU_COLUMN)
    if np.isfinite(used).any():
        tot = finite(col(s, "gpu_memory_total_gb"))
        return MemorySeries("gpu", col(s, "timestamp"), used, float(np.median(tot)) if tot.size else None)
    g = data.gpus
    if g is None or g.empty or not np.isfinite(col(g, JOB_GPU_COLUMN)).any():
        return None
    frame = pd.DataFrame({"t": col(g, "timestamp"), "used": col(g, JOB_GPU_COLUMN),
                          "total": col(g, "memory_total_gb")})
    per = frame.groupby("t").agg(used=("used", lambda v: v.sum(min_count=1)), total=("total", "sum"))
    tot = finite(per["total"].to_numpy(dtype=float))
    return MemorySeries("gpu", per.index.to_numpy(dtype=float), per["used"].to_numpy(dtype=float),
                        float(np.median(tot)) if tot.size else None)


@dataclass(frozen=True)
class Binding:
    """The memory pool(s) that bind this run, whose warning and critical zones the memory chart draws.

    ``resource`` is "host" (system RAM, or a container's limit), "gpu" (the fullest discrete GPU), "both", or
    "unified" (GPU and CPU share one pool: Apple silicon, GH200, DGX Spark). ``pools`` are the series to zone,
    those with a known limit; a CUDA OOM without GPU samples binds the GPU with no pool to zone.
    """

    resource: str
    pools: tuple[MemorySeries, ...]
    reason: str


def binding(data: JobData) -> Binding | None:
    """Which memory pool binds: the one that ran out (a CUDA OOM binds the GPU; a host OOM, RAM), else the one
    whose peak came closest to its limit; both when both passed 70 % of their limits. None without memory
    samples."""
    return memo(data, "binding", lambda: _binding(data))


def _binding(data: JobData) -> Binding | None:
    ram, gpu = ram_series(data), gpu_series(data)
    if unified(data):
        if ram is None:
            return None
        return Binding("unified", _zoned(ram), "GPU and CPU share one memory pool (unified memory)")
    kinds = {o.kind for o in oom_occurrences(data) if o.source != "exit"}
    gpu_ratio = gpu.peak_ratio if gpu is not None else None
    ram_ratio = ram.peak_ratio if ram is not None else None
    gpu_hot = "cuda" in kinds or (gpu_ratio is not None and gpu_ratio >= BINDING_SHARE)
    ram_hot = bool(kinds & _HOST_OOM_KINDS) or (ram_ratio is not None and ram_ratio >= BINDING_SHARE)
    if gpu_hot and ram_hot:
        resource = "both"
    elif gpu_hot or (gpu is not None and gpu_ratio is not None and gpu_ratio >= (ram_ratio or 0.0)):
        resource = "gpu"
    elif ram is not None:
        resource = "host"
    elif gpu is not None:
        resource = "gpu"
    else:
        return None
    host_pools = _zoned(ram) if resource in ("host", "both") else ()
    gpu_pools = _zoned(gpu) if resource in ("gpu", "both") else ()
    # The pool that ran out, else the fuller one, comes first: the chart labels its peak.
    gpu_first = "cuda" in kinds or (not kinds & _HOST_OOM_KINDS and (gpu_ratio or 0.0) >= (ram_ratio or 0.0))
    pools = gpu_pools + host_pools if gpu_first else host_pools + gpu_pools
    return Binding(resource, pools, _reason(resource, kinds, ram, gpu))


def _zoned(ser: MemorySeries | None) -> tuple[MemorySeries, ...]:
    return (ser,) if ser is not None and ser.total else ()


def _reason(resource: str, kinds: set[str], ram: MemorySeries | None, gpu: MemorySeries | None) -> str:
    """One line on why: "CUDA out of memory", "GPU 0 peaked at 93% of 140.4 GiB (RAM 41%)"."""
    bits: list[str] = []
    if "cuda" in kinds and resource in ("gpu", "both"):
        bits.append("CUDA out of memory")
    if kinds & _HOST_OOM_KINDS and resource in ("host", "both"):
        bits.append("out of memory at the container's limit" if ram is not None and ram.source == "cgroup"
                    else "host out of memory")
    name = "GPU" if gpu is None or gpu.device is None else f"GPU {gpu.device}"
    ram_name = "container memory" if ram is not None and ram.source == "cgroup" else "RAM"
    for label, ser in ((name, gpu), (ram_name, ram)):
        if ser is not None and ser.peak is not None and ser.total:
            bits.append(f"{label} peaked at {ser.peak_ratio:.0%} of {ser.total:.1f} GiB")
    return "; ".join(bits)
