"""Every sign of an out-of-memory failure in a loaded job: events, log findings, the OOM kills the job's memory
cgroup counted, and the exits that suggest the kernel's OOM killer.

A SIGKILL (exit 137) alone is a suspicion: a scheduler, a user or a supervisor send it too. A kill the job's
memory cgroup counted (its ``oom_kill`` counter rose during the run, in the samples or in the count
``runlens collect`` read once more after the child died) is the OOM killer for certain, at the container's
limit.

What counts as an OOM message, and the figures an allocator prints, are the shared vocabulary in
``runlens.core.oom``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, details_of, is_nan
from runlens.core.oom import CONTAINER_OOM_KILL_REASON, SIGKILL_EXIT, allocator_figures, is_oom_text

# The job's memory cgroup's OOM-kill count per sample (runlens.collect.cgroup).
CONTAINER_OOM_KILLS_COLUMN = "container_oom_kills"


@dataclass
class OomOccurrence:
    """One sign of an OOM; ``details`` holds the allocator's GiB figures when its message gave them."""

    timestamp: float | None
    kind: str                  # cuda | mps | cpu | host
    source: str                # event | log (an OOM seen) | cgroup (a kill the job's memory cgroup counted) |
                               # suspected | exit (a SIGKILL that may be the OOM killer)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    snapshot_id: Any = None
    count: int = 1


def _kind_of(text: str, default: str = "cpu") -> str:
    if re.search(r"\bMPS\b", text):
        return "mps"
    if re.search(r"CUDA|HIP|GPU \d|cuda", text):
        return "cuda"
    return default


def oom_occurrences(data: JobData) -> list[OomOccurrence]:
    """Every sign of an out-of-memory failure, earliest first: OOM and exception events, OOM log findings,
    OOM kills the job's memory cgroup counted, a host OOM kill suspected by the collector, and an exit by
    SIGKILL (137). The last two are only suspicions: a scheduler or a user also sends SIGKILL; neither is
    listed when the cgroup counted the kill."""
    found: list[OomOccurrence] = []
    confirmed: list[OomOccurrence] = []
    ev = data.events
    if ev is not None and not ev.empty:
        for row in ev[ev["event_type"].isin(["cuda_oom", "oom", "exception", "host_oom_suspected",
                                             "oom_skip", "oom_abort"])].to_dict("records"):
            d = details_of(row)
            text = " ".join(str(d.get(k) or "") for k in ("type", "message", "error"))
            etype = row["event_type"]
            if etype == "exception" and not is_oom_text(text, str(d.get("type", ""))):
                continue
            if etype == "host_oom_suspected" and d.get("confirmed"):
                confirmed.append(_cgroup_kill(float(row["timestamp"]), d.get("container_oom_kills"),
                                              d.get("container_memory_limit_gb"), row.get("memory_snapshot_id")))
                continue
            kind = "host" if etype == "host_oom_suspected" else _kind_of(text, "cuda" if etype == "cuda_oom" else "cpu")
            source = "suspected" if etype == "host_oom_suspected" else "event"
            figs = allocator_figures(text + " " + str(d.get("traceback") or "")[-2000:])
            figs.update({k: v for k, v in d.items() if k.endswith("_gb") and isinstance(v, (int, float))})
            step = row.get("step")
            found.append(OomOccurrence(float(row["timestamp"]), kind, source, (d.get("message") or etype)[:500],
                                       figs, None if is_nan(step) or step is None else int(step),
                                       row.get("memory_snapshot_id")))
    kinds = {"cuda_oom": "cuda", "mps_oom": "mps", "cpu_oom": "cpu", "host_oom_kill": "host"}
    for lf in data.log_findings:
        cat = getattr(lf, "category", None)
        if cat in kinds:
            det = dict(getattr(lf, "details", None) or {})
            det = {**allocator_figures(getattr(lf, "text", "") or getattr(lf, "message", "")), **det}
            found.append(OomOccurrence(getattr(lf, "timestamp", None), kinds[cat], "log",
                                       str(getattr(lf, "message", ""))[:500], det,
                                       count=int(getattr(lf, "count", 1) or 1)))
    sampled = _sampled_kills(data)
    if sampled is not None or confirmed:
        # One kill story: the first time the samples saw the count rise (nearest to when it happened), the
        # highest count either source gives; the SIGKILL it explains is no longer a suspicion.
        both = ([sampled] if sampled is not None else []) + confirmed
        first = min(both, key=lambda o: (o.timestamp is None, o.timestamp or 0.0))
        first.count = max(o.count for o in both)
        first.details["container_oom_kills"] = first.count
        if first.snapshot_id is None:
            first.snapshot_id = next((o.snapshot_id for o in both if o.snapshot_id is not None), None)
        limit = next((o.details.get("container_memory_limit_gb") for o in both
                      if o.details.get("container_memory_limit_gb")), None)
        if limit:
            first.details["container_memory_limit_gb"] = limit
        found = [o for o in found if o.source != "suspected"] + [first]
        found.sort(key=lambda o: (o.timestamp is None, o.timestamp or 0.0))
        return found
    job = data.job
    if job.get("exit_code") in (SIGKILL_EXIT, -9) or job.get("exit_signal") == 9:
        found.append(OomOccurrence(job.get("ended_at"), "host", "exit",
                                   "the process was killed by SIGKILL (exit 137)", {}))
    found.sort(key=lambda o: (o.timestamp is None, o.timestamp or 0.0))
    return found


def _cgroup_kill(timestamp: float | None, kills: Any, limit_gb: Any, snapshot_id: Any = None) -> OomOccurrence:
    count = int(kills) if isinstance(kills, (int, float)) and kills > 0 else 1
    details: dict[str, Any] = {"confirmed": True, "container_oom_kills": count}
    if isinstance(limit_gb, (int, float)) and limit_gb > 0:
        details["container_memory_limit_gb"] = float(limit_gb)
    return OomOccurrence(timestamp, "host", "cgroup", CONTAINER_OOM_KILL_REASON, details,
                         snapshot_id=snapshot_id, count=count)


def _sampled_kills(data: JobData) -> OomOccurrence | None:
    """The OOM kills the samples saw the job's cgroup count during the run (each host's count from its first
    sample), at the first sample that saw the count rise; None when it never rose."""
    s = data.samples
    kills = col(s, CONTAINER_OOM_KILLS_COLUMN)
    if s is None or s.empty or not np.isfinite(kills).any():
        return None
    ts = col(s, "timestamp")
    hosts = s["host"].astype(str).to_numpy() if "host" in s.columns else np.full(len(s), "")
    limits = col(s, "container_memory_limit_gb")
    total, first_t, limit = 0, None, None
    for host in dict.fromkeys(hosts):
        keep = (hosts == host) & np.isfinite(kills) & np.isfinite(ts)
        if not keep.any():
            continue
        order = np.argsort(ts[keep], kind="stable")
        k, t, lim = kills[keep][order], ts[keep][order], limits[keep][order]
        rose = np.nonzero(k > k[0])[0]
        if not rose.size:
            continue
        total += int(k.max() - k[0])
        at = float(t[rose[0]])
        if first_t is None or at < first_t:
            first_t, limit = at, (float(lim[rose[0]]) if np.isfinite(lim[rose[0]]) else None)
    if not total:
        return None
    return _cgroup_kill(first_t, total, limit)
