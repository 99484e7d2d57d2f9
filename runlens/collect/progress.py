"""The training loop's progress as the Monitor keeps it, and the hang watchdog that reads it.

Progress is a finished step (``Monitor.step``) or a phase change (``with mon.phase("eval"):``). A phase tells
the watchdog which budget applies, so a long evaluation is not mistaken for a hang, and its phase_start /
phase_end events let the analyzer take evaluation and checkpoint time out of training time. The watchdog
(``runlens.collect.watchdog``) runs on its own thread and reads the Monitor's plain progress attributes once
per poll: nothing here is on ``step()``'s path.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from runlens.collect.config import to_jsonable
from runlens.collect.lifecycle import STATE_CLOSING, STATE_RUNNING
from runlens.collect.watchdog import HangSettings, Progress, Watchdog

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

_perf = time.perf_counter


class Phase:
    """``with mon.phase("eval"):`` — phase_start/phase_end events and the current phase for the watchdog."""

    __slots__ = ("_monitor", "_name", "_details", "_t0", "_previous")

    def __init__(self, monitor: Monitor, name: str, details: dict[str, Any]) -> None:
        self._monitor = monitor
        self._name = name
        self._details = details
        self._t0 = 0.0
        self._previous: str | None = None

    def __enter__(self) -> "Phase":
        mon = self._monitor
        t = _perf()
        self._t0 = t
        self._previous = mon._phase
        mon._phase = self._name
        mon._last_progress = t
        mon._phase_marks.append(t)   # the watchdog leaves intervals with a phase change out of calibration
        mon._record_event("phase_start", {"name": self._name, **self._details})
        mon._ledger.add("phase", _perf() - t)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        mon = self._monitor
        t = _perf()
        mon._phase = self._previous
        mon._last_progress = t
        mon._phase_marks.append(t)
        mon._phase_durations[self._name] = t - self._t0   # a phase's next budget is at least 5x this
        details: dict[str, Any] = {"name": self._name, "duration_seconds": t - self._t0}
        if exc_type is not None:
            details["error"] = exc_type.__name__
        mon._record_event("phase_end", details)
        mon._ledger.add("phase", _perf() - t)


class WatchdogWiring:
    """Starting the Monitor's hang watchdog and recording what it finds (a mixin of ``Monitor``; its state is
    the Monitor's)."""

    def _plan_stacks_path(self: Monitor, job_id: str, store_url: str) -> Path | None:
        """Where faulthandler's dumps go: ``stacks_dir`` (``runlens collect`` points it at the job's log folder),
        else ``runlens-runs/<job_id>/`` next to a SQLite store, else in the working directory."""
        if not self.settings.hang_detection:
            return None
        base = self.settings.stacks_dir
        if base:
            folder = Path(base).expanduser()
        else:
            root = Path.cwd()
            with contextlib.suppress(Exception):
                from runlens.store import sqlite_path   # the store knows URLs; imported late like the store

                database = sqlite_path(store_url)
                if database is not None and not str(database).startswith("file:"):
                    root = database.expanduser().resolve().parent
            folder = root / "runlens-runs" / job_id
        return folder.resolve() / f"stacks-{self._pid}.txt"

    def _start_watchdog(self: Monitor) -> None:
        if not self.settings.hang_detection:
            return
        try:
            wd = Watchdog(self._progress_snapshot, HangSettings.from_settings(self.settings), self._watchdog_emit,
                          flush=self._watchdog_flush, stacks_path=self._stacks_path,
                          stack_signal=self.settings.stack_signal, phase_durations=self._phase_durations)
            wd.phase_marks = self._phase_marks
            self._watchdog = wd.start()
        except Exception as exc:   # stall detection is a feature, not a reason to stop the run
            self._warn("watchdog", f"hang detection is off for this run: {exc}")
            self._watchdog = None

    def _stop_watchdog(self: Monitor) -> None:
        wd, self._watchdog = self._watchdog, None
        if wd is not None:
            with contextlib.suppress(Exception):
                wd.stop(timeout=2.0)

    def _progress_snapshot(self: Monitor) -> Progress:
        """The watchdog's view of progress: plain attributes the training thread writes (no lock, no call on
        the hot path)."""
        return Progress(self._last_progress, self._last_step, self._phase, self._loader_waiting_since,
                        self._steps_logged)

    def _watchdog_emit(self: Monitor, event_type: str, details: dict[str, Any], at: float | None) -> None:
        if self._state not in (STATE_RUNNING, STATE_CLOSING):   # closing: a last recovered event
            return
        self._record_event(event_type, to_jsonable(details), at=at)

    def _watchdog_flush(self: Monitor) -> None:
        """A stall's evidence goes to the store now: the process may be killed next."""
        if self._state != STATE_RUNNING or self._writer is None:
            return
        self._wait_for_event_samples(2.0)
        self._writer.flush(timeout=5.0)
