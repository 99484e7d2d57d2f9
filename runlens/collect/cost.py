"""What runlens itself costs the run: calls and time on the training thread, CPU of its own threads, and the
user's own monitoring work (``with mon.cost("eval_samples"):``).

A flight recorder that slows the flight is a bug users cannot see (W&B's loop-halving ``log``, wandb#8666), so
runlens measures itself while it runs and stores the totals per operation in ``monitoring_costs``, which the
report shows. The ledger holds cumulative totals; rows are appended periodically and at close, and the latest
row per operation is the total.

Operations:
    step, loader          training thread; *estimated*: the Monitor times 1 call in 64 and scales (timing every
                          call would double the cost of a ~1 µs call). The estimate leaves out the interpreter's
                          own call overhead before the first clock read, so it is a slight underestimate.
    event, phase          training thread; every call timed.
    start, close          training thread; one-off set-up and tear-down, recorded but left out of the budget.
    thread:<name>         CPU seconds of a runlens background thread (writer, sampler), ``on_training_thread``
                          False.
    user:<name>           the user's own monitoring work, timed by ``mon.cost(name)``.

The budget (``Settings.monitoring_budget``, default 5% of wall time) is checked against everything but the
one-off operations, and only after ``min_wall_seconds`` so start-up noise in a short run is not a finding.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from runlens.core.costs import ONE_OFF_OPERATIONS, THREAD_PREFIX, USER_PREFIX

# step() and the loader time 1 call in STEP_TIMING_EVERY (a power of two, so the test is a bit mask) and scale.
STEP_TIMING_EVERY = 64
TIMING_MASK = STEP_TIMING_EVERY - 1


@dataclass
class OperationCost:
    calls: int = 0
    seconds: float = 0.0
    on_training_thread: bool = True


class CostTimer:
    """``with mon.cost("name"):`` — times the block and adds it to the ledger (a class: cheaper than a
    generator-based context manager)."""

    __slots__ = ("_ledger", "_operation", "_t0")

    def __init__(self, ledger: "CostLedger", operation: str) -> None:
        self._ledger = ledger
        self._operation = operation
        self._t0 = 0.0

    def __enter__(self) -> "CostTimer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ledger.add(self._operation, time.perf_counter() - self._t0)


class CostLedger:
    """Cumulative cost per operation, and the budget check.

    Args:
        budget: allowed fraction of wall time (0.05 = 5%).
        min_wall_seconds: no budget verdict before this much wall time (start-up noise dominates short runs).
        clock: monotonic seconds; a seam for tests.
    """

    def __init__(self, budget: float = 0.05, *, min_wall_seconds: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self.min_wall_seconds = min_wall_seconds
        self._clock = clock
        self.started = clock()
        # No lock on purpose: add() can run inside a signal handler on the training thread, and a lock held by
        # the interrupted frame would deadlock the flush on the way out. Under the GIL a race can at worst lose
        # one increment; this is accounting, not billing.
        self._ops: dict[str, OperationCost] = {}
        self._reported: dict[str, tuple[int, float]] = {}
        self.budget_exceeded = False

    def add(self, operation: str, seconds: float, calls: int = 1, *, on_training_thread: bool = True) -> None:
        """Add ``calls`` calls taking ``seconds`` in all to ``operation``."""
        op = self._ops.get(operation)
        if op is None:
            op = self._ops[operation] = OperationCost(on_training_thread=on_training_thread)
        op.calls += calls
        op.seconds += seconds

    def set_total(self, operation: str, calls: int, seconds: float, *, on_training_thread: bool = True) -> None:
        """Replace an operation's totals (for estimates and thread CPU, which are cumulative at the source)."""
        self._ops[operation] = OperationCost(calls, seconds, on_training_thread)

    def timer(self, name: str) -> CostTimer:
        """A context manager timing the user's own monitoring work as ``user:<name>``."""
        return CostTimer(self, USER_PREFIX + name)

    def totals(self) -> dict[str, OperationCost]:
        items = list(self._ops.items())  # one C-level copy: safe against inserts from another thread
        return {k: OperationCost(v.calls, v.seconds, v.on_training_thread) for k, v in items}

    def wall_seconds(self) -> float:
        return self._clock() - self.started

    def overhead_seconds(self) -> float:
        """Seconds that count against the budget: everything except one-off start/close."""
        return sum(v.seconds for k, v in self.totals().items() if k not in ONE_OFF_OPERATIONS)

    def overhead_fraction(self) -> float:
        wall = self.wall_seconds()
        return self.overhead_seconds() / wall if wall > 0 else 0.0

    def check_budget(self) -> dict[str, Any] | None:
        """The details of a budget breach, the first time it happens; None otherwise (and always after)."""
        if self.budget_exceeded or self.budget <= 0:
            return None
        wall = self.wall_seconds()
        if wall < self.min_wall_seconds:
            return None
        totals = self.totals()
        spent = sum(v.seconds for k, v in totals.items() if k not in ONE_OFF_OPERATIONS)
        if spent <= self.budget * wall:
            return None
        self.budget_exceeded = True
        top = sorted(((k, v.seconds) for k, v in totals.items() if k not in ONE_OFF_OPERATIONS),
                     key=lambda kv: -kv[1])[:5]
        return {"fraction": spent / wall, "budget": self.budget, "wall_seconds": wall, "monitoring_seconds": spent,
                "top_operations": {k: round(s, 6) for k, s in top}}

    def changed_rows(self, now: float, *, host: str | None = None, rank: int | None = None,
                     everything: bool = False) -> list[dict[str, Any]]:
        """``monitoring_costs`` rows for operations that changed since the last call (all of them if asked)."""
        rows = []
        for name, op in self.totals().items():
            key = (op.calls, op.seconds)
            if not everything and self._reported.get(name) == key:
                continue
            self._reported[name] = key
            rows.append({"timestamp": now, "operation": name, "calls": op.calls, "total_seconds": op.seconds,
                         "on_training_thread": op.on_training_thread, "host": host, "rank": rank})
        return rows


def runlens_thread_cpu(prefix: str = THREAD_PREFIX) -> dict[str, float]:
    """CPU seconds (user + system) of each live thread whose name starts with ``prefix``, by thread name.

    Read from the OS per native thread id (psutil), so it works for threads runlens did not write itself and
    costs one /proc read per thread; called every few tens of seconds, not per step.
    """
    wanted = {t.native_id: t.name for t in threading.enumerate()
              if t.name.startswith(prefix) and t.native_id is not None}
    if not wanted:
        return {}
    try:
        import psutil

        threads = psutil.Process().threads()
    except Exception:
        return {}
    out: dict[str, float] = {}
    for t in threads:
        name = wanted.get(t.id)
        if name is not None:
            out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out
