"""``runlens collect``'s stall guard: stall detection, evidence and the hang kill from outside the training process.

The Monitor inside the child is the first line (``runlens.collect.watchdog``): it knows every step and phase and
has calibrated timeouts. The guard, a thread in the wrapper, covers what it cannot:

* **A native call holding the GIL.** The Monitor's watchdog thread is starved; only faulthandler's C timer fires
  and writes a dump to the child's stacks file. The guard reads that file: a timer dump that the watchdog does not
  follow with its ``# runlens watchdog: stall suspected`` line within a poll or two means the watchdog could not
  run, so the guard records the ``hang_suspected`` event itself, with a fresh on-demand dump (SIGUSR2 to the
  Monitor's process; faulthandler answers from its C signal handler), py-spy of every process and their states.
* **A stall the Monitor never reports** (no Monitor yet, its watchdog dead): the guard's own timeout, calibrated
  the same way from the step rows and phase events in the store (``progress_at``/``last_step`` of the job,
  polled), plus a margin that leaves the Monitor time to speak first.
* **A child that never calls runlens.** Its printed progress lines are its steps (``runlens.collect.output_steps``
  reads them on the tee's thread): the guard calibrates its timeout on the intervals between them and reports a
  stall with the step the output stopped at, as it does for a Monitor. Before the first progress line, or for a
  child that prints none, a fixed ``--hang-timeout`` falls back to the child's output (a line is weaker evidence:
  a telemetry thread can print while the loop is wedged); ``--no-output-timeout`` ("kill if no output for 10
  minutes") counts output in any case.
* **The kill**: after the evidence is stored, SIGTERM to the child's process group, ``kill_grace``
  (30 s, Slurm's default KillWait: https://slurm.schedmd.com/slurm.conf.html#OPT_KillWait) to exit, then SIGKILL; a ``killed_by_runlens`` event, and the wrapper ends the job
  as ``timed_out`` and exits 124 (``timeout(1)``'s code). The kill is armed only when asked for: a fixed
  ``--hang-timeout`` (hard = soft + max(soft, 300 s), TRT-LLM's soft->hard tiers), an explicit ``--hard-timeout``,
  or ``--no-output-timeout``. Otherwise the guard records evidence and leaves the run alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runlens.collect import stacks as capture
from runlens.core import stacks as st
from runlens.collect.watchdog import (
    MARK_CLOSED,
    MARK_RECOVERED,
    MARK_SUSPECTED,
    POLL_MAX,
    POLL_MIN,
    HangSettings,
    StallBudget,
)
from runlens.core.settings import Settings, timeout_or_off

log = logging.getLogger(__name__)

HANG_EXIT_CODE = 124            # runlens collect's exit code after killing a stalled child (as timeout(1))
HARD_EXTRA_MIN = 300.0          # hard = soft + max(soft, 5 min): the soft timeout's evidence comes first
GUARD_POLL_MIN, GUARD_POLL_MAX = 0.2, 2.0
MONITOR_MARGIN = 1.5            # seconds the Monitor's watchdog gets, after its own poll, to claim a timer dump
BACKSTOP_MARGIN = 5.0           # seconds past the guard's own deadline before it records a stall the Monitor missed
SIGNAL_DUMP_WAIT = 1.5          # seconds to wait for the on-demand dump after SIGUSR2

_HEADER = re.compile(r"^# runlens stacks file: pid (\d+), on-demand signal (\S+)")


@dataclass
class GuardConfig:
    """What the guard enforces (all from ``Settings``; stored with the job)."""

    hang: HangSettings
    hard_timeout: float | None = None        # explicit; else derived from a fixed soft timeout
    kill_grace: float = 30.0
    no_output_timeout: float | None = None
    stacks_dir: Path | None = None
    flush_interval: float = 1.0

    @classmethod
    def from_settings(cls, s: Settings) -> GuardConfig:
        return cls(hang=HangSettings.from_settings(s), hard_timeout=timeout_or_off(s.hard_timeout),
                   kill_grace=max(0.0, float(s.kill_grace)),
                   no_output_timeout=timeout_or_off(s.no_output_timeout),
                   stacks_dir=Path(s.stacks_dir) if s.stacks_dir else None, flush_interval=float(s.flush_interval))

    @property
    def kill_armed(self) -> bool:
        return self.hard_timeout is not None or self.hang.hang_timeout is not None

    def hard_after(self, soft: float) -> float:
        """Seconds without progress before the kill: the explicit hard timeout, else soft + max(soft, 300 s);
        never before the soft timeout, whose evidence comes first."""
        hard = self.hard_timeout if self.hard_timeout is not None else soft + max(soft, HARD_EXTRA_MIN)
        return max(hard, soft)


@dataclass
class _StacksFile:
    path: Path
    pid: int | None = None
    signal: str | None = None      # the on-demand signal, while registered
    offset: int = 0
    timer_dump_at: float | None = None
    suspected_at: float | None = None
    last_dump: st.Dump | None = None
    text: str = ""


@dataclass
class Outcome:
    """Why the guard killed the child: what the wrapper stores as the job's end."""

    reason: str
    phase: str | None
    last_step: int | None
    seconds_since_progress: float
    signals: list[str] = field(default_factory=list)


class StallGuard:
    """The wrapper's stall detector and hang killer: one thread, ``runlens-collect-watchdog``.

    Args:
        supervisor: the ``ChildSupervisor`` (its ``proc`` and ``kill_group``).
        store: the open Store (read: the job row and its latest phase/stall events).
        writer: the job's BatchWriter (events and samples go through it).
        job_id: the job.
        config: what to enforce.
        output_bytes: how many bytes the child has printed so far (the tee's counter).
        started: wall-clock time the child started.
        sample: takes one system sample and returns its writer key; by default the guard samples the child's
            process tree itself (a SystemSampler of its own, made on first use).
        output: the steps read from the child's output (``runlens.collect.output_steps.OutputSteps``), or None.
    """

    def __init__(self, supervisor: Any, store: Any, writer: Any, job_id: str, config: GuardConfig, *,
                 output_bytes: Callable[[], int], started: float, sample: Callable[[], int | None] | None = None,
                 clock: Callable[[], float] = time.time, output: Any = None) -> None:
        self.supervisor = supervisor
        self.store = store
        self.writer = writer
        self.job_id = job_id
        self.config = config
        self.outcome: Outcome | None = None
        self.events: list[str] = []      # event types this guard recorded (tests, logs)
        self._output_bytes = output_bytes
        self._output = output
        self._sample = sample
        self._clock = clock
        self._started = started
        self._budget = StallBudget(config.hang)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runlens-collect-watchdog", daemon=True)
        self._files: dict[Path, _StacksFile] = {}
        self._last_bytes = 0
        self._last_output: float | None = None
        self._last_step_id = 0
        self._progress_at: float | None = None
        self._monitor_seen = False
        self._evidence_at: float | None = None   # time of the latest hang_suspected (the Monitor's or ours)
        self._failed = False
        self._own_sampler: Any = None
        self.ticks = 0
        self.cpu_seconds = 0.0

    @property
    def killed(self) -> bool:
        return self.outcome is not None

    @property
    def monitor_seen(self) -> bool:
        """A Monitor inside the child has shown itself (its attach event, its steps, or its stacks file)."""
        return self._monitor_seen or any(f.pid is not None for f in self._files.values())

    def _output_steps(self) -> bool:
        """Progress lines of the child's output are its steps (and no Monitor records them)."""
        out = self._output
        return out is not None and out.steps > 0 and out.enabled and not self.monitor_seen

    def start(self) -> StallGuard:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._own_sampler is not None:
            with contextlib.suppress(Exception):
                self._own_sampler.close()
            self._own_sampler = None

    def _take_sample(self) -> int | None:
        """A fresh system sample of the child's tree for the evidence (the event links to it)."""
        if self._sample is not None:
            return self._sample()
        proc = self.supervisor.proc
        if proc is None:
            return None
        if self._own_sampler is None:
            from runlens.collect.sampler import SystemSampler

            self._own_sampler = SystemSampler(pid=proc.pid, include_children=True)
        sample = self._own_sampler.sample()
        key: int = self.writer.put_sample(sample.row, sample.gpus)
        return key

    # -- the loop --------------------------------------------------------------------------------------

    def cost_row(self, now: float) -> dict[str, Any]:
        """This thread's CPU, stored with the wrapper's other thread costs."""
        return {"timestamp": now, "operation": "thread:runlens-collect-watchdog", "calls": self.ticks,
                "total_seconds": self.cpu_seconds, "on_training_thread": False, "host": None, "rank": None}

    def _run(self) -> None:
        cpu0 = time.thread_time()
        poll = GUARD_POLL_MIN
        try:
            while not self._stop.wait(poll):
                if self._child_gone():
                    return
                try:
                    poll = self._tick()
                    self.ticks += 1
                except Exception:
                    if not self._failed:
                        self._failed = True
                        log.warning("runlens collect: the stall guard's check failed; it keeps running",
                                    exc_info=True)
                self.cpu_seconds = time.thread_time() - cpu0
                if self.outcome is not None:
                    return
        finally:
            self.cpu_seconds = time.thread_time() - cpu0

    def _child_gone(self) -> bool:
        proc = getattr(self.supervisor, "proc", None)
        return proc is None or proc.returncode is not None

    def _tick(self) -> float:
        now = self._clock()
        out = self._output_bytes()
        if out != self._last_bytes:
            self._last_bytes = out
            self._last_output = now
        view = self._read_store()
        self._scan_stacks_files(now)
        cfg = self.config
        timeouts: list[float] = []
        out = self._output
        if out is not None:
            out.release(now)   # the held output steps reach the store even while the child prints nothing

        # Steps and phases from a Monitor in the child.
        monitor = view["monitor"]
        progress = max(x for x in (view["progress_at"], view["phase_at"], view["attached_at"], self._started)
                       if x is not None)
        soft: float | None = None
        kind = ""
        source = "steps"
        if monitor:
            soft, kind = self._budget.timeout(steps=1 if view["progress_at"] is not None else 0, phase=view["phase"])
        elif self._output_steps():
            # Progress lines of the output are the steps: calibrated like a Monitor's, from their intervals.
            source = "output_steps"   # reported as "output" (the output is the progress), with output_steps: true
            for interval in out.take_intervals():
                self._budget.observe(interval)
            progress = max(float(out.last_at), self._started)
            view["last_step"], view["phase"] = out.last_step, out.phase
            soft, kind = self._budget.timeout(steps=1, phase=out.phase)
        elif cfg.hang.hang_timeout is not None:
            # No Monitor: output is the only sign of progress there is (see the module docstring).
            source = "output"
            if self._last_output is None:
                soft, kind = cfg.hang.startup_grace, "startup"
                progress = self._started
            else:
                soft, kind = cfg.hang.hang_timeout, "fixed"
                progress = max(self._last_output, self._started)
        if view["hang_at"] is not None:   # the Monitor's own reports count as this stall's evidence
            self._evidence_at = max(self._evidence_at or 0.0, float(view["hang_at"]))
        phase = view["phase"]
        if phase is None and monitor:
            phase = "train" if view["progress_at"] is not None else "startup"
        base: dict[str, Any] = {"phase": phase, "last_step": view["last_step"], "progress_source": source}
        if source == "output_steps":
            base.update(phase=phase or "train", progress_source="output", output_steps=True)

        if soft is not None:
            timeouts.append(soft)
            since = now - progress
            # The Monitor's C timer fired and its watchdog thread did not claim the stall: it is starved.
            timer = self._unclaimed_timer_dump(progress, now, soft)
            if timer is not None and not self._evidenced(progress):
                self._record_hang(progress, now_detected=timer.timer_dump_at or now, timeout=soft, kind=kind,
                                  base=base, starved=True, stacks_file=timer)
            margin = BACKSTOP_MARGIN + 2 * cfg.flush_interval if monitor else 0.0
            if since >= soft + margin and not self._evidenced(progress):
                self._record_hang(progress, now_detected=progress + soft + margin, timeout=soft, kind=kind,
                                  base=base, starved=False)
            if cfg.kill_armed:
                hard = cfg.hard_after(soft)
                timeouts.append(hard)
                if since >= hard:
                    if not self._evidenced(progress):
                        self._record_hang(progress, now_detected=now, timeout=soft, kind=kind, base=base,
                                          starved=False)
                    self._kill(f"no progress for {since:.0f}s (hard timeout {hard:g}s)", base, since, hard)
                    return GUARD_POLL_MIN

        if cfg.no_output_timeout is not None:
            timeouts.append(cfg.no_output_timeout)
            quiet_since = max(self._last_output or self._started, self._started)
            quiet = now - quiet_since
            if quiet >= cfg.no_output_timeout:
                if not self._evidenced(quiet_since):
                    self._record_hang(quiet_since, now_detected=now, timeout=cfg.no_output_timeout,
                                      kind="no_output", base={**base, "progress_source": "output"}, starved=False)
                self._kill(f"no output for {quiet:.0f}s (no-output timeout {cfg.no_output_timeout:g}s)",
                           {**base, "progress_source": "output"}, quiet, cfg.no_output_timeout)
                return GUARD_POLL_MIN
        shortest = min(timeouts) if timeouts else 60.0
        return min(max(shortest / 8.0, GUARD_POLL_MIN), GUARD_POLL_MAX)

    def _evidenced(self, progress: float) -> bool:
        """Whether the stall that began at ``progress`` already has a ``hang_suspected`` event."""
        return self._evidence_at is not None and self._evidence_at >= progress - 1e-6

    # -- what the store says ---------------------------------------------------------------------------

    def _read_store(self) -> dict[str, Any]:
        """The job's progress (written by the child's Monitor through its writer) and its latest phase and stall
        events. A few small indexed queries every poll (the guard polls every 0.2-2 s)."""
        view: dict[str, Any] = {"progress_at": None, "last_step": None, "phase": None, "phase_at": None,
                                "attached_at": None, "hang_at": None, "recovered_at": None, "monitor": False}
        try:
            job = self.store.get_job(self.job_id)
        except Exception:
            return view
        view["progress_at"] = job.get("progress_at")
        view["last_step"] = job.get("last_step")
        mine = self._output is not None and self._output.written > 0   # progress_at may be the output's steps
        if view["progress_at"] is not None and view["progress_at"] != self._progress_at and not mine:
            self._progress_at = view["progress_at"]
            self._calibrate()
        latest = self._latest("phase_start", "phase_end", "hang_suspected", "recovered", "monitor_attached",
                              "start")
        ps, pe = latest.get("phase_start"), latest.get("phase_end")
        phase_ev = max((e for e in (ps, pe) if e), key=lambda e: (e["timestamp"], e["id"]), default=None)
        if phase_ev is not None:
            view["phase_at"] = phase_ev["timestamp"]
            if phase_ev["event_type"] == "phase_start":
                view["phase"] = (phase_ev.get("details") or {}).get("name")
        for key, etype in (("hang_at", "hang_suspected"), ("recovered_at", "recovered"),
                           ("attached_at", "monitor_attached")):
            if latest.get(etype):
                view[key] = latest[etype]["timestamp"]
        start = latest.get("start")
        if view["attached_at"] is None and start is not None and (start.get("details") or {}).get("stacks_file"):
            view["attached_at"] = start["timestamp"]   # a Monitor that created the wrapper's job id itself
        self._monitor_seen = (self._monitor_seen or view["attached_at"] is not None
                              or (view["progress_at"] is not None and not mine))
        view["monitor"] = self._monitor_seen
        return view

    def _latest(self, *types: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for etype in types:
            try:
                rows = self.store.recent_events(self.job_id, limit=1, event_type=etype,
                                                with_details=etype in ("phase_start", "start"))
            except Exception:   # the store is busy or gone for a moment: the next poll asks again
                log.debug("stall guard: reading %s events failed", etype, exc_info=True)
                continue
            if rows:
                out[etype] = rows[0]
        return out

    def _calibrate(self) -> None:
        """Feed the step intervals stored since the last poll into the guard's own calibration."""
        try:
            rows = self.store.recent_steps(self.job_id, limit=self.config.hang.calibration_window)
        except Exception:
            return
        for r in reversed(rows):
            if r["id"] > self._last_step_id:
                self._last_step_id = r["id"]
                if r["step_time_seconds"] is not None:
                    self._budget.observe(float(r["step_time_seconds"]))

    # -- the child's stacks files ----------------------------------------------------------------------

    def _scan_stacks_files(self, now: float) -> None:
        folder = self.config.stacks_dir
        if folder is None or not folder.is_dir():
            return
        for path in folder.glob("stacks-*.txt"):
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = _StacksFile(path)
            self._read_stacks_file(f, now)

    def _read_stacks_file(self, f: _StacksFile, now: float) -> None:
        try:
            size = f.path.stat().st_size
            if size <= f.offset:
                return
            with open(f.path, "rb") as fh:
                fh.seek(f.offset)
                data = fh.read(size - f.offset)
        except OSError:
            return
        # Only whole lines: a dump being written is read on the next poll.
        cut = data.rfind(b"\n")
        if cut < 0:
            return
        data = data[: cut + 1]
        f.offset += len(data)
        text = data.decode("ascii", "replace")
        f.text += text
        for line in text.splitlines():
            m = _HEADER.match(line)
            if m:
                f.pid = int(m.group(1))
                f.signal = None if m.group(2) == "none" else m.group(2)
            elif line.startswith(MARK_SUSPECTED):
                f.suspected_at = now
            elif line.startswith(MARK_RECOVERED):
                f.suspected_at = f.timer_dump_at = None
            elif line.startswith(MARK_CLOSED):
                f.signal = None
            elif line.startswith("Timeout ("):
                f.timer_dump_at = now
        dumps = st.parse_faulthandler(text, pid=f.pid)
        if dumps:
            f.last_dump = dumps[-1]

    def _unclaimed_timer_dump(self, progress: float, now: float, soft: float) -> _StacksFile | None:
        """A timer dump written after the last progress that the Monitor's watchdog has not claimed in time."""
        for f in self._files.values():
            at = f.timer_dump_at
            if at is None or at < progress:
                continue
            if f.suspected_at is not None and f.suspected_at >= at - POLL_MAX:
                continue
            # the Monitor's watchdog polls every tenth of its timeout (0.05-1 s), then writes its mark at once
            wait = min(max(soft / 10.0, POLL_MIN), POLL_MAX) + MONITOR_MARGIN
            if now - at >= wait:
                return f
        return None

    def _fresh_dumps(self) -> dict[int, st.Dump]:
        """Ask each live Monitor process for a dump now (faulthandler answers from its C signal handler, even when
        a native call holds the GIL), then read it back."""
        asked: list[_StacksFile] = []
        proc = self.supervisor.proc
        tree = {pid for pid, _ in capture.process_tree(proc.pid)} if proc is not None else set()
        for f in self._files.values():
            signum = getattr(signal, f.signal, None) if f.signal else None
            if f.pid is None or signum is None or f.pid not in tree:
                continue   # never signal a pid outside the child's tree: a dead Monitor's pid may be reused
            try:
                os.kill(f.pid, signum)
                asked.append(f)
            except OSError:
                continue
        out: dict[int, st.Dump] = {}
        deadline = time.monotonic() + SIGNAL_DUMP_WAIT
        sizes = {f.path: f.offset for f in asked}
        while asked and time.monotonic() < deadline:
            time.sleep(0.1)
            done = []
            for f in asked:
                before = f.last_dump
                self._read_stacks_file(f, self._clock())
                if f.offset > sizes[f.path] and f.last_dump is not None and f.last_dump is not before:
                    # wait one more beat for the rest of the dump, then keep what is there
                    time.sleep(0.1)
                    self._read_stacks_file(f, self._clock())
                    done.append(f)
            for f in done:
                asked.remove(f)
                if f.pid is not None and f.last_dump is not None:
                    out[f.pid] = f.last_dump
        for f in self._files.values():
            if f.pid is not None and f.pid not in out and f.last_dump is not None:
                out[f.pid] = f.last_dump
        return out

    # -- evidence and the kill -------------------------------------------------------------------------

    def _record_hang(self, progress: float, *, now_detected: float, timeout: float, kind: str,
                     base: dict[str, Any], starved: bool, stacks_file: _StacksFile | None = None) -> None:
        self._evidence_at = max(self._evidence_at or 0.0, now_detected)
        proc = self.supervisor.proc
        if proc is None:
            return
        t0 = self._clock()
        dumps = self._fresh_dumps()
        monitor_pid = stacks_file.pid if stacks_file is not None else next(
            (f.pid for f in self._files.values() if f.pid is not None), None)
        have_py_spy = capture.py_spy_path() is not None
        ev = capture.gather(proc.pid, dumps=dumps, py_spy=True, main_pid=monitor_pid or proc.pid,
                       watchdog_starved=starved and not have_py_spy)
        if starved and ev.cause in ("unknown", "busy", "sleep"):
            ev.cause = "native_gil"   # the C timer fired and no Python thread could answer
        details: dict[str, Any] = {
            **base, "seconds_since_progress": now_detected - progress, "timeout": timeout, "timeout_kind": kind,
            "detected_by": "runlens collect", "pid": monitor_pid or proc.pid,
            "recorded_after_seconds": max(0.0, self._clock() - now_detected),
            "evidence_seconds": self._clock() - t0,
        }
        if starved:
            details["watchdog_starved"] = True
            details["evidence_notes"] = [("faulthandler's C timer fired but the Monitor's watchdog thread did not "
                                          "answer: a native call is holding the GIL")]
        if stacks_file is not None:
            details["stacks_file"] = str(stacks_file.path)
            if stacks_file.timer_dump_at is not None:
                details["timer_dump_at"] = stacks_file.timer_dump_at
        evd = ev.to_details()
        if "evidence_notes" in evd and "evidence_notes" in details:
            evd["evidence_notes"] = details["evidence_notes"] + evd["evidence_notes"]
        details.update(evd)
        self._put_event("hang_suspected", details, now_detected)

    def _put_event(self, event_type: str, details: dict[str, Any], at: float | None = None) -> None:
        try:
            key = self._take_sample()
        except Exception:
            key = None
        self.writer.put_event({"timestamp": at if at is not None else self._clock(), "event_type": event_type,
                               "details": details}, key)
        self.events.append(event_type)
        with contextlib.suppress(Exception):
            self.writer.flush(timeout=5.0)

    def _kill(self, why: str, base: dict[str, Any], since: float, limit: float) -> None:
        """SIGTERM to the group, ``kill_grace`` to exit, SIGKILL to what is left."""
        proc = self.supervisor.proc
        phase = base.get("phase")
        step = base.get("last_step")
        reason = f"killed by runlens: {why}" + (f" in phase {phase}" if phase else "") + (
            f", last step {step}" if step is not None else "")
        outcome = Outcome(reason=reason, phase=phase, last_step=step, seconds_since_progress=since)
        grace = self.config.kill_grace
        self._put_event("killed_by_runlens", {**base, "reason": why, "seconds_since_progress": since,
                                              "timeout": limit, "kill_grace": grace, "signal": "SIGTERM"})
        self.outcome = outcome
        self.supervisor.kill_group(signal.SIGTERM, f"stall: {why}")
        outcome.signals.append("SIGTERM")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and proc is not None and proc.returncode is None:
            if self._stop.wait(0.1):
                break
        if proc is not None and proc.returncode is None:
            self.supervisor.kill_group(signal.SIGKILL, f"stall: {why}; still running {grace:g}s after SIGTERM")
            outcome.signals.append("SIGKILL")
        else:
            # The main process is gone; its DataLoader workers or helpers may not be.
            with contextlib.suppress(Exception):
                os.killpg(proc.pid, signal.SIGKILL)
