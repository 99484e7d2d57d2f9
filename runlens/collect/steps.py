"""Steps on the writer thread: the tuple ``Monitor.step()`` queues, turned into a ``step_metrics`` row.

``step()`` is on the training thread's critical path, so it only builds one tuple and appends it to the writer's
deque; everything that costs anything happens here, on the writer thread, within a flush interval:

    (step, at, loss, lr, grad_norm, batch_size, tokens, step_time, data_time, extras)

``at`` is a ``time.perf_counter()`` reading; ``step_time`` and ``data_time`` are seconds or None; the values
may be floats, ints, numpy scalars or 0-d torch tensors (``.item()`` here is where the device sync happens, off
the training thread).

Non-finite values: SQLite stores NaN as NULL, which would hide a diverged loss. A non-finite value of any step
field (loss, learning_rate, gradient_norm, tokens or a user scalar) is kept in its column as the float (NaN
becomes NULL in SQLite, +-inf is stored) **and** recorded in ``extras["nonfinite"]`` as a string:
``{"nonfinite": {"loss": "nan"}}``; a non-finite user scalar is stored as null in ``extras`` for JSON's sake.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

_perf = time.perf_counter
_time = time.time
_NONFINITE_TEXT = {math.inf: "inf", -math.inf: "-inf"}


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


class StepConversion:
    """The Monitor's writer-thread side of ``step()`` (a mixin of ``Monitor``; its state is the Monitor's)."""

    def _convert_step(self: Monitor, raw: tuple[Any, ...]) -> dict[str, Any]:
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
            "thread_cpu_seconds": marks.take(raw) if raw is marks.raw else None,
        }
