"""Events and the system samples linked to them.

Every event gets a fresh system sample: the event row is queued with its own timestamp on the caller's thread
and linked to a sample taken right after, on the sampler thread (``_on_sample``). Events closer than
``EVENT_SAMPLE_MIN_INTERVAL`` to the last requested sample share it, so a phase per step cannot turn the
sampler into a busy loop. An event that waits ``STALE_EVENT_SECONDS`` for a sample (a stuck or failing sampler)
is written without one.

Attach mode (inside ``runlens collect``) has no periodic sampler of its own: the wrapper samples the whole
process tree, so ``EventSampler`` samples only when an event asks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

log = logging.getLogger(__name__)

_perf = time.perf_counter
_time = time.time

EVENT_SAMPLE_MIN_INTERVAL = 0.5   # seconds; events closer than this to the last requested sample share it
EVENT_SAMPLE_WAIT = 2.0           # seconds _finish waits for the sampler to link the last events
STALE_EVENT_SECONDS = 5.0         # an event waiting this long for a sample is written without one


class EventSampler:
    """A sampler thread that samples only when asked: attach mode's event snapshots (the wrapper samples the
    process tree periodically, so a second periodic sampler would double the cost for nothing)."""

    def __init__(self, sampler: Any, on_sample: Callable[[Any], None], max_failures: int = 3) -> None:
        self._sampler = sampler
        self._on_sample = on_sample
        self._max_failures = max_failures
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runlens-event-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                sample = self._sampler.sample()
            except Exception as exc:
                failures += 1
                log.info("runlens event sample failed (%s)%s", exc,
                         "; event samples disabled" if failures >= self._max_failures else "")
                if failures >= self._max_failures:
                    return
                continue
            failures = 0
            self._on_sample(sample)



class EventRecording:
    """The Monitor's events and their samples (a mixin of ``Monitor``; its state is the Monitor's)."""

    def _int_step(self: Monitor) -> int | None:
        s = self._last_step
        return int(s) if isinstance(s, int) else None  # a tensor step is not resolved on this thread

    def _record_event(self: Monitor, event_type: str, details: dict[str, Any] | None,
                      at: float | None = None) -> None:
        writer = self._writer
        if writer is None:
            return
        row = {"timestamp": _time() if at is None else at, "event_type": event_type, "details": details, "host": self._host,
               "rank": self._rank, "step": self._int_step()}
        sampler = self._sampler_thread
        if sampler is None:
            writer.put_event(row, None)
            return
        now = _perf()
        key = self._last_sample_key
        recent = now - self._last_event_request < EVENT_SAMPLE_MIN_INTERVAL
        if key is not None and recent and not self._pending_events:
            writer.put_event(row, key)  # a sample taken moments ago
            return
        self._pending_events.append((now, row))
        self._last_event_request = now
        try:
            sampler.request()
        except Exception:
            pass

    def _on_sample(self: Monitor, sample: Any) -> None:
        """Sampler thread: buffer the sample, then link every event that was waiting for it."""
        writer = self._writer
        if writer is None:
            return
        row = dict(sample.row)
        row.setdefault("host", self._host)
        row.setdefault("rank", self._rank)
        key = writer.put_sample(row, list(getattr(sample, "gpus", None) or ()))
        self._last_sample_key = key
        pending = self._pending_events
        while True:
            try:
                _, event = pending.popleft()
            except IndexError:
                break
            writer.put_event(event, key)

    def _flush_stale_events(self: Monitor, max_age: float) -> None:
        """Write events that waited ``max_age`` seconds for a sample without one (a stuck or failing sampler)."""
        pending = self._pending_events
        now = _perf()
        while pending:
            try:
                queued_at, event = pending[0]
                if now - queued_at < max_age:
                    return
                pending.popleft()
            except IndexError:
                return
            self._writer.put_event(event, None)  # an older sample would not be this event's memory

    def _wait_for_event_samples(self: Monitor, timeout: float) -> None:
        sampler = self._sampler_thread
        if sampler is None or not self._pending_events:
            return
        deadline = _perf() + timeout
        with contextlib.suppress(Exception):
            sampler.request()
        while self._pending_events and _perf() < deadline:
            time.sleep(0.005)
