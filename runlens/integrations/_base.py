"""What the framework adapters share: opening a Monitor for a framework's run, and holding a phase open across
two hooks.

Framework callbacks are pairs of hooks (``on_validation_start`` ... ``on_validation_end``), not ``with``
blocks, so the adapters need a phase they can open in one hook and close in another. (The framework also owns
the DataLoader, so the adapters time the data wait as the gap between the hook that ends one step and the hook
that starts the next, and hand it to ``Monitor.add_data_wait``.) Nothing here imports a framework.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any, Mapping

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
