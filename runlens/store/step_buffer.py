"""The batch writer's step buffer: steps from the training thread's deque to columns ready to insert.

Steps arrive as one small object each (the Monitor's tuple), appended to ``raw`` by the training thread. They
pass three stages, oldest first, all on the writer thread:

1. ``absorb()`` moves whatever ``raw`` holds into ``backlog`` as chunks (a tuple of the step tuples). It runs
   at every flush cycle and between the statements of a transaction, and costs a pop per step: however far the
   store falls behind, ``raw`` stays a few thousand entries. Why: the cyclic garbage collector walks a deque or
   list element by element at every full collection, on whichever thread triggers it (the training thread, in
   a tight loop): a million waiting steps made each full pass tens of milliseconds longer. The collector stops
   tracking a tuple of numbers, and then a tuple of such tuples, when a collection examines them, so a chunk
   costs a full pass nothing.
2. ``fill(limit)`` converts the oldest steps of the backlog, up to the next transaction's size: a converter's
   ``columns(raws)`` for a whole chunk of plain values, else row by row (after the device-scalar resolver,
   which may hold steps back, in order, until their CUDA values are on the host). Only steps about to be
   written are converted, so a loop that outruns the store pays for the steps that are stored, not for the
   ones the memory bound drops.
3. ``pending`` holds them as ``StepColumns`` until the transaction commits (``committed()``); a failed one
   keeps them for the retry.

``drop_oldest(n)`` applies the writer's memory bound: pending first, then the backlog, then ``raw``.
"""

from __future__ import annotations

import collections
import itertools
import logging
from typing import Any, Callable, Deque, Protocol, Sequence

from runlens.store.bulk import StepColumns

log = logging.getLogger(__name__)

ABSORB_ROWS = 8192   # steps per backlog chunk

StepConverter = Callable[[Any], dict[str, Any]]
StepColumnsConverter = Callable[[Sequence[Any]], "StepColumns | None"]


class StepResolver(Protocol):
    """Runs before the converter and may hold steps back, in order, until their values exist on the host
    (CUDA scalars still being computed: ``runlens.collect.device_scalars``)."""

    def resolve(self, rows: list[Any], *, block: bool = False) -> list[Any]: ...

    def resolve_all(self, rows: Sequence[Any] = ()) -> list[Any]: ...

    def held(self) -> int: ...


class StepBuffer:
    """Steps between the training thread and the store (writer thread only, except ``raw.append``).

    Args:
        convert: one step to a row dict (``Store.insert_steps``' keys).
        columns: a chunk of steps to ``StepColumns``, or None when some step needs ``convert``.
        resolver: hands steps to the converters once their device values are on the host.
    """

    def __init__(self, convert: StepConverter, columns: StepColumnsConverter | None = None,
                 resolver: StepResolver | None = None) -> None:
        self.convert = convert
        self.columns = columns
        self.resolver = resolver
        # The training thread appends here directly (deque.append is atomic and lock-free under the GIL).
        self.raw: Deque[Any] = collections.deque()
        self._backlog: Deque[tuple[Any, ...]] = collections.deque()
        self._backlog_rows = 0
        self.pending: list[StepColumns] = []
        self.pending_rows = 0
        self.out = 0   # steps committed, dropped or unconvertible so far

    def __len__(self) -> int:
        """Steps buffered, at every stage."""
        held = self.resolver.held() if self.resolver is not None else 0
        return len(self.raw) + self._backlog_rows + held + self.pending_rows

    def waiting(self) -> int:
        """Steps waiting to be written (what a flush owes), the resolver's held ones aside."""
        return len(self.raw) + self._backlog_rows + self.pending_rows

    def absorb(self) -> None:
        """Move what the training thread appended so far into the backlog, in chunks."""
        raw = self.raw
        left = len(raw)   # what is there now: the training thread may keep appending meanwhile
        while left > 0:
            take = min(left, ABSORB_ROWS)
            left -= take
            # take x popleft(), iterated in C (starmap over empty argument tuples).
            self._backlog.append(tuple(itertools.starmap(raw.popleft, itertools.repeat((), take))))
            self._backlog_rows += take

    def fill(self, limit: int, *, block: bool = False, final: bool = False) -> None:
        """Convert the oldest backlog steps into ``pending`` until it holds ``limit`` steps.

        Args:
            block: a flush someone waits for: wait (bounded) for steps the resolver holds.
            final: closing: once the backlog is empty, every held step, in order (the resolver bounds the wait).
        """
        self.absorb()
        resolver = self.resolver
        while True:   # one chunk at a time; a blocking wait once
            raws = self._take(limit - self.pending_rows)
            held = resolver is not None and resolver.held() > 0
            if not (raws or held):
                return
            batch = None
            if raws and not held:
                batch = self._columns(raws)
            if batch is None:
                rows: Sequence[Any] = raws
                if resolver is not None:
                    given = list(raws)
                    last = final and not self._backlog
                    rows = resolver.resolve_all(given) if last else resolver.resolve(given, block=block)
                    block = False
                    if rows and rows is not given:
                        batch = self._columns(rows)   # their device values are floats now
                if batch is None and rows:
                    batch = self._convert_rows(rows)
            if batch is not None and batch.n:
                self.pending.append(batch)
                self.pending_rows += batch.n
            if not raws or self.pending_rows >= limit or not self._backlog:
                return

    def committed(self) -> int:
        """The pending steps were written: forget them; returns how many."""
        n = self.pending_rows
        self.pending = []
        self.pending_rows = 0
        self.out += n
        return n

    def drop_oldest(self, n: int) -> int:
        """Drop up to ``n`` of the oldest steps (pending, then the backlog, then ``raw``); returns how many."""
        dropped = 0
        while n > dropped and self.pending:
            batch = self.pending[0]
            k = min(batch.n, n - dropped)
            if k == batch.n:
                self.pending.pop(0)
            else:
                self.pending[0] = batch.slice(k, batch.n)
            self.pending_rows -= k
            dropped += k
        while n > dropped and self._backlog:
            chunk = self._backlog[0]
            k = min(len(chunk), n - dropped)
            if k == len(chunk):
                self._backlog.popleft()
            else:
                self._backlog[0] = chunk[k:]
            self._backlog_rows -= k
            dropped += k
        while n > dropped and self.raw:
            self.raw.popleft()
            dropped += 1
        self.out += dropped
        return dropped

    # -- internals -------------------------------------------------------------------------------------

    def _take(self, n: int) -> tuple[Any, ...]:
        """Up to ``n`` of the oldest backlog steps, removed from it (one chunk, or the front of one)."""
        backlog = self._backlog
        if n <= 0 or not backlog:
            return ()
        chunk = backlog[0]
        if len(chunk) <= n:
            backlog.popleft()
        else:
            backlog[0] = chunk[n:]
            chunk = chunk[:n]
        self._backlog_rows -= len(chunk)
        return chunk

    def _columns(self, raws: Sequence[Any]) -> StepColumns | None:
        if self.columns is None:
            return None
        try:
            return self.columns(raws)
        except Exception:  # a value the batch form did not expect: the row-by-row path decides
            log.debug("batch step conversion failed; converting row by row", exc_info=True)
            return None

    def _convert_rows(self, raws: Sequence[Any]) -> StepColumns | None:
        convert = self.convert
        rows = []
        for raw in raws:
            try:
                rows.append(convert(raw))
            except Exception as exc:  # a bad value from user code must not kill the writer
                log.debug("dropping unconvertible step %r: %s", raw, exc)
                self.out += 1
        try:
            return StepColumns.from_rows(rows) if rows else None
        except Exception as exc:  # a converter that left a value no column can hold
            log.debug("dropping %d unconvertible steps: %s", len(rows), exc)
            self.out += len(rows)
            return None
