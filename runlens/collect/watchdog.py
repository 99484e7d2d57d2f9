"""In-process stall detection: when has the training loop gone quiet for too long, and what was it doing.

Progress is a finished step or an explicit phase change (``mon.step``, ``mon.phase``), never a background
thread's heartbeat: trainers' telemetry threads keep printing while the loop is wedged.

How long is too long calibrates itself, along the lines of NVIDIA's Resiliency Extension (NVRx, its in-job
hang detection: https://github.com/NVIDIA/nvidia-resiliency-ext):

==========================  ============================================================================
before the first step       ``startup_grace`` (20 min: model download, ``torch.compile``, dataset indexing)
first steps                 ``uncalibrated_timeout`` (300 s) until ``calibration_steps`` (20) step intervals
                            were seen after ``warmup_steps`` (5) warm-up intervals (NVRx: 5 warm-up iterations)
then                        clamp(``calibration_factor`` (5) x the slowest of the last ``calibration_window``
                            (100) step intervals, ``calibrated_min`` (120 s), ``calibrated_max`` (15 min));
                            NVRx, too, takes the slowest recent iteration x 5
inside a phase              its budget from ``phase_budgets`` (eval, save, checkpoint...: 30 min, the order of
                            FlagScale's ``checkpoint_timeout_s``), or 5 x its last duration when that is longer
``hang_timeout`` set        replaces the step timeout (not the startup grace nor a phase's budget)
==========================  ============================================================================

A step interval that contains a phase change (an eval between two steps) is not a step time and is left out
of the calibration.

Why faulthandler: a Python watchdog thread needs the GIL; a native call that holds it (a C extension's
deadlock, a CUDA call spinning) starves every Python thread. Measured: a 0.5 s watchdog starved for 7.6 s while
``faulthandler.dump_traceback_later`` fired on time (its timer is a C thread that needs no GIL:
https://docs.python.org/3/library/faulthandler.html). So the C timer is kept armed at the current
deadline (re-armed by this thread when the deadline moves, at most once per poll, never per step: a re-arm costs
~47 µs) and writes every thread's stack to a per-process stacks file that stays open for the run; this thread,
once it gets the GIL, or ``runlens collect`` from outside, turns that dump into a ``hang_suspected`` event.
The same file takes on-demand dumps: ``faulthandler.register(SIGUSR2, chain=...)`` (not SIGUSR1: that is
Lightning's SLURM requeue signal; chaining only when another handler exists, because chaining to SIG_DFL
would kill the process).

``step()`` is not touched: this thread reads the Monitor's plain progress attributes once per poll.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import itertools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from runlens.collect import stacks as capture
from runlens.core import stacks as st
from runlens.core.phases import PHASE_ALIASES
from runlens.core.settings import Settings, timeout_or_off

log = logging.getLogger(__name__)

POLL_MIN, POLL_MAX = 0.05, 1.0   # seconds; the poll is a tenth of the current timeout within these
STARVED_GAP = 1.0                # seconds: a poll later than this (and 3 polls) means the thread was starved
DUMP_SETTLE_SECONDS = 0.25      # a stacks file untouched this long holds whole dumps
# Lines this thread writes into its stacks file for runlens collect (faulthandler's own lines never start with #).
MARK_SUSPECTED = "# runlens watchdog: stall suspected"
MARK_RECOVERED = "# runlens watchdog: recovered"
MARK_CLOSED = "# runlens watchdog: closed, on-demand signal unregistered"

_DEFAULTS = Settings()


@dataclass(frozen=True)
class HangSettings:
    """The stall-detection part of ``Settings``, with its defaults (the table above)."""

    startup_grace: float = _DEFAULTS.startup_grace
    hang_timeout: float | None = _DEFAULTS.hang_timeout
    uncalibrated_timeout: float = _DEFAULTS.uncalibrated_timeout
    calibrated_min: float = _DEFAULTS.calibrated_min
    calibrated_max: float = _DEFAULTS.calibrated_max
    calibration_steps: int = _DEFAULTS.calibration_steps
    warmup_steps: int = _DEFAULTS.warmup_steps
    calibration_factor: float = _DEFAULTS.calibration_factor
    calibration_window: int = _DEFAULTS.calibration_window
    phase_budgets: Mapping[str, float] = field(default_factory=lambda: dict(Settings().phase_budgets))

    @classmethod
    def from_settings(cls, s: Settings) -> HangSettings:
        return cls(startup_grace=float(s.startup_grace), hang_timeout=timeout_or_off(s.hang_timeout),
                   uncalibrated_timeout=float(s.uncalibrated_timeout), calibrated_min=float(s.calibrated_min),
                   calibrated_max=float(s.calibrated_max), calibration_steps=int(s.calibration_steps),
                   warmup_steps=int(s.warmup_steps), calibration_factor=float(s.calibration_factor),
                   calibration_window=max(1, int(s.calibration_window)),
                   phase_budgets={str(k).lower(): float(v) for k, v in (s.phase_budgets or {}).items()})


def phase_budget(phase: str | None, budgets: Mapping[str, float]) -> float | None:
    """The budget of ``phase``: its own key, an alias (``evaluation`` -> ``eval``) or a key it starts with
    (``eval_loop`` -> ``eval``); None for a phase without one."""
    if not phase:
        return None
    name = phase.lower()
    if name in budgets:
        return budgets[name]
    alias = PHASE_ALIASES.get(name)
    if alias and alias in budgets:
        return budgets[alias]
    for key, value in budgets.items():
        if name.startswith(key):
            return value
    return None


class StallBudget:
    """The calibration math, apart from any thread or clock so it is tested on numbers.

    ``observe(interval)`` is fed every step interval (seconds between two steps with no phase change in
    between); ``timeout(steps=..., phase=...)`` says how long the loop may now go without progress, and which
    rule said so (``startup``, ``uncalibrated``, ``calibrated``, ``phase`` or ``fixed``). Thread-safe: the
    Monitor's writer thread observes while its watchdog thread asks.
    """

    def __init__(self, settings: HangSettings) -> None:
        self.settings = settings
        self.intervals: collections.deque[float] = collections.deque(maxlen=settings.calibration_window)
        self.seen = 0
        self._lock = threading.Lock()

    def observe(self, interval: float) -> None:
        if not (interval >= 0 and math.isfinite(interval)):
            return
        with self._lock:
            self.seen += 1
            if self.seen > self.settings.warmup_steps:
                self.intervals.append(interval)

    def observe_many(self, intervals: Sequence[float]) -> None:
        """``observe`` each interval in order, under one lock; each is known to be a finite number >= 0."""
        with self._lock:
            skip = max(0, self.settings.warmup_steps - self.seen)
            self.seen += len(intervals)
            self.intervals.extend(itertools.islice(intervals, skip, None))

    @property
    def calibrated(self) -> bool:
        return len(self.intervals) >= self.settings.calibration_steps

    def slowest(self) -> float | None:
        with self._lock:
            return max(self.intervals) if self.intervals else None

    def step_timeout(self) -> tuple[float, str]:
        """The timeout between steps: fixed, calibrated, or uncalibrated."""
        s = self.settings
        if s.hang_timeout is not None:
            return s.hang_timeout, "fixed"
        if self.calibrated:
            slowest = self.slowest() or 0.0
            return min(max(s.calibration_factor * slowest, s.calibrated_min), s.calibrated_max), "calibrated"
        return s.uncalibrated_timeout, "uncalibrated"

    def timeout(self, *, steps: int, phase: str | None = None,
                last_phase_duration: float | None = None) -> tuple[float, str]:
        """How long the loop may go without progress now.

        Args:
            steps: steps recorded so far (0: still starting up).
            phase: the phase the loop is in (``mon.phase``), or None.
            last_phase_duration: how long this phase took last time (its budget is at least 5 x that).
        """
        s = self.settings
        budget = phase_budget(phase, s.phase_budgets)
        if budget is not None:
            if last_phase_duration:
                budget = max(budget, s.calibration_factor * last_phase_duration)
            return budget, "phase"
        if steps <= 0:
            return s.startup_grace, "startup"
        return self.step_timeout()


class Progress(NamedTuple):
    """What the watchdog reads from the Monitor once per poll (plain attributes, no lock)."""

    last_progress: float            # perf_counter() of the last step or phase change
    last_step: Any
    phase: str | None
    loader_waiting_since: float | None
    steps: int


Emit = Callable[[str, dict[str, Any], float | None], None]

# faulthandler's timer and signal registration are process-wide: one Watchdog owns them at a time.
_FH_LOCK = threading.Lock()
_FH_OWNER: Watchdog | None = None


def resolve_signal(name: str | None) -> int | None:
    if not name:
        return None
    try:
        return int(getattr(signal, name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()))
    except (AttributeError, TypeError, ValueError):
        return None


class Watchdog:
    """The in-process stall detector: one daemon thread, ``runlens-watchdog``.

    Args:
        progress: returns the Monitor's current ``Progress``.
        settings: the stall-detection settings.
        emit: ``emit(event_type, details, timestamp)`` records an event (``hang_suspected``, ``recovered``,
            ``stacks_dumped``) with a fresh system sample; ``timestamp`` None means now.
        flush: called after a ``hang_suspected`` event, so it reaches the store before anyone kills the process.
        stacks_path: the per-process stacks file for faulthandler's dumps; None: no C-level timer.
        stack_signal: the on-demand dump signal's name (``SIGUSR2``); None or "" for none.
        phase_durations: the Monitor's last duration of each phase (read, never written here).
        py_spy: run py-spy on child processes (DataLoader workers) for their stacks.
        clock, wall: seams for tests (perf_counter, time.time).
    """

    def __init__(self, progress: Callable[[], Progress], settings: HangSettings, emit: Emit, *,
                 flush: Callable[[], None] = lambda: None, stacks_path: str | os.PathLike[str] | None = None,
                 stack_signal: str | None = "SIGUSR2", phase_durations: Mapping[str, float] | None = None,
                 py_spy: bool = True, clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.budget = StallBudget(settings)
        self.phase_marks: collections.deque[float] = collections.deque(maxlen=100_000)
        self.stacks_path = Path(stacks_path) if stacks_path else None
        self.stack_signal_name = stack_signal or None
        self.registered_signal: str | None = None
        self.timer_armed = False
        self.notes: list[str] = []
        self._progress = progress
        self._emit = emit
        self._flush = flush
        self._phase_durations = phase_durations if phase_durations is not None else {}
        self._py_spy = py_spy
        self._clock = clock
        self._wall = wall
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runlens-watchdog", daemon=True)
        self._file: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None
        self._offset = 0
        self._pending_size = -1
        self._latest_timeout_dump: st.Dump | None = None
        self._owner = False
        self._signum: int | None = None
        # Loop state (the watchdog thread only).
        self._window: Progress | None = None   # the progress seen at the previous poll, and its timeout
        self._window_timeout = 0.0
        self._window_kind = ""
        self._armed_deadline: float | None = None
        self._suspect: dict[str, Any] | None = None
        self._last_tick = 0.0
        self._last_tick_before: float | None = None
        self._poll = POLL_MAX
        self._failed = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Watchdog:
        self._open_stacks_file()
        self._last_tick = self._clock()
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (waiting ``timeout`` s for evidence being gathered), the timer and the signal."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive() and self._suspect is not None:
            with contextlib.suppress(Exception):   # progress since the last poll ended the stall: say so
                p = self._progress()
                if self._window is not None and p.last_progress != self._window.last_progress:
                    self._recovered(p)
        self._release_faulthandler()
        self._mark(MARK_CLOSED)
        for f in (self._reader, self._file):
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
        self._reader = self._file = None

    def _open_stacks_file(self) -> None:
        global _FH_OWNER
        if self.stacks_path is None:
            return
        try:
            self.stacks_path.parent.mkdir(parents=True, exist_ok=True)
            # Both stay open for the run: faulthandler writes by fd, so the file must outlive every dump.
            self._file = open(self.stacks_path, "ab", buffering=0)  # noqa: SIM115
            self._reader = open(self.stacks_path, "rb")  # noqa: SIM115
        except OSError as exc:
            self.notes.append(f"no stacks file ({exc}); no C-level stall timer")
            self.stacks_path = None
            return
        with _FH_LOCK:
            if _FH_OWNER is not None and _FH_OWNER.alive:
                self.notes.append("another Monitor in this process owns faulthandler; no C-level stall timer")
                self._write_header()
                self._offset = self._size()
                return
            _FH_OWNER = self
            self._owner = True
        signum = resolve_signal(self.stack_signal_name)
        if signum is not None:
            try:
                previous = signal.getsignal(signum)
                # chain=True re-raises into the previous handler; with SIG_DFL that would kill the process.
                chain = previous not in (signal.SIG_DFL, None)
                if chain:
                    log.warning("runlens: %s already has a handler (%r); the stack dump chains to it",
                                self.stack_signal_name, previous)
                faulthandler.register(signum, file=self._file, all_threads=True, chain=chain)
                self._signum = signum
                self.registered_signal = signal.Signals(signum).name
            except (ValueError, OSError, RuntimeError, AttributeError) as exc:
                self.notes.append(f"no on-demand stack dumps on {self.stack_signal_name} ({exc})")
        self._write_header()
        self._offset = self._size()

    def _write_header(self) -> None:
        if self._file is None:
            return
        sig = self.registered_signal or "none"
        with contextlib.suppress(OSError):
            self._file.write(f"# runlens stacks file: pid {os.getpid()}, on-demand signal {sig}, opened "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())

    def _mark(self, text: str) -> None:
        """A ``#`` line in the stacks file for ``runlens collect``, which reads it from outside: the watchdog is
        alive and has the stall (so the wrapper need not record it again), or the signal is gone."""
        if self._file is None:
            return
        with contextlib.suppress(Exception):
            self._file.write(f"{text} at {self._wall():.3f}\n".encode())

    def _release_faulthandler(self) -> None:
        global _FH_OWNER
        if not self._owner:
            return
        with contextlib.suppress(Exception):
            faulthandler.cancel_dump_traceback_later()
        if self._signum is not None:
            with contextlib.suppress(Exception):
                faulthandler.unregister(self._signum)
            self._signum = None
        with _FH_LOCK:
            if _FH_OWNER is self:
                _FH_OWNER = None
        self._owner = False
        self.timer_armed = False

    def _arm(self, remaining: float) -> None:
        """Point faulthandler's C timer at the current deadline (one global timer per process)."""
        if not self._owner or self._file is None:
            return
        try:
            faulthandler.dump_traceback_later(max(remaining, 0.001), repeat=False, file=self._file)
            self.timer_armed = True
        except Exception as exc:
            self.notes.append(f"faulthandler timer unavailable ({exc})")
            self._owner = False

    def describe(self) -> dict[str, Any]:
        """The detector's state for the run's end event: the step timeout it had reached and why, so the
        analyzer can explain a verdict (or the absence of one)."""
        timeout, kind = self.budget.step_timeout()
        return {"step_timeout": timeout, "step_timeout_kind": kind, "slowest_step": self.budget.slowest(),
                "step_intervals_seen": self.budget.seen, "c_timer": self.timer_armed,
                "stack_signal": self.registered_signal, "notes": list(self.notes)}

    # -- calibration input (writer thread) -------------------------------------------------------------

    def observe_step(self, at: float, interval: float | None) -> None:
        """A step finished at ``at`` (perf_counter) ``interval`` s after the previous one; intervals that
        contain a phase change are not step times and are skipped."""
        marks = self.phase_marks
        crossed = False
        while marks and marks[0] <= at:
            if marks.popleft() > at - (interval or 0.0):
                crossed = True
        if interval is not None and not crossed:
            self.budget.observe(interval)

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        # First tick at once (it arms the C timer), then every poll; the poll starts at a tenth of the shortest
        # timeout this run can have, so the timer follows the first steps of a short-timeout run.
        s = self.settings
        self._poll = min(max(min(s.hang_timeout or s.uncalibrated_timeout, s.calibrated_min, s.startup_grace)
                             / 10.0, POLL_MIN), POLL_MAX)
        while True:
            try:
                self._tick()
            except Exception:
                if not self._failed:
                    self._failed = True
                    log.warning("runlens watchdog tick failed; it keeps running", exc_info=True)
            if self._stop.wait(self._poll):
                return

    def current_timeout(self, p: Progress) -> tuple[float, str]:
        last_duration = self._phase_durations.get(p.phase) if p.phase else None
        return self.budget.timeout(steps=p.steps, phase=p.phase, last_phase_duration=last_duration)

    def _tick(self) -> None:
        now = self._clock()
        gap = now - self._last_tick
        self._last_tick_before, self._last_tick = self._last_tick, now
        p = self._progress()
        timeout, kind = self.current_timeout(p)
        dumps = self._read_dumps()
        if self._window is None:
            self._window, self._window_timeout, self._window_kind = p, timeout, kind
        starved = gap >= max(STARVED_GAP, 3 * self._poll, self._window_timeout / 2)
        if p.last_progress != self._window.last_progress:
            if self._suspect is not None:
                self._recovered(p)
            elif p.last_progress - self._window.last_progress > self._window_timeout and starved:
                self._late_stall(p, gap)
        self._window, self._window_timeout, self._window_kind = p, timeout, kind
        for d in dumps:
            if d.kind == "signal":
                self._stacks_dumped(d)
        # A tenth of the timeout, and no slower than the step timeout's tenth, so the C timer is re-armed within
        # a fraction of a step timeout of the last step even while a longer startup or phase budget applies.
        self._poll = min(max(min(timeout, self.budget.step_timeout()[0]) / 10.0, POLL_MIN), POLL_MAX)
        deadline = p.last_progress + timeout
        if self._suspect is not None:
            return
        if now >= deadline:
            self._fire(p, now, timeout, kind, starved=starved)
        elif deadline != self._armed_deadline:
            self._arm(deadline - now)
            self._armed_deadline = deadline

    def _phase_label(self, p: Progress) -> str:
        return p.phase or ("startup" if p.steps <= 0 else "train")

    def _base_details(self, p: Progress, since: float, timeout: float, kind: str) -> dict[str, Any]:
        step = p.last_step if isinstance(p.last_step, int) else None
        d: dict[str, Any] = {"phase": self._phase_label(p), "last_step": step, "seconds_since_progress": since,
                             "timeout": timeout, "timeout_kind": kind, "detected_by": "monitor",
                             "pid": os.getpid()}
        if self.stacks_path is not None:
            d["stacks_file"] = str(self.stacks_path)
        return d

    def _fire(self, p: Progress, now: float, timeout: float, kind: str, starved: bool) -> None:
        """Soft timeout: gather the evidence and record ``hang_suspected``.

        When this thread was starved past the deadline (a native call held the GIL and has just let go), the C
        timer's dump, taken at the deadline while the loop was stuck, is the evidence and its time the
        detection time."""
        detected_at = self._wall()
        since = now - p.last_progress
        self._mark(MARK_SUSPECTED)
        self._suspect = {"since": p.last_progress, "timeout": timeout, "kind": kind, "phase": self._phase_label(p)}
        me = threading.get_ident()
        own = [t for t in capture.current_threads() if t.thread_id != me]
        source = "sys._current_frames"
        dump = self._latest_timeout_dump
        late: dict[str, Any] = {}
        if starved:
            late = {"detected_late": True, "watchdog_starved_seconds": now - (self._last_tick_before or now)}
            if dump is not None:
                own, source = dump.threads, "faulthandler"
                _name_threads(own)
                detected_at -= max(0.0, since - timeout)
                since = timeout
        details = self._base_details(p, since, timeout, kind)
        details.update(late)
        if p.loader_waiting_since is not None:
            details["in_loader"] = True
            details["loader_wait_seconds"] = now - p.loader_waiting_since
        dumps = {os.getpid(): dump} if dump else None
        ev = capture.gather(os.getpid(), own_threads=own, own_source=source, dumps=dumps, py_spy=self._py_spy,
                       watchdog_starved=starved)
        if p.loader_waiting_since is not None and ev.cause in ("unknown", "lock", "sleep"):
            ev.cause = "dataloader"   # waiting inside mon.loader(...): the data pipeline owes the next batch
        details.update(ev.to_details())
        if self.notes:
            details.setdefault("evidence_notes", []).extend(self.notes)
        self._suspect["cause"] = ev.cause
        self._emit("hang_suspected", details, detected_at)
        self._flush()

    def _late_stall(self, p: Progress, gap: float) -> None:
        """Progress came back after a stall longer than the timeout that this thread never saw: it was starved
        (a native call held the GIL). The C timer's dump, if any, is the evidence; record the stall after the
        fact, then its recovery."""
        before = self._window or p
        timeout = self._window_timeout
        offset = self._wall() - self._clock()
        dump = self._latest_timeout_dump
        threads = dump.threads if dump else []
        capture.add_source_lines(threads)
        _name_threads(threads)
        stall = p.last_progress - before.last_progress
        details = self._base_details(before, timeout, timeout, self._window_kind)
        details.update({"detected_late": True, "watchdog_starved_seconds": gap, "stall_seconds": stall,
                        "stacks": st.format_threads(threads) if threads else "",
                        "stack_source": "faulthandler" if threads else None,
                        "threads": [t.to_dict() for t in threads],
                        "cause": st.label_cause(threads, (), watchdog_starved=True)})
        if not threads:
            details["evidence_notes"] = ["the watchdog thread was starved and faulthandler wrote no dump"]
        self._emit("hang_suspected", details, before.last_progress + timeout + offset)
        self._emit("recovered", {"stall_seconds": stall, "phase": details["phase"],
                                 "step": p.last_step if isinstance(p.last_step, int) else None,
                                 "cause": details["cause"], "timeout": timeout, "detected_late": True}, None)
        self._latest_timeout_dump = None
        self._armed_deadline = None
        self._flush()

    def _recovered(self, p: Progress) -> None:
        s = self._suspect or {}
        stall = p.last_progress - float(s.get("since", p.last_progress))
        step = p.last_step if isinstance(p.last_step, int) else None
        self._mark(MARK_RECOVERED)
        self._emit("recovered", {"stall_seconds": stall, "phase": s.get("phase"), "step": step,
                                 "cause": s.get("cause"), "timeout": s.get("timeout")}, None)
        self._suspect = None
        self._armed_deadline = None
        self._latest_timeout_dump = None

    def _stacks_dumped(self, dump: st.Dump) -> None:
        threads = dump.threads
        capture.add_source_lines(threads)
        _name_threads(threads)
        self._emit("stacks_dumped", {"signal": self.registered_signal, "stack_source": "faulthandler",
                                     "stacks": st.format_threads(threads), "threads": [t.to_dict() for t in threads],
                                     "stacks_file": str(self.stacks_path) if self.stacks_path else None}, None)

    # -- the stacks file -------------------------------------------------------------------------------

    def _size(self) -> int:
        if self._file is None:
            return 0
        try:
            return os.fstat(self._file.fileno()).st_size
        except OSError:
            return 0

    def _read_dumps(self) -> list[st.Dump]:
        """New dumps in the stacks file, read whole: once the file stopped growing between two polls or was
        last written a moment ago (after a starvation the dump is long finished)."""
        if self._reader is None or self._file is None:
            return []
        try:
            stat = os.fstat(self._file.fileno())
        except OSError:
            return []
        size = stat.st_size
        if size <= self._offset:
            self._pending_size = -1
            return []
        settled = size == self._pending_size or time.time() - stat.st_mtime >= DUMP_SETTLE_SECONDS
        if not settled:
            self._pending_size = size
            return []
        self._pending_size = -1
        try:
            self._reader.seek(self._offset)
            data = self._reader.read(size - self._offset)
        except OSError:
            return []
        self._offset = size
        dumps = st.parse_faulthandler(data.decode("ascii", "replace"), pid=os.getpid())
        for d in dumps:
            if d.kind == "timeout":
                self._latest_timeout_dump = d
        return dumps


def _name_threads(threads: list[st.ThreadStack]) -> None:
    """faulthandler names threads by id; in-process the id is ``threading``'s ident, so names can be added."""
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    for t in threads:
        if t.thread_id in names and not t.name:
            t.name = names[t.thread_id]
        if t.thread_id is not None:
            t.main = t.thread_id == main
