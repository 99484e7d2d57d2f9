"""The training thread's CPU clock, read from the writer thread and stored on a step row.

In a data-parallel job every rank waits at the gradient all-reduce for the slowest one, so all ranks record the
same step times and step time alone cannot name the straggler. What differs is how the step was spent: the
rank everyone waits for computes (its training thread is on the CPU) while the others sit blocked in the
collective. Each rank's thread CPU time against wall time between two readings shows that.

Reading another thread's CPU clock (``pthread_getcpuclockid`` + ``clock_gettime``, Linux and most Unixes)
costs the training thread nothing: the writer thread reads it once per flush cycle, together with the newest
step tuple buffered at that moment, and the step converter puts the reading on that step's row
(``step_metrics.thread_cpu_seconds``; null on the other rows). The reading is at most one step later than the
step it is stored with, an error that vanishes over the many steps between two readings that analysis compares.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["StepCpuMarks", "thread_cpu_clock"]

MARK_MAX_AGE = 30.0   # seconds a reading waits for its step to be converted before a newer one replaces it


def thread_cpu_clock(ident: int | None = None) -> Callable[[], float] | None:
    """A function returning the CPU seconds of thread ``ident`` (default: the calling thread), readable from
    any thread; None where the platform has no per-thread CPU clock for other threads."""
    try:
        clock_id = time.pthread_getcpuclockid(threading.get_ident() if ident is None else ident)
        read = functools.partial(time.clock_gettime, clock_id)
        read()
    except (AttributeError, OSError, OverflowError, TypeError, ValueError):
        return None
    return read


class StepCpuMarks:
    """Pairs a reading of the training thread's CPU clock with the newest buffered step (writer thread only).

    ``mark(steps)`` runs at the start of a flush cycle; ``take(raw)`` runs for every step the converter turns
    into a row and gives the reading when ``raw`` is the step it was taken with (an identity check, nothing
    more, for the other rows). A reading waits until its step is converted, so a backlog keeps the pairing
    exact; a step that never gets converted (dropped on overflow) releases it after ``MARK_MAX_AGE``.
    """

    def __init__(self, read: Callable[[], float] | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self.raw: Any = None
        self._seconds = 0.0
        self._at = 0.0

    def mark(self, steps: Sequence[Any]) -> None:
        """Read the clock and remember the newest step in ``steps`` (the writer's deque) as its owner."""
        if self._read is None or not steps:
            return
        now = self._clock()
        if self.raw is not None and now - self._at < MARK_MAX_AGE:
            return
        newest = steps[-1]   # only the writer thread removes steps, so the deque is not empty here
        try:
            seconds = self._read()
        except OSError as exc:   # the thread is gone (its clock id is no longer valid)
            log.debug("training thread CPU clock unreadable (%s); no more readings", exc)
            self._read = None
            return
        self.raw, self._seconds, self._at = newest, seconds, now

    def take(self, raw: Any) -> float | None:
        """The reading taken with ``raw``, once; None for any other step."""
        if raw is not self.raw:
            return None
        self.raw = None
        return self._seconds
