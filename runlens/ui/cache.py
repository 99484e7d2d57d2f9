"""A small LRU of computed values that computes each key once, however many requests ask for it at once.

The pages of a big run cost seconds the first time (an analysis of a million steps, a downsampled series) and
milliseconds after; keys carry what makes a value stale (the job's newest step, sample, event and analysis,
from ``Store.data_marker``), so a stale value is never looked up again and simply ages out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

__all__ = ["Memo"]


class Memo:
    """``get(key, compute)``: the cached value, or ``compute()`` run once while other callers of that key wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key]  # type: ignore[no-any-return]
            gate = self._pending.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._values:   # computed by the caller we waited for
                    self.hits += 1
                    return self._values[key]  # type: ignore[no-any-return]
            try:
                value = compute()
            finally:
                with self._lock:
                    self._pending.pop(key, None)
            with self._lock:
                self.misses += 1
                self._values[key] = value
                while len(self._values) > self.size:
                    self._values.popitem(last=False)
            return value

    def peek(self, key: Hashable) -> Any:
        """The cached value or None, without computing."""
        with self._lock:
            return self._values.get(key)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
