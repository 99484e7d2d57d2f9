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
  deque: no I/O, no lock, no conversion. A torch tensor passed as ``loss`` is turned into a float by
  ``_convert_step`` on the writer thread, so the training thread never waits for the device (MLflow's
  ``log_metric`` costs ~5 ms a call and W&B's ``log`` halves throughput every few seconds; see
  research/trackers.md).
* Every event gets a fresh system sample: the event row is queued with its own timestamp on the caller's thread
  and linked to a sample taken right after, on the sampler thread (``_on_sample``). Events closer than
  ``EVENT_SAMPLE_MIN_INTERVAL`` to the last requested sample share it, so a phase per step cannot turn the
  sampler into a busy loop.
* Nothing recorded is lost on exit, on an exception or on SIGTERM: ``__exit__``, an ``atexit`` hook and the signal
  handler all end in ``_finish``, which drains events, stops the sampler, stores the final status and cost, and
  flushes. The process still dies as it would have without runlens (the signal is re-raised, the exception is
  never swallowed).
* Store failures never reach the training loop: the writer retries and warns once; if the store cannot even be
  opened, the Monitor warns once and becomes a no-op.

Non-finite values: SQLite stores NaN as NULL, which would hide a diverged loss. A non-finite value of any
step field (loss, learning_rate, gradient_norm, tokens or a user scalar) is kept in its column as the float
(NaN becomes NULL in SQLite, +-inf is stored) **and** recorded in ``extras["nonfinite"]`` as a string:
``{"nonfinite": {"loss": "nan"}}``; a non-finite user scalar is stored as null in ``extras`` for JSON's sake.

Attach mode: inside ``runlens collect`` (``RUNLENS_JOB_ID`` set) the Monitor writes steps, events and costs into
the wrapper's job, fills in the config snapshot if the job has none, takes samples only for its events (the
wrapper samples the whole process tree periodically), and leaves the job's final status to the wrapper. When
that job id does not exist yet, the Monitor creates it with that id and owns it like a job of its own.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable, Deque, Iterable, Iterator, Mapping, TypeVar

from runlens.collect.config import ConfigSource, check_setting_names, load_config, resolve_settings, to_jsonable
from runlens.collect.cost import CostLedger, runlens_thread_cpu
from runlens.collect.watchdog import Progress
from runlens.core.dialects import detect_dialect
from runlens.core.redact import redact
from runlens.core.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

_perf = time.perf_counter
_time = time.time

# step() times 1 call in STEP_TIMING_EVERY (a power of two) and scales: see runlens.collect.cost.
STEP_TIMING_EVERY = 64
_TIMING_MASK = STEP_TIMING_EVERY - 1
EVENT_SAMPLE_MIN_INTERVAL = 0.5   # seconds; events closer than this to the last requested sample share it
EVENT_SAMPLE_WAIT = 2.0           # seconds _finish waits for the sampler to link the last events
STALE_EVENT_SECONDS = 5.0         # an event waiting this long for a sample is written without one
COST_ROW_INTERVAL = 30.0          # seconds between cumulative monitoring_costs rows
WRITER_CLOSE_TIMEOUT = 15.0
MAX_TRACEBACK_CHARS = 20_000
MAX_MESSAGE_CHARS = 2_000
_HANDLED_SIGNALS = ("SIGTERM", "SIGINT")
_NULL_CONTEXT = contextlib.nullcontext()
_OOM_ALLOC = re.compile(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB|B)")
_UNIT_GIB = {"GiB": 1.0, "MiB": 1 / 1024, "KiB": 1 / 1024**2, "B": 1 / 1024**3}
_NONFINITE_TEXT = {math.inf: "inf", -math.inf: "-inf"}

_STATE_NEW, _STATE_RUNNING, _STATE_CLOSING, _STATE_CLOSED, _STATE_DISABLED = (
    "new", "running", "closing", "closed", "disabled")


def _no_op() -> None:
    return None


def _env_disabled() -> bool:
    return os.environ.get("RUNLENS_DISABLE", "").strip().lower() in ("1", "true", "yes")


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


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error, without importing torch (a program that never imported it
    cannot raise it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        for owner in (torch, getattr(torch, "cuda", None)):
            cls = getattr(owner, "OutOfMemoryError", None)
            if isinstance(cls, type) and isinstance(exc, cls):
                return True
    for cls in type(exc).__mro__:
        if cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch"):
            return True
    # torch < 2.0 raised a plain RuntimeError
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


class TimedLoader:
    """``mon.loader(iterable)``: yields what ``iterable`` yields and adds the time spent waiting for each item
    (inside ``next()``, and inside ``iter()`` where a DataLoader starts its workers) to the next step's
    ``data_time_seconds``. ``len()`` and attributes (``.dataset``, ``.sampler``, ``set_epoch``) pass through.
    """

    def __init__(self, monitor: "Monitor", iterable: Iterable[T]) -> None:
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
            if n & _TIMING_MASK == 1:
                # Our own bookkeeping around next(); the generator's resume/yield is not included.
                mon._loader_timed += pc() - t1
                mon._loader_timed_n += 1
            yield item


class _Phase:
    """``with mon.phase("eval"):`` — phase_start/phase_end events and the current phase for the watchdog."""

    __slots__ = ("_monitor", "_name", "_details", "_t0", "_previous")

    def __init__(self, monitor: "Monitor", name: str, details: dict[str, Any]) -> None:
        self._monitor = monitor
        self._name = name
        self._details = details
        self._t0 = 0.0
        self._previous: str | None = None

    def __enter__(self) -> "_Phase":
        mon = self._monitor
        t = _perf()
        self._t0 = t
        self._previous = mon._phase
        mon._phase = self._name
        mon._last_progress = t
        mon._phase_marks.append(t)   # the watchdog leaves intervals with a phase change out of calibration
        mon._record_event("phase_start", {"name": self._name, **self._details})
        mon._ledger.add("phase", _perf() - t)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        mon = self._monitor
        t = _perf()
        mon._phase = self._previous
        mon._last_progress = t
        mon._phase_marks.append(t)
        mon._phase_durations[self._name] = t - self._t0   # a phase's next budget is at least 5x this
        details: dict[str, Any] = {"name": self._name, "duration_seconds": t - self._t0}
        if exc_type is not None:
            details["error"] = exc_type.__name__
        mon._record_event("phase_end", details)
        mon._ledger.add("phase", _perf() - t)


class _EventSampler:
    """A sampler thread that samples only when asked: attach mode's event snapshots (the wrapper samples the
    process tree periodically, so a second periodic sampler would double the cost for nothing)."""

    def __init__(self, sampler: Any, on_sample: Callable[[Any], None], max_failures: int = 3) -> None:
        self._sampler = sampler
        self._on_sample = on_sample
        self._max_failures = max_failures
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runlens-event-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                sample = self._sampler.sample()
            except Exception as exc:
                failures += 1
                log.info("runlens event sample failed (%s)%s", exc,
                         "; event samples disabled" if failures >= self._max_failures else "")
                if failures >= self._max_failures:
                    return
                continue
            failures = 0
            self._on_sample(sample)


class Monitor:
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
        self._state = _STATE_NEW
        self._db = db
        self._sampler_arg = sampler
        self._store: Any = None
        self._writer: Any = None
        self._sampler_thread: Any = None
        self._own_sampler: Any = None   # the SystemSampler we built (closed at the end: it holds NVML)
        self._pending_events: Deque[tuple[float, dict[str, Any]]] = collections.deque()
        self._last_sample_key: int | None = None
        self._last_event_request = -math.inf
        self._last_cost_rows = 0.0
        self._thread_cpu: dict[str, float] = {}
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
        if _env_disabled() or settings_overrides.get("disabled"):
            self.settings = Settings(disabled=True)
            self._state = _STATE_DISABLED
        else:
            self.config, self.config_path = load_config(config)
            self.settings = resolve_settings(self.config, settings_overrides)
            if self.settings.disabled:
                self._state = _STATE_DISABLED
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
        if self._state != _STATE_NEW:
            return self
        t0 = _perf()
        self._ledger.started = t0
        try:
            self._open()
        except Exception as exc:  # the store is unavailable, too new, ...: the run goes on without runlens
            self._warn("open", f"monitoring is off for this run: {exc}")
            self._teardown_quietly()
            self._state = _STATE_DISABLED
            self.job_id = None
            return self
        self._state = _STATE_RUNNING
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
        })
        # step() appends straight to the writer's deque (atomic under the GIL, no function call) and nudges
        # the writer on its 1-in-64 timed calls; see BatchWriter.nudge.
        self._nudge_writer = self._writer.nudge
        self._put_step = self._writer.steps.append
        self._ledger.add("start", _perf() - t0)
        return self

    def close(self) -> None:
        """End the run as succeeded (unless a signal already ended it) and flush everything. Idempotent."""
        self._finish("succeeded", None)

    def _open(self) -> None:
        from runlens.collect.environment import describe_environment
        from runlens.core.errors import StoreUnavailable
        from runlens.store import new_job_id, open_store
        from runlens.store.writer import BatchWriter

        attach_id = os.environ.get("RUNLENS_JOB_ID", "").strip() or None
        db = (os.environ.get("RUNLENS_DB") or self._db) if attach_id else self._db
        store = self._store = open_store(db, create=True)
        self.settings = self.settings.replace(db=store.url)  # the store actually used, for the job's record
        environment = describe_environment()
        job_id = attach_id or new_job_id(self.name)
        self._stacks_path = self._plan_stacks_path(job_id, store.url)
        if self._stacks_path is not None:
            # Stored with the job so the analyzer (and runlens collect) can find the C timer's dumps.
            self.settings = self.settings.replace(stacks_dir=str(self._stacks_path.parent))
            environment = {**(environment or {}), "stacks_file": str(self._stacks_path)}
        self._started_wall = _time()
        config_fields = {"config": self.config, "config_dialect": detect_dialect(self.config),
                         "config_path": self.config_path}
        fields: dict[str, Any] = {
            "status": "running", "started_at": self._started_wall, "argv": list(sys.argv),
            "settings": self._settings_snapshot(), "environment": environment, "world_size": self._world_size,
            **config_fields,
        }
        if attach_id is None:
            self.job_id = store.create_job(name=self.name, job_id=job_id, **fields)
        else:
            if not store.job_exists(attach_id):
                try:
                    store.create_job(name=self.name, job_id=attach_id, **fields)
                except StoreUnavailable:
                    if not store.job_exists(attach_id):  # not a lost race with another rank: a real failure
                        raise
                    self.attached = True
            else:
                self.attached = True
            if self.attached:
                job = store.get_job(attach_id)
                updates: dict[str, Any] = {}
                if job.get("config") is None and self.config is not None:
                    updates.update(config_fields)
                if job.get("environment") is None:
                    updates["environment"] = environment
                if job.get("settings") is None:
                    updates["settings"] = fields["settings"]
                if updates:
                    store.update_job(attach_id, **updates)
            self.job_id = attach_id
        self._owns_lifecycle = not self.attached
        s = self.settings
        self._writer = BatchWriter(store, self.job_id, flush_interval=s.flush_interval, flush_rows=s.flush_rows,
                                   max_rows=s.buffer_max_rows, step_converter=self._convert_step,
                                   on_cycle=self._on_writer_cycle).start()
        self._last_cost_rows = _perf()
        self._start_sampler()

    def _start_sampler(self) -> None:
        try:
            from runlens.collect import sampler as sampler_module
        except ImportError:
            sampler_module = None  # type: ignore[assignment]
        try:
            sampler = self._sampler_arg
            if sampler is None:
                if sampler_module is None:
                    log.info("runlens: no system sampler available; events carry no memory snapshot")
                    return
                sampler = sampler_module.SystemSampler(pid=self._pid, include_children=True, host=self._host,
                                                       rank=self._rank)
                self._own_sampler = sampler
            if self.attached:
                thread: Any = _EventSampler(sampler, self._on_sample)
            elif sampler_module is not None and hasattr(sampler_module, "SamplerThread"):
                thread = sampler_module.SamplerThread(sampler, self.settings.sample_interval, self._on_sample)
            else:
                log.info("runlens: no periodic sampler available; sampling for events only")
                thread = _EventSampler(sampler, self._on_sample)
            thread.start()
        except Exception as exc:  # optional hardware and probes fail soft
            log.info("runlens: system sampling is off (%s)", exc)
            return
        self._sampler_thread = thread

    def _finish_exception(self, exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, SystemExit):
            code = exc.code
            if code in (None, 0):
                self._finish("succeeded", None, exit_code=0)
            else:
                self._finish("failed", self._signal_reason or f"exit code {code}",
                             exit_code=code if isinstance(code, int) else 1)
            return
        if self._state == _STATE_RUNNING:
            oom = is_cuda_oom(exc)
            interrupted_by_signal = isinstance(exc, KeyboardInterrupt) and self._signal_reason == "SIGINT"
            if not interrupted_by_signal:
                text = "".join(traceback.format_exception(type(exc), exc, tb))
                self._record_event("exception", {
                    "type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
                    "message": str(exc)[:MAX_MESSAGE_CHARS],
                    "traceback": text[-MAX_TRACEBACK_CHARS:],
                })
            if oom:
                details: dict[str, Any] = {"message": str(exc)[:MAX_MESSAGE_CHARS]}
                match = _OOM_ALLOC.search(str(exc))
                if match:
                    details["tried_to_allocate_gb"] = float(match.group(1)) * _UNIT_GIB[match.group(2)]
                self._record_event("cuda_oom", details)
            reason = self._signal_reason or ("cuda_oom" if oom else f"exception: {type(exc).__name__}")
        else:
            reason = f"exception: {type(exc).__name__}"
        self._finish("failed", reason)

    def _finish(self, status: str, reason: str | None, *, exit_code: int | None = None,
                exit_signal: int | None = None) -> None:
        """End the run: final events, status and cost, then flush and close. Runs once; never raises."""
        if self._state != _STATE_RUNNING:
            if self._state == _STATE_NEW:
                self._state = _STATE_CLOSED
            return
        self._state = _STATE_CLOSING
        self._put_step = None
        t0 = _perf()
        wd = self._watchdog
        watchdog = None
        if wd is not None:
            with contextlib.suppress(Exception):
                watchdog = wd.describe()
        self._stop_watchdog()   # a closing run is not a stalled one
        writer = self._writer
        try:
            self._record_event("end" if self._owns_lifecycle else "monitor_detached", {
                "status": status, "reason": reason, "exit_code": exit_code, "exit_signal": exit_signal,
                "steps_logged": self._steps_logged, "last_step": self._int_step(),
                "duration_seconds": _time() - self._started_wall,
                **({"watchdog": to_jsonable(watchdog)} if watchdog else {}),
            })
            self._wait_for_event_samples(EVENT_SAMPLE_WAIT)
            self._refresh_costs()  # thread CPU before the sampler thread is gone
            sampler, self._sampler_thread = self._sampler_thread, None  # later events go straight to the writer
            if sampler is not None:
                with contextlib.suppress(Exception):
                    sampler.stop(timeout=EVENT_SAMPLE_WAIT)
            self._flush_stale_events(0.0)
            if self._owns_lifecycle:
                writer.update_job(status=status, status_reason=reason, ended_at=_time(), exit_code=exit_code,
                                  exit_signal=exit_signal)
            self._ledger.add("close", _perf() - t0)
            self._refresh_costs()
            writer.put_costs(self._ledger.changed_rows(_time(), host=self._host, rank=self._rank))
            budget = self._ledger.check_budget()
            if budget:
                self._budget_exceeded(budget)
            try:
                writer.close(timeout=WRITER_CLOSE_TIMEOUT)
            except Exception as exc:
                self._warn("close", f"could not store the run's last rows ({exc}); they are lost")
            else:
                if writer.alive:
                    self._warn("close", f"the store did not take the run's last rows within "
                                        f"{WRITER_CLOSE_TIMEOUT:.0f}s; {writer.buffered_rows()} rows are lost")
        except Exception as exc:  # a bug here must not replace the user's exception or exit status
            self._warn("finish", f"error while closing the run: {type(exc).__name__}: {exc}")
        finally:
            self._teardown_quietly()
            self._state = _STATE_CLOSED
            self._uninstall_signal_handlers()
            try:
                atexit.unregister(self._atexit)
            except Exception:
                pass
            for signum in self._deferred_signals:  # a signal that arrived while closing: now act on it
                os.kill(os.getpid(), signum)

    def _teardown_quietly(self) -> None:
        self._stop_watchdog()
        if self._sampler_thread is not None:
            with contextlib.suppress(Exception):
                self._sampler_thread.stop(timeout=EVENT_SAMPLE_WAIT)
        if self._own_sampler is not None:
            with contextlib.suppress(Exception):
                self._own_sampler.close()
            self._own_sampler = None
        if self._writer is not None and self._writer.alive:
            with contextlib.suppress(Exception):
                self._writer.close(timeout=WRITER_CLOSE_TIMEOUT)
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()

    def _atexit(self) -> None:
        """A Monitor left open when the interpreter exits: close it (failed if an exception killed the program)."""
        if os.getpid() != self._pid or self._state != _STATE_RUNNING:
            return
        exc = getattr(sys, "last_value", None)
        if isinstance(exc, BaseException):
            self._finish_exception(exc, exc.__traceback__)
        else:
            self._finish("succeeded", None)

    # -- signals -------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only allows handlers on the main thread; the atexit hook still closes the run
        for name in _HANDLED_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                previous = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)
            except (ValueError, OSError, TypeError):
                continue
            self._prev_handlers[int(signum)] = previous

    def _uninstall_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._prev_handlers.items():
            with contextlib.suppress(Exception):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._prev_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record the signal, flush, then do what the previous handler would have done.

        Default action (SIGTERM): the run is marked failed with the signal as its reason and closed, then the
        default handler is restored and the signal re-raised, so the process dies by the signal (exit -15 /
        143) exactly as it would have without runlens. A Python handler (SIGINT's KeyboardInterrupt, a user's
        checkpoint-on-SIGTERM) is called after the flush and decides; an ignored signal stays ignored.
        """
        previous = self._prev_handlers.get(signum, signal.SIG_DFL)
        if os.getpid() != self._pid:  # a forked child (DataLoader worker) inherited the handler
            self._reraise(signum, frame, previous)
            return
        if self._state == _STATE_CLOSING:  # interrupted our own close: let it finish, then act
            self._deferred_signals.append(signum)
            return
        if self._state == _STATE_RUNNING:
            name = signal.Signals(signum).name
            dies = previous in (signal.SIG_DFL, None)
            ignored = previous == signal.SIG_IGN
            try:
                action = "default" if dies else "ignored" if ignored else "handler"
                self._record_event("signal", {"signal": name, "signum": int(signum), "action": action})
                if not ignored:
                    self._signal_reason = name
                if dies:
                    self._finish("failed", name, exit_signal=int(signum))
                elif not ignored:
                    self._wait_for_event_samples(1.0)
                    self._writer.flush(timeout=5.0)
            except Exception:
                pass
        self._reraise(signum, frame, previous)

    def _reraise(self, signum: int, frame: FrameType | None, previous: Any) -> None:
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        with contextlib.suppress(Exception):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # -- the hang watchdog ---------------------------------------------------------------------------

    def _plan_stacks_path(self, job_id: str, store_url: str) -> Path | None:
        """Where faulthandler's dumps go: ``stacks_dir`` (``runlens collect`` points it at the job's log folder),
        else ``runlens-runs/<job_id>/`` next to a SQLite store, else in the working directory."""
        if not self.settings.hang_detection:
            return None
        base = self.settings.stacks_dir
        if base:
            folder = Path(base).expanduser()
        else:
            root = Path.cwd()
            with contextlib.suppress(Exception):
                from runlens.store import sqlite_path   # the store knows URLs; imported late like the store

                database = sqlite_path(store_url)
                if database is not None and not str(database).startswith("file:"):
                    root = database.expanduser().resolve().parent
            folder = root / "runlens-runs" / job_id
        return folder.resolve() / f"stacks-{self._pid}.txt"

    def _start_watchdog(self) -> None:
        if not self.settings.hang_detection:
            return
        try:
            from runlens.collect.watchdog import HangSettings, Watchdog

            wd = Watchdog(self._progress_snapshot, HangSettings.from_settings(self.settings), self._watchdog_emit,
                          flush=self._watchdog_flush, stacks_path=self._stacks_path,
                          stack_signal=self.settings.stack_signal, phase_durations=self._phase_durations)
            wd.phase_marks = self._phase_marks
            self._watchdog = wd.start()
        except Exception as exc:   # stall detection is a feature, not a reason to stop the run
            self._warn("watchdog", f"hang detection is off for this run: {exc}")
            self._watchdog = None

    def _stop_watchdog(self) -> None:
        wd, self._watchdog = self._watchdog, None
        if wd is not None:
            with contextlib.suppress(Exception):
                wd.stop(timeout=2.0)

    def _progress_snapshot(self) -> Any:
        """The watchdog's view of progress: plain attributes the training thread writes (no lock, no call on
        the hot path)."""
        return Progress(self._last_progress, self._last_step, self._phase, self._loader_waiting_since,
                        self._steps_logged)

    def _watchdog_emit(self, event_type: str, details: dict[str, Any], at: float | None) -> None:
        if self._state not in (_STATE_RUNNING, _STATE_CLOSING):   # closing: a last recovered event
            return
        self._record_event(event_type, to_jsonable(details), at=at)

    def _watchdog_flush(self) -> None:
        """A stall's evidence goes to the store now: the process may be killed next."""
        if self._state != _STATE_RUNNING or self._writer is None:
            return
        self._wait_for_event_samples(2.0)
        self._writer.flush(timeout=5.0)

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
        put((step, now, loss, lr, grad_norm, batch_size, tokens, now - last if last else None, waited,
             extras or None))
        n = self._steps_logged + 1
        self._steps_logged = n
        if n & _TIMING_MASK == 1:
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
        if self._state != _STATE_RUNNING:
            return
        t0 = _perf()
        self._record_event(str(event_type), to_jsonable(details) if details else {})
        self._ledger.add("event", _perf() - t0)

    def phase(self, name: str, **details: Any) -> contextlib.AbstractContextManager[Any]:
        """``with mon.phase("eval"):`` — records phase_start/phase_end (with its duration) and tells the hang
        watchdog which phase the run is in, so a long eval is not mistaken for a hang."""
        if self._state != _STATE_RUNNING:
            return _NULL_CONTEXT
        return _Phase(self, str(name), to_jsonable(details) if details else {})

    def cost(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """``with mon.cost("eval_samples"):`` — time your own monitoring work; it counts towards the
        monitoring budget and is stored as the operation ``user:<name>``."""
        if self._state in (_STATE_DISABLED, _STATE_CLOSED):
            return _NULL_CONTEXT
        return self._ledger.timer(str(name))

    def loader(self, iterable: Iterable[T]) -> Iterable[T]:
        """Wrap a DataLoader (or any iterable) to measure how long each step waited for its batch.

        Wrap the training loader only: the wait is added to the next ``step()``'s ``data_time_seconds``, so an
        eval loader's wait would land on the next training step.
        """
        if self._state == _STATE_DISABLED:
            return iterable
        return TimedLoader(self, iterable)

    def add_data_wait(self, seconds: float) -> None:
        """Add ``seconds`` to the next step's ``data_time_seconds``: for a loop that times its own input wait
        (the framework integrations, whose DataLoader the framework owns, so ``loader()`` cannot wrap it)."""
        if self._put_step is not None:
            waited = self._data_wait
            self._data_wait = seconds if waited is None else waited + seconds

    # -- events and samples --------------------------------------------------------------------------

    def _int_step(self) -> int | None:
        s = self._last_step
        return int(s) if isinstance(s, int) else None  # a tensor step is not resolved on this thread

    def _record_event(self, event_type: str, details: dict[str, Any] | None, at: float | None = None) -> None:
        writer = self._writer
        if writer is None:
            return
        row = {"timestamp": _time() if at is None else at, "event_type": event_type, "details": details, "host": self._host,
               "rank": self._rank, "step": self._int_step()}
        sampler = self._sampler_thread
        if sampler is None:
            writer.put_event(row, None)
            return
        now = _perf()
        key = self._last_sample_key
        recent = now - self._last_event_request < EVENT_SAMPLE_MIN_INTERVAL
        if key is not None and recent and not self._pending_events:
            writer.put_event(row, key)  # a sample taken moments ago
            return
        self._pending_events.append((now, row))
        self._last_event_request = now
        try:
            sampler.request()
        except Exception:
            pass

    def _on_sample(self, sample: Any) -> None:
        """Sampler thread: buffer the sample, then link every event that was waiting for it."""
        writer = self._writer
        if writer is None:
            return
        row = dict(sample.row)
        row.setdefault("host", self._host)
        row.setdefault("rank", self._rank)
        key = writer.put_sample(row, list(getattr(sample, "gpus", None) or ()))
        self._last_sample_key = key
        pending = self._pending_events
        while True:
            try:
                _, event = pending.popleft()
            except IndexError:
                break
            writer.put_event(event, key)

    def _flush_stale_events(self, max_age: float) -> None:
        """Write events that waited ``max_age`` seconds for a sample without one (a stuck or failing sampler)."""
        pending = self._pending_events
        now = _perf()
        while pending:
            try:
                queued_at, event = pending[0]
                if now - queued_at < max_age:
                    return
                pending.popleft()
            except IndexError:
                return
            self._writer.put_event(event, None)  # an older sample would not be this event's memory

    def _wait_for_event_samples(self, timeout: float) -> None:
        sampler = self._sampler_thread
        if sampler is None or not self._pending_events:
            return
        deadline = _perf() + timeout
        with contextlib.suppress(Exception):
            sampler.request()
        while self._pending_events and _perf() < deadline:
            time.sleep(0.005)

    # -- the writer thread's periodic bookkeeping ----------------------------------------------------

    def _convert_step(self, raw: tuple[Any, ...]) -> dict[str, Any]:
        """Writer thread: a step tuple from ``step()`` to a ``step_metrics`` row (tensors resolved here).

        Written for speed (it runs once per row): plain floats skip the conversion, and the per-field
        non-finite bookkeeping runs only when a quick check says some value is nan or inf.
        """
        step, at, loss, lr, grad_norm, batch_size, tokens, step_time, data_time, extras = raw
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
        }

    def _on_writer_cycle(self) -> None:
        """Writer thread, every flush cycle: unstick events, and every COST_ROW_INTERVAL store cost rows and
        check the budget."""
        if self._state not in (_STATE_RUNNING, _STATE_CLOSING):
            return
        self._flush_stale_events(STALE_EVENT_SECONDS)
        now = _perf()
        if now - self._last_cost_rows < COST_ROW_INTERVAL or self._state != _STATE_RUNNING:
            return
        self._last_cost_rows = now
        self._refresh_costs()
        self._writer.put_costs(self._ledger.changed_rows(_time(), host=self._host, rank=self._rank))
        budget = self._ledger.check_budget()
        if budget:
            self._budget_exceeded(budget)

    def _refresh_costs(self) -> None:
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

    def _budget_exceeded(self, details: Mapping[str, Any]) -> None:
        top = ", ".join(f"{k} {v:.2f}s" for k, v in details["top_operations"].items())
        self._warn("budget", f"monitoring is taking {details['fraction']:.1%} of wall time "
                             f"(budget {details['budget']:.0%}); biggest: {top}")
        self._record_event("monitoring_budget_exceeded", dict(details))

    # -- helpers -------------------------------------------------------------------------------------

    def _settings_snapshot(self) -> dict[str, Any]:
        return redact(to_jsonable(self.settings.as_dict()))  # type: ignore[no-any-return]

    def _warn(self, key: str, message: str) -> None:
        """One line on stderr, once per kind: the user must see runlens trouble, but never a flood."""
        if key in self._warned:
            return
        self._warned.add(key)
        with contextlib.suppress(Exception):
            print(f"runlens: {message}", file=sys.stderr, flush=True)
