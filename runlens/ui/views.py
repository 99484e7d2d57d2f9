"""What ``runlens ui`` shows of the store: pages of the job list, one job with its figures, and each job's
state from its heartbeats (the state machine of ``runlens status``, computed without settling anything: the app
never writes).

Figures of a finished job (steps, peak memory, health) do not change once it has ended and its analysis is
stored, so they are kept in memory: a page of the list then costs one query over the jobs table, whatever the
steps behind them. A running job's figures are read on every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from runlens.core.numbers import finite_number
from runlens.store.store import JOB_STATUSES, Store
from runlens.ui.cache import Memo
from runlens.watch.status import compute_status, relevant_event

__all__ = ["JOB_STATUSES", "JobViews"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class JobViews:
    """The list and the job of the pages and the API, read from ``store`` at ``clock()`` time."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time, cache_size: int = 20_000) -> None:
        self.store = store
        self.clock = clock
        self._figures = Memo(cache_size)

    # -- the list --------------------------------------------------------------------------------------

    def job_page(self, *, limit: int = DEFAULT_LIMIT, status: str | None = None, name: str | None = None,
                 before: str | None = None) -> dict[str, Any]:
        """One page of the list: ``jobs`` (newest first, each with its state and figures) and ``next_before``,
        the cursor of the next page (None on the last).

        Raises:
            JobNotFound: ``before`` names no job.
        """
        rows = self.store.find_jobs(limit + 1, status=status, name=name, before=before)
        more = len(rows) > limit
        rows = rows[:limit]
        figures = self._figures_of(rows)
        for job_id, health in self.store.job_health(list(figures)).items():
            figures[job_id] = {**figures[job_id], "health_score": health}
        now = self.clock()
        jobs = [self._list_entry(row, figures[str(row["job_id"])], now) for row in rows]
        return {"jobs": jobs, "next_before": jobs[-1]["job_id"] if more and jobs else None, "limit": limit,
                "filters": {"status": status, "name": name, "before": before}}

    def _figures_of(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Figures per job: finished jobs' from memory when known, the others read in one round of queries."""
        out: dict[str, dict[str, Any]] = {}
        missing = []
        for row in rows:
            job_id = str(row["job_id"])
            cached = self._figures.peek(_final_key(row))
            if cached is not None:
                out[job_id] = cached
            else:
                missing.append(row)
        if missing:
            read = self.store.job_figures([str(r["job_id"]) for r in missing])
            for row in missing:
                job_id = str(row["job_id"])
                out[job_id] = read[job_id]
                if row.get("status") != "running":
                    self._figures.get(_final_key(row), lambda f=read[job_id]: f)
        return out

    def _list_entry(self, row: Mapping[str, Any], figures: Mapping[str, Any], now: float) -> dict[str, Any]:
        job = {**row, **figures}
        state = self.state(job, now=now, with_events=row.get("status") == "running")
        return {
            "job_id": row["job_id"], "name": row.get("name"), "status": row.get("status"),
            "state": state["state"], "state_reason": state["reason"], "health": figures.get("health_score"),
            "created_at": row.get("created_at"), "started_at": row.get("started_at"),
            "ended_at": row.get("ended_at"), "duration_seconds": duration_seconds(row, now),
            "steps": figures.get("steps"), "ranks": figures.get("ranks"), "last_step": row.get("last_step"),
            "peak_memory_gb": figures.get("peak_memory_gb"), "total_memory_gb": figures.get("total_memory_gb"),
            "peak_gpu_memory_gb": figures.get("peak_gpu_memory_gb"), "heartbeat_at": row.get("heartbeat_at"),
            "host": row.get("host"),
        }

    # -- one job ---------------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any]:
        """The job row (config, argv and environment as stored: redacted), its figures and its state.

        Raises:
            JobNotFound, StoreUnavailable.
        """
        row = self.store.get_job(job_id)
        figures = {**self._figures_of([row])[job_id], "health_score": self.store.job_health([job_id])[job_id]}
        now = self.clock()
        state = self.state({**row, **figures}, now=now, with_events=True)
        return {**row, **{k: v for k, v in figures.items() if k != "health_score"},
                "health": figures.get("health_score"), "state": state,
                "duration_seconds": duration_seconds(row, now)}

    def state(self, job: Mapping[str, Any], *, now: float, with_events: bool) -> dict[str, Any]:
        """The job's state from its heartbeats: ``state``, ``reason``, ``since``, ``cause``."""
        events = self.store.recent_events(str(job["job_id"])) if with_events else []
        st = compute_status(job, now=now, last_event=relevant_event(job, events))
        return {"state": st.state, "reason": st.reason, "since": st.since, "cause": st.cause}


def _final_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A finished job's figures are final: keyed by what would change if it were written again."""
    return (row["job_id"], row.get("status"), row.get("ended_at"), row.get("last_step"))


def duration_seconds(row: Mapping[str, Any], now: float) -> float | None:
    """From start to end, or to now for a running job; None before it started."""
    start = finite_number(row.get("started_at"))
    if start is None:
        return None
    end = finite_number(row.get("ended_at"))
    if end is None:
        end = now if row.get("status") == "running" else finite_number(row.get("heartbeat_at"))
    return max(0.0, end - start) if end is not None else None
