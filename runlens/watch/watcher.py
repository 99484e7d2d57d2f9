"""``runlens watch``: poll the store, compute each run's state, and alert on every change of state.

One alert per transition, including recovery; while a condition lasts it is not repeated (``Deduper``), and a
notifier that is down costs a log line, never the watcher. Each transition is also written as one line to
``out`` (the CLI prints it; by default it goes to this module's logger). One exception: a single late
heartbeat (WARNING, cause ``heartbeat_late``) is written but not sent, because a store busy for a few seconds
causes it; it is sent when it turns stale (30 s), and a recovery is sent only after trouble was sent.

What counts as a transition on the first look at a job (the watcher has no memory of earlier polls):
a run that is already in trouble (WARNING, TIMED_OUT) alerts at once; a job this poll settled (its process
died without an end event) alerts; a job that finished after the watcher started alerts; older finished
jobs and healthy running ones are only remembered, so starting ``watch`` on a busy store sends nothing
about history.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from runlens.core.errors import JobNotFound
from runlens.core.humanize import local_time
from runlens.store import Store
from runlens.watch.alerts import Alert, Deduper, Notifier, last_log_line, remedy_for
from runlens.watch.status import (
    DEFAULT_STALE_AFTER,
    LIVE_STATES,
    RUNNING,
    TERMINAL_STATES,
    TIMED_OUT,
    WARNING,
    RunStatus,
    compute_status,
    pid_alive,
    relevant_event,
    settle_dead_jobs,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
_LATE = "WARNING/heartbeat_late"
_DATALOADER_FRAMES = ("_try_get_data", "_get_data", "dataloader", "DataLoader", "_worker_loop")


def stale_seconds(stale_minutes: float | None) -> float:
    """``--stale-minutes`` in seconds; None means the default 30 s (six missed 5 s heartbeats)."""
    return DEFAULT_STALE_AFTER if stale_minutes is None else max(1.0, float(stale_minutes) * 60.0)


def job_context(store: Store, job: Mapping[str, Any]) -> dict[str, Any]:
    """The job row plus what alerts quote: last step, loss and batch size, last worker count."""
    job_id = str(job["job_id"])
    ctx = dict(job)
    steps = store.recent_steps(job_id, limit=20)
    if steps:
        if ctx.get("last_step") is None:
            ctx["last_step"] = steps[0]["step"]
        ctx["last_loss"] = next((r["loss"] for r in steps if r["loss"] is not None), None)
        ctx["last_batch_size"] = next((r["batch_size"] for r in steps if r["batch_size"] is not None), None)
    sample = store.latest_sample(job_id)
    if sample:
        ctx["last_worker_count"] = sample["worker_count"]
    return ctx


def build_alert(store: Store, job: Mapping[str, Any], status: RunStatus, previous_state: str | None, *,
                now: float, event: Mapping[str, Any] | None = None) -> Alert:
    """The alert for ``job`` entering ``status`` from ``previous_state``."""
    ctx = job_context(store, job)
    key = " ".join(x for x in (status.cause, status.reason) if x)
    if event and event.get("event_type") == "hang_suspected":
        stacks = json.dumps((event.get("details") or {}).get("stacks") or "", default=str)
        if any(frame in stacks for frame in _DATALOADER_FRAMES):
            key += " dataloader"
    started = ctx.get("started_at") or ctx.get("created_at")
    ended = ctx.get("ended_at")
    end = float(ended) if status.state in TERMINAL_STATES and ended is not None else now
    recovered = status.state == RUNNING and previous_state not in (None, RUNNING)
    return Alert(
        job_id=str(job["job_id"]), name=ctx.get("name"), state=status.state, previous_state=previous_state,
        reason=status.reason, host=ctx.get("host"), pid=ctx.get("pid"),
        phase=status.details.get("phase"),
        duration_seconds=None if started is None else max(0.0, end - float(started)),
        last_step=ctx.get("last_step"), last_loss=ctx.get("last_loss"),
        last_log_line=last_log_line(ctx.get("log_path")),
        remedy=None if recovered or status.state in (RUNNING, "SUCCEEDED") else remedy_for(key, ctx),
        timestamp=now,
    )


def describe_job(store: Store, job: Mapping[str, Any], *, now: float,
                 stale_after: float = DEFAULT_STALE_AFTER) -> dict[str, Any]:
    """Everything ``runlens status JOB`` shows: the state and why, liveness, progress, log line, remedy."""
    job_id = str(job["job_id"])
    events = store.recent_events(job_id)
    event = relevant_event(job, events)
    status = compute_status(job, now=now, stale_after=stale_after, last_event=event)
    alert = build_alert(store, job, status, None, now=now, event=event)
    return {
        "job_id": job_id, "name": job.get("name"), "state": status.state, "reason": status.reason,
        "since": status.since, "cause": status.cause, "host": job.get("host"), "pid": job.get("pid"),
        "pid_alive": status.details.get("pid_alive"), "phase": status.details.get("phase"),
        "progress_budget": status.details.get("progress_budget"), "started_at": job.get("started_at"),
        "ended_at": job.get("ended_at"), "duration_seconds": alert.duration_seconds,
        "last_step": alert.last_step, "last_loss": alert.last_loss, "heartbeat_at": job.get("heartbeat_at"),
        "progress_at": job.get("progress_at"), "log_path": job.get("log_path"),
        "last_log_line": alert.last_log_line, "remedy": alert.remedy, "details": status.details,
        "ranks": store.rank_progress(job_id),
    }


def describe_job_id(store: Store, job_id: str, *, now: float,
                    stale_after: float = DEFAULT_STALE_AFTER) -> dict[str, Any]:
    """``describe_job`` for ``job_id``, once it is marked failed if its process here died without an end
    record.

    Raises:
        JobNotFound: no such job in the store.
    """
    settle_dead_jobs(store, now=now, jobs=[store.get_job(job_id)])
    return describe_job(store, store.get_job(job_id), now=now, stale_after=stale_after)


def _log_line(line: str) -> None:
    log.info("%s", line)


class Watcher:
    """Polls ``store`` every ``interval`` seconds and alerts on each state change of the watched jobs.

    Args:
        store: an open Store.
        job_ids: the jobs to watch; None watches the ``limit`` most recent ones (new jobs are picked up).
        interval: seconds between polls.
        stale_minutes: liveness is stale after this long without a heartbeat (None: 30 s).
        notifiers: where alerts go (SlackNotifier, WebhookNotifier); each transition is also written to
            ``out``.
        clock, sleep: injected so tests drive time.
        host, pid_alive: this machine's name and the pid probe, as in ``runlens.watch.status``.
        out: where transition lines go (the CLI passes its printer; default: this module's logger, at INFO).
    """

    def __init__(self, store: Store, job_ids: Sequence[str] | None = None, interval: float = DEFAULT_INTERVAL,
                 stale_minutes: float | None = None, notifiers: Sequence[Notifier] = (),
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep, *,
                 host: str | None = None, pid_alive: Callable[[int], bool] = pid_alive,
                 out: Callable[[str], None] = _log_line, limit: int = 50) -> None:
        self.store = store
        self.job_ids = list(job_ids) if job_ids else None
        self.interval = interval
        self.stale_after = stale_seconds(stale_minutes)
        self.notifiers = list(notifiers)
        self.clock = clock
        self.sleep = sleep
        self.host = socket.gethostname() if host is None else host
        self.pid_alive = pid_alive
        self.out = out
        self.limit = limit
        self.started_at = clock()
        self.deduper = Deduper()
        self._states: dict[str, str] = {}
        self._conds: dict[str, str] = {}
        self._alerted: dict[str, str] = {}
        self._missing: set[str] = set()

    # -- one poll -----------------------------------------------------------------------------------------

    def _load_jobs(self) -> list[dict[str, Any]]:
        if self.job_ids is None:
            return self.store.list_jobs(limit=self.limit)
        jobs = []
        for job_id in self.job_ids:
            try:
                jobs.append(self.store.get_job(job_id))
                self._missing.discard(job_id)
            except JobNotFound:
                if job_id not in self._missing:
                    log.warning("job %s is not in %s (yet)", job_id, self.store.shown_url)
                    self._missing.add(job_id)
        return jobs

    def poll_once(self) -> list[Alert]:
        """Look at every watched job once; send and return the alerts for the transitions seen."""
        now = self.clock()
        jobs = self._load_jobs()
        settled = set(settle_dead_jobs(self.store, now=now, jobs=jobs, host=self.host,
                                       pid_alive=self.pid_alive))
        alerts: list[Alert] = []
        seen: set[str] = set()
        for job in jobs:
            job_id = str(job["job_id"])
            seen.add(job_id)
            if job_id in settled:
                job = {**self.store.get_job(job_id), "last_sample_at": job.get("last_sample_at")}
            events = self.store.recent_events(job_id)
            event = relevant_event(job, events)
            status = compute_status(job, now=now, stale_after=self.stale_after, host=self.host,
                                    pid_alive=self.pid_alive, last_event=event)
            alert = self._transition(job, status, now=now, event=event, settled=job_id in settled)
            if alert is not None:
                alerts.append(alert)
        self._deliver(alerts)
        if self.job_ids is None:
            for gone in set(self._states) - seen:   # fell out of the recent window
                del self._states[gone]
                self._conds.pop(gone, None)
                self._alerted.pop(gone, None)
                self.deduper.forget(gone)
        return alerts

    def _transition(self, job: Mapping[str, Any], status: RunStatus, *, now: float,
                    event: Mapping[str, Any] | None, settled: bool) -> Alert | None:
        job_id, state, pid = str(job["job_id"]), status.state, job.get("pid")
        # The condition is the state, except that one late heartbeat is its own milder condition: it is
        # printed but not sent (a busy store delays a flush by seconds), and it alerts once it goes stale.
        cond = _LATE if status.cause == "heartbeat_late" else state
        first = job_id not in self._conds
        previous, previous_cond = self._states.get(job_id), self._conds.get(job_id)
        self._states[job_id], self._conds[job_id] = state, cond
        if first:
            fresh_end = state in TERMINAL_STATES and (status.since or 0.0) >= self.started_at
            in_trouble = state in (WARNING, TIMED_OUT) and cond != _LATE
            if not (in_trouble or settled or fresh_end):
                if state != RUNNING and cond != _LATE:
                    self.deduper.should_send(job_id, cond, pid)   # known already: do not alert it later
                if state in LIVE_STATES or self.job_ids is not None:
                    self._emit(f"{job_id}: {state}" + (f": {status.reason}" if status.reason else ""))
                return None
        elif previous_cond == cond:
            return None

        if state == RUNNING:
            # Recovery is said when trouble was said, and it re-arms every condition of the job.
            send = self._alerted.get(job_id, RUNNING) != RUNNING
            self.deduper.clear(job_id)
        elif cond == _LATE:
            send = False
        else:
            send = self.deduper.should_send(job_id, cond, pid)
        # A sent alert names the state of the last alert sent, so the receiver's stream reads as a chain
        # (TIMED_OUT -> RUNNING, not the unsent WARNING in between); an unsent late beat was still RUNNING.
        shown_previous = previous
        if send:
            shown_previous = self._alerted.get(job_id) or (RUNNING if previous_cond == _LATE else previous)
        alert = build_alert(self.store, job, status, shown_previous, now=now, event=event)
        stamp = local_time(now)
        note = "" if send else ("  (not sent: alerts once stale)" if cond == _LATE else
                                "  (already alerted)" if state != RUNNING else "  (nothing was alerted)")
        self._emit(f"{stamp}  {alert.summary_line()}{note}")
        if not send:
            return None
        self._alerted[job_id] = state
        return alert

    def _deliver(self, alerts: Sequence[Alert]) -> None:
        """Send every alert to every notifier at once, and wait: one dead endpoint costs one endpoint's
        retries (about 20 s at worst), not that times the number of alerts."""
        pairs = [(n, a) for a in alerts for n in self.notifiers]
        if not pairs:
            return

        def send(pair: tuple[Notifier, Alert]) -> None:
            notifier, alert = pair
            try:
                notifier.send(alert)
            except Exception:  # a notifier must never stop the watcher, even a buggy one
                log.exception("notifier %s failed", getattr(notifier, "shown_url", notifier))

        with ThreadPoolExecutor(max_workers=min(8, len(pairs)), thread_name_prefix="runlens-alert") as pool:
            list(pool.map(send, pairs))

    def _emit(self, line: str) -> None:
        try:
            self.out(line)
        except BrokenPipeError:
            pass

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self, once: bool = False, max_polls: int | None = None) -> None:
        """Poll until interrupted (or once). In the loop, a failing poll (store locked, gone) is logged and
        retried on the next tick: a watcher that dies on a transient error misses the stall it exists for."""
        polls = 0
        while True:
            if once:
                self.poll_once()
                return
            try:
                self.poll_once()
            except Exception as exc:
                log.warning("watch poll failed (%s); retrying in %gs", exc, self.interval)
            polls += 1
            if max_polls is not None and polls >= max_polls:
                return
            self.sleep(self.interval)
