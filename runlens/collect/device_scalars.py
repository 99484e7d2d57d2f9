"""Device scalars without a CPU spin: the writer thread's way to turn CUDA tensors into floats.

``mon.step(loss=loss)`` keeps the tensor; the writer thread turns it into a float later. Doing that with
``.item()`` costs one device synchronisation per value, and a synchronisation spins a CPU core until the GPU
has drained its launch queue: on a GPU-bound loop with a deep queue the writer thread burnt most of a core
just waiting. Instead, once per flush:

1. the CUDA scalars of the new rows are gathered into one tensor on their device (one ``stack`` per dtype
   and shape, converted to float64, which holds every float32, bfloat16 and int value ``.item()`` would
   give, exactly), copied to pinned host memory with ``non_blocking=True``, and a CUDA event is recorded
   after the copy;
2. the rows wait, in step order, until ``event.query()`` says the copy is done (checked at the next flushes;
   never a ``synchronize()``, which would spin); then the host buffer's values replace the tensors and the
   rows go on to the step converter as plain floats;
3. a row held longer than ``max_hold`` seconds (once), a flush someone waits for, and the close wait for
   their event by polling ``query()`` with short sleeps, bounded, so the CPU stays idle and a hung device
   cannot hang the writer: events and samples keep flowing while a step waits, and at close, values still
   not there after ``close_timeout`` are stored as missing rather than losing the rows.

Everything else (floats, ints, CPU tensors, numpy scalars) passes through untouched for the step converter,
which costs no synchronisation. Device scalars are recognised by duck typing (``is_cuda`` or
``device.type == "cuda"``, and one element), and torch is never imported here: the real copier is built
only once a value turns out to be a ``torch.Tensor``, from the already-imported ``sys.modules["torch"]``.
The tensor, event and pinned-copy operations sit behind the small ``DeviceCopier`` seam, so tests can drive
the resolver with a fake device.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Protocol, Sequence

log = logging.getLogger(__name__)

MAX_HOLD_SECONDS = 5.0      # a row whose values are not on the host after this long is waited for
HOLD_WAIT_SECONDS = 2.0     # how long one such wait (or a requested flush) may take before rows stay held
CLOSE_TIMEOUT_SECONDS = 10.0  # at close; below the writer's join timeout, so the rows still get written

_PLAIN = frozenset({float, int, bool, str, type(None), bytes})


class DeviceCopier(Protocol):
    """The device operations the resolver needs, for tensors that all live on one device."""

    def start(self, tensors: Sequence[Any]) -> Any:
        """Gather the scalars into one host buffer asynchronously; return a handle for the other calls."""

    def ready(self, handle: Any) -> bool:
        """Whether the copy has finished, without waiting."""

    def values(self, handle: Any) -> list[float]:
        """The gathered values, in the order given to ``start``; only after ``ready`` or ``wait`` said True."""

    def wait(self, handle: Any, timeout: float) -> bool:
        """Wait (without spinning) up to ``timeout`` seconds for the copy; True when it finished."""


@dataclass
class _TorchHandle:
    host: Any
    event: Any
    device_buffer: Any   # kept alive until the copy is done
    order: list[int]     # host position -> index in the tensors given to start()


class TorchCopier:
    """``DeviceCopier`` over torch: stack on the device, pinned non-blocking copy, one event per batch."""

    def __init__(self, torch: Any, *, poll_min: float = 0.0005, poll_max: float = 0.01) -> None:
        self._torch = torch
        self._poll_min = poll_min
        self._poll_max = poll_max

    def start(self, tensors: Sequence[Any]) -> _TorchHandle:
        torch = self._torch
        # One stack per (dtype, shape): stacking mixed dtypes would promote int64 to float32 and lose digits.
        groups: dict[tuple[Any, Any], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.dtype, tuple(t.shape)), []).append(i)
        with torch.no_grad():
            parts = []
            order: list[int] = []
            for index in groups.values():
                parts.append(torch.stack([tensors[i] for i in index]).reshape(-1).to(torch.float64))
                order.extend(index)
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            host = torch.empty(flat.shape, dtype=torch.float64, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(flat.device))
        return _TorchHandle(host, event, flat, order)

    def ready(self, handle: _TorchHandle) -> bool:
        return bool(handle.event.query())

    def values(self, handle: _TorchHandle) -> list[float]:
        gathered = handle.host.tolist()
        out = [0.0] * len(gathered)
        for position, index in enumerate(handle.order):
            out[index] = gathered[position]
        handle.device_buffer = None
        return out

    def wait(self, handle: _TorchHandle, timeout: float) -> bool:
        # Polling with sleeps instead of event.synchronize(): a synchronize spins a core under CUDA's default
        # scheduling, and cannot be given a timeout if the device never finishes.
        deadline = time.monotonic() + timeout
        delay = self._poll_min
        while not handle.event.query():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self._poll_max)
        return True


def is_device_scalar(value: Any) -> bool:
    """A one-element tensor on a CUDA device, by duck typing (torch, or anything shaped like it)."""
    on_device = getattr(value, "is_cuda", None)
    if on_device is None:
        device = getattr(value, "device", None)
        on_device = getattr(device, "type", None) == "cuda"
    if on_device is not True:
        return False
    if getattr(getattr(value, "dtype", None), "is_complex", False):
        return False  # .item() gives a complex, which the converter drops; keep that path
    numel = getattr(value, "numel", None)
    try:
        return callable(numel) and numel() == 1
    except Exception:
        return False


@dataclass
class _Gather:
    copier: DeviceCopier
    handle: Any
    slots: list[tuple[int, Any, Any]]   # (row, position or key in the row, key in a dict there or None)


@dataclass
class _Chunk:
    rows: list[Any]
    started: float
    gathers: list[_Gather] = field(default_factory=list)
    waited: bool = False   # one bounded wait past max_hold; after that only query() until a flush asks


class DeviceScalarResolver:
    """Holds step rows until their CUDA scalars are on the host, and hands them back in order as floats.

    Args:
        copier: the device operations; by default a ``TorchCopier`` built when the first torch CUDA scalar
            is seen (and only then). A given copier is used for every duck-typed device scalar.
        max_hold: seconds a row may wait for its device before the resolver waits for it (bounded).
        hold_wait: the bound of that wait, and of the wait for a flush someone asked for.
        close_timeout: the bound of the wait at close; values still missing then are stored as None.
        clock: monotonic seconds (injected by tests).

    Rows are tuples or lists (values at any position, and inside one level of dicts, such as the Monitor's
    extras) or dicts; other rows pass through. Runs on the writer thread only; not thread-safe.
    """

    def __init__(self, copier: DeviceCopier | None = None, *, max_hold: float = MAX_HOLD_SECONDS,
                 hold_wait: float = HOLD_WAIT_SECONDS, close_timeout: float = CLOSE_TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._copier = copier
        self._torch_copier: DeviceCopier | None = None
        self.max_hold = max_hold
        self.hold_wait = hold_wait
        self.close_timeout = close_timeout
        self._clock = clock
        self._chunks: Deque[_Chunk] = collections.deque()
        self._held = 0
        self._start_failed = False
        self.gathers = 0          # batches sent to a device (for benches and tests)
        self.timed_out_values = 0  # values given up at close

    def held(self) -> int:
        """Rows waiting for their device."""
        return self._held

    def resolve(self, rows: list[Any], *, block: bool = False) -> list[Any]:
        """Take newly drained rows; return the rows that are ready, oldest first, device scalars as floats.

        With ``block`` (a flush someone waits for) every held row is waited for, up to ``hold_wait``.
        """
        if rows:
            chunk = self._scan(rows)
            if chunk is None and not self._chunks:
                return rows   # the common case: nothing on a device, nothing held
            if chunk is None:
                chunk = _Chunk(rows, self._clock())
            self._chunks.append(chunk)
            self._held += len(rows)
        if not self._chunks:
            return []
        return self._release(self.hold_wait if block else None)

    def resolve_all(self, rows: Sequence[Any] = ()) -> list[Any]:
        """At close: every row, in order; values whose device did not answer within ``close_timeout`` become
        None (logged) so the rows themselves are kept."""
        out = self.resolve(list(rows)) if rows else []
        out.extend(self._release(self.close_timeout))
        while self._chunks:
            chunk = self._chunks.popleft()
            self._held -= len(chunk.rows)
            missing = sum(len(g.slots) for g in chunk.gathers if not g.copier.ready(g.handle))
            self.timed_out_values += missing
            log.warning("%d step values were still on the device after %.0f s at close; "
                        "stored as missing", missing, self.close_timeout)
            out.extend(self._substitute(chunk, give_up=True))
        return out

    # -- internals -------------------------------------------------------------------------------------

    def _copier_for(self, value: Any) -> DeviceCopier | None:
        if self._copier is not None:
            return self._copier
        torch = sys.modules.get("torch")   # a torch tensor exists only once torch is imported
        if torch is None or not isinstance(value, torch.Tensor):
            return None
        if self._torch_copier is None:
            self._torch_copier = TorchCopier(torch)
        return self._torch_copier

    def _scan(self, rows: list[Any]) -> _Chunk | None:
        """Find device scalars and start their copies; None when there are none."""
        found: dict[tuple[int, Any], tuple[DeviceCopier, list[Any], list[tuple[int, Any, Any]]]] = {}
        plain = _PLAIN
        for r, row in enumerate(rows):
            kind = type(row)
            if kind is tuple or kind is list:
                items: Any = enumerate(row)
            elif kind is dict:
                items = row.items()
            else:
                continue
            for position, value in items:
                vtype = type(value)
                if vtype in plain:
                    continue
                if vtype is dict:
                    for key, inner in value.items():
                        if type(inner) not in plain and is_device_scalar(inner):
                            self._note(found, inner, (r, position, key))
                elif is_device_scalar(value):
                    self._note(found, value, (r, position, None))
        if not found:
            return None
        chunk = _Chunk(rows, self._clock())
        for copier, tensors, slots in found.values():
            try:
                handle = copier.start(tensors)
            except Exception:
                # Left in place: the step converter resolves them the old way (.item()).
                if not self._start_failed:
                    self._start_failed = True
                    log.debug("gathering device scalars failed; resolving them one by one", exc_info=True)
                continue
            self.gathers += 1
            chunk.gathers.append(_Gather(copier, handle, slots))
        return chunk

    def _note(self, found: dict[Any, Any], value: Any, slot: tuple[int, Any, Any]) -> None:
        copier = self._copier_for(value)
        if copier is None:
            return
        device = getattr(value, "device", None)
        try:
            hash(device)
        except TypeError:
            device = str(device)
        key = (id(copier), device)
        entry = found.get(key)
        if entry is None:
            entry = found[key] = (copier, [], [])
        entry[1].append(value)
        entry[2].append(slot)

    def _release(self, wait: float | None) -> list[Any]:
        """Pop the chunks at the front whose copies are done. ``wait``: seconds to wait for the rest; None
        waits only once the oldest held chunk is past ``max_hold``, up to ``hold_wait``. One deadline for
        all, so a backlog of chunks cannot stretch the wait."""
        out: list[Any] = []
        deadline = None if wait is None else self._clock() + wait
        while self._chunks:
            chunk = self._chunks[0]
            if not all(g.copier.ready(g.handle) for g in chunk.gathers):
                if deadline is None:
                    if chunk.waited or self._clock() - chunk.started < self.max_hold:
                        break
                    chunk.waited = True
                    deadline = self._clock() + self.hold_wait
                if not all(g.copier.wait(g.handle, max(0.0, deadline - self._clock()))
                           for g in chunk.gathers):
                    break
            self._chunks.popleft()
            self._held -= len(chunk.rows)
            out.extend(self._substitute(chunk, give_up=False))
        return out

    def _substitute(self, chunk: _Chunk, *, give_up: bool) -> list[Any]:
        rows = chunk.rows
        if not chunk.gathers:
            return rows
        changed: dict[int, Any] = {}
        copied: set[tuple[int, Any]] = set()   # the user's dicts are copied before a value changes
        for g in chunk.gathers:
            if give_up and not g.copier.ready(g.handle):
                values: Sequence[float | None] = [None] * len(g.slots)
            else:
                values = g.copier.values(g.handle)
            for (r, position, key), value in zip(g.slots, values):
                row = changed.get(r)
                if row is None:
                    row = changed[r] = dict(rows[r]) if type(rows[r]) is dict else list(rows[r])
                if key is None:
                    row[position] = value
                    continue
                if (r, position) not in copied:
                    copied.add((r, position))
                    row[position] = dict(row[position])
                row[position][key] = value
        out = list(rows)
        for r, row in changed.items():
            out[r] = tuple(row) if type(rows[r]) is tuple else row
        return out
