"""The child of ``runlens collect``: its environment, its process group, its signals, and how it ended.

The child leads its own process group (``start_new_session``), so a terminal's Ctrl-C reaches only the wrapper,
which forwards exactly one SIGINT to the whole group (DataLoader workers included), and the stall guard can stop
the whole tree with one ``kill_group``.

How it ended (``exit_code`` follows the shell: 128 + N for a death by signal N, which ``exit_signal`` holds):
    exit 0                      succeeded
    exit N                      failed, "exited with code N"
    SIGKILL, or exit 137        failed, "killed by SIGKILL (likely the host OOM killer)" + ``host_oom_suspected``
      ... and the job's memory cgroup counted an OOM kill: "killed by the kernel's OOM killer at the
      container's memory limit (2.0 GiB; ...)", ``oom_confirmed``
    exit N after OOM kills       failed, "exited with code N after the kernel's OOM killer killed ..." (a
      in its cgroup               DataLoader worker killed at the limit takes the main process down with it)
    another signal              failed, "killed by SIGTERM" (and whether runlens forwarded it)
    cannot start (127/126)      never_started, one line on stderr
    killed by the stall guard   timed_out (set by the wrapper from the guard's outcome)

``ChildSupervisor`` is the hook point for the hang watchdog: ``add_tick_hook(fn)`` runs ``fn(sample,
supervisor)`` after every sampler tick, and ``kill_group(sig, why)`` signals the whole group and remembers that
runlens did it, so the end status does not blame the OOM killer for runlens's own SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runlens.collect.sampler import Sample
from runlens.core.errors import CommandNotStarted
from runlens.core.oom import CONTAINER_OOM_KILL_REASON, OOM_KILL_REASON, SIGKILL_EXIT
from runlens.core.redact import redact_argv  # noqa: F401  (re-exported: the wrapper and its tests use it here)
from runlens.core.settings import Settings

logger = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_name(sig: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number that names no signal."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


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

    def spawn(self, *, capture_output: bool = True) -> subprocess.Popen[bytes]:
        """Start the command with piped stdout/stderr (or the wrapper's own, ``capture_output=False``, for a run
        that is not recorded). Raises CommandNotStarted (127 not found, 126 not executable)."""
        shown = self.cmd[0]
        pipe = subprocess.PIPE if capture_output else None
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=pipe, stderr=pipe, env=self.env, start_new_session=True)
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


def end_status(returncode: int, supervisor: ChildSupervisor | None = None, *, container_oom_kills: int | None = None,
               container_limit_gb: float | None = None) -> dict[str, Any]:
    """How the child ended, as job fields plus the shell-style exit code the wrapper returns.

    Args:
        container_oom_kills: OOM kills the job's memory cgroup counted during the run (None: not in one). A
            SIGKILL with a rising count was the OOM killer for certain, not a scheduler or a user.
        container_limit_gb: the cgroup's memory limit, named in the reason.

    Returns:
        ``status``, ``status_reason``, ``exit_code`` (128 + N for signal N), ``exit_signal`` (N or None),
        ``signal`` (its name or None), ``oom_suspected`` and ``oom_confirmed`` (the cgroup counted the kill).
    """
    sent = {s for _, s, _ in supervisor.signals_sent} if supervisor else set()
    forwarded = set(supervisor.forwarded) if supervisor else set()
    kills = container_oom_kills or 0
    out: dict[str, Any] = {"exit_signal": None, "signal": None, "oom_suspected": False, "oom_confirmed": False}
    if returncode < 0:
        sig = -returncode
        out.update(exit_code=128 + sig, exit_signal=sig, signal=signal_name(sig))
    else:
        sig = None
        out["exit_code"] = returncode
    if returncode == 0:
        out.update(status="succeeded", status_reason=None)
        return out
    out["status"] = "failed"
    if sig == signal.SIGKILL or returncode == SIGKILL_EXIT:
        if signal.SIGKILL in sent:
            why = next(w for _, s, w in reversed(supervisor.signals_sent) if s == signal.SIGKILL)  # type: ignore[union-attr]
            out["status_reason"] = f"killed by runlens with SIGKILL ({why})"
        elif kills:
            limit = f"{container_limit_gb:.2f} GiB; " if container_limit_gb else ""
            out["status_reason"] = (f"{CONTAINER_OOM_KILL_REASON} ({limit}its memory cgroup counted "
                                    f"{kills} OOM kill{'s' if kills > 1 else ''})")
            out.update(oom_suspected=True, oom_confirmed=True)
        else:
            out["status_reason"] = OOM_KILL_REASON
            out["oom_suspected"] = True
    elif sig is not None:
        reason = f"killed by {signal_name(sig)}"
        if sig in sent:
            reason += " (sent by runlens)"
        elif sig in forwarded:
            reason += " (forwarded by runlens collect)"
        out["status_reason"] = reason
    else:
        out["status_reason"] = f"exited with code {returncode}"
    if kills and not out["oom_confirmed"] and sig != signal.SIGKILL:
        out["status_reason"] += (f" after the kernel's OOM killer killed {kills} process{'es' if kills > 1 else ''}"
                                 " in its memory cgroup")
        out["oom_confirmed"] = True
    return out



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

