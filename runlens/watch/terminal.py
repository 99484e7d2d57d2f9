"""What ``runlens jobs`` and ``runlens status`` print: plain-text tables of jobs and one job's state.

Built from plain dicts (store rows, ``describe_job``'s answer) so the CLI only chooses between this text and
JSON. Times and sizes go through ``runlens.core.humanize`` like every other terminal line runlens writes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runlens.core.humanize import duration, gb, local_time

if TYPE_CHECKING:
    from runlens.watch.status import RunStatus

__all__ = ["job_status_text", "jobs_table", "ranks_text", "recorded_length", "render_table", "status_json",
           "status_table", "steps_text"]

STATUS_HEADERS = ["JOB ID", "NAME", "STATE", "REASON", "LAST STEP", "HEARTBEAT", "DURATION"]
JOBS_HEADERS = ["JOB ID", "NAME", "STATUS", "STARTED", "DURATION", "STEPS", "PEAK MEMORY"]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, as wide as their widest cell; no trailing spaces."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# -- runlens jobs ----------------------------------------------------------------------------------------

def recorded_length(job: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds from start to the recorded end: ``ended_at``, else the last heartbeat of a job that is no
    longer running, else (still running) ``now``."""
    start = job.get("started_at") or job.get("created_at")
    end = job.get("ended_at") or (job.get("heartbeat_at") if job.get("status") != "running" else None)
    if start is None:
        return None
    return float((end if end is not None else (now or time.time())) - start)


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> str:
    """The ``runlens jobs`` table: id, name, status, start, duration, steps, peak memory."""
    rows = []
    for j in jobs:
        started = j.get("started_at") or j["created_at"]
        rows.append([
            j["job_id"], j["name"], j["status"], local_time(started), duration(recorded_length(j)),
            steps_text(j), gb(j.get("peak_memory_gb"), j.get("total_memory_gb")),
        ])
    return render_table(JOBS_HEADERS, rows)


def steps_text(job: Mapping[str, Any]) -> str:
    """``200``, or ``200 x 2 ranks`` for a job whose ranks each recorded its steps (``list_jobs``' ``steps`` is
    already per rank)."""
    steps, ranks = int(job.get("steps") or 0), int(job.get("ranks") or 1)
    return f"{steps} x {ranks} ranks" if ranks > 1 else str(steps)


# -- runlens status --------------------------------------------------------------------------------------

def _age(now: float, t: Any) -> str:
    return "-" if t is None else duration(now - float(t)) + " ago"


def _run_time(job: Mapping[str, Any], now: float) -> str:
    """Run time so far, or start to end for a finished job."""
    start = job.get("started_at") or job.get("created_at")
    if start is None:
        return "-"
    ended = job.get("ended_at")
    end = float(ended) if job.get("status") != "running" and ended is not None else now
    return duration(end - float(start))


def _last_step(job: Mapping[str, Any]) -> Any:
    return job.get("last_step") if job.get("last_step") is not None else job.get("max_step")


def _last_step_text(job: Mapping[str, Any]) -> str:
    step = _last_step(job)
    if step is None:
        return "-"
    ranks = int(job.get("ranks") or 1)
    return f"{step} ({ranks} ranks)" if ranks > 1 else str(step)


def _heartbeat(job: Mapping[str, Any]) -> Any:
    return job.get("heartbeat_at") or job.get("last_sample_at")


def status_table(statuses: Sequence[tuple[Mapping[str, Any], RunStatus]], now: float) -> str:
    """The ``runlens status`` table: one row per job with its state, why, last step, heartbeat age, run time."""
    table = []
    for j, st in statuses:
        reason = st.reason or ""
        table.append([j["job_id"], j.get("name") or "", st.state,
                      reason[:60] + ("…" if len(reason) > 60 else ""), _last_step_text(j),
                      _age(now, _heartbeat(j)), _run_time(j, now)])
    return render_table(STATUS_HEADERS, table)


def status_json(statuses: Sequence[tuple[Mapping[str, Any], RunStatus]]) -> list[dict[str, Any]]:
    """``runlens status --json``: each job's id, name, state, reason, since, details, last step, heartbeat."""
    return [{"job_id": j["job_id"], "name": j.get("name"), **st.to_dict(), "last_step": _last_step(j),
             "ranks": j.get("ranks"), "heartbeat_at": _heartbeat(j)} for j, st in statuses]


def job_status_text(info: Mapping[str, Any], now: float) -> str:
    """``key  value`` lines for one job (``describe_job``'s answer), the fix last."""
    alive = {True: " (alive)", False: " (gone)"}.get(info["pid_alive"], "")
    step = "-" if info["last_step"] is None else str(info["last_step"])
    if info["last_loss"] is not None:
        step += f" (loss {info['last_loss']:.4g})"
    since = local_time(info["since"]) if info["since"] else "-"
    rows: list[tuple[str, str]] = [
        ("job", info["job_id"]), ("name", info["name"] or "-"), ("state", info["state"]),
        ("reason", info["reason"] or "-"), ("since", since),
        ("host / pid", f"{info['host'] or '-'} / {info['pid'] or '-'}{alive}"),
        ("duration", duration(info["duration_seconds"])), ("last step", step),
        *([("ranks", ranks_text(info["ranks"]))] if len(info.get("ranks") or ()) > 1 else []),
        ("last heartbeat", _age(now, info["heartbeat_at"])),
        ("last progress", _age(now, info["progress_at"])),
    ]
    if info["state"] in ("RUNNING", "WARNING") and info["progress_budget"] is not None:
        phase = f" (phase {info['phase']})" if info["phase"] else ""
        rows.append(("progress budget", duration(info["progress_budget"]) + phase))
    for key, label in (("log_path", "log"), ("last_log_line", "last log line"), ("remedy", "fix")):
        if info[key]:
            rows.append((label, str(info[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def ranks_text(ranks: Sequence[Mapping[str, Any]]) -> str:
    """``2, all at step 199``; ``64: rank 3 at step 118 (stopped first), the other 63 at 119``: where each rank
    is, the ranks behind named first (in a collective hang, the others wait for them)."""
    known = [r for r in ranks if r.get("last_step") is not None]
    if not known:
        return str(len(ranks))
    top = max(int(r["last_step"]) for r in known)
    behind = sorted((r for r in known if int(r["last_step"]) < top), key=lambda r: (int(r["last_step"]),
                                                                                     r.get("last_at") or 0.0))
    if not behind:
        return f"{len(ranks)}, all at step {top}"
    shown = ", ".join(f"rank {r['rank']} at step {r['last_step']}" for r in behind[:4])
    more = f" and {len(behind) - 4} more behind" if len(behind) > 4 else ""
    first = " (stopped first)" if len(behind) == 1 else ""
    return f"{len(ranks)}: {shown}{first}{more}, the other {len(known) - len(behind)} at {top}"
