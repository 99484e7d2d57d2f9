"""A run's state from its heartbeats: the state machine behind ``runlens status`` and ``runlens watch``.

Two signals, kept apart on purpose:

* **liveness**: samples arriving (``heartbeat_at``, written by the store's writer every sample interval,
  5 s by default; a step also counts as a sign of life) and, when the job runs on this host, its process
  existing. Liveness goes *late* after one missed beat and *stale* after ``stale_after`` (30 s, six beats).
* **progress**: steps arriving (``progress_at``) or an explicit phase change. Only these reset the stall
  clock; a sampler thread that keeps beating while the training loop is stuck is not progress.

The states, first match wins:

============================  ======================================================  =============
stored status                 condition                                               state
============================  ======================================================  =============
succeeded                     -                                                       SUCCEEDED
failed                        - (reason from status_reason / the failure event)       FAILED
timed_out                     - (killed for a stall)                                  TIMED_OUT
never_started                 -                                                       NEVER_STARTED
running                       on this host, pid gone, no fresh heartbeat              FAILED (settled)
running                       no heartbeat and no step after the startup grace        NEVER_STARTED
running                       liveness stale (> stale_after) and progress stale       TIMED_OUT
running                       a hang_suspected event and no progress since            WARNING
running                       progress stale (no step/phase change within budget)     WARNING
running                       liveness stale (> stale_after), progress in budget      WARNING
running                       liveness late (one heartbeat missed)                    WARNING
running                       otherwise                                               RUNNING
============================  ======================================================  =============

The progress budget comes from the job's stored settings (what its collectors were told): the startup
grace before the first step (20 min), then the fixed ``hang_timeout`` or the uncalibrated 300 s; inside a
phase opened with ``mon.phase(...)`` the phase's own budget applies (eval, checkpoint: 30 min).

``compute_status`` is pure (plain dicts in, a RunStatus out, clock and pid probe injected). The only write
is ``settle_dead_jobs``: a job whose process died without an end event would otherwise stay "running" in
the store forever, so the next ``status`` or ``watch`` marks it failed.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import psutil

from runlens.core.humanize import duration
from runlens.core.numbers import parse_float
from runlens.core.oom import CONTAINER_OOM_KILL_REASON, CUDA_OOM_TEXT, HOST_OOM_TEXT
from runlens.core.settings import Settings

if TYPE_CHECKING:
    from runlens.store import Store

log = logging.getLogger(__name__)

RUNNING = "RUNNING"
WARNING = "WARNING"
TIMED_OUT = "TIMED_OUT"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
NEVER_STARTED = "NEVER_STARTED"

STATES = (RUNNING, WARNING, TIMED_OUT, SUCCEEDED, FAILED, NEVER_STARTED)
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, NEVER_STARTED})
LIVE_STATES = frozenset({RUNNING, WARNING})

# The writer publishes a heartbeat every 5 s; liveness is stale after 30 s (six missed beats).
DEFAULT_STALE_AFTER = 30.0

_STORED_TERMINAL = {"succeeded": SUCCEEDED, "failed": FAILED, "timed_out": TIMED_OUT,
                    "never_started": NEVER_STARTED}
# Most specific first; a stall's event tells a timed-out job's phase.
_FAILURE_EVENTS = ("cuda_oom", "host_oom_suspected", "exception", "signal", "end", "hang_suspected")
_PROGRESS_EVENTS = ("phase_start", "phase_end", "hang_suspected", "recovered")
_NCCL_TIMEOUT = re.compile(r"Watchdog caught collective operation timeout|NCCL.*time(d)? ?out|"
                           r"ProcessGroupNCCL.*timeout", re.IGNORECASE)


@dataclass(frozen=True)
class RunStatus:
    """A job's state at one moment.

    ``reason`` is one human sentence (shown by ``status`` and sent in alerts); ``since`` is when the state
    began (UNIX seconds, None when unknown); ``details`` holds the numbers behind the verdict (ages, budget,
    phase) and ``cause``, a short code (``no_progress``, ``heartbeat_stale``, ``cuda_oom``,
    ``no_end_event``, ...) that alert remedies and dedup keys use instead of parsing the sentence.
    """

    state: str
    reason: str | None
    since: float | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def cause(self) -> str | None:
        return self.details.get("cause")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process here.

    Not ``psutil.pid_exists`` alone: a killed child that its parent has not reaped stays a zombie, and
    pid_exists says True for it, so a dead training process under a live parent would look alive forever.
    A process we may not inspect (AccessDenied) exists.
    """
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass(frozen=True)
class _Budgets:
    """The job's own timing settings, read from its stored ``settings`` with runlens's defaults behind."""

    startup_grace: float
    step_timeout: float
    phase_budgets: dict[str, float]
    heartbeat_interval: float | None      # None: the job publishes no samples (sampler off)
    flush_interval: float

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> _Budgets:
        d = Settings()
        raw = job.get("settings")
        s: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        hang = parse_float(s.get("hang_timeout"))
        uncal = parse_float(s.get("uncalibrated_timeout")) or d.uncalibrated_timeout
        interval = parse_float(s.get("sample_interval"))
        if interval is None:
            interval = d.sample_interval
        phases = dict(d.phase_budgets)
        if isinstance(s.get("phase_budgets"), Mapping):
            phases.update({str(k): float(v) for k, v in s["phase_budgets"].items()
                           if parse_float(v) is not None})
        return cls(
            startup_grace=parse_float(s.get("startup_grace")) or d.startup_grace,
            step_timeout=hang if hang and hang > 0 else uncal,
            phase_budgets=phases,
            heartbeat_interval=interval if interval > 0 else None,
            flush_interval=parse_float(s.get("flush_interval")) or d.flush_interval,
        )

    @property
    def late_after(self) -> float | None:
        """Age past which one heartbeat has been missed: two intervals plus a flush (jitter allowance)."""
        if self.heartbeat_interval is None:
            return None
        return 2 * self.heartbeat_interval + self.flush_interval


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _phase_name(event: Mapping[str, Any]) -> str | None:
    """The phase an event names: the Monitor writes ``name``, the hang watchdog ``phase``."""
    d = event.get("details") or {}
    name = d.get("phase") or d.get("name")
    return str(name) if name else None


def relevant_event(job: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Pick the one event ``compute_status`` needs from a job's recent events (any order).

    For a running job: the latest phase or stall event, which says which progress budget applies. For a
    finished one: the most specific failure event (a CUDA OOM over the exception that carried it, over a
    signal, over a bare end), the latest of its kind.
    """
    rows: list[dict[str, Any]] = [dict(e) for e in events]
    if job.get("status") == "running":
        live = sorted((e for e in rows if e.get("event_type") in _PROGRESS_EVENTS),
                      key=lambda e: e.get("timestamp") or 0.0)
        if not live:
            return None
        latest = live[-1]
        if latest["event_type"] == "phase_end":
            # Phases nest (a "sample" inside "eval"): leaving the inner one puts the run back in the outer
            # one, whose budget applies from now.
            open_phases: list[str] = []
            for e in live:
                name = _phase_name(e)
                if e["event_type"] == "phase_start" and name:
                    open_phases.append(name)
                elif e["event_type"] == "phase_end" and name in open_phases:
                    del open_phases[len(open_phases) - 1 - open_phases[::-1].index(name):]
            if open_phases:
                return {"event_type": "phase_start", "timestamp": latest.get("timestamp"),
                        "details": {"name": open_phases[-1], "resumed": True}}
        return latest
    failures = [e for e in rows if e.get("event_type") in _FAILURE_EVENTS]
    if not failures:
        return None
    return min(failures, key=lambda e: (_FAILURE_EVENTS.index(e["event_type"]), -(e.get("timestamp") or 0.0)))


def classify_failure(job: Mapping[str, Any], event: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(cause, reason)`` for a failed job: a CUDA OOM, the host's OOM killer, an NCCL timeout (the
    watchdog's log line, or SIGABRT in a distributed run), another signal, an exception or an exit code.

    The reason is derived from the failure event when there is one (the Monitor stores terse reasons such
    as ``cuda_oom`` or ``exception: KeyError``, while its event has the message), else the stored
    ``status_reason`` (the wrapper's words: "exited with code 3", "killed by runlens with SIGKILL (...)"),
    else one derived from the exit status. The cause is always derived, so remedies work whichever wording
    the collector chose.
    """
    stored = str(job.get("status_reason") or "")
    details = (event or {}).get("details") or {}
    etype = (event or {}).get("event_type")
    message = str(details.get("message") or "").strip().splitlines()
    first = message[0][:200] if message else ""
    text = " ".join(x for x in (stored, str(details.get("type") or ""), first) if x)
    sig = job.get("exit_signal") or details.get("signal") or details.get("signum")
    if isinstance(sig, str):
        sig = int(sig) if sig.isdigit() else getattr(signal.Signals, sig, None)
    if "exited without an end event" in stored:
        return "no_end_event", stored
    if "killed by runlens" in stored:
        return "killed_by_runlens", stored
    elif etype == "cuda_oom" or CUDA_OOM_TEXT.search(text):
        cause, reason = "cuda_oom", "CUDA out of memory" + (f": {first}" if first else "")
        if "out of memory" in first.lower():
            reason = first
    elif stored.startswith(CONTAINER_OOM_KILL_REASON) or (etype == "host_oom_suspected" and details.get("confirmed")):
        # the job's memory cgroup counted the kill: its container's limit, not the host's RAM
        cause, reason = "host_oom", stored or CONTAINER_OOM_KILL_REASON
    elif etype == "host_oom_suspected" or HOST_OOM_TEXT.search(text):
        cause, reason = "host_oom", "killed by the host's OOM killer (out of RAM)"
    elif _NCCL_TIMEOUT.search(text):
        cause, reason = "nccl_timeout", "NCCL collective timed out (a rank stopped joining a collective)"
    elif sig == signal.SIGABRT and int(job.get("world_size") or 1) > 1:
        cause, reason = "nccl_timeout", "aborted (SIGABRT) in a distributed run: likely the NCCL watchdog"
    elif sig == signal.SIGKILL:
        cause, reason = "oom_or_external_kill", "killed by SIGKILL (the host OOM killer or an external kill)"
    elif isinstance(sig, int) and sig > 0:
        cause, reason = "signal", f"killed by {signal_name(sig)}"
    elif etype == "exception" or details.get("type"):
        cause = "exception"
        reason = f"{details.get('type') or 'exception'}" + (f": {first}" if first else "")
    elif job.get("exit_code") not in (None, 0):
        cause, reason = "exit_code", f"exited with code {job['exit_code']}"
    else:
        cause, reason = "unknown", "failed"
    from_event = etype is not None and etype not in ("end", "hang_suspected")
    return cause, (reason if from_event or not stored else stored)


def compute_status(
    job: Mapping[str, Any],
    *,
    now: float,
    stale_after: float = DEFAULT_STALE_AFTER,
    host: str | None = None,
    pid_alive: Callable[[int], bool] = pid_alive,
    last_event: Mapping[str, Any] | None = None,
) -> RunStatus:
    """The state of ``job`` (a jobs row as a dict) at ``now``.

    Args:
        job: the row from ``Store.get_job``/``list_jobs`` (``last_sample_at`` is used when present).
        now: the current time, UNIX seconds (injected so tests drive a clock).
        stale_after: seconds without any sign of life after which liveness is stale.
        host: this machine's name; the pid is only probed when the job ran here. Default: gethostname().
        pid_alive: probe for a pid on this host.
        last_event: from ``relevant_event``: the failure event of a finished job, or the latest phase/stall
            event of a running one.
    """
    host = socket.gethostname() if host is None else host
    status = str(job.get("status") or "running")
    started = parse_float(job.get("started_at")) or parse_float(job.get("created_at")) or now
    ended = parse_float(job.get("ended_at"))
    budgets = _Budgets.of(job)
    base: dict[str, Any] = {"status": status}

    if status in _STORED_TERMINAL:
        state = _STORED_TERMINAL[status]
        since = ended or parse_float(job.get("heartbeat_at")) or started
        if state == SUCCEEDED:
            return RunStatus(SUCCEEDED, job.get("status_reason") or "finished", since,
                             {**base, "cause": "ok"})
        if state == FAILED:
            cause, reason = classify_failure(job, last_event)
            return RunStatus(FAILED, reason, since, {**base, "cause": cause})
        if state == TIMED_OUT:
            stall_phase = _phase_name(last_event) if last_event else None
            reason = job.get("status_reason") or "killed after a stall" + (
                f" in phase {stall_phase}" if stall_phase else "")
            return RunStatus(TIMED_OUT, str(reason), since, {**base, "cause": "stall", "phase": stall_phase})
        return RunStatus(NEVER_STARTED, job.get("status_reason") or "never reached its first step", since,
                         {**base, "cause": "never_started"})

    beats = (parse_float(job.get("heartbeat_at")), parse_float(job.get("last_sample_at")))
    heartbeat = max((t for t in beats if t), default=None)
    progress = parse_float(job.get("progress_at"))
    alive_at = max((t for t in (heartbeat, progress) if t), default=None)
    live_age = now - (alive_at if alive_at is not None else started)
    pid = job.get("pid")
    local = pid is not None and job.get("host") in (None, host)
    pid_ok = pid_alive(int(pid)) if local and pid is not None else None

    # Which budget the progress clock runs against: a phase opened by the loop, the startup grace before
    # the first step, or the step timeout.
    ev = last_event or {}
    ev_type, ev_at = ev.get("event_type"), parse_float(ev.get("timestamp"))
    phase: str | None = None
    progress_ref = progress if progress is not None else started
    if ev_type in ("phase_start", "phase_end") and ev_at is not None and ev_at >= progress_ref:
        progress_ref = ev_at   # a phase change is progress, like a step
        if ev_type == "phase_start":
            phase = _phase_name(ev) or None
    if phase is not None:
        budget = budgets.phase_budgets.get(phase, budgets.step_timeout)
    elif progress is None and job.get("last_step") is None:
        budget, phase = budgets.startup_grace, "init"
    else:
        budget = budgets.step_timeout
    progress_age = now - progress_ref
    details: dict[str, Any] = {
        **base, "heartbeat_age": None if heartbeat is None else now - heartbeat,
        "progress_age": None if progress is None else now - progress, "liveness_age": live_age,
        "progress_budget": budget, "stale_after": stale_after, "phase": phase, "pid_alive": pid_ok,
        "last_step": job.get("last_step"),
    }

    late_after = budgets.late_after
    beat_missed = alive_at is None or late_after is None or live_age > late_after
    if pid_ok is False and beat_missed:
        # With fresh beats we wait for one to be missed: a pid in another PID namespace (containers that share
        # a hostname) is not ours to judge, and its beats say it lives.
        since = alive_at or started
        return RunStatus(FAILED, f"process {pid} exited without an end event", since,
                         {**details, "cause": "no_end_event", "settle": True})

    if alive_at is None and job.get("last_step") is None and now - started > budgets.startup_grace:
        return RunStatus(NEVER_STARTED, f"no heartbeat and no step in {duration(now - started)} "
                         f"(startup grace {duration(budgets.startup_grace)})", started + budgets.startup_grace,
                         {**details, "cause": "never_started"})

    expects_beats = budgets.heartbeat_interval is not None
    # Before the first beat a live local pid is enough (imports, model download); after it, samples must
    # keep arriving, so a process frozen with the GIL held goes stale even though its pid exists.
    pid_vouches = pid_ok is True and (alive_at is None or not expects_beats)
    live_stale = live_age > stale_after and not pid_vouches
    live_late = (expects_beats and alive_at is not None and late_after is not None
                 and live_age > min(late_after, stale_after))
    progress_stale = progress_age > budget
    where = f" in phase {phase}" if phase and phase != "init" else ""
    nothing = "no first step" if phase == "init" else "no progress"
    if live_stale and progress_stale:
        since = max(progress_ref + budget, (alive_at or started) + stale_after)
        return RunStatus(TIMED_OUT, f"{nothing}{where} for {duration(progress_age)} (budget {duration(budget)}) "
                         f"and no heartbeat for {duration(live_age)}", since, {**details, "cause": "stall"})
    if ev_type == "hang_suspected" and ev_at is not None and ev_at >= progress_ref:
        # The in-process watchdog has the calibrated budget and the stacks: its verdict is the better reason.
        d = ev.get("details") or {}
        stalled_in = _phase_name(ev)
        in_phase = f" in phase {stalled_in}" if stalled_in else where
        at_step = d.get("last_step", job.get("last_step"))
        return RunStatus(WARNING, f"stall suspected{in_phase} at step {at_step} "
                         f"(no progress for {duration(progress_age)})", ev_at,
                         {**details, "cause": "hang_suspected", "phase": stalled_in or phase})
    if progress_stale:
        return RunStatus(WARNING, f"{nothing}{where} for {duration(progress_age)} (budget {duration(budget)})",
                         progress_ref + budget, {**details, "cause": "no_progress"})
    if live_stale:
        return RunStatus(WARNING, f"no heartbeat for {duration(live_age)} (stale after {duration(stale_after)})",
                         (alive_at or started) + stale_after, {**details, "cause": "heartbeat_stale"})
    if live_late:
        assert late_after is not None
        return RunStatus(WARNING, f"heartbeat late: last one {duration(live_age)} ago",
                         (alive_at or started) + late_after, {**details, "cause": "heartbeat_late"})
    reason = "starting" if phase == "init" else "training"
    if phase and phase != "init":
        reason = f"in phase {phase}"
    return RunStatus(RUNNING, reason, progress_ref if progress is not None else started,
                     {**details, "cause": "ok"})


def job_status(store: Store, job: Mapping[str, Any], *, now: float, stale_after: float = DEFAULT_STALE_AFTER,
               host: str | None = None, pid_alive: Callable[[int], bool] = pid_alive) -> RunStatus:
    """``compute_status`` for a stored job, fetching the event it needs."""
    events = store.recent_events(str(job["job_id"]))
    return compute_status(job, now=now, stale_after=stale_after, host=host, pid_alive=pid_alive,
                          last_event=relevant_event(job, events))


def settle_dead_jobs(
    store: Store,
    *,
    now: float | None = None,
    jobs: Iterable[Mapping[str, Any]] | None = None,
    host: str | None = None,
    pid_alive: Callable[[int], bool] = pid_alive,
    limit: int = 200,
) -> list[str]:
    """Mark failed the running jobs whose process on this host is gone; return their ids.

    The row is re-read after the pid was seen dead: a dead process writes nothing more, so a row that is
    still "running" then is final, and a job that wrote its own end status meanwhile is left alone.
    """
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    settled: list[str] = []
    for job in (store.list_jobs(limit=limit) if jobs is None else jobs):
        if job.get("status") != "running" or job.get("pid") is None or job.get("host") not in (None, host):
            continue
        st = compute_status(job, now=now, host=host, pid_alive=pid_alive)
        if not st.details.get("settle"):
            continue
        fresh = store.get_job(str(job["job_id"]))
        if fresh.get("status") != "running" or fresh.get("pid") != job.get("pid"):
            continue
        st = compute_status(fresh, now=now, host=host, pid_alive=pid_alive)
        if not st.details.get("settle"):
            continue
        # It died between its last sign of life and now; with none at all, now is the only bound we have.
        signs = (parse_float(fresh.get("heartbeat_at")), parse_float(fresh.get("progress_at")))
        alive_at = max((t for t in signs if t), default=None)
        store.update_job(str(job["job_id"]), status="failed", status_reason=st.reason,
                         ended_at=alive_at if alive_at is not None else now)
        log.info("job %s: %s; marked failed", job["job_id"], st.reason)
        settled.append(str(job["job_id"]))
    return settled


def recent_statuses(store: Store, *, now: float, stale_after: float = DEFAULT_STALE_AFTER,
                    limit: int = 20) -> list[tuple[dict[str, Any], RunStatus]]:
    """The ``limit`` most recent jobs with their state, for ``runlens status``.

    Running jobs whose process on this host died without an end record are marked failed first, so the
    list shows them as they are.
    """
    jobs = store.list_jobs(limit=limit)
    if settle_dead_jobs(store, now=now, jobs=jobs):
        jobs = store.list_jobs(limit=limit)
    return [(job, job_status(store, job, now=now, stale_after=stale_after)) for job in jobs]
