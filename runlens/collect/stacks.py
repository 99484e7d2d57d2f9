"""Evidence of a stall: every thread's stack, the state of each process, and a label for the likely cause.

Three sources of stacks, in the order they survive trouble:

* **faulthandler** dumps (``dump_traceback_later``'s C timer, or the on-demand signal): written by C code that
  does not need the GIL, so they exist even when a native call holds the GIL and every Python thread, the
  watchdog's included, is starved. Function, file and line only; at most 100 threads and 100 frames; thread ids
  but no names. ``parse_faulthandler`` turns the text into threads.
* **py-spy** (``py-spy dump --pid PID --json``), from outside: thread names, which thread holds the GIL, and
  whether it is running. One process per call: ``--subprocesses --json`` returns only the parent's threads in
  py-spy 0.4.3 (measured), so each DataLoader worker is dumped on its own. Needs ptrace (root, Yama
  ``ptrace_scope`` 0, or ``SYS_PTRACE`` in a container); when it cannot attach the reason is kept.
* **sys._current_frames()** from inside, when the watchdog thread has the GIL (~11 µs).

Plus each process's scheduler state and wait channel from ``/proc`` (``D`` = uninterruptible I/O wait), and
``label_cause``: a deterministic first guess at why the run stopped, from those stacks and states.
"""

from __future__ import annotations

import json
import linecache
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from runlens.core.stacks import (
    MAX_CODE_CHARS,
    MAX_FRAMES,
    MAX_THREADS,
    Dump,
    Evidence,
    Frame,
    ProcessState,
    ThreadStack,
    format_threads,
    label_cause,
    parse_py_spy,
)

log = logging.getLogger(__name__)

PY_SPY_TIMEOUT = 10.0        # seconds per process; one dump takes ~25 ms when it works
PY_SPY_TOTAL_BUDGET = 30.0   # seconds for all the processes of one stall


# -- in-process ------------------------------------------------------------------------------------------

def current_threads(skip_idents: Iterable[int] = ()) -> list[ThreadStack]:
    """Every Python thread of this process from ``sys._current_frames()``, named, innermost frame first."""
    skip = set(skip_idents)
    names = {t.ident: t.name for t in threading.enumerate()}
    main_ident = threading.main_thread().ident
    out: list[ThreadStack] = []
    pid = os.getpid()
    for ident, frame in sys._current_frames().items():
        if ident in skip:
            continue
        out.append(ThreadStack(name=names.get(ident), frames=_walk(frame), pid=pid, thread_id=ident,
                               main=ident == main_ident))
    out.sort(key=lambda t: (not t.main, t.name or ""))
    return out[:MAX_THREADS]


def _walk(frame: FrameType | None) -> list[Frame]:
    frames: list[Frame] = []
    while frame is not None and len(frames) < MAX_FRAMES:
        code = frame.f_code
        frames.append(Frame(code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return frames


def add_source_lines(threads: Iterable[ThreadStack]) -> None:
    """Fill ``Frame.code`` from the source files (this host's): the line says *what* call blocked, which the
    function name alone does not (``lock.acquire()`` and ``time.sleep()`` are C calls, never frames)."""
    for t in threads:
        for f in t.frames[:8]:   # the innermost frames are the ones labelling looks at
            if f.code is None and f.line and f.file and not f.file.startswith("<"):
                text = linecache.getline(f.file, f.line).strip()
                if text:
                    f.code = text[:MAX_CODE_CHARS]


# -- py-spy ----------------------------------------------------------------------------------------------

def py_spy_path() -> str | None:
    """The py-spy executable: on PATH, or next to this Python (a virtualenv that is not activated)."""
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


@dataclass
class PySpyResult:
    threads: list[ThreadStack] | None
    error: str | None = None


def py_spy_dump(pid: int, *, timeout: float = PY_SPY_TIMEOUT, exe: str | None = None) -> PySpyResult:
    """``py-spy dump --pid PID --json`` of one process, parsed. Never raises: a failure says why."""
    exe = exe or py_spy_path()
    if exe is None:
        return PySpyResult(None, "py-spy is not installed (pip install py-spy)")
    try:
        proc = subprocess.run([exe, "dump", "--pid", str(pid), "--json"], check=False, capture_output=True,
                              timeout=timeout, text=True, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return PySpyResult(None, f"py-spy did not answer within {timeout:.0f}s")
    except OSError as exc:
        return PySpyResult(None, f"py-spy could not run: {exc}")
    if proc.returncode != 0:
        return PySpyResult(None, _py_spy_error(proc.stderr or proc.stdout))
    try:
        raw = json.loads(proc.stdout)
    except ValueError:
        return PySpyResult(None, "py-spy printed no JSON")
    return PySpyResult(parse_py_spy(raw, pid))


def _py_spy_error(text: str) -> str:
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")
    low = text.lower()
    if "permission" in low or "ptrace" in low or "operation not permitted" in low:
        return (f"py-spy cannot attach ({first}); it needs root, kernel.yama.ptrace_scope=0, or SYS_PTRACE in a "
                "container")
    if "failed to find python" in low or "python version" in low or "not a python" in low:
        return f"not a Python process ({first})"
    return f"py-spy failed: {first}"[:500]


# -- processes -------------------------------------------------------------------------------------------

def process_tree(root: int) -> list[tuple[int, str]]:
    """(pid, role) of ``root`` and its descendants; role is main, worker (a DataLoader worker) or child."""
    out = [(root, "main")]
    try:
        import psutil

        for child in psutil.Process(root).children(recursive=True):
            try:
                name = child.name()
            except Exception:
                name = ""
            out.append((child.pid, "worker" if name == "pt_data_worker" else "child"))
    except Exception:   # the root is gone: its own entry is all there is
        log.debug("cannot list the children of %s", root, exc_info=True)
    return out


def process_state(pid: int, role: str | None = None, proc_root: str = "/proc") -> ProcessState:
    """State letter and wait channel from ``/proc/<pid>/status`` and ``/proc/<pid>/wchan``; psutil elsewhere."""
    st = ProcessState(pid=pid, role=role)
    base = Path(proc_root) / str(pid)
    try:
        for line in (base / "status").read_text().splitlines():
            if line.startswith("Name:"):
                st.name = line.split(":", 1)[1].strip()
            elif line.startswith("State:"):
                st.status = line.split(":", 1)[1].strip()[:1] or None
                break
    except OSError:
        try:
            import psutil

            p = psutil.Process(pid)
            st.name = p.name()
            st.status = _PSUTIL_STATES.get(p.status(), p.status())
        except Exception:
            st.status = st.status or "gone"
    try:
        wchan = (base / "wchan").read_text().strip()
        st.wchan = wchan if wchan and wchan != "0" else None
    except OSError:
        pass
    return st


_PSUTIL_STATES = {"running": "R", "sleeping": "S", "disk-sleep": "D", "zombie": "Z", "stopped": "T",
                  "tracing-stop": "t", "idle": "I", "dead": "X"}


# -- gathering it all ------------------------------------------------------------------------------------

def gather(root_pid: int, *, own_threads: list[ThreadStack] | None = None, own_source: str = "sys._current_frames",
           dumps: Mapping[int, Dump] | None = None,
           py_spy: bool = True, py_spy_self: bool = False, watchdog_starved: bool = False,
           budget: float = PY_SPY_TOTAL_BUDGET, main_pid: int | None = None) -> Evidence:
    """Collect the evidence of a stall of the process tree under ``root_pid``.

    Args:
        root_pid: the training process (or the wrapper's child).
        own_threads: stacks already taken from inside this process (``current_threads``, or a faulthandler dump
            when that is the better evidence); ``own_source`` names where they came from.
        dumps: faulthandler dumps by pid, taken by the C timer or the on-demand signal.
        py_spy: run py-spy on each process that has no stacks yet (and on the root when ``py_spy_self``).
        watchdog_starved: the in-process Python watchdog could not run (see ``label_cause``).
        budget: seconds all py-spy calls together may take.
        main_pid: the training process when it is not ``root_pid`` (a launcher in between).
    """
    ev = Evidence()
    main_pid = main_pid or root_pid
    tree = process_tree(root_pid)
    if main_pid not in {p for p, _ in tree}:
        tree.insert(0, (main_pid, "main"))
    roles = dict(tree)
    if main_pid != root_pid:
        roles[root_pid] = "launcher"
        roles[main_pid] = "main"
    deadline = time.monotonic() + budget
    exe = py_spy_path() if py_spy else None
    sources: dict[int, str] = {}
    missing_py_spy = False
    for pid, _ in tree:
        role = roles.get(pid)
        st = process_state(pid, role)
        ev.processes.append(st)
        threads: list[ThreadStack] | None = None
        source = None
        if pid == os.getpid() and own_threads is not None and not py_spy_self:
            threads, source = own_threads, own_source
        elif py_spy and exe is not None and time.monotonic() < deadline and st.status not in ("Z", "gone"):
            result = py_spy_dump(pid, timeout=min(PY_SPY_TIMEOUT, max(1.0, deadline - time.monotonic())), exe=exe)
            if result.threads is not None:
                threads, source = result.threads, "py-spy"
            else:
                st.stack_error = result.error
        elif py_spy and exe is None:
            missing_py_spy = True
        if threads is None and dumps and pid in dumps:
            threads, source = dumps[pid].threads, "faulthandler"
            if st.stack_error:
                ev.notes.append(f"pid {pid}: {st.stack_error}; stacks from faulthandler")
        if threads is None and pid == os.getpid() and own_threads is not None:
            threads, source = own_threads, own_source
        if threads is not None:
            for t in threads:
                t.pid = pid
            ev.threads.extend(threads)
            st.stack_source = source
            sources[pid] = source or ""
        elif st.stack_error is None and st.status not in ("Z", "gone"):
            st.stack_error = ("py-spy is not installed (pip install py-spy)" if missing_py_spy or exe is None
                              else "py-spy time budget spent")
    if missing_py_spy or (py_spy and exe is None):
        ev.notes.append("py-spy is not installed: only stacks from inside the training process "
                        "(faulthandler / sys._current_frames); child processes have none")
    ev.stack_source = sources.get(main_pid) or next(iter(sources.values()), None)
    add_source_lines(ev.threads)
    ev.cause = label_cause(ev.threads, ev.processes, main_pid=main_pid, watchdog_starved=watchdog_starved)
    ev.stacks_text = format_threads(ev.threads, ev.processes)
    return ev
