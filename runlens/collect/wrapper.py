"""``runlens collect -- CMD``: run a training command as a child and record it from the outside.

The zero-code hook. The wrapper creates the job, starts the child in its own process group with the job handed
over in its environment (``RUNLENS_JOB_ID``, ``RUNLENS_DB``: a ``Monitor`` inside attaches instead of making a
second job), copies the child's stdout/stderr to the terminal as the bytes arrive and to the job's ``log.txt``
line by line with each line's arrival time, samples the child's whole process tree, forwards Ctrl-C/SIGTERM to
the child, watches it for stalls (``runlens.collect.hangguard``), records how it ended, and exits with the
child's code, or 124 when runlens killed it for a hang.

    wrapper (this process)                         child's session / process group
      main thread:   spawn, forward signals, wait    CMD (pid = pgid)
      runlens-collect-tee:     pipes -> terminal + log.txt + arrival sidecar
      runlens-collect-sampler: SystemSampler(child pid) -> writer; ChildSupervisor.on_tick hooks
      runlens-collect-watchdog: StallGuard: progress from the store, evidence, the hang kill
      runlens-writer:          the one thread that writes the store

The parts, one module each: ``runlens.collect.tee`` (terminal, log.txt, arrival times), ``runlens.collect.child``
(the child's environment, process group, forwarded signals, and how each way of ending is recorded),
``runlens.collect.hangguard`` (the stall guard). This module runs them and records the job. A child the stall
guard kills ends ``timed_out`` ("killed by runlens: no progress for ...") and the wrapper exits 124.

``collect_job`` returns the job and how it ended (``CollectResult``) so that the CLI can analyse the job once the
child is gone (collect may not import the report layer, which does the analysis). With monitoring switched off
(``monitoring: enabled: false`` in the config, or ``RUNLENS_DISABLE=1``) the command runs unrecorded, with the
terminal as its output and runlens off inside it too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from runlens.collect.child import (
    ChildSupervisor,
    TickHook,
    child_environment,
    end_status,
    redact_argv,
    signal_name,
    stacks_dir_for,
)
from runlens.collect.config import load_config, resolve_settings
from runlens.collect.environment import describe_environment
from runlens.collect.hangguard import HANG_EXIT_CODE, GuardConfig, StallGuard
from runlens.collect.output_steps import OutputSteps, logging_steps_of
from runlens.collect.progress_lines import compile_pattern
from runlens.collect.sampler import Sample, SamplerThread, SystemSampler
from runlens.collect.tee import LogTee, arrival_writer, open_log, terminal_fd
from runlens.core.dialects import detect_dialect
from runlens.core.errors import CommandNotStarted
from runlens.core.settings import Settings, env_disabled
from runlens.store import absolute_db_url, new_job_id, open_store
from runlens.store.writer import BatchWriter

logger = logging.getLogger(__name__)


def _describe_environment() -> dict[str, Any] | None:
    try:
        return describe_environment()
    except Exception as exc:   # describing the machine must never stop the run
        logger.info("machine description skipped (%s)", exc)
        return None



@dataclass(frozen=True)
class CollectResult:
    """How a collected run ended: what the CLI needs to analyse the job and exit.

    ``job_id`` and ``db_url`` are None when monitoring was off and nothing was recorded; ``analyze`` says whether
    the settings ask for the analysis at completion (``analyze_on_complete``).
    """

    exit_code: int
    job_id: str | None = None
    db_url: str | None = None
    status: str | None = None
    analyze: bool = False


def run_collect(cmd: list[str], **kwargs: Any) -> int:
    """Run ``cmd`` as a recorded job; returns the exit code the wrapper should exit with (the child's, or 124
    when runlens killed it for a hang). Takes ``collect_job``'s arguments."""
    return collect_job(cmd, **kwargs).exit_code


def collect_job(cmd: list[str], *, name: str | None = None, config: str | None = None, db: str | None = None,
                log: str | None = None, settings: Settings | None = None,
                tick_hooks: Sequence[TickHook] = (), hang_timeout: float | None = None,
                hard_timeout: float | None = None, kill_grace: float | None = None,
                no_output_timeout: float | None = None, analyze: bool | None = None,
                progress_pattern: str | None = None) -> CollectResult:
    """Run ``cmd`` as a recorded job; returns its id, its end status and the exit code to exit with.

    Args:
        cmd: the command and its arguments.
        name: the job's name (default: the command's basename).
        config: the run's config file, snapshotted (secrets redacted) with the job.
        db: the store URL or SQLite path (default: RUNLENS_DB, then ./runlens.db).
        log: where log.txt goes (default ./runlens-runs/<job_id>/log.txt).
        settings: all settings at once (tests); by default built from the config, env and ``db``.
        tick_hooks: ``fn(sample, supervisor)`` run after every sample.
        hang_timeout, hard_timeout, kill_grace, no_output_timeout: the stall guard's settings (CLI flags; they
            win over the config and the environment). See ``runlens.collect.hangguard``: a stall the guard kills
            ends the job ``timed_out`` and makes this return ``HANG_EXIT_CODE`` (124).
        analyze: whether the caller should analyse the job now it has ended (``--analyze/--no-analyze``); None
            leaves it to ``analyze_on_complete`` (the config's ``monitoring:`` section, RUNLENS_ANALYZE_ON_COMPLETE).
        progress_pattern: a regular expression for the child's own progress lines (``--progress-pattern``; also
            ``monitoring: progress_pattern:``), tried before the built-in formats (``runlens.collect.output_steps``).

    Raises:
        ConfigError: the config cannot be read. BadParameter: the progress pattern does not compile or has no
        ``step`` or ``loss`` group. StoreUnavailable, SchemaTooNew: the store cannot be used.
        LogNotWritable: the log file cannot be created. CommandNotStarted: the command cannot be started
        (the job is recorded as never_started).
    """
    if not cmd:
        raise ValueError("run_collect needs a command")
    snapshot, config_path = load_config(config)
    if settings is None:
        settings = resolve_settings(snapshot, overrides={"db": db} if db else None)
    elif db:
        settings = settings.replace(db=db)
    settings = settings.replace(hang_timeout=hang_timeout, hard_timeout=hard_timeout, kill_grace=kill_grace,
                                no_output_timeout=no_output_timeout, analyze_on_complete=analyze,
                                progress_pattern=progress_pattern)
    pattern = compile_pattern(settings.progress_pattern) if settings.progress_pattern else None
    if settings.disabled:
        return CollectResult(exit_code=_run_unrecorded(cmd, config_path))
    name = name or os.path.basename(cmd[0]) or "run"
    store = open_store(settings.db)
    job_id = new_job_id(name)
    log_path = Path(log).expanduser() if log else Path("runlens-runs") / job_id / "log.txt"
    log_path = log_path.resolve()
    settings = settings.replace(stacks_dir=str(stacks_dir_for(log_path, job_id)))
    log_file, existing_lines = open_log(log_path)
    argv = redact_argv(cmd)
    try:
        store.create_job(job_id=job_id, name=name, argv=argv, config=snapshot, config_path=config_path,
                         config_dialect=detect_dialect(snapshot) if snapshot is not None else None,
                         log_path=str(log_path), settings=settings.as_dict(), environment=_describe_environment())
    except BaseException:
        log_file.close()
        store.close()
        raise
    writer = BatchWriter(store, job_id, flush_interval=settings.flush_interval,
                         flush_rows=settings.flush_rows, max_rows=settings.buffer_max_rows).start()
    supervisor = ChildSupervisor(cmd, child_environment(job_id, absolute_db_url(store.url), settings=settings))
    for hook in tick_hooks:
        supervisor.add_tick_hook(hook)
    try:
        steps_out = OutputSteps(writer, pattern=pattern, logging_steps=logging_steps_of(cmd, snapshot),
                                stacks_dir=Path(settings.stacks_dir) if settings.stacks_dir else None)
        exit_code, status = _supervise(supervisor, writer, settings, argv, log_path, log_file, existing_lines,
                                       steps_out)
        return CollectResult(exit_code=exit_code, job_id=job_id, db_url=store.url, status=status,
                             analyze=settings.analyze_on_complete)
    except BaseException as exc:
        if supervisor.proc is None and not isinstance(exc, CommandNotStarted):   # e.g. Ctrl-C before the spawn
            writer.update_job(status="never_started", ended_at=time.time(),
                              status_reason=f"runlens collect stopped before starting the command "
                                            f"({type(exc).__name__})")
        raise
    finally:
        try:
            writer.close()
        except Exception as exc:
            logger.warning("some of the job's rows could not be stored: %s", exc)
        store.close()


def _run_unrecorded(cmd: list[str], config_path: str | None) -> int:
    """Monitoring is off: run the command with the terminal as its output and runlens off inside it too; the
    same process group and signal forwarding as a recorded run, so Ctrl-C and exit codes behave alike."""
    why = "RUNLENS_DISABLE is set" if env_disabled() else f"monitoring.enabled is false in {config_path or 'the config'}"
    logger.warning("monitoring is off (%s); running the command without recording it", why)
    supervisor = ChildSupervisor(cmd, {**os.environ, "RUNLENS_DISABLE": "1"})
    supervisor.install_signal_handlers()
    try:
        supervisor.spawn(capture_output=False)
        return int(end_status(supervisor.wait(), supervisor)["exit_code"])
    finally:
        supervisor.restore_signal_handlers()


def _supervise(supervisor: ChildSupervisor, writer: Any, settings: Settings, argv: list[str],
               log_path: Path, log_file: BinaryIO, existing_lines: int,
               steps_out: OutputSteps | None = None) -> tuple[int, str]:
    """Run the child to its end and record how it ended; returns the exit code and the job's end status.
    ``steps_out`` reads the child's progress lines as steps (the tee feeds it; the stall guard reads it)."""
    arrival = arrival_writer(str(log_path))
    supervisor.install_signal_handlers()
    try:
        try:
            proc = supervisor.spawn()
        except CommandNotStarted as exc:
            now = time.time()
            writer.update_job(status="never_started", status_reason=str(exc), ended_at=now,
                              exit_code=exc.exit_code)
            raise
        started = time.time()
        t0 = time.monotonic()
        writer.update_job(pid=proc.pid, started_at=started, status="running")
        assert proc.stdout is not None and proc.stderr is not None
        tee = LogTee([(proc.stdout.fileno(), terminal_fd(sys.stdout)),
                      (proc.stderr.fileno(), terminal_fd(sys.stderr))],
                     log_file, arrival, first_line=existing_lines + 1, progress=steps_out).start()

        state: dict[str, Any] = {"last_key": None, "start_written": False}
        lock = threading.Lock()

        def start_event(key: int | None) -> None:
            with lock:
                if state["start_written"]:
                    return
                state["start_written"] = True
            writer.put_event({"timestamp": started, "event_type": "start",
                              "details": {"cmd": argv, "pid": proc.pid, "log_path": str(log_path)}}, key)

        def on_sample(sample: Sample) -> None:
            key = writer.put_sample(sample.row, sample.gpus)
            if sample.row["main_process_memory_gb"]:   # the tree was alive: what the end event points to
                state["last_key"] = key
            start_event(key)
            supervisor.on_tick(sample)

        sampler = SystemSampler(pid=proc.pid, include_children=True)
        thread = SamplerThread(sampler, settings.sample_interval, on_sample, name="runlens-collect-sampler").start()
        guard = StallGuard(supervisor, writer.store, writer, writer.job_id, GuardConfig.from_settings(settings),
                           output_bytes=lambda: tee.bytes, started=started, output=steps_out).start()
        if steps_out is not None:
            steps_out.monitor_seen = lambda: guard.monitor_seen
        returncode = supervisor.wait()
        ended = time.time()
        duration = time.monotonic() - t0
        guard.stop()
        thread.stop()
        start_event(None)
        tee.finish()
        if steps_out is not None:
            steps_out.finish()
        sampler.close()
        # The cgroup outlives the child: its OOM-kill count, read once more, tells the OOM killer from another kill -9.
        kills, limit_gb = sampler.container_oom_kills_rise(), sampler.container_limit_gb
        end = end_status(returncode, supervisor, container_oom_kills=kills, container_limit_gb=limit_gb)
        if guard.outcome is not None:   # runlens killed it for a stall: timed_out, whatever signal ended it
            end.update(status="timed_out", status_reason=guard.outcome.reason, oom_suspected=False,
                       oom_confirmed=False)
        details = {"exit_code": end["exit_code"], "signal": end["signal"], "duration": duration,
                   "status": end["status"], "reason": end["status_reason"]}
        if supervisor.forwarded:
            details["forwarded_signals"] = [signal_name(s) for s in supervisor.forwarded]
        if steps_out is not None and (steps_out.steps or steps_out.evals):
            details["output_steps"] = steps_out.summary()
        writer.put_event({"timestamp": ended, "event_type": "end", "details": details}, state["last_key"])
        if end["oom_confirmed"]:
            writer.put_event({"timestamp": ended, "event_type": "host_oom_suspected",
                              "details": {"exit_code": end["exit_code"], "signal": end["signal"], "confirmed": True,
                                          "container_oom_kills": kills, "container_memory_limit_gb": limit_gb,
                                          "evidence": "the job's memory cgroup counted OOM kills during the run"}},
                             state["last_key"])
        elif end["oom_suspected"]:
            writer.put_event({"timestamp": ended, "event_type": "host_oom_suspected",
                              "details": {"exit_code": end["exit_code"], "signal": end["signal"],
                                          "evidence": "the child died of SIGKILL (or exited 137) and runlens "
                                                      "did not send it; the kernel OOM killer is the usual sender"}},
                             state["last_key"])
        writer.update_job(ended_at=ended, exit_code=end["exit_code"], exit_signal=end["exit_signal"],
                          status=end["status"], status_reason=end["status_reason"])
        writer.put_costs(_cost_rows(ended, thread, tee, writer) + [guard.cost_row(ended)])
        return (HANG_EXIT_CODE if guard.outcome is not None else int(end["exit_code"])), str(end["status"])
    finally:
        supervisor.restore_signal_handlers()
        if arrival is not None:
            try:
                arrival.close()
            except Exception:
                pass
        log_file.close()


def _cost_rows(now: float, sampler: SamplerThread, tee: LogTee, writer: Any) -> list[dict[str, Any]]:
    """The wrapper's own CPU, stored like the Monitor's thread costs (not on the training thread), under names
    of their own so a Monitor attached inside (``thread:runlens-writer``, ...) does not overwrite them."""
    writer_cpu = float(getattr(getattr(writer, "stats", None), "cpu_seconds", 0.0) or 0.0)   # so far
    return [{"timestamp": now, "operation": f"thread:{name}", "calls": calls, "total_seconds": seconds,
             "on_training_thread": False, "host": None, "rank": None}
            for name, calls, seconds in (("runlens-collect-sampler", sampler.samples_taken, sampler.cpu_seconds),
                                         ("runlens-collect-tee", tee.lines, tee.cpu_seconds),
                                         ("runlens-collect-writer", 0, writer_cpu))]

