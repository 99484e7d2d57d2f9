"""What the framework adapters share: one callback base that owns the Monitor for a framework's run, a phase
held open across two hooks, and the imports done before training starts.

Each adapter (``transformers``, ``lightning``) is a thin translation of its framework's hooks into Monitor calls
over ``RecordingCallback``, which holds what they would otherwise copy: the constructor's arguments, opening the
Monitor on the recording rank (or adopting one passed in), closing it at the end or on an exception, and the
data wait. Framework callbacks are pairs of hooks (``on_validation_start`` ... ``on_validation_end``), not
``with`` blocks, so phases go through ``PhaseSlot``. The framework also owns the DataLoader, so the data wait is
the gap between the hook that ends one step and the hook that starts the next (``mark_idle`` ...
``add_data_wait``), handed to ``Monitor.add_data_wait``. Nothing here imports a framework.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any, Callable, Mapping

from runlens.core.dialects import detect_dialect

log = logging.getLogger(__name__)

_perf = time.perf_counter


def preload() -> None:
    """Import the Monitor and the store now, when the callback is constructed.

    The first ``Monitor.start()`` of a process pays about a second of imports (SQLAlchemy, Alembic, psutil).
    A callback starts its Monitor inside ``trainer.train()``/``fit()``, where that second would land in the
    framework's own runtime figures; constructing the callback happens before, with the rest of the set-up.
    """
    for module in (
        "runlens.collect.environment",
        "runlens.collect.monitor",
        "runlens.collect.sampler",
        "runlens.store",
        "runlens.store.writer",
    ):
        importlib.import_module(module)


def open_monitor(
    name: str | None,
    config: Mapping[str, Any] | None,
    dialect: str,
    db: str | None,
    settings: Mapping[str, Any],
) -> Any:
    """Start a Monitor for a framework's run, its config snapshot recognised as ``dialect``.

    The snapshot's dialect is what turns a finding into an exact config path (``TrainingArguments.
    dataloader_num_workers``, ``data.num_workers``). Both adapters build snapshots that ``detect_dialect``
    recognises on its own; if one ever does not (a Trainer with unusual arguments), the explicit
    ``monitoring.dialect`` key that ``detect_dialect`` honours is added rather than losing the paths.
    """
    from runlens.collect.monitor import Monitor

    snapshot = dict(config) if config is not None else None
    if snapshot is not None and detect_dialect(snapshot) != dialect:
        monitoring = dict(snapshot.get("monitoring") or {})
        monitoring["dialect"] = dialect
        snapshot["monitoring"] = monitoring
    return Monitor(name=name, config=snapshot, db=db, **dict(settings)).start()


class PhaseSlot:
    """One phase (``eval``, ``save``, ...) opened in one hook and closed in a later one.

    ``Monitor.phase()`` is a context manager; a callback cannot hold a ``with`` block across hooks, so this
    enters it in ``open()`` and exits it in ``close()``. Opening a new phase closes the previous one first:
    framework phases do not nest, and a phase left open by a hook that never fired (a callback after ours
    changed the plan) must not swallow the rest of the run.
    """

    __slots__ = ("_context", "_monitor", "name", "opened_at")

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor
        self._context: Any = None
        self.name: str | None = None
        self.opened_at = 0.0

    def open(self, name: str, **details: Any) -> None:
        self.close()
        context = self._monitor.phase(name, **details)
        context.__enter__()
        self._context = context
        self.name = name
        self.opened_at = _perf()

    def close(self, error: BaseException | None = None) -> str | None:
        """Close the open phase, if any; returns its name."""
        context, name = self._context, self.name
        if context is None:
            return None
        self._context = None
        self.name = None
        try:
            if error is None:
                context.__exit__(None, None, None)
            else:
                context.__exit__(type(error), error, error.__traceback__)
        except Exception as exc:  # the recorder must never break the run it records
            log.debug("runlens: closing phase %s failed: %s", name, exc)
        return name

    @property
    def is_open(self) -> bool:
        return self._context is not None


class RecordingCallback:
    """The part of a framework callback that is the same in every framework.

    Args:
        name: the job's name; default: the adapter's (the run name, the module's class name...).
        db: store URL or SQLite path; default ``RUNLENS_DB`` or ``./runlens.db`` (ignored under
            ``runlens collect``, which hands its own store to the run).
        monitor: an already started ``runlens.Monitor`` to record into; the callback then neither starts nor
            closes it.
        all_ranks: record on every process, not only the world's main one.
        **settings: runlens settings for the Monitor (``sample_interval=1.0``, ...).

    Constructing it imports the Monitor and the store (``preload``), so that cost lands before training.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        db: str | None = None,
        monitor: Any = None,
        all_ranks: bool = False,
        **settings: Any,
    ) -> None:
        preload()
        super().__init__()
        self.name = name
        self.db = db
        self.all_ranks = all_ranks
        self.settings = settings
        self.monitor: Any = monitor
        self.job_id: str | None = getattr(monitor, "job_id", None)  # kept after the run, for scripts and tests
        self._owns_monitor = False
        self._phase: PhaseSlot | None = None
        self._idle_since: float | None = None
        self._batch_multiplier = 1  # gradient accumulation x processes, fixed for a run

    def start_recording(
        self, is_main: bool, describe: Callable[[], tuple[str, Mapping[str, Any]]], dialect: str
    ) -> bool:
        """At the start of a run: open a Monitor (on the main process, or every rank with ``all_ranks``) or
        adopt the one passed in. ``describe()`` gives the job's name and config snapshot; it is called only
        when a Monitor is opened. Returns False on a rank that does not record."""
        if self.monitor is None:
            if not (is_main or self.all_ranks):
                return False
            name, snapshot = describe()
            self.monitor = open_monitor(name, snapshot, dialect, self.db, self.settings)
            self._owns_monitor = True
        self.job_id = self.monitor.job_id
        self._phase = PhaseSlot(self.monitor)
        return True

    def close_monitor(self) -> None:
        """Close the Monitor this callback opened; one passed in stays open for its owner (and recording)."""
        if self._owns_monitor:
            self.monitor.close()
            self.monitor = None
            self._owns_monitor = False
            self._phase = None

    def fail(self, exc: BaseException) -> None:
        """The run ends with ``exc``: close the open phase with it and, when this callback opened the
        Monitor, let the Monitor record the exception with its traceback and mark the job failed."""
        if self._phase is not None:
            self._phase.close(exc)
        if self._owns_monitor:
            self.monitor.__exit__(type(exc), exc, exc.__traceback__)
            self.monitor = None
            self._owns_monitor = False
            self._phase = None

    def mark_idle(self) -> None:
        """The loop's work for this step is done; until ``add_data_wait`` it is fetching the next batch."""
        self._idle_since = _perf()

    def add_data_wait(self, now: float) -> None:
        """The next step starts at ``now`` (a ``perf_counter`` reading): the time since ``mark_idle`` was the
        wait for its batch."""
        if self._idle_since is not None:
            self.monitor.add_data_wait(now - self._idle_since)
            self._idle_since = None
