"""The Monitor: runlens's in-process hook, and the only collector a training loop calls directly.

    with runlens.Monitor(name="lora-run", config="config.yaml") as mon:
        for step, batch in enumerate(mon.loader(train_loader)):
            ...
            mon.step(step, loss=loss, lr=lr, grad_norm=gn, batch_size=bs, tokens=n)
            with mon.phase("eval"):
                ...
        mon.event("checkpoint_saved", path=p)

Why it is shaped this way:

* ``step()`` is on the training thread's critical path, so it builds one tuple and appends it to the writer's
  deque: no I/O, no lock, no conversion. A torch tensor passed as ``loss`` is turned into a float on the writer
  thread (``runlens.collect.steps``), so the training thread never waits for the device. Trackers that do the
  work in the call pay for it on every step: MLflow's ``log_metric`` makes a synchronous request per call, and
  W&B's ``log`` can halve a loop's throughput (https://github.com/wandb/wandb/issues/8666).
* Every event gets a fresh system sample, linked on the sampler thread (``runlens.collect.events``).
* Nothing recorded is lost on exit, on an exception or on SIGTERM, and the process still dies as it would have
  without runlens (``runlens.collect.lifecycle``, ``runlens.collect.signals``).
* Store failures never reach the training loop: the writer retries and warns once; if the store cannot even be
  opened, the Monitor warns once and becomes a no-op.

The class is assembled from one module per job; each holds the methods of its job and works on the state set
up in ``Monitor.__init__``:

=============================  ======================================================================
``runlens.collect.lifecycle``  open or attach to the job, start the sampler, finish the run once
``runlens.collect.signals``    SIGTERM/SIGINT: record, flush, re-raise
``runlens.collect.events``     events and the system samples linked to them
``runlens.collect.progress``   ``mon.phase()`` and the hang watchdog that reads the loop's progress
``runlens.collect.steps``      step tuples to rows, or a batch to columns, on the writer thread; non-finite values
``runlens.collect.thread_cpu`` the training thread's CPU clock on a step row per flush (busy vs waiting)
``runlens.collect.overhead``   runlens's own cost, folded and stored on the writer thread
``runlens.collect.loader``     ``mon.loader()``: the data wait
=============================  ======================================================================
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Deque, Iterable, TypeVar

from runlens.collect.config import ConfigSource, check_setting_names, load_config, resolve_settings, to_jsonable
from runlens.collect.cost import TIMING_MASK, CostLedger
from runlens.collect.events import EventRecording
from runlens.collect.lifecycle import STATE_CLOSED, STATE_DISABLED, STATE_NEW, STATE_RUNNING, JobLifecycle
from runlens.collect.loader import TimedLoader
from runlens.collect.overhead import CostBookkeeping
from runlens.collect.progress import Phase, WatchdogWiring
from runlens.collect.signals import SignalHandling
from runlens.collect.thread_cpu import StepCpuMarks, thread_cpu_clock
from runlens.collect.steps import StepConversion, settle_heap
from runlens.core.notices import warn_on_stderr
from runlens.core.redact import redact
from runlens.core.settings import Settings, env_disabled

__all__ = ["Monitor"]

log = warn_on_stderr(logging.getLogger(__name__))

T = TypeVar("T")

_perf = time.perf_counter
_time = time.time
_NULL_CONTEXT = contextlib.nullcontext()


def _no_op() -> None:
    return None


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _default_name() -> str:
    script = sys.argv[0] if sys.argv else ""
    stem = Path(script).stem if script and script not in ("-c", "-m", "-") else ""
    return stem or "run"


class Monitor(JobLifecycle, SignalHandling, EventRecording, WatchdogWiring, StepConversion,
              CostBookkeeping):
    """Records one training run: steps, phases, events, system samples and runlens's own cost.

    Args:
        name: the job's name; default: the script's name.
        config: the run's config, a YAML/JSON file path or a mapping; snapshotted with secrets redacted. Its
            ``monitoring:`` section can set any runlens setting.
        db: store URL or SQLite path; default ``RUNLENS_DB`` or ``./runlens.db``.
        sampler: a ``SystemSampler``-like object (``.sample()``) to use instead of the real one; a seam for tests.
        **settings_overrides: any ``runlens.core.settings.Settings`` field (``sample_interval=1.0``, ...); these win
            over the config's ``monitoring:`` section and ``RUNLENS_*`` environment variables.

    Raises:
        ConfigError: the config file is missing or malformed (the run has not started, so this is the time).
        TypeError: an unknown setting name.

    Nothing else raises into the training loop: if the store cannot be opened the Monitor warns once on stderr
    and does nothing. ``RUNLENS_DISABLE=1`` makes every method a no-op and ``job_id`` None.

    Threads: ``step()``, ``loader()`` and ``phase()`` belong to the training thread; ``event()`` and ``cost()``
    may be called from any thread.
    """

    def __init__(self, name: str | None = None, config: ConfigSource = None, db: str | None = None, *,
                 sampler: Any = None, **settings_overrides: Any) -> None:
        self.name = name or _default_name()
        self.job_id: str | None = None
        self.attached = False
        self.config: dict[str, Any] | None = None
        self.config_path: str | None = None
        # Progress bookkeeping, read by the watchdog. ``_last_progress`` is a time.perf_counter() reading
        # (CLOCK_MONOTONIC on Linux); compare it with ``Monitor.progress_clock()``.
        self._last_progress = _perf()
        self._last_step: Any = None
        self._phase: str | None = None
        self._loader_waiting_since: float | None = None
        self._phase_marks: Deque[float] = collections.deque(maxlen=100_000)   # perf_counter of phase changes
        self._phase_durations: dict[str, float] = {}
        self._watchdog: Any = None
        self._stacks_path: Path | None = None
        # Hot-path state.
        self._put_step: Callable[[Any], None] | None = None
        self._nudge_writer: Callable[[], None] = _no_op
        self._last_step_at = 0.0
        self._data_wait: float | None = None
        self._batch_size: Any = None
        self._steps_logged = 0
        self._step_timed = 0.0
        self._step_timed_n = 0
        self._loader_calls = 0
        self._loader_timed = 0.0
        self._loader_timed_n = 0
        # Everything else.
        self._state = STATE_NEW
        self._db = db
        self._sampler_arg = sampler
        self._store: Any = None
        self._writer: Any = None
        self._sampler_thread: Any = None
        self._own_sampler: Any = None   # the SystemSampler we built (closed at the end: it holds NVML)
        self._wrapper_samples = False   # attached to runlens collect's job, whose wrapper samples the GPUs
        self._gpus_sampled_by: str | None = None   # runlens.collect.node: who samples this node's GPUs
        self._environment_done = threading.Event()   # the sampler thread completed the environment record
        self._pending_events: Deque[tuple[float, dict[str, Any]]] = collections.deque()
        self._last_sample_key: int | None = None
        self._last_event_request = -math.inf
        self._last_cost_rows = 0.0
        self._thread_cpu: dict[str, float] = {}
        self._cpu_marks = StepCpuMarks(None)   # the training thread's clock, once start() knows that thread
        self._prev_handlers: dict[int, Any] = {}
        self._deferred_signals: list[int] = []
        self._signal_reason: str | None = None
        self._warned: set[str] = set()
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._rank = _env_int("RANK")
        self._world_size = _env_int("WORLD_SIZE")
        self._started_wall = 0.0
        self._owns_lifecycle = True
        check_setting_names(settings_overrides)  # a typo fails even while runlens is switched off
        if env_disabled() or settings_overrides.get("disabled"):
            self.settings = Settings(disabled=True)
            self._state = STATE_DISABLED
        else:
            self.config, self.config_path = load_config(config)
            self.settings = resolve_settings(self.config, settings_overrides)
            if self.settings.disabled:
                self._state = STATE_DISABLED
        self._ledger = CostLedger(self.settings.monitoring_budget)

    progress_clock = staticmethod(_perf)

    def __repr__(self) -> str:
        return f"<runlens.Monitor {self.name!r} job_id={self.job_id!r} {self._state}>"

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self._finish("succeeded", None)
        else:
            self._finish_exception(exc, tb)
        # Returning None re-raises the user's exception: runlens records it, never swallows it.

    def start(self) -> "Monitor":
        """Open the store, create (or attach to) the job, start the writer and sampler. Idempotent.

        Called by ``__enter__``; call it yourself (and ``close()``) when a ``with`` block does not fit.
        """
        if self._state != STATE_NEW:
            return self
        t0 = _perf()
        self._ledger.started = t0
        try:
            self._open()
        except Exception as exc:  # the store is unavailable, too new, ...: the run goes on without runlens
            self._warn("open", f"monitoring is off for this run: {exc}")
            self._teardown_quietly()
            self._state = STATE_DISABLED
            self.job_id = None
            return self
        self._cpu_marks = StepCpuMarks(thread_cpu_clock())   # start() runs on the training thread
        self._state = STATE_RUNNING
        self._install_signal_handlers()
        atexit.register(self._atexit)
        self._start_watchdog()
        wd = self._watchdog
        self._record_event("monitor_attached" if self.attached else "start", {
            "argv": list(sys.argv), "pid": self._pid, "host": self._host, "rank": self._rank,
            "world_size": self._world_size, "settings": self._settings_snapshot(),
            "python": sys.executable,
            "stacks_file": str(wd.stacks_path) if wd is not None and wd.stacks_path else None,
            "stack_signal": wd.registered_signal if wd is not None else None,
            "gpus_sampled_by": self._gpus_sampled_by,
        })
        # step() appends straight to the writer's deque (atomic under the GIL, no function call) and nudges
        # the writer on its 1-in-64 timed calls; see BatchWriter.nudge.
        self._nudge_writer = self._writer.nudge
        self._put_step = self._writer.steps.append
        settle_heap()   # the full collection start-up made due, here rather than in the loop's first seconds
        self._ledger.add("start", _perf() - t0)
        return self

    def close(self) -> None:
        """End the run as succeeded (unless a signal already ended it) and flush everything. Idempotent."""
        self._finish("succeeded", None)

    # -- the training-thread API ---------------------------------------------------------------------

    def step(self, step: int, loss: Any = None, lr: Any = None, grad_norm: Any = None, batch_size: Any = None,
             tokens: Any = None, **extras: Any) -> None:
        """Record one optimizer step. Costs about a microsecond and never waits for the device or the disk.

        Args:
            step: the global step number.
            loss, lr, grad_norm, tokens: numbers, numpy scalars or 0-d tensors; tensors are resolved to floats on
                the writer thread (so do not modify them in place afterwards).
            batch_size: samples in this step; a change (an ``int`` different from the last) records a
                ``batch_size_changed`` event.
            **extras: more scalars, stored in the step's ``extras``.

        ``step_time_seconds`` (since the previous ``step()``) and ``data_time_seconds`` (time inside
        ``mon.loader``'s ``next()`` since the previous step) are measured here.
        """
        put = self._put_step
        if put is None:
            return
        now = _perf()
        last = self._last_step_at
        self._last_step_at = self._last_progress = now
        self._last_step = step
        waited = self._data_wait
        if waited is not None:
            self._data_wait = 0.0
        # Only plain ints are compared: `!=` on a tensor would build another tensor and force a device sync.
        if type(batch_size) is int and batch_size != self._batch_size:
            self._batch_size_seen(step, batch_size)
        # The tuple runlens.collect.steps turns into a row on the writer thread.
        put((step, now, loss, lr, grad_norm, batch_size, tokens, now - last if last else None, waited,
             extras or None))
        n = self._steps_logged + 1
        self._steps_logged = n
        if n & TIMING_MASK == 1:
            self._step_timed += _perf() - now
            self._step_timed_n += 1
            self._nudge_writer()

    def _batch_size_seen(self, step: Any, batch_size: int) -> None:
        previous = self._batch_size
        self._batch_size = batch_size
        if previous is not None and previous != batch_size:
            self._record_event("batch_size_changed", {"from": previous, "to": batch_size})

    def event(self, event_type: str, /, **details: Any) -> None:
        """Record an event (``checkpoint_saved``, ``lr_drop``, ...) with a fresh system sample linked to it.

        ``details`` must be JSON-like; anything else (Paths, enums, dtypes) is stored as its ``str()``.
        """
        if self._state != STATE_RUNNING:
            return
        t0 = _perf()
        self._record_event(str(event_type), to_jsonable(details) if details else {})
        self._ledger.add("event", _perf() - t0)

    def phase(self, name: str, **details: Any) -> contextlib.AbstractContextManager[Any]:
        """``with mon.phase("eval"):`` — records phase_start/phase_end (with its duration) and tells the hang
        watchdog which phase the run is in, so a long eval is not mistaken for a hang."""
        if self._state != STATE_RUNNING:
            return _NULL_CONTEXT
        return Phase(self, str(name), to_jsonable(details) if details else {})

    def cost(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """``with mon.cost("eval_samples"):`` — time your own monitoring work; it counts towards the
        monitoring budget and is stored as the operation ``user:<name>``."""
        if self._state in (STATE_DISABLED, STATE_CLOSED):
            return _NULL_CONTEXT
        return self._ledger.timer(str(name))

    def loader(self, iterable: Iterable[T]) -> Iterable[T]:
        """Wrap a DataLoader (or any iterable) to measure how long each step waited for its batch.

        Wrap the training loader only: the wait is added to the next ``step()``'s ``data_time_seconds``, so an
        eval loader's wait would land on the next training step.
        """
        if self._state == STATE_DISABLED:
            return iterable
        return TimedLoader(self, iterable)

    def add_data_wait(self, seconds: float) -> None:
        """Add ``seconds`` to the next step's ``data_time_seconds``: for a loop that times its own input wait
        (the framework integrations, whose DataLoader the framework owns, so ``loader()`` cannot wrap it)."""
        if self._put_step is not None:
            waited = self._data_wait
            self._data_wait = seconds if waited is None else waited + seconds

    # -- helpers -------------------------------------------------------------------------------------

    def _settings_snapshot(self) -> dict[str, Any]:
        return redact(to_jsonable(self.settings.as_dict()))  # type: ignore[no-any-return]

    def _warn(self, key: str, message: str) -> None:
        """One warning per kind, on stderr unless the application's logging shows it (``runlens.core.notices``):
        the user must see runlens trouble, but never a flood."""
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("%s", message)
