"""DataLoader workers as the samples saw them: how many ran, the most memory they held, and the CPUs the job
could use.
"""

from __future__ import annotations

import numpy as np

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, finite


def cpu_count(data: JobData) -> int | None:
    env = data.job.get("environment")
    if isinstance(env, dict):
        for key in ("cpu_affinity_count", "cpu_count"):
            v = env.get(key)
            if isinstance(v, (int, float)) and v > 0:
                return int(v)
    return None


def worker_peak(data: JobData) -> tuple[float, int, float] | None:
    """(worker PSS in GB, worker count, timestamp) at the sample where the workers held the most memory."""
    s = data.samples
    w = col(s, "worker_memory_gb")
    if not np.isfinite(w).any() or np.nanmax(w) <= 0:
        return None
    i = int(np.nanargmax(w))
    n = col(s, "worker_count")[i]
    if not np.isfinite(n) or n <= 0:
        counts = finite(col(s, "worker_count"))
        n = float(counts.max()) if counts.size else float("nan")
    if not np.isfinite(n) or n <= 0:
        return None
    return float(w[i]), int(n), float(col(s, "timestamp")[i])


def measured_workers(data: JobData) -> int | None:
    counts = finite(col(data.samples, "worker_count"))
    return int(np.median(counts[counts > 0])) if (counts > 0).any() else (0 if counts.size else None)
