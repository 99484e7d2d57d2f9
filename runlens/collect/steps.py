"""Steps on the writer thread: the tuple ``Monitor.step()`` queues, turned into ``step_metrics`` rows.

``step()`` is on the training thread's critical path, so it only builds one tuple and appends it to the writer's
deque; everything that costs anything happens here, on the writer thread, within a flush interval:

    (step, at, loss, lr, grad_norm, batch_size, tokens, step_time, data_time, extras)

``at`` is a ``time.perf_counter()`` reading; ``step_time`` and ``data_time`` are seconds or None; the values
may be floats, ints, numpy scalars or 0-d torch tensors (``.item()`` here is where the device sync happens, off
the training thread).

Two ways through, with the same stored result. ``StepConverter.columns`` takes a whole batch of tuples whose
values are plain finite numbers and no user scalars (what a loop logging Python floats produces) and builds the
columns with C-level slicing and type checks, a fraction of a microsecond per step; any other batch goes row
by row through ``_convert_row``, which resolves tensors and numpy scalars and records non-finite values.

Non-finite values: SQLite stores NaN as NULL, which would hide a diverged loss. A non-finite value of any step
field (loss, learning_rate, gradient_norm, tokens or a user scalar) is kept in its column as the float (NaN
becomes NULL in SQLite, +-inf is stored) **and** recorded in ``extras["nonfinite"]`` as a string:
``{"nonfinite": {"loss": "nan"}}``; a non-finite user scalar is stored as null in ``extras`` for JSON's sake.
"""

from __future__ import annotations

import gc
import itertools
import math
import operator
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from runlens.store.bulk import StepColumns

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

_perf = time.perf_counter
_time = time.time
_NONFINITE_TEXT = {math.inf: "inf", -math.inf: "-inf"}

FIELDS = 10   # the length of step()'s tuple
_NONE = type(None)
_INT = {int}
_FLOATS = frozenset({float, _NONE})
_NUMBERS = frozenset({float, int, _NONE})
_INTS = frozenset({int, _NONE})
# (column, position in the tuple) of the values the training loop passes and the columns path checks.
_FLOAT_FIELDS = (("loss", 2), ("learning_rate", 3), ("gradient_norm", 4), ("tokens", 6))
# The Monitor's own measurements: stored as they are, like the row path does.
_TIME_FIELDS = (("step_time_seconds", 7), ("data_time_seconds", 8))


def _number(value: Any) -> float:
    """float() of a step value on the writer thread: tensors and numpy scalars through ``.item()``."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    item = getattr(value, "item", None)
    if item is not None:
        value = item()  # a torch tensor: the device sync happens here, on the writer thread
    return float(value)


def _number_or_none(value: Any) -> float | None:
    """``_number`` that gives None for what is not a scalar (a multi-element tensor, a string): the step is
    kept, the value dropped."""
    try:
        return _number(value)
    except Exception:
        return None


def _nonfinite_text(value: float) -> str:
    return "nan" if value != value else _NONFINITE_TEXT.get(value, str(value))


_heap_settled = False


def settle_heap() -> None:
    """One full garbage collection per process, at the first ``Monitor.start()``, unless the application turned
    the collector off.

    Why: importing SQLAlchemy and opening the store leave tens of thousands of new long-lived objects, and
    CPython runs a full collection once the objects that survived young collections since the last one reach a
    quarter of the old heap (the note on ``long_lived_pending`` in CPython's collector;
    https://devguide.python.org/internals/garbage-collector/). That pass then lands in the first seconds of the
    training loop, as one step() call of tens of milliseconds. Taken here, start() pays it instead.
    """
    global _heap_settled
    if not _heap_settled and gc.isenabled():
        _heap_settled = True
        gc.collect()


def _all_none(values: tuple[Any, ...], n: int) -> bool:
    # The first value decides most columns without comparing anything (count() calls a value's __eq__).
    return values[0] is None and values.count(None) == n


class StepConverter:
    """What the batch writer calls: one step tuple to a row dict, or (``columns``) a batch of them to columns,
    None when the batch needs the row-by-row path."""

    def __init__(self, row: Callable[[tuple[Any, ...]], dict[str, Any]],
                 columns: Callable[[Sequence[tuple[Any, ...]]], StepColumns | None]) -> None:
        self._row = row
        self.columns = columns

    def __call__(self, raw: tuple[Any, ...]) -> dict[str, Any]:
        return self._row(raw)


class StepConversion:
    """The Monitor's writer-thread side of ``step()`` (a mixin of ``Monitor``; its state is the Monitor's)."""

    @property
    def _convert_step(self: Monitor) -> StepConverter:
        """The converter the Monitor's batch writer is built with."""
        return StepConverter(self._convert_row, self._step_columns)

    def _step_columns(self: Monitor, raws: Sequence[tuple[Any, ...]]) -> StepColumns | None:
        """Writer thread: a batch of step tuples to columns, or None when some value needs ``_convert_row``
        (a tensor, a numpy scalar, a non-finite number, user scalars in ``extras``), in which case nothing
        here has been recorded yet.

        Values are checked a column at a time in C (slices of the flattened batch, ``set(map(type, ...))``,
        ``sum`` as the non-finite check: it is nan or inf exactly when some value is, or when finite values
        overflow, which only sends the batch the slower way).
        """
        n = len(raws)
        flat = tuple(itertools.chain.from_iterable(raws))
        if not n or len(flat) != n * FIELDS or not _all_none(flat[9::FIELDS], n):
            return None
        steps = flat[0::FIELDS]
        if set(map(type, steps)) != _INT:
            return None
        columns: dict[str, tuple[Any, ...]] = {"step": steps}
        nullable: list[str] = []
        for name, k in _FLOAT_FIELDS:
            values = flat[k::FIELDS]
            if _all_none(values, n):
                continue
            kinds = set(map(type, values))
            if not kinds <= _FLOATS:
                if not kinds <= _NUMBERS:
                    return None
                values = tuple([v if v is None or type(v) is float else float(v) for v in values])
            if _NONE in kinds:
                nullable.append(name)
                total = sum(filter(None, values))
            else:
                total = sum(values)
            if total * 0.0 != 0.0:
                return None
            columns[name] = values
        values = flat[5::FIELDS]
        if not _all_none(values, n):
            kinds = set(map(type, values))
            if not kinds <= _INTS:
                return None
            columns["batch_size"] = values
            if _NONE in kinds:
                nullable.append("batch_size")
        for name, k in _TIME_FIELDS:
            values = flat[k::FIELDS]
            if _all_none(values, n):
                continue
            kinds = set(map(type, values))
            if not kinds <= _NUMBERS:
                return None
            columns[name] = values
            if _NONE in kinds:
                nullable.append(name)
        # Checked: from here on the batch is converted, and recorded as such.
        ats = flat[1::FIELDS]
        wd = self._watchdog
        if wd is not None:
            _observe(wd, ats, flat[7::FIELDS])   # calibration input, off the training thread
        offset = _time() - _perf()   # perf_counter -> wall clock, as _convert_row does per row
        columns["timestamp"] = tuple([at + offset for at in ats])
        if self._rank is not None:
            columns["rank"] = (self._rank,) * n
        marks = self._cpu_marks
        mark = marks.raw
        if mark is not None:
            at = n - 1 if raws[-1] is mark else _index_of(raws, mark)
            if at < 0:   # a copy of the marked tuple (the device-scalar resolver's), found by its `at` object
                at = _index_of(ats, mark[1])
            if at >= 0:
                cpu: list[float | None] = [None] * n
                cpu[at] = marks.take(mark)
                columns["thread_cpu_seconds"] = tuple(cpu)
                if n > 1:
                    nullable.append("thread_cpu_seconds")
        return StepColumns(n, columns, frozenset(nullable))

    def _convert_row(self: Monitor, raw: tuple[Any, ...]) -> dict[str, Any]:
        """Writer thread: a step tuple from ``step()`` to a ``step_metrics`` row (tensors resolved here).

        Written for speed (it runs once per row): plain floats skip the conversion, and the per-field
        non-finite bookkeeping runs only when a quick check says some value is nan or inf.
        """
        step, at, loss, lr, grad_norm, batch_size, tokens, step_time, data_time, extras = raw
        marks = self._cpu_marks
        wd = self._watchdog
        if wd is not None:
            wd.observe_step(at, step_time)   # calibration input, off the training thread
        if loss is not None and type(loss) is not float:
            loss = _number_or_none(loss)
        if lr is not None and type(lr) is not float:
            lr = _number_or_none(lr)
        if grad_norm is not None and type(grad_norm) is not float:
            grad_norm = _number_or_none(grad_norm)
        if tokens is not None and type(tokens) is not float:
            tokens = _number_or_none(tokens)
        check = 0.0  # x * 0.0 is nan exactly when x is nan or +-inf
        if loss is not None:
            check += loss * 0.0
        if lr is not None:
            check += lr * 0.0
        if grad_norm is not None:
            check += grad_norm * 0.0
        if tokens is not None:
            check += tokens * 0.0
        nonfinite: dict[str, str] | None = None
        if check != check:
            nonfinite = {column: _nonfinite_text(value) for column, value in
                         (("loss", loss), ("learning_rate", lr), ("gradient_norm", grad_norm), ("tokens", tokens))
                         if value is not None and value * 0.0 != 0.0}
        if extras:
            converted: dict[str, Any] = {}
            for key, value in extras.items():
                if value is None or isinstance(value, (str, bool)):
                    converted[key] = value
                    continue
                try:
                    number = _number(value)
                except Exception:
                    converted[key] = str(value)[:200]
                    continue
                if number * 0.0 != 0.0:
                    nonfinite = nonfinite or {}
                    nonfinite[key] = _nonfinite_text(number)
                    converted[key] = None
                else:
                    converted[key] = number
            extras = converted
        if nonfinite:
            extras = dict(extras or {})
            extras["nonfinite"] = nonfinite
        return {
            "step": step if type(step) is int else int(step),
            # perf_counter -> wall clock with the offset of this moment: steps are converted within a flush
            # interval of being logged, so clock drift between the two is nil, and step() reads one clock.
            "timestamp": at + (_time() - _perf()),
            "loss": loss, "learning_rate": lr, "gradient_norm": grad_norm, "tokens": tokens,
            "batch_size": batch_size if batch_size is None or type(batch_size) is int else int(batch_size),
            "step_time_seconds": step_time, "data_time_seconds": data_time, "rank": self._rank,
            "extras": extras or None,
            # The training thread's CPU clock, on the one step per flush it was read with (collect.thread_cpu).
            "thread_cpu_seconds": marks.take(marks.raw) if _is_marked(raw, marks.raw) else None,
        }


def _index_of(values: Sequence[Any], value: Any) -> int:
    """Where ``value`` itself (not an equal object) is in ``values``, or -1."""
    try:
        return list(map(operator.is_, values, itertools.repeat(value))).index(True)
    except ValueError:
        return -1


def _is_marked(raw: tuple[Any, ...], mark: tuple[Any, ...] | None) -> bool:
    """``raw`` is the step the CPU reading was taken with, or the device-scalar resolver's copy of it (which
    keeps every value but the tensors, the ``at`` float object included)."""
    return raw is mark or (mark is not None and raw[1] is mark[1])


def _observe(wd: Any, ats: tuple[float, ...], intervals: tuple[Any, ...]) -> None:
    """``wd.observe_step(at, interval)`` for each step in order, in one call to its budget when no phase change
    falls among them (phase marks are in time order; a step interval that spans one is not a step time)."""
    marks = wd.phase_marks
    if marks and marks[0] <= ats[-1]:
        for at, interval in zip(ats, intervals):
            wd.observe_step(at, interval)
        return
    try:   # usually every interval is a finite number >= 0 (the first step has None), checked in C
        usual = min(intervals) >= 0 and math.isfinite(sum(intervals))
    except TypeError:
        usual = False
    wd.budget.observe_many(intervals if usual else
                           [x for x in intervals if x is not None and x >= 0 and math.isfinite(x)])
