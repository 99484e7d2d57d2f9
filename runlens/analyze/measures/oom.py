"""Every sign of an out-of-memory failure in a loaded job: events, log findings, and the exits that suggest
the kernel's OOM killer.

What counts as an OOM message, and the figures an allocator prints, are the shared vocabulary in
``runlens.core.oom``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import details_of, is_nan
from runlens.core.oom import SIGKILL_EXIT, allocator_figures, is_oom_text


@dataclass
class OomOccurrence:
    """One sign of an OOM; ``details`` holds the allocator's GiB figures when its message gave them."""

    timestamp: float | None
    kind: str                  # cuda | mps | cpu | host
    source: str                # event | log (an OOM seen) | suspected | exit (a SIGKILL that may be the OOM killer)
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
    a host OOM kill suspected by the collector, and an exit by SIGKILL (137). The last two are only
    suspicions: a scheduler or a user also sends SIGKILL."""
    found: list[OomOccurrence] = []
    ev = data.events
    if ev is not None and not ev.empty:
        for row in ev[ev["event_type"].isin(["cuda_oom", "oom", "exception", "host_oom_suspected",
                                             "oom_skip", "oom_abort"])].to_dict("records"):
            d = details_of(row)
            text = " ".join(str(d.get(k) or "") for k in ("type", "message", "error"))
            etype = row["event_type"]
            if etype == "exception" and not is_oom_text(text, str(d.get("type", ""))):
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
    job = data.job
    if job.get("exit_code") in (SIGKILL_EXIT, -9) or job.get("exit_signal") == 9:
        found.append(OomOccurrence(job.get("ended_at"), "host", "exit",
                                   "the process was killed by SIGKILL (exit 137)", {}))
    found.sort(key=lambda o: (o.timestamp is None, o.timestamp or 0.0))
    return found
