"""Shared memory: ``/dev/shm`` too small for the DataLoader workers, seen from its size or from shm and bus
errors in the log.
"""

from __future__ import annotations

import re

from runlens.analyze import effects
from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule
from runlens.core.humanize import gb_figure

# /dev/shm below this with workers > 0 fails (https://github.com/ostris/ai-toolkit/issues/515: 1 GB failed);
# docker's default is 64 MB.
SHM_MIN_GB = 1.0


_SHM_TEXT = re.compile(r"shm|shared memory|bus error", re.IGNORECASE)


def _shm_size_gb(data: JobData) -> float | None:
    env = data.job.get("environment")
    if not isinstance(env, dict):
        return None
    for key in ("shm_total_gb", "dev_shm_gb", "shm_size_gb"):
        if isinstance(env.get(key), (int, float)):
            return float(env[key])
    shm = env.get("shm")
    if isinstance(shm, dict) and isinstance(shm.get("total_gb"), (int, float)):
        return float(shm["total_gb"])
    return None


@rule("memory.shm", "memory")
def shm(data: JobData) -> list[Finding]:
    """/dev/shm too small for DataLoader workers, from its size or from shm/bus errors."""
    errors = [lf for lf in data.log_findings if getattr(lf, "category", None) == "shm_bus_error"
              or (getattr(lf, "category", None) == "dataloader_worker_died"
                  and _SHM_TEXT.search(str(getattr(lf, "text", "") or getattr(lf, "message", ""))))]
    size = _shm_size_gb(data)
    workers_n = m.measured_workers(data)
    ref = resolve(data, "num_workers")
    configured = ref.current_value if isinstance(ref.current_value, int) else None
    n = workers_n if workers_n else configured
    small = size is not None and size < SHM_MIN_GB and (n or 0) > 0
    if not errors and not small:
        return []
    count = sum(int(getattr(lf, "count", 1) or 1) for lf in errors)
    first = errors[0] if errors else None
    t = getattr(first, "timestamp", None) if first else None
    parts = []
    if size is not None:
        parts.append(f"/dev/shm {gb_figure(size)} GiB for {n or '?'} workers")
    if count:
        parts.append(f"{count} shared-memory error(s), first at step {m.step_at(data, t)}")
    f = Finding(id="memory.shm", severity="critical" if errors else "warning",
                title="Shared memory too small for DataLoader workers",
                action="Set num_workers to 0, or give the container more shared memory (docker --shm-size=8g).",
                impact="; ".join(parts), category="memory",
                impact_value=float(count) if count else size, impact_unit="occurrences" if count else "GB",
                evidence={"shm_total_gb": size, "workers": n, "errors": count, "first_error_at": t,
                          "first_error": str(getattr(first, "message", ""))[:300] if first else None})
    # With 0 workers no batch goes through shared memory: the error cannot recur.
    f.expected_effect = effects.failure(True, failed=bool(errors))
    return [apply_ref(f, ref, 0, measured=workers_n or None)]
