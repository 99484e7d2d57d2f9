"""Memory over time, one domain at a time: system RAM (or unified memory) and the fullest discrete GPU, and
which of the two the job is most likely to run out of.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, finite, memo


@dataclass
class MemorySeries:
    """One memory domain over time: ``kind`` "gpu" (discrete device memory) or "system" (RAM, unified memory)."""

    kind: str
    timestamps: np.ndarray
    used: np.ndarray
    total: float | None

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


def ram_series(data: JobData) -> MemorySeries | None:
    """System RAM used (total - available) over time; the total is a container's limit when lower."""
    return memo(data, "ram_series", lambda: _ram_series(data))


def _ram_series(data: JobData) -> MemorySeries | None:
    s = data.samples
    if s is None or s.empty:
        return None
    used = col(s, "used_memory_gb")
    if not np.isfinite(used).any():
        used = col(s, "total_memory_gb") - col(s, "available_memory_gb")
    total = finite(col(s, "total_memory_gb"))
    env_total = (data.job.get("environment") or {}).get("cgroup_memory_limit_gb") \
        if isinstance(data.job.get("environment"), dict) else None
    tot = float(np.median(total)) if total.size else None
    if env_total and (tot is None or env_total < tot):
        tot = float(env_total)   # a container's limit is the wall the job hits, not the host's RAM
    if not np.isfinite(used).any():
        return None
    return MemorySeries("system", col(s, "timestamp"), used, tot)


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
            ser = MemorySeries("gpu", col(dev, "timestamp"), col(dev, "memory_used_gb"),
                               float(np.median(tot)) if tot.size else None)
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
