"""``mon.loader(train_loader)``: the time each step waited for its batch, measured around ``next()``.

The wait is what a slow input pipeline costs (too few DataLoader workers, slow storage): the analyzer's data-wait
findings rest on it. It is added to the next ``step()``'s ``data_time_seconds``; the loader's own bookkeeping
is timed 1 call in ``STEP_TIMING_EVERY`` like ``step()``'s.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

from runlens.collect.cost import TIMING_MASK

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

T = TypeVar("T")

_perf = time.perf_counter


class TimedLoader:
    """``mon.loader(iterable)``: yields what ``iterable`` yields and adds the time spent waiting for each item
    (inside ``next()``, and inside ``iter()`` where a DataLoader starts its workers) to the next step's
    ``data_time_seconds``. ``len()`` and attributes (``.dataset``, ``.sampler``, ``set_epoch``) pass through.
    """

    def __init__(self, monitor: Monitor, iterable: Iterable[T]) -> None:
        self._monitor = monitor
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_monitor", "_iterable"):
            raise AttributeError(name)
        return getattr(self._iterable, name)

    def __iter__(self) -> Iterator[Any]:
        mon = self._monitor
        pc = _perf
        t0 = pc()
        mon._loader_waiting_since = t0
        it = iter(self._iterable)
        t1 = pc()
        mon._loader_waiting_since = None
        mon._data_wait = (mon._data_wait or 0.0) + (t1 - t0)
        n = mon._loader_calls
        while True:
            t0 = pc()
            mon._loader_waiting_since = t0
            try:
                item = next(it)
            except StopIteration:
                mon._loader_waiting_since = None
                mon._data_wait = (mon._data_wait or 0.0) + (pc() - t0)
                return
            t1 = pc()
            mon._loader_waiting_since = None
            waited = mon._data_wait
            mon._data_wait = (t1 - t0) if waited is None else waited + (t1 - t0)
            n += 1
            mon._loader_calls = n
            if n & TIMING_MASK == 1:
                # Our own bookkeeping around next(); the generator's resume/yield is not included.
                mon._loader_timed += pc() - t1
                mon._loader_timed_n += 1
            yield item

