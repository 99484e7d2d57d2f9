"""The batch writer: the one thread that writes a job's rows to the store.

Collectors (the training thread, the sampler, the watchdog) only append to in-memory buffers; this thread
wakes every ``flush_interval`` seconds (or sooner when ``flush_rows`` steps wait), drains the buffers and
writes them in one transaction: steps as multi-row INSERTs (``runlens.store.bulk``), the rest with one
executemany per table. Pattern from datasette's ``_execute_writes`` and MLflow's async logging queue. Steps go
through a ``StepBuffer`` (``runlens.store.step_buffer``): taken off the training thread's deque at every cycle
and between statements, converted only when their transaction comes.

It stays durable whatever the training loop does:

* A transaction holds at most ``STEPS_PER_TRANSACTION`` steps, so a backlog is committed in steady pieces
  (readers see steps within seconds) and the next piece follows at once, without waiting for the interval.
* Memory is bounded by ``max_rows``, by dropping the oldest *samples* first, then the oldest steps, and never
  silently: whether the store refuses writes (locked, read-only, disk full, server down; the batch is kept and
  retried with exponential backoff) or takes them slower than they are logged, the counts and the bound go in
  a ``buffer_overflow`` event and on stderr (``runlens.core.notices``) when it happens, then at most every
  ``OVERFLOW_NOTICE_SECONDS`` while drops go on, and once more at close with the totals.
* ``close()`` writes everything while the store keeps taking rows, however long that takes; it gives up only
  on a store that stopped taking writes, or at a deadline its caller sets (a signal's grace period).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Iterable

from runlens.core.notices import warn_on_stderr
from runlens.store.bulk import MAX_ROWS_PER_STATEMENT, StepColumns
from runlens.store.step_buffer import StepBuffer, StepConverter, StepResolver
from runlens.store.store import Store

log = warn_on_stderr(logging.getLogger(__name__))   # the store's trouble must reach the user

__all__ = ["BatchWriter", "StepConverter", "StepResolver", "WriterStats"]

STEPS_PER_TRANSACTION = 20_000   # steps converted and committed per transaction
OVERFLOW_NOTICE_SECONDS = 60.0   # between buffer_overflow events and warnings while drops go on
CLOSE_RETRY_SECONDS = 10.0       # a store that refuses writes at close is retried this long


@dataclass
class WriterStats:
    flushes: int = 0
    rows_written: int = 0
    steps_written: int = 0
    samples_dropped: int = 0
    steps_dropped: int = 0
    failures: int = 0
    cpu_seconds: float = 0.0
    flush_seconds: float = 0.0
    last_error: str | None = None
    first_error: BaseException | None = field(default=None, repr=False)


@dataclass
class _Sample:
    key: int
    row: dict[str, Any]
    gpus: list[dict[str, Any]]


@dataclass
class _Event:
    row: dict[str, Any]
    snapshot_key: int | None


def _identity(row: Any) -> dict[str, Any]:
    return dict(row)


def _json_safe(details: Any) -> Any:
    """Event details as stored: one event with a Path or a tensor in its details must not make every later
    batch fail (the batch is retried as a whole), so what JSON cannot encode is stored as its repr."""
    if details is None:
        return None
    try:
        json.dumps(details)
    except (TypeError, ValueError):
        return {"unserializable": repr(details)[:2000]}
    return details


class BatchWriter:
    """Buffers rows for one job and writes them from a background thread.

    Args:
        store: an open Store.
        job_id: the job every row belongs to (rows get ``job_id`` filled in).
        flush_interval: seconds between flushes.
        flush_rows: wake early once this many steps are buffered.
        max_rows: upper bound on buffered rows, whether the store refuses writes or takes them slower than they
            come; past it the oldest samples, then the oldest steps are dropped (and the drop recorded).
        steps_per_transaction: the most steps one transaction writes.
        step_converter: turns what the training thread appended to ``steps`` into a row dict; runs on the
            writer thread, so resolving a torch tensor (a device sync) never touches the caller. If it has a
            ``columns(raws)`` method, that is tried first on each chunk of steps: ``StepColumns`` for all of
            them, or None to convert them row by row.
        step_resolver: hands drained steps to the converter once their device values are on the host
            (waiting for them when a flush is asked for, and for all of them at close).
        on_cycle: called on the writer thread at the start of every flush cycle (about every
            ``flush_interval``, more often while a backlog is written); the Monitor hangs its periodic
            bookkeeping (cost rows, budget) here instead of running another thread. Exceptions are logged and
            ignored.
        warn: where warnings for the user go (default: this module's logger, shown on stderr).
        clock: monotonic seconds, for rate-limiting the overflow notices (injected by tests).
    """

    def __init__(self, store: Store, job_id: str, *, flush_interval: float = 1.0, flush_rows: int = 2000,
                 max_rows: int = 200_000, steps_per_transaction: int = STEPS_PER_TRANSACTION,
                 step_converter: StepConverter = _identity, step_resolver: StepResolver | None = None,
                 warn: Callable[[str], None] | None = None,
                 on_cycle: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.job_id = job_id
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.max_rows = max_rows
        self.steps_per_transaction = max(1, steps_per_transaction)
        self.step_converter = step_converter
        self.step_resolver = step_resolver
        self._steps = StepBuffer(step_converter, getattr(step_converter, "columns", None), step_resolver)
        self._resolve_block = False   # this cycle serves a flush() or close: wait for held steps
        self.on_cycle = on_cycle
        self.stats = WriterStats()
        # The training thread appends here directly (deque.append is atomic and lock-free under the GIL).
        self.steps: Deque[Any] = self._steps.raw
        self._samples: Deque[_Sample] = collections.deque()
        self._events: Deque[_Event] = collections.deque()
        self._costs: Deque[dict[str, Any]] = collections.deque()
        self._job_updates: dict[str, Any] = {}
        self._job_lock = threading.Lock()
        self._keys = itertools.count(1)
        self._sample_ids: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._requested = 0   # flush() calls so far
        self._served = 0      # flush() calls a finished flush started after
        self._last_ok = True
        self._warned = False
        self._warn = warn or (lambda msg: log.warning("%s", msg))
        self._backoff = 0.0
        self._clock = clock
        self._drop_reason: str | None = None
        self._drops_recorded = (0, 0)               # (samples, steps) dropped, as last written in an event
        self._drops_recorded_at: float | None = None
        self._overflow_warned_at: float | None = None
        self._close_deadline: float | None = None
        self._session = store.held_connection()
        self._thread = threading.Thread(target=self._run, name="runlens-writer", daemon=True)

    # -- called from collector threads ---------------------------------------------------------------

    def start(self) -> "BatchWriter":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put_step(self, raw: Any) -> None:
        self.steps.append(raw)
        if len(self.steps) >= self.flush_rows and not self._wake.is_set():
            self._wake.set()  # Event.set takes a lock: only once per batch, not on every call past the mark

    def nudge(self) -> None:
        """Wake the writer early if ``flush_rows`` steps are waiting. For callers that append to ``steps``
        directly (the Monitor's hot path) and check now and then instead of on every row."""
        if len(self.steps) >= self.flush_rows and not self._wake.is_set():
            self._wake.set()

    def put_sample(self, row: dict[str, Any], gpus: Iterable[dict[str, Any]] = ()) -> int:
        """Buffer a system sample; returns a key that events can use as their memory snapshot."""
        key = next(self._keys)
        self._samples.append(_Sample(key, row, list(gpus)))
        return key

    def put_event(self, row: dict[str, Any], snapshot_key: int | None = None) -> None:
        self._events.append(_Event(row, snapshot_key))

    def put_costs(self, rows: Iterable[dict[str, Any]]) -> None:
        self._costs.extend(rows)

    def update_job(self, **fields: Any) -> None:
        """Coalesced job-row update, applied in the next flush's transaction."""
        with self._job_lock:
            self._job_updates.update(fields)

    def flush(self, timeout: float = 10.0) -> bool:
        """Ask for a flush now and wait until one that started after this call has finished: it writes every
        step buffered at the call, in as many transactions as that takes."""
        if not self._thread.is_alive():
            return False
        with self._flushed:
            self._requested += 1
            target = self._requested
            self._wake.set()
            done = self._flushed.wait_for(lambda: self._served >= target or not self._thread.is_alive(),
                                          timeout=timeout)
            return done and self._last_ok

    def close(self, timeout: float = 15.0, *, deadline: float | None = None) -> None:
        """Write everything, stop the thread, and raise the first write error if rows could not be stored.

        Args:
            timeout: how long the store may go without committing anything before close gives up on the rest
                (the rows stay buffered and ``alive`` stays True). While flushes keep committing rows close
                keeps waiting, so a large backlog is written rather than dropped.
            deadline: seconds after which close returns however the writing goes (a signal's grace period).
        """
        self._stop.set()
        self._wake.set()
        now = time.monotonic()
        hard = None if deadline is None else now + deadline
        stalled_at = now + timeout
        progress = self._progress()
        while self._thread.is_alive():
            limit = stalled_at if hard is None else min(stalled_at, hard)
            now = time.monotonic()
            if now >= limit:
                break
            self._thread.join(min(limit - now, 0.1))
            if self._progress() != progress:
                progress = self._progress()
                stalled_at = time.monotonic() + timeout
        if self.buffered_rows() and self.stats.first_error is not None:
            raise self.stats.first_error

    def _progress(self) -> tuple[int, int]:
        return self.stats.flushes, self.stats.rows_written

    def buffered_rows(self) -> int:
        return len(self._steps) + len(self._samples) + len(self._events) + len(self._costs)

    # -- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            while True:
                stopping = self._stop.is_set()
                wait = self._backoff or self.flush_interval
                if not stopping:
                    self._wake.wait(wait)
                    self._wake.clear()
                    stopping = self._stop.is_set()
                if self.on_cycle is not None:
                    try:
                        self.on_cycle()
                    except Exception:  # bookkeeping must never stop the writer
                        log.debug("writer on_cycle hook failed", exc_info=True)
                with self._flushed:
                    serving = self._requested
                    asked = serving > self._served
                self._resolve_block = asked or stopping
                # A flush someone waits for writes every step buffered when it started, in as many
                # transactions as that takes; otherwise one transaction per cycle.
                owed = self._steps.waiting() if asked else 0
                out = self._steps.out
                ok = self._flush_once()
                while ok and self._steps.waiting() and self._steps.out - out < owed:
                    ok = self._flush_once()
                self._last_ok = ok
                with self._flushed:
                    self._served = serving
                    self._flushed.notify_all()
                if stopping:
                    if ok:
                        self._close_deadline = None   # the store answered: a later failure gets its own retries
                    if ok and not self.buffered_rows():
                        break
                    if not ok and not self._retry_while_closing():
                        break
                elif ok and self._steps.waiting() >= self.flush_rows:
                    self._wake.set()   # a backlog: its next transaction at once, not after the interval
                self.stats.cpu_seconds = time.thread_time() - cpu0
        finally:
            self.stats.cpu_seconds = time.thread_time() - cpu0
            self._session.close()
            with self._flushed:
                self._served = self._requested
                self._flushed.notify_all()

    def _retry_while_closing(self) -> bool:
        """On close with a failing store, keep trying for a few seconds; the caller's close timeout bounds it."""
        if self._close_deadline is None:
            self._close_deadline = time.monotonic() + CLOSE_RETRY_SECONDS
        if time.monotonic() > self._close_deadline:
            return False
        time.sleep(min(self._backoff or 0.2, 1.0))
        return True

    def _drain(self) -> tuple[list[_Sample], list[_Event], list[dict[str, Any]], dict[str, Any]]:
        """Take what the collectors buffered: steps up to ``steps_per_transaction`` converted (on the writer
        thread, by ``step_converter``), and every sample, event, cost row and job update."""
        self._steps.fill(self.steps_per_transaction, block=self._resolve_block, final=self._stop.is_set())
        samples = list(self._samples)
        events = list(self._events)
        costs = list(self._costs)
        with self._job_lock:
            job = dict(self._job_updates)
        return samples, events, costs, job

    def _flush_once(self) -> bool:
        samples, events, costs, job = self._drain()
        if not (samples or events or costs or job or self._steps.pending or self._drop_event_due()):
            self._backoff = 0.0
            return True
        t0 = time.perf_counter()
        try:
            self._write(samples, events, costs, job)
        except Exception as exc:
            self._on_failure(exc)
            return False
        # Committed: forget what was written (new rows may have arrived meanwhile; they stay).
        for _ in samples:
            self._samples.popleft()
        for _ in events:
            self._events.popleft()
        for _ in costs:
            self._costs.popleft()
        with self._job_lock:
            for k, v in job.items():
                if self._job_updates.get(k) is v:
                    del self._job_updates[k]
        n_steps = self._steps.committed()
        self.stats.flushes += 1
        self.stats.steps_written += n_steps
        self.stats.rows_written += n_steps + len(samples) + len(events) + len(costs)
        self.stats.flush_seconds += time.perf_counter() - t0
        if self._warned and self._backoff:
            self._warn("the store accepts writes again; buffered rows were written" + self._drops_text())
        self._backoff = 0.0
        if self.buffered_rows() > self.max_rows and self._bound_memory():
            # The store takes rows, but more wait than the bound allows: they come faster than it takes them.
            self._drop_reason = "steps are logged faster than the store takes them"
            self._announce_overflow()
        return True

    def _drop_counts(self) -> tuple[int, int]:
        return self.stats.samples_dropped, self.stats.steps_dropped

    def _drop_event_due(self) -> bool:
        """New drops to record: the first at once, then at most every OVERFLOW_NOTICE_SECONDS, and the totals
        at close."""
        if self._drop_counts() == self._drops_recorded:
            return False
        return (self._drops_recorded_at is None or self._stop.is_set()
                or self._clock() - self._drops_recorded_at >= OVERFLOW_NOTICE_SECONDS)

    def _drops_text(self) -> str:
        samples, steps = self._drop_counts()
        if not (samples or steps):
            return ""
        return (f" ({steps} steps and {samples} samples, the oldest, were dropped to keep the buffer under "
                f"{self.max_rows} rows)")

    def _announce_overflow(self) -> None:
        """Warn on stderr when the buffer first overflows, then at most every OVERFLOW_NOTICE_SECONDS."""
        now = self._clock()
        if self._overflow_warned_at is not None and now - self._overflow_warned_at < OVERFLOW_NOTICE_SECONDS:
            return
        self._overflow_warned_at = now
        samples, steps = self._drop_counts()
        self._warn(f"{self._drop_reason}: the buffer is bounded at {self.max_rows} rows, so the oldest are "
                   f"dropped ({steps} steps and {samples} samples so far; recorded as buffer_overflow events)")

    def _write(self, samples: list[_Sample], events: list[_Event], costs: list[dict[str, Any]],
               job: dict[str, Any]) -> None:
        store, job_id = self.store, self.job_id
        drops = self._drop_counts() if self._drop_event_due() else None
        with self._session.begin() as conn:
            if samples:
                ids = store.insert_returning_ids(conn, "metrics_samples",
                                                 [{**s.row, "job_id": job_id} for s in samples])
                gpu_rows: list[dict[str, Any]] = []
                for s, sid in zip(samples, ids):
                    self._sample_ids[s.key] = sid
                    gpu_rows.extend({**g, "sample_id": sid, "job_id": job_id,
                                     "timestamp": s.row["timestamp"]} for g in s.gpus)
                store.insert_many(conn, "gpu_samples", gpu_rows)
                while len(self._sample_ids) > 10_000:
                    self._sample_ids.popitem(last=False)
                job.setdefault("heartbeat_at", max(s.row["timestamp"] for s in samples))
            event_rows = [{**e.row, "job_id": job_id, "details": _json_safe(e.row.get("details")),
                           "memory_snapshot_id": self._sample_ids.get(e.snapshot_key) if e.snapshot_key else None}
                          for e in events]
            if drops is not None:
                event_rows.append({"job_id": job_id, "timestamp": time.time(), "event_type": "buffer_overflow",
                                   "details": {"samples_dropped": drops[0], "steps_dropped": drops[1],
                                               "max_rows": self.max_rows, "reason": self._drop_reason}})
            store.insert_many(conn, "training_events", event_rows)
            if self._steps.pending:
                steps = StepColumns.concat(self._steps.pending)
                for start in range(0, steps.n, MAX_ROWS_PER_STATEMENT):
                    if start:
                        self._steps.absorb()   # the training thread kept appending during the statement
                    store.insert_steps(conn, job_id, steps.slice(start, start + MAX_ROWS_PER_STATEMENT))
                job.setdefault("last_step", steps.last("step"))
                job.setdefault("progress_at", steps.last("timestamp"))
            store.insert_many(conn, "monitoring_costs", [{**c, "job_id": job_id} for c in costs])
            if job:
                store.update_job(job_id, conn=conn, **job)
        if drops is not None:
            self._drops_recorded = drops
            self._drops_recorded_at = self._clock()

    def _on_failure(self, exc: Exception) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self.stats.first_error is None:
            self.stats.first_error = exc
        self._backoff = min(30.0, max(0.25, self._backoff * 2 or 0.25))
        if not self._warned:
            self._warned = True
            self._warn(f"cannot write to the store ({self.stats.last_error}); training continues, "
                       f"rows are buffered (up to {self.max_rows}, then the oldest are dropped) and retried")
        if self._bound_memory():
            self._drop_reason = self.stats.last_error

    def _bound_memory(self) -> int:
        """Drop the oldest samples, then the oldest steps, until at most ``max_rows`` are buffered; returns how
        many rows went."""
        excess = self.buffered_rows() - self.max_rows
        if excess <= 0:
            return 0
        before = self.stats.samples_dropped + self.stats.steps_dropped
        while excess > 0 and self._samples:
            self._samples.popleft()
            self.stats.samples_dropped += 1
            excess -= 1
        if excess > 0:
            self.stats.steps_dropped += self._steps.drop_oldest(excess)
        return self.stats.samples_dropped + self.stats.steps_dropped - before
