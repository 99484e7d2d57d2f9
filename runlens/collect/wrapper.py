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

How it ended (``exit_code`` follows the shell: 128 + N for a death by signal N, which ``exit_signal`` holds):
    exit 0                      succeeded
    exit N                      failed, "exited with code N"
    SIGKILL, or exit 137        failed, "killed by SIGKILL (likely the host OOM killer)" + ``host_oom_suspected``
    another signal              failed, "killed by SIGTERM" (and whether runlens forwarded it)
    cannot start (127/126)      never_started, one line on stderr
    killed by the stall guard   timed_out, "killed by runlens: no progress for ..."; the wrapper exits 124

``ChildSupervisor`` owns the child and is the hook point for a hang watchdog: ``add_tick_hook(fn)`` runs
``fn(sample, supervisor)`` after every sampler tick, and ``kill_group(sig, why)`` signals the whole group and
remembers that runlens did it, so the end status does not blame the OOM killer for runlens's own SIGKILL.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from runlens.collect.config import load_config, resolve_settings
from runlens.collect.hangguard import HANG_EXIT_CODE, GuardConfig, StallGuard
from runlens.collect.sampler import Sample, SamplerThread, SystemSampler
from runlens.core.dialects import detect_dialect
from runlens.core.errors import CommandNotStarted, LogNotWritable
from runlens.core.redact import REDACTED, is_secret_key, redact_url
from runlens.core.settings import Settings
from runlens.store import absolute_db_url, new_job_id, open_store

logger = logging.getLogger(__name__)

OOM_REASON = "killed by SIGKILL (likely the host OOM killer)"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TEE_GRACE_SECONDS = 3.0        # after the child exits, how long a grandchild may keep its pipes open
PROGRESS_LOG_EVERY = 10.0      # a \r progress bar reaches log.txt at most this often (ClearML: 10 s)
MAX_LINE_BYTES = 1 << 20       # a line longer than this is cut into pieces in log.txt
TEE_COALESCE_SECONDS = 0.05    # at most ~20 tee wake-ups a second: one per printed line cost ~70 µs of CPU each
READ_CHUNK = 65536


class ArrivalSink(Protocol):
    def line(self, line_number: int, t: float) -> None: ...
    def close(self) -> None: ...


def _arrival_writer(log_path: str) -> ArrivalSink | None:
    """The analyzer's arrival-time sidecar (``<log>.times``); None when it cannot be written (the log goes on)."""
    try:
        from runlens.core.arrival import ArrivalWriter
    except ImportError:   # a runlens without the log parser: log.txt without arrival times
        logger.debug("no runlens.analyze.logparse.ArrivalWriter: log.txt is kept without arrival times")
        return None
    try:
        writer: ArrivalSink = ArrivalWriter(log_path)
    except OSError as exc:
        logger.warning("cannot write the log's arrival times next to %s (%s); the log goes on without them",
                       log_path, exc.strerror or exc)
        return None
    return writer


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line as stored: values of secret-named options (``--hf-token X``, ``api_key=X``) hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        key, eq, _ = arg.lstrip("-").partition("=")
        if is_secret_key(key) and (arg.startswith("-") or eq):
            if eq:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_url(arg) if "://" in arg else arg)
    return out


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# -- the tee -------------------------------------------------------------------------------------------


class _LineAssembler:
    """One stream's bytes -> log.txt lines, with ``\\r`` progress bars collapsed to what a terminal shows."""

    def __init__(self, emit: Callable[[bytes, float], None], progress_every: float, max_line: int) -> None:
        self.emit = emit
        self.progress_every = progress_every
        self.max_line = max_line
        self.buf = bytearray()
        self.progress: bytes | None = None     # the latest complete \r-terminated state not yet logged
        self.last_progress_emit = float("-inf")

    @staticmethod
    def _shown(line: bytes) -> bytes:
        """What a terminal shows for a line with carriage returns: its last non-empty segment."""
        if b"\r" not in line:
            return line
        for seg in reversed(line.split(b"\r")):
            if seg:
                return seg
        return b""

    def feed(self, data: bytes, t: float) -> None:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                break
            line = self._shown(bytes(self.buf[:nl]))
            del self.buf[: nl + 1]
            if not line and self.progress is not None:
                line = self.progress    # "\r 100%|...|\r\n": the bar's last state is the line
            self.progress = None
            self.emit(line, t)
        cr = self.buf.rfind(b"\r")
        if cr >= 0:
            state = self._shown(bytes(self.buf[:cr]))
            del self.buf[: cr + 1]
            if state:
                self.progress = state
            if self.progress is not None and t - self.last_progress_emit >= self.progress_every:
                self.emit(self.progress, t)
                self.progress = None
                self.last_progress_emit = t
        while len(self.buf) > self.max_line:
            self.emit(bytes(self.buf[: self.max_line]), t)
            del self.buf[: self.max_line]

    def close(self, t: float) -> None:
        tail = self._shown(bytes(self.buf)) or self.progress
        self.buf.clear()
        self.progress = None
        if tail:
            self.emit(tail, t)


class LogTee:
    """Copies the child's pipes to the terminal at once (partial lines and ``\\r`` bars included) and to
    ``log.txt`` as lines, both streams interleaved in the order their lines completed, each line's arrival
    time going to the sidecar. Reads with ``os.read`` in chunks, so a huge line never blocks the terminal.

    Args:
        streams: (pipe read fd, terminal fd or None) pairs.
        log_file: log.txt opened for binary append.
        arrival: the arrival sidecar, or None.
        first_line: the 1-based number the first new line gets (lines already in an appended log + 1).
    """

    def __init__(self, streams: Sequence[tuple[int, int | None]], log_file: BinaryIO,
                 arrival: ArrivalSink | None = None, *, clock: Callable[[], float] = time.time,
                 progress_every: float = PROGRESS_LOG_EVERY, max_line: int = MAX_LINE_BYTES,
                 coalesce: float = TEE_COALESCE_SECONDS, first_line: int = 1,
                 name: str = "runlens-collect-tee") -> None:
        self.log_file = log_file
        self.coalesce = coalesce
        self.arrival = arrival
        self.clock = clock
        self.lines = first_line - 1     # line numbers continue an existing log (``--log`` to a used file)
        self.bytes = 0
        self.cpu_seconds = 0.0
        self._terminal: dict[int, int | None] = dict(streams)
        self._asm = {fd: _LineAssembler(self._emit, progress_every, max_line) for fd, _ in streams}
        self._stop = threading.Event()
        self._arrival_failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> LogTee:
        self._thread.start()
        return self

    def finish(self, grace: float = TEE_GRACE_SECONDS) -> None:
        """Wait up to ``grace`` s for the pipes to close (a grandchild may hold them), then stop and join."""
        self._thread.join(grace)
        self._stop.set()
        self._thread.join(5.0)

    def _emit(self, line: bytes, t: float) -> None:
        self.log_file.write(line + b"\n")
        self.lines += 1
        if self.arrival is not None and not self._arrival_failed:
            try:
                self.arrival.line(self.lines, t)
            except Exception as exc:
                self._arrival_failed = True
                logger.warning("cannot write log arrival times (%s); log.txt goes on without them", exc)

    def _to_terminal(self, fd: int, data: bytes) -> None:
        term = self._terminal.get(fd)
        if term is None:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(term, view)
                view = view[n:]
        except OSError:   # the terminal went away (closed pipe, EPIPE): keep logging, stop echoing
            self._terminal[fd] = None

    def _run(self) -> None:
        cpu0 = time.thread_time()
        sel = selectors.DefaultSelector()
        for fd in self._asm:
            sel.register(fd, selectors.EVENT_READ)
        try:
            stop_by: float | None = None
            while sel.get_map():
                events = sel.select(timeout=0.5)   # the timeout only bounds how late a stop is noticed
                if self._stop.is_set():
                    # Told to stop (a grandchild holds the pipes open): drain what is there, for a second at most.
                    stop_by = stop_by or time.monotonic() + 1.0
                    if not events or time.monotonic() > stop_by:
                        break
                if not events:
                    continue
                round_start = time.monotonic()
                t = self.clock()
                more = False
                for key, _ in events:
                    fd = int(key.fd)
                    try:
                        data = os.read(fd, READ_CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(fd)
                        self._asm[fd].close(t)
                        continue
                    more = more or len(data) == READ_CHUNK
                    self.bytes += len(data)
                    self._to_terminal(fd, data)
                    self._asm[fd].feed(data, t)
                self.log_file.flush()
                if not more and self.coalesce > 0:
                    # Let a chatty child's lines pile up in the pipe for a moment and take them in one read:
                    # 50 ms is invisible on a terminal; a full pipe (``more``) is read again at once.
                    pause = self.coalesce - (time.monotonic() - round_start)
                    if pause > 0:
                        time.sleep(pause)   # not Event.wait: a timed sleep is the cheaper wake-up
        finally:
            t = self.clock()
            for fd, asm in self._asm.items():
                asm.close(t)
                try:
                    os.close(fd)
                except OSError:
                    pass
            sel.close()
            try:
                self.log_file.flush()
            except OSError:
                pass
            self.cpu_seconds = time.thread_time() - cpu0


# -- the child -----------------------------------------------------------------------------------------


TickHook = Callable[[Sample, "ChildSupervisor"], None]


class ChildSupervisor:
    """The child process: spawn it in its own session, forward signals to its group, kill the group.

    The child leads its own process group (``start_new_session``), so a terminal's Ctrl-C reaches only the
    wrapper, which forwards exactly one SIGINT to the whole group (DataLoader workers included), and a later
    hang watchdog can stop the whole tree with one ``kill_group``.
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], *, clock: Callable[[], float] = time.time) -> None:
        self.cmd = list(cmd)
        self.env = dict(env)
        self.clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.forwarded: list[int] = []                        # signals received by the wrapper and passed on
        self.signals_sent: list[tuple[float, int, str]] = []  # (time, signal, why) that runlens decided on
        self._tick_hooks: list[TickHook] = []
        self._pending: list[int] = []
        self._old_handlers: dict[int, Any] = {}
        self._hook_failed: set[int] = set()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the command with piped stdout/stderr. Raises CommandNotStarted (127 not found, 126 not executable)."""
        shown = self.cmd[0]
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=self.env, start_new_session=True)
        except FileNotFoundError:
            raise CommandNotStarted(shown, "command not found", 127) from None
        except PermissionError:
            raise CommandNotStarted(shown, "permission denied (not executable)", 126) from None
        except OSError as exc:   # ENOEXEC (bad binary format), E2BIG, ...
            raise CommandNotStarted(shown, exc.strerror or str(exc), 126) from None
        for sig in self._pending:
            self._signal_group(sig)
        self._pending.clear()
        return self.proc

    def _signal_group(self, sig: int) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def kill_group(self, sig: int, why: str = "runlens") -> bool:
        """Send ``sig`` to the child's whole process group; remembered so the end status names runlens."""
        self.signals_sent.append((self.clock(), int(sig), why))
        return self._signal_group(sig)

    def forward(self, sig: int) -> None:
        """Pass a signal the wrapper received on to the child's group (or hold it until the child exists)."""
        self.forwarded.append(int(sig))
        if self.proc is None:
            self._pending.append(sig)
        else:
            self._signal_group(sig)

    def install_signal_handlers(self) -> None:
        """Forward SIGINT/SIGTERM/SIGHUP instead of dying: the wrapper keeps waiting so nothing is lost."""
        if threading.current_thread() is not threading.main_thread():
            return   # signal handlers can only be set from the main thread (tests call us from others)
        for sig in FORWARDED_SIGNALS:
            try:
                self._old_handlers[sig] = signal.signal(sig, lambda s, _f: self.forward(s))
            except (ValueError, OSError):
                pass

    def restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, OSError, TypeError):
                pass
        self._old_handlers.clear()

    def add_tick_hook(self, hook: TickHook) -> None:
        """Run ``hook(sample, supervisor)`` on the sampler thread after every sample (the hang watchdog's seat)."""
        self._tick_hooks.append(hook)

    def on_tick(self, sample: Sample) -> None:
        for hook in list(self._tick_hooks):
            try:
                hook(sample, self)
            except Exception:
                if id(hook) not in self._hook_failed:
                    self._hook_failed.add(id(hook))
                    logger.exception("a sampler tick hook failed; it keeps being called")

    def wait(self) -> int:
        """Wait for the child; signals arriving meanwhile are forwarded by the handlers. Returns Popen's code."""
        assert self.proc is not None
        return self.proc.wait()


def end_status(returncode: int, supervisor: ChildSupervisor | None = None) -> dict[str, Any]:
    """How the child ended, as job fields plus the shell-style exit code the wrapper returns.

    Returns:
        ``status``, ``status_reason``, ``exit_code`` (128 + N for signal N), ``exit_signal`` (N or None),
        ``signal`` (its name or None) and ``oom_suspected``.
    """
    sent = {s for _, s, _ in supervisor.signals_sent} if supervisor else set()
    forwarded = set(supervisor.forwarded) if supervisor else set()
    out: dict[str, Any] = {"exit_signal": None, "signal": None, "oom_suspected": False}
    if returncode < 0:
        sig = -returncode
        out.update(exit_code=128 + sig, exit_signal=sig, signal=_signame(sig))
    else:
        sig = None
        out["exit_code"] = returncode
    if returncode == 0:
        out.update(status="succeeded", status_reason=None)
        return out
    out["status"] = "failed"
    if sig == signal.SIGKILL or returncode == 128 + signal.SIGKILL:
        if signal.SIGKILL in sent:
            why = next(w for _, s, w in reversed(supervisor.signals_sent) if s == signal.SIGKILL)  # type: ignore[union-attr]
            out["status_reason"] = f"killed by runlens with SIGKILL ({why})"
        else:
            out["status_reason"] = OOM_REASON
            out["oom_suspected"] = True
    elif sig is not None:
        reason = f"killed by {_signame(sig)}"
        if sig in sent:
            reason += " (sent by runlens)"
        elif sig in forwarded:
            reason += " (forwarded by runlens collect)"
        out["status_reason"] = reason
    else:
        out["status_reason"] = f"exited with code {returncode}"
    return out


# -- run_collect -------------------------------------------------------------------------------------------


def child_environment(job_id: str, db_url: str, environ: Mapping[str, str] | None = None, *,
                      settings: Settings | None = None) -> dict[str, str]:
    """The child's environment: the job handed over, Python unbuffered and with faulthandler unless set, and the
    stall settings a Monitor inside must share with the wrapper (its stacks folder, a fixed stall timeout)."""
    env = dict(os.environ if environ is None else environ)
    env["RUNLENS_JOB_ID"] = job_id
    env["RUNLENS_DB"] = db_url
    if settings is not None:
        if settings.stacks_dir:
            env["RUNLENS_STACKS_DIR"] = settings.stacks_dir
        if settings.hang_timeout is not None:
            env["RUNLENS_HANG_TIMEOUT"] = repr(float(settings.hang_timeout))
        if settings.startup_grace != Settings().startup_grace:
            env["RUNLENS_STARTUP_GRACE"] = repr(float(settings.startup_grace))
    env.setdefault("PYTHONUNBUFFERED", "1")     # otherwise a piped Python child block-buffers its prints
    env.setdefault("PYTHONFAULTHANDLER", "1")   # a segfault or a hang dump prints Python stacks to the log
    return env


def stacks_dir_for(log_path: Path, job_id: str) -> Path:
    """Where the child's Monitor keeps its faulthandler stacks files: the job's own folder by default
    (``runlens-runs/<job_id>/``), else a folder named after a ``--log`` file, so two jobs never share one."""
    if log_path.parent.name == job_id:
        return log_path.parent
    return log_path.parent / f"{log_path.name}.stacks"


def _open_log(path: Path) -> tuple[BinaryIO, int]:
    """Open the log for appending; returns it and the number of lines already in it (an existing ``--log``
    file is continued, never truncated, and the arrival sidecar's line numbers must match its lines)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")
        fh.seek(0)
        lines = 0
        last = b"\n"
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
        if last != b"\n":           # finish a last line that has no newline, so ours start on their own
            fh.write(b"\n")
            lines += 1
        return fh, lines
    except OSError as exc:
        raise LogNotWritable(str(path), exc.strerror or str(exc)) from None


def _describe_environment() -> dict[str, Any] | None:
    try:
        from runlens.collect.environment import describe_environment

        return describe_environment()
    except Exception as exc:   # describing the machine must never stop the run
        logger.info("machine description skipped (%s)", exc)
        return None


def run_collect(cmd: list[str], *, name: str | None = None, config: str | None = None, db: str | None = None,
                log: str | None = None, settings: Settings | None = None,
                tick_hooks: Sequence[TickHook] = (), hang_timeout: float | None = None,
                hard_timeout: float | None = None, kill_grace: float | None = None,
                no_output_timeout: float | None = None) -> int:
    """Run ``cmd`` as a recorded job; returns the exit code the wrapper should exit with (the child's).

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

    Raises:
        ConfigError: the config cannot be read. StoreUnavailable, SchemaTooNew: the store cannot be used.
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
                                no_output_timeout=no_output_timeout)
    name = name or os.path.basename(cmd[0]) or "run"
    store = open_store(settings.db)
    job_id = new_job_id(name)
    log_path = Path(log).expanduser() if log else Path("runlens-runs") / job_id / "log.txt"
    log_path = log_path.resolve()
    settings = settings.replace(stacks_dir=str(stacks_dir_for(log_path, job_id)))
    log_file, existing_lines = _open_log(log_path)
    argv = redact_argv(cmd)
    try:
        store.create_job(job_id=job_id, name=name, argv=argv, config=snapshot, config_path=config_path,
                         config_dialect=detect_dialect(snapshot) if snapshot is not None else None,
                         log_path=str(log_path), settings=settings.as_dict(), environment=_describe_environment())
    except BaseException:
        log_file.close()
        store.close()
        raise
    from runlens.store.writer import BatchWriter

    writer = BatchWriter(store, job_id, flush_interval=settings.flush_interval,
                         flush_rows=settings.flush_rows, max_rows=settings.buffer_max_rows).start()
    supervisor = ChildSupervisor(cmd, child_environment(job_id, absolute_db_url(store.url), settings=settings))
    for hook in tick_hooks:
        supervisor.add_tick_hook(hook)
    try:
        return _supervise(supervisor, writer, settings, argv, log_path, log_file, existing_lines)
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


def _supervise(supervisor: ChildSupervisor, writer: Any, settings: Settings, argv: list[str],
               log_path: Path, log_file: BinaryIO, existing_lines: int) -> int:
    arrival = _arrival_writer(str(log_path))
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
        tee = LogTee([(proc.stdout.fileno(), _fileno(sys.stdout)), (proc.stderr.fileno(), _fileno(sys.stderr))],
                     log_file, arrival, first_line=existing_lines + 1).start()

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
                           output_bytes=lambda: tee.bytes, started=started).start()
        returncode = supervisor.wait()
        ended = time.time()
        duration = time.monotonic() - t0
        guard.stop()
        thread.stop()
        start_event(None)
        tee.finish()
        sampler.close()
        end = end_status(returncode, supervisor)
        if guard.outcome is not None:   # runlens killed it for a stall: timed_out, whatever signal ended it
            end.update(status="timed_out", status_reason=guard.outcome.reason, oom_suspected=False)
        details = {"exit_code": end["exit_code"], "signal": end["signal"], "duration": duration,
                   "status": end["status"], "reason": end["status_reason"]}
        if supervisor.forwarded:
            details["forwarded_signals"] = [_signame(s) for s in supervisor.forwarded]
        writer.put_event({"timestamp": ended, "event_type": "end", "details": details}, state["last_key"])
        if end["oom_suspected"]:
            writer.put_event({"timestamp": ended, "event_type": "host_oom_suspected",
                              "details": {"exit_code": end["exit_code"], "signal": end["signal"],
                                          "evidence": "the child died of SIGKILL (or exited 137) and runlens "
                                                      "did not send it; the kernel OOM killer is the usual sender"}},
                             state["last_key"])
        writer.update_job(ended_at=ended, exit_code=end["exit_code"], exit_signal=end["exit_signal"],
                          status=end["status"], status_reason=end["status_reason"])
        writer.put_costs(_cost_rows(ended, thread, tee, writer) + [guard.cost_row(ended)])
        return HANG_EXIT_CODE if guard.outcome is not None else int(end["exit_code"])
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


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):   # pytest's capture, a closed stream
        return None
