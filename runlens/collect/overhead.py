"""The Monitor's own cost, kept on the writer thread: the hot path's raw counters and the CPU of runlens's
threads folded into the ``CostLedger`` (``runlens.collect.cost``), cumulative ``monitoring_costs`` rows every
``COST_ROW_INTERVAL`` seconds, and the budget check (a warning and a ``monitoring_budget_exceeded`` event once).

``step()`` and ``loader()`` keep plain counters and time 1 call in ``STEP_TIMING_EVERY``; turning those into
estimated totals happens here, every half minute, never on the training thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from runlens.collect.cost import runlens_thread_cpu
from runlens.collect.events import STALE_EVENT_SECONDS
from runlens.collect.lifecycle import STATE_CLOSING, STATE_RUNNING

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

_perf = time.perf_counter
_time = time.time

COST_ROW_INTERVAL = 30.0          # seconds between cumulative monitoring_costs rows


class CostBookkeeping:
    """The writer thread's periodic work for the Monitor (a mixin of ``Monitor``; its state is the Monitor's)."""

    def _on_writer_cycle(self: Monitor) -> None:
        """Writer thread, every flush cycle: read the training thread's CPU clock, unstick events, and every
        COST_ROW_INTERVAL store cost rows and check the budget."""
        if self._state not in (STATE_RUNNING, STATE_CLOSING):
            return
        self._cpu_marks.mark(self._writer.steps)
        self._flush_stale_events(STALE_EVENT_SECONDS)
        now = _perf()
        if now - self._last_cost_rows < COST_ROW_INTERVAL or self._state != STATE_RUNNING:
            return
        self._last_cost_rows = now
        self._refresh_costs()
        self._writer.put_costs(self._ledger.changed_rows(_time(), host=self._host, rank=self._rank))
        budget = self._ledger.check_budget()
        if budget:
            self._budget_exceeded(budget)

    def _refresh_costs(self: Monitor) -> None:
        """Fold the hot path's raw counters and the threads' CPU into the ledger."""
        ledger = self._ledger
        n, timed_n = self._steps_logged, self._step_timed_n
        if n and timed_n:
            ledger.set_total("step", n, self._step_timed / timed_n * n)
        n, timed_n = self._loader_calls, self._loader_timed_n
        if n and timed_n:
            ledger.set_total("loader", n, self._loader_timed / timed_n * n)
        cpu = self._thread_cpu
        for name, seconds in runlens_thread_cpu().items():
            cpu[name] = max(cpu.get(name, 0.0), seconds)
        if self._writer is not None:
            cpu["runlens-writer"] = max(cpu.get("runlens-writer", 0.0), self._writer.stats.cpu_seconds)
        for name, seconds in cpu.items():
            ledger.set_total(f"thread:{name}", 0, seconds, on_training_thread=False)

    def _budget_exceeded(self: Monitor, details: Mapping[str, Any]) -> None:
        top = ", ".join(f"{k} {v:.2f}s" for k, v in details["top_operations"].items())
        self._warn("budget", f"monitoring is taking {details['fraction']:.1%} of wall time "
                             f"(budget {details['budget']:.0%}); biggest: {top}")
        self._record_event("monitoring_budget_exceeded", dict(details))
