"""A Monitor's job from open to close: open or attach, start the sampler, and end the run exactly once.

Open: the store is opened and the job created; inside ``runlens collect`` (``RUNLENS_JOB_ID`` set) the Monitor
attaches to the wrapper's job instead: it writes steps, events and costs into it, fills in the config snapshot
if the job has none, takes samples only for its events (the wrapper samples the whole process tree
periodically, GPUs included, so the attached Monitor never touches NVML), and leaves the job's final status to
the wrapper. When that job id does not exist yet, the Monitor creates it with that id and owns it like a job of
its own. Of several ranks on one node only local rank 0 samples the GPUs (``runlens.collect.node``).

Start-up stays off the slow paths: the job row gets the cheap part of the environment description, and the
sampler thread adds torch and the GPUs once it has taken the first sample (NVML starts there, once; ``nvmlInit``
alone can take a second or two on a machine with many GPUs). ``_finish`` waits a moment for that snapshot.

Close: ``__exit__``, the ``atexit`` hook and the signal handler all end in ``_finish``, which drains events,
stops the sampler, stores the final status and cost, and flushes. It runs once and never raises: a bug in
runlens must not replace the user's exception or exit status. A job of the Monitor's own is then analysed in a
detached process (``analyze_on_complete``), so the training process does not wait for it.

States: new -> running -> closing -> closed; disabled (``RUNLENS_DISABLE``, or a store that cannot be opened)
makes every call a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable

from runlens.collect.config import to_jsonable
from runlens.collect.device_scalars import DeviceScalarResolver
from runlens.collect.events import EVENT_SAMPLE_WAIT, EventSampler
from runlens.core.dialects import detect_dialect
from runlens.core.errors import StoreUnavailable
from runlens.core.oom import allocator_figures, is_cuda_oom

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

log = logging.getLogger(__name__)

_perf = time.perf_counter
_time = time.time

STATE_NEW, STATE_RUNNING, STATE_CLOSING, STATE_CLOSED, STATE_DISABLED = (
    "new", "running", "closing", "closed", "disabled")
WRITER_CLOSE_TIMEOUT = 15.0
MAX_TRACEBACK_CHARS = 20_000
MAX_MESSAGE_CHARS = 2_000


class _ThenOnce:
    """``on_sample``, and after the first sample handed over, ``task`` once, on the sampler's thread."""

    def __init__(self, on_sample: Callable[[Any], None], task: Callable[[], None]) -> None:
        self._on_sample = on_sample
        self._task: Callable[[], None] | None = task

    def __call__(self, sample: Any) -> None:
        self._on_sample(sample)
        task, self._task = self._task, None
        if task is not None:
            task()


class JobLifecycle:
    """Opening, attaching to and finishing the Monitor's job (a mixin of ``Monitor``; its state is the
    Monitor's)."""

    def _open(self: Monitor) -> None:
        """Open the store and create the job, or attach to ``runlens collect``'s; start the writer and sampler."""
        # Imported here, not at the top: SQLAlchemy, Alembic and psutil cost about a second, which a disabled
        # Monitor or a bare ``import runlens`` should not pay (the integrations preload them on purpose).
        from runlens.collect.environment import describe_environment
        from runlens.store import new_job_id, open_store
        from runlens.store.writer import BatchWriter

        attach_id = os.environ.get("RUNLENS_JOB_ID", "").strip() or None
        db = (os.environ.get("RUNLENS_DB") or self._db) if attach_id else self._db
        store = self._store = open_store(db, create=True)
        self.settings = self.settings.replace(db=store.url)  # the store actually used, for the job's record
        environment = describe_environment(include_gpus=False, include_torch=False)   # the rest: see _start_sampler
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
                self._wrapper_samples = bool(job.get("log_path"))   # runlens collect's job: it samples the tree
                updates: dict[str, Any] = {}
                if job.get("config") is None and self.config is not None:
                    updates.update(config_fields)
                if job.get("environment") is None:
                    updates["environment"] = environment
                else:
                    self._environment_done.set()   # the job is described already (by the wrapper)
                if job.get("world_size") is None and self._world_size is not None:
                    updates["world_size"] = self._world_size   # runlens collect saw one process: the launcher
                if job.get("settings") is None:
                    updates["settings"] = fields["settings"]
                if updates:
                    store.update_job(attach_id, **updates)
            self.job_id = attach_id
        self._owns_lifecycle = not self.attached
        s = self.settings
        self._writer = BatchWriter(store, self.job_id, flush_interval=s.flush_interval, flush_rows=s.flush_rows,
                                   max_rows=s.buffer_max_rows, step_converter=self._convert_step,
                                   step_resolver=DeviceScalarResolver(),   # CUDA scalars without a sync each
                                   on_cycle=self._on_writer_cycle).start()
        self._last_cost_rows = _perf()
        self._start_sampler()

    def _start_sampler(self: Monitor) -> None:
        """The periodic system sampler of a job of our own, or an event-only one when attached (the wrapper
        samples the process tree already). Sampling fails soft: without it events carry no memory snapshot.

        The GPUs are sampled by one process per node (``runlens.collect.node``). The sampler's thread also
        completes the environment description after its first sample (``_complete_environment``)."""
        from runlens.collect.node import gpu_sampling
        from runlens.collect.sampler import SamplerThread, SystemSampler   # psutil: see _open

        try:
            sampler = self._sampler_arg
            if sampler is None:
                role = gpu_sampling(wrapper_samples=self._wrapper_samples, pid=self._pid)
                self._gpus_sampled_by = role.sampled_by
                sampler = SystemSampler(pid=self._pid, include_children=True, host=self._host, rank=self._rank,
                                        sample_gpus=role.sample_gpus, gpu_job_pid=role.job_root_pid)
                self._own_sampler = sampler
            on_sample = _ThenOnce(self._on_sample, self._complete_environment)
            if self.attached:
                thread: Any = EventSampler(sampler, on_sample)
            else:
                thread = SamplerThread(sampler, self.settings.sample_interval, on_sample)
            thread.start()
        except Exception as exc:  # optional hardware and probes fail soft
            log.info("runlens: system sampling is off (%s)", exc)
            self._complete_environment()   # no sampler thread to do it
            return
        self._sampler_thread = thread

    def _complete_environment(self: Monitor) -> None:
        """Sampler thread, after its first sample: describe torch and the GPUs (through the sampler's NVML
        session where it has one) and store the whole description with the job. Never raises."""
        if self._environment_done.is_set():
            return
        try:
            from runlens.collect.environment import describe_environment

            own = self._own_sampler
            if own is None:       # a sampler passed in: the description opens an NVML session of its own
                environment = describe_environment()
            else:                 # through the sampler's NVML session; none where another process samples the GPUs
                environment = describe_environment(include_gpus=own.gpu is not None, gpus=own.describe_gpus)
            if self._stacks_path is not None:
                environment["stacks_file"] = str(self._stacks_path)
            if self._writer is not None and self._state in (STATE_NEW, STATE_RUNNING, STATE_CLOSING):
                self._writer.update_job(environment=environment)
        except Exception as exc:   # describing the machine must never stop the run
            log.info("runlens: the environment description is incomplete (%s)", exc)
        finally:
            self._environment_done.set()

    def _finish_exception(self: Monitor, exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, SystemExit):
            code = exc.code
            if code in (None, 0):
                self._finish("succeeded", None, exit_code=0)
            else:
                self._finish("failed", self._signal_reason or f"exit code {code}",
                             exit_code=code if isinstance(code, int) else 1)
            return
        if self._state == STATE_RUNNING:
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
                tried = allocator_figures(str(exc)).get("tried_to_allocate_gb")
                if tried is not None:
                    details["tried_to_allocate_gb"] = tried
                self._record_event("cuda_oom", details)
            reason = self._signal_reason or ("cuda_oom" if oom else f"exception: {type(exc).__name__}")
        else:
            reason = f"exception: {type(exc).__name__}"
        self._finish("failed", reason)

    def _finish(self: Monitor, status: str, reason: str | None, *, exit_code: int | None = None,
                exit_signal: int | None = None) -> None:
        """End the run: final events, status and cost, then flush and close. Runs once; never raises."""
        if self._state != STATE_RUNNING:
            if self._state == STATE_NEW:
                self._state = STATE_CLOSED
            return
        self._state = STATE_CLOSING
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
            if self._sampler_thread is not None:   # the environment's torch and GPU part, taken on its thread
                self._environment_done.wait(EVENT_SAMPLE_WAIT)
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
                # Close waits while the store keeps taking rows; it gives up after WRITER_CLOSE_TIMEOUT without
                # progress, or, closing for a signal, at that deadline (the scheduler's grace period runs).
                writer.close(timeout=WRITER_CLOSE_TIMEOUT,
                             deadline=WRITER_CLOSE_TIMEOUT if exit_signal is not None else None)
            except Exception as exc:
                self._warn("close", f"could not store the run's last rows ({exc}); they are lost")
            else:
                if writer.alive:
                    self._warn("close", f"the store did not take the run's last rows within "
                                        f"{WRITER_CLOSE_TIMEOUT:.0f}s; {writer.buffered_rows()} rows are lost")
                else:
                    self._analyze_in_background()
        except Exception as exc:  # a bug here must not replace the user's exception or exit status
            self._warn("finish", f"error while closing the run: {type(exc).__name__}: {exc}")
        finally:
            self._teardown_quietly()
            self._state = STATE_CLOSED
            self._uninstall_signal_handlers()
            try:
                atexit.unregister(self._atexit)
            except Exception:
                pass
            for signum in self._deferred_signals:  # a signal that arrived while closing: now act on it
                os.kill(os.getpid(), signum)

    def _analyze_in_background(self: Monitor) -> None:
        """A job of our own, now stored in full: analyse it in a detached process so this one exits at once
        (``runlens.collect.background_analysis``). Not a job handed over in ``RUNLENS_JOB_ID`` (by ``runlens
        collect``, which analyses it itself, or by a launcher, which decides), nor with ``analyze_on_complete``
        off."""
        if not (self._owns_lifecycle and self.settings.analyze_on_complete) or self._store is None:
            return
        job_id = str(self.job_id)
        if os.environ.get("RUNLENS_JOB_ID", "").strip() == job_id:
            return
        from runlens.collect.background_analysis import start_background_analysis

        try:
            report = start_background_analysis(job_id, self._store.url)
        except Exception as exc:   # the run is stored; the analysis can be run by hand
            self._warn("analysis", f"could not start the analysis ({exc}); run 'runlens analyze {job_id}'")
            return
        self._warn("analysis", f"analysing {job_id} in the background; report will be at {report}")

    def _teardown_quietly(self: Monitor) -> None:
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

    def _atexit(self: Monitor) -> None:
        """A Monitor left open when the interpreter exits: close it (failed if an exception killed the program)."""
        if os.getpid() != self._pid or self._state != STATE_RUNNING:
            return
        exc = getattr(sys, "last_value", None)
        if isinstance(exc, BaseException):
            self._finish_exception(exc, exc.__traceback__)
        else:
            self._finish("succeeded", None)
