"""Hang rules: each stall the watchdogs caught, its likely cause read from the evidence, and the fix that cause
calls for.

A stall is one ``hang_suspected`` event (or several: the Monitor's watchdog and ``runlens collect`` may both
record the same one) up to what ended it: the next step, a ``recovered`` event, or the end of the run (a hang
kill, or a crash). Its lost time is last progress -> that end, the same span the goodput breakdown counts under
``stalls_and_hangs``. The cause is the collector's label when it has one, else ``label_cause`` on the stored
threads and process states, so evidence recorded by an older runlens is labelled too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.health import run_window
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule
from runlens.core import stacks as st
from runlens.core.humanize import duration_rough
from runlens.core.numbers import parse_finite

_SETTINGS_SHOWN = ("startup_grace", "hang_timeout", "uncalibrated_timeout", "calibrated_min", "calibrated_max",
                   "calibration_steps", "warmup_steps", "calibration_factor", "hard_timeout", "kill_grace",
                   "no_output_timeout")

_WHERE = {
    "dataloader": "waiting for a DataLoader batch",
    "collective": "in a distributed collective",
    "io": "in storage I/O",
    "native_gil": "in a native call holding the GIL",
    "lock": "on a lock",
    "sleep": "in a sleep/retry loop",
    "busy": "busy in Python without finishing a step",
    "unknown": "",
}


def _details(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def threads_of(details: Mapping[str, Any]) -> list[st.ThreadStack]:
    """The stored structured threads back into ThreadStacks (for labelling and naming the culprit frame)."""
    out: list[st.ThreadStack] = []
    for t in details.get("threads") or []:
        if not isinstance(t, Mapping):
            continue
        frames = [st.Frame(str(f.get("file", "?")), f.get("line"), str(f.get("function", "?")), f.get("code"))
                  for f in t.get("frames") or [] if isinstance(f, Mapping)]
        out.append(st.ThreadStack(name=t.get("name"), frames=frames, pid=t.get("pid"), thread_id=t.get("thread_id"),
                                  current=bool(t.get("current")), owns_gil=t.get("owns_gil"),
                                  active=t.get("active"), main=bool(t.get("main"))))
    return out


def processes_of(details: Mapping[str, Any]) -> list[st.ProcessState]:
    out = []
    for p in details.get("processes") or []:
        if isinstance(p, Mapping) and p.get("pid") is not None:
            out.append(st.ProcessState(pid=int(p["pid"]), name=p.get("name"), status=p.get("status"),
                                       wchan=p.get("wchan"), role=p.get("role"),
                                       stack_source=p.get("stack_source"), stack_error=p.get("stack_error")))
    return out


def stalls(data: JobData) -> list[dict[str, Any]]:
    """The run's stalls: ``begin`` (last progress), ``end``, ``lost_seconds``, ``killed``, ``recovered`` and the
    merged evidence of every ``hang_suspected`` event that belongs to it."""
    ev = data.events
    if ev is None or ev.empty or "event_type" not in ev.columns:
        return []
    ev = ev.sort_values("timestamp", kind="stable")
    hangs = ev[ev["event_type"] == "hang_suspected"]
    if hangs.empty:
        return []
    _, end_of_run, _ = run_window(data)
    step_ts = np.sort(pd.to_numeric(data.steps["timestamp"], errors="coerce").dropna().to_numpy(float)) \
        if data.steps is not None and not data.steps.empty and "timestamp" in data.steps.columns else np.empty(0)
    recov = pd.to_numeric(ev.loc[ev["event_type"] == "recovered", "timestamp"], errors="coerce").dropna()
    kills = ev[ev["event_type"] == "killed_by_runlens"]
    marks = np.sort(np.concatenate([step_ts, recov.to_numpy(float)]))
    out: list[dict[str, Any]] = []
    for t, raw in zip(hangs["timestamp"].tolist(), hangs["details"].tolist()):
        d = _details(raw)
        t = float(t)
        since = parse_finite(d.get("seconds_since_progress")) or 0.0
        begin = t - max(0.0, since)
        k = int(np.searchsorted(marks, t, side="right"))
        recovered = k < marks.size
        end = float(marks[k]) if recovered else float(end_of_run if end_of_run is not None else t)
        if out and begin <= out[-1]["end"] and abs(begin - out[-1]["begin"]) < max(5.0, 0.5 * since):
            _merge_into(out[-1], d)   # the same stall seen twice (the Monitor and runlens collect)
            continue
        killed = bool(((pd.to_numeric(kills["timestamp"], errors="coerce") >= t - 1e-6)
                       & (pd.to_numeric(kills["timestamp"], errors="coerce") <= end + 1e-6)).any()) \
            if not kills.empty else False
        if not recovered and data.job.get("status") == "timed_out":
            killed = True
        out.append({"begin": begin, "end": max(end, t), "detected_at": t, "recovered": recovered,
                    "killed": killed, "details": dict(d), "extra": []})
    for s in out:
        s["lost_seconds"] = max(0.0, s["end"] - s["begin"])
    return out


def _richness(d: Mapping[str, Any]) -> int:
    return len(d.get("threads") or []) + (5 if d.get("stack_source") == "py-spy" else 0)


def _merge_into(stall: dict[str, Any], d: Mapping[str, Any]) -> None:
    stall["extra"].append(dict(d))
    if _richness(d) > _richness(stall["details"]):
        keep = stall["details"]
        stall["details"] = {**dict(d), "phase": keep.get("phase") or d.get("phase")}
        if keep.get("cause") not in (None, "unknown") and d.get("cause") in (None, "unknown"):
            stall["details"]["cause"] = keep["cause"]


def _cause(d: Mapping[str, Any], threads: list[st.ThreadStack], procs: list[st.ProcessState]) -> str:
    cause = d.get("cause")
    if isinstance(cause, str) and cause in st.CAUSES and cause != "unknown":
        return cause
    if threads or procs:
        return st.label_cause(threads, procs, main_pid=d.get("pid"),
                              watchdog_starved=bool(d.get("watchdog_starved") or d.get("detected_late")))
    return "unknown"


@rule("hangs.stall", "hangs")
def stall_findings(data: JobData) -> list[Finding]:
    """One finding per stall: where it stopped, for how long, the cause from the stacks, and what to change."""
    found = stalls(data)
    if not found:
        return []
    start, end, _ = run_window(data)
    wall = (end - start) if start is not None and end is not None and end > start else None
    out = []
    for s in found:
        d = s["details"]
        threads, procs = threads_of(d), processes_of(d)
        cause = _cause(d, threads, procs)
        frame = st.culprit(threads, cause, main_pid=d.get("pid"))
        where = frame.where() if frame is not None else None
        lost = s["lost_seconds"]
        phase = d.get("phase")
        step = d.get("last_step")
        verb = "hung and was killed" if s["killed"] else ("stalled" if s["recovered"] else "hung")
        title = f"Training {verb} after {duration_rough(lost)} without progress"
        if _WHERE.get(cause):
            title += f", {_WHERE[cause]}"
        if step is not None:
            title += f" (after step {step}"
            title += f", phase {phase})" if phase else ")"
        share = lost / wall if wall else None
        impact = f"{duration_rough(lost)} lost" + (f" ({share:.0%} of the run)" if share is not None else "")
        if s["killed"]:
            impact += "; the run was stopped by it"
        evidence: dict[str, Any] = {
            "cause": cause, "culprit": where, "stall_seconds": lost, "phase": phase, "last_step": step,
            "killed": s["killed"], "recovered": s["recovered"], "detected_by": d.get("detected_by"),
            "stack_source": d.get("stack_source"), "timeout": d.get("timeout"),
            "timeout_kind": d.get("timeout_kind"), "seconds_to_detect": d.get("seconds_since_progress"),
            "settings": {k: data.settings.as_dict().get(k) for k in _SETTINGS_SHOWN},
        }
        stuck = [p.to_dict() for p in procs if p.status == "D"]
        if stuck:
            evidence["d_state_processes"] = stuck
        notes = list(d.get("evidence_notes") or [])
        for p in procs:
            if p.stack_error:
                notes.append(f"pid {p.pid} ({p.role or 'process'}): {p.stack_error}")
        if notes:
            evidence["evidence_notes"] = notes
        f = Finding(id="hangs.stall", severity="critical" if (s["killed"] or not s["recovered"]) else "warning",
                    title=title, action=_action(cause, where, procs, data), impact=impact, category="hangs",
                    evidence=evidence, impact_value=(share * 100 if share is not None else None),
                    impact_unit="percent_time" if share is not None else None)
        if cause == "dataloader":
            ref = resolve(data, "num_workers")
            apply_ref(f, ref, None, measured=_workers(procs))
        out.append(f)
    return out


def _workers(procs: Iterable[st.ProcessState]) -> int | None:
    n = sum(1 for p in procs if p.role == "worker")
    return n or None


def _action(cause: str, where: str | None, procs: list[st.ProcessState], data: JobData) -> str:
    at = f" at {where}" if where else ""
    if cause == "dataloader":
        workers = _workers(procs)
        shm = f" for {workers} workers" if workers else ""
        return (f"A DataLoader worker never returned its batch (stuck{at}). Fix or time-limit that code; give the "
                "DataLoader a timeout (e.g. timeout=600) so a stuck worker raises instead of hanging forever "
                "(the default, 0, waits forever); make sure /dev/shm is large enough" + shm +
                " (Docker: --shm-size=8g or --ipc=host). Rerunning with num_workers=0 puts the stuck code in the "
                "main thread's stack to confirm.")
    if cause == "collective":
        return (f"A collective{at} waited for a rank that was slower, dead or running different code. Compare the "
                "ranks' stacks at the same moment, check tensor shapes match across ranks (accelerate launch "
                "--debug), set TORCH_NCCL_DUMP_ON_TIMEOUT=1 for a Flight Recorder dump, and keep the process "
                "group's timeout at least twice runlens's stall timeout so runlens's evidence comes first.")
    if cause == "io":
        d = [p for p in procs if p.status == "D"]
        blocked = f" ({len(d)} process(es) in uninterruptible I/O wait, D state)" if d else ""
        return (f"The run waited on storage{at}{blocked}. Write checkpoints and caches to local disk and copy "
                "them off in the background; check the health and free space of the network or FUSE filesystem "
                "it reads or writes.")
    if cause == "native_gil":
        return (f"A native call held the GIL and did not return{at}: every Python thread, runlens's own "
                "included, was frozen. `py-spy dump --native --pid PID` shows the C frames; update the library "
                "behind it, or run that call in a subprocess with a timeout.")
    if cause == "lock":
        return (f"The main thread waited forever on a lock{at}: a deadlock (a lock taken twice by one thread, two "
                "locks taken in opposite orders, or a lock held across a fork). The other threads' stacks show "
                "who holds it.")
    if cause == "sleep":
        return f"The main thread was sleeping{at}, in a retry or poll loop that never ended; bound its retries."
    if cause == "busy":
        return (f"The main thread kept running Python{at} without finishing a step: an endless loop, or a step "
                "far slower than the ones before it.")
    return ("No stack pointed at a cause; read the stacks in the report. Install py-spy (and allow ptrace) so "
            "child processes' stacks are captured too.")
