"""Stacks and process states of a stalled run as data: parsing them, labelling the likely cause, printing them.

Pure functions on text and dataclasses, so the collectors (which take the stacks) and the analyzer (which
reads them back from a ``hang_suspected`` event) share one vocabulary. Taking stacks lives in
``runlens.collect.stacks``.

* **faulthandler** dumps: function, file and line only; at most 100 threads and 100 frames; thread ids but no
  names. ``parse_faulthandler`` turns the text into threads.
* **py-spy** ``--json`` dumps: thread names, which thread holds the GIL, and whether it is running
  (``parse_py_spy``).
* ``label_cause``: a deterministic first guess at why the run stopped, from those stacks and the processes'
  scheduler states (``D`` = uninterruptible I/O wait).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


MAX_FRAMES = 64              # per thread, innermost kept (faulthandler itself stops at 100)
MAX_THREADS = 100            # per process (faulthandler's own limit)
MAX_STACKS_CHARS = 100_000   # the text stored in the event
MAX_CODE_CHARS = 200

# Causes, most specific evidence first (see label_cause).
CAUSES = ("native_gil", "dataloader", "collective", "io", "lock", "sleep", "busy", "unknown")

_FH_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[(.*?)\])? \(most recent call first\):")
_FH_STACK = re.compile(r"^Stack \(most recent call first\):")
_FH_FRAME = re.compile(r'^\s+File "(.*)", line (\d+|\?\?\?) in (.*)$')
_FH_TIMEOUT = re.compile(r"^Timeout \((.*)\)!")


@dataclass
class Frame:
    """One Python frame: ``function`` at ``file``:``line``; ``code`` is the source line when it could be read."""

    file: str
    line: int | None
    function: str
    code: str | None = None

    def where(self) -> str:
        return f"{self.function} ({os.path.basename(self.file)}:{self.line})"


@dataclass
class ThreadStack:
    """One thread's stack, innermost frame first (faulthandler's and py-spy's order)."""

    name: str | None
    frames: list[Frame]
    pid: int | None = None
    thread_id: int | None = None
    current: bool = False            # faulthandler's "Current thread" (the one that was running, if any)
    owns_gil: bool | None = None     # py-spy only
    active: bool | None = None       # py-spy only: running rather than idle/waiting
    main: bool = False               # the process's main thread

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frames"] = [{k: v for k, v in asdict(f).items() if v is not None} for f in self.frames]
        return {k: v for k, v in d.items() if v is not None and v is not False}


@dataclass
class ProcessState:
    """A process as the kernel sees it: ``status`` is the ``/proc/<pid>/status`` letter (R, S, D, Z, T...)."""

    pid: int
    name: str | None = None
    status: str | None = None
    wchan: str | None = None
    role: str | None = None          # main, worker (DataLoader), child
    stack_source: str | None = None  # where this process's stacks came from
    stack_error: str | None = None   # why there are none

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Evidence:
    """What a stall left behind, ready to be an event's details (``to_details``)."""

    threads: list[ThreadStack] = field(default_factory=list)
    processes: list[ProcessState] = field(default_factory=list)
    stack_source: str | None = None
    stacks_text: str = ""
    cause: str = "unknown"
    notes: list[str] = field(default_factory=list)

    def to_details(self) -> dict[str, Any]:
        return {
            "stacks": self.stacks_text, "stack_source": self.stack_source, "cause": self.cause,
            "threads": [t.to_dict() for t in self.threads], "processes": [p.to_dict() for p in self.processes],
            **({"evidence_notes": list(self.notes)} if self.notes else {}),
        }


# -- faulthandler ----------------------------------------------------------------------------------------

@dataclass
class Dump:
    """One faulthandler dump: ``kind`` is "timeout" (``dump_traceback_later``) or "signal" (on demand)."""

    kind: str
    threads: list[ThreadStack]


def parse_faulthandler(text: str, pid: int | None = None) -> list[Dump]:
    """Split faulthandler output into dumps and parse each into threads.

    A ``Timeout (...)!`` line starts a timer dump. An on-demand dump has no header, so a new one starts where
    a thread id repeats within the current dump. Lines that are not part of a dump (runlens's ``#`` header,
    a fatal error's message) are skipped.
    """
    dumps: list[Dump] = []
    current: Dump | None = None
    thread: ThreadStack | None = None
    seen: set[int] = set()
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        m = _FH_TIMEOUT.match(line)
        if m:
            current = Dump("timeout", [])
            dumps.append(current)
            thread, seen = None, set()
            continue
        m = _FH_THREAD.match(line)
        if m or _FH_STACK.match(line):
            tid = int(m.group(2), 16) if m else None
            if current is None or (tid is not None and tid in seen):
                current = Dump("signal", [])
                dumps.append(current)
                seen = set()
            if tid is not None:
                seen.add(tid)
            thread = ThreadStack(name=(m.group(3) if m else None) or None, frames=[], pid=pid, thread_id=tid,
                                 current=bool(m and m.group(1) == "Current thread"))
            current.threads.append(thread)
            continue
        m = _FH_FRAME.match(line)
        if m and thread is not None:
            lineno = int(m.group(2)) if m.group(2).isdigit() else None
            if len(thread.frames) < MAX_FRAMES:
                thread.frames.append(Frame(m.group(1), lineno, m.group(3).strip()))
    for d in dumps:
        _mark_main_thread(d.threads, pid)
    return dumps


def _mark_main_thread(threads: list[ThreadStack], pid: int | None) -> None:
    """faulthandler lists the main thread last (the oldest); a thread whose outermost frame is ``<module>`` is it."""
    if any(t.main for t in threads):
        return
    for t in threads:
        if t.frames and t.frames[-1].function == "<module>":
            t.main = True
            return
    if threads:
        threads[-1].main = True


def parse_py_spy(raw: Any, pid: int | None = None) -> list[ThreadStack]:
    """py-spy's ``--json`` dump (a list of threads) to ThreadStacks."""
    out: list[ThreadStack] = []
    for t in raw if isinstance(raw, list) else []:
        if not isinstance(t, Mapping):
            continue
        frames = [Frame(str(f.get("filename") or f.get("short_filename") or "?"), _int(f.get("line")),
                        str(f.get("name") or "?"))
                  for f in (t.get("frames") or [])[:MAX_FRAMES] if isinstance(f, Mapping)]
        name = t.get("thread_name")
        tpid = _int(t.get("pid")) or pid
        os_tid = _int(t.get("os_thread_id"))
        out.append(ThreadStack(name=str(name) if name else None, frames=frames, pid=tpid,
                               thread_id=_int(t.get("thread_id")), owns_gil=bool(t.get("owns_gil")),
                               active=bool(t.get("active")),
                               main=(name == "MainThread") or (os_tid is not None and os_tid == tpid)))
    out.sort(key=lambda t: not t.main)
    return out[:MAX_THREADS]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- the cause -------------------------------------------------------------------------------------------

_DATALOADER_FUNCS = ("_try_get_data", "_get_data", "_next_data")
_COLLECTIVE_FUNCS = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
                     "broadcast_object_list", "barrier", "monitored_barrier", "reduce_scatter",
                     "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter", "reduce",
                     "send", "recv", "isend", "irecv", "wait"}
_IO_FUNCS = {"read", "readinto", "readline", "readlines", "write", "writelines", "flush", "fsync", "fdatasync",
             "open", "copyfile", "copyfileobj", "move", "save", "load", "_save", "_legacy_save", "save_file",
             "load_file", "safe_open", "makedirs", "listdir", "scandir", "stat", "rename", "replace", "remove"}
_IO_FILES = ("torch/serialization.py", "safetensors", "shutil.py", "/fsspec/", "/s3fs/", "/gcsfs/", "/h5py/")
_IO_CODE = re.compile(r"(\bopen\(|\.read\(|\.write\(|\.readinto\(|\bfsync\(|\.flush\(|torch\.save\(|torch\.load\("
                      r"|save_file\(|safe_open\(|load_file\(|shutil\.)")
_LOCK_FUNCS = {"acquire", "wait", "_wait_for_tstate_lock", "join", "wait_for"}
_LOCK_FILES = ("threading.py", "queue.py", "multiprocessing/synchronize.py", "concurrent/futures/")
_LOCK_CODE = re.compile(r"\.(acquire|wait|join|wait_for)\(|^with\s+\S*(lock|cond|mutex|sem)\w*\b", re.IGNORECASE)
_SLEEP_CODE = re.compile(r"\bsleep\(")
_RUNLENS_THREAD = "runlens"


def main_thread(threads: Sequence[ThreadStack], pid: int | None = None) -> ThreadStack | None:
    """The main thread of ``pid`` (or of the first process listed)."""
    if pid is None:
        pid = next((t.pid for t in threads if t.main), threads[0].pid if threads else None)
    for t in threads:
        if t.main and (pid is None or t.pid == pid):
            return t
    return next((t for t in threads if t.pid == pid), None)


def label_cause(threads: Sequence[ThreadStack], processes: Sequence[ProcessState] = (), *,
                main_pid: int | None = None, watchdog_starved: bool = False) -> str:
    """A first guess at why the run stopped, from the main thread of the training process, its other threads and
    the process states. One of ``CAUSES``:

    native_gil   a thread holds the GIL without running Python (py-spy: ``owns_gil`` and idle), or only the C-level
                 faulthandler timer saw the stall because the Python watchdog thread was starved
    dataloader   the main thread waits in torch's DataLoader (``_try_get_data``/``_get_data``/``_next_data``) or a
                 ``queue.get`` while the loop was inside ``mon.loader``
    collective   a torch.distributed / NCCL frame (all_reduce, barrier, ...) on the main thread
    io           a process in ``D`` state (uninterruptible I/O wait), or the innermost frames in file or
                 checkpoint I/O (open/read/write/fsync, torch.save, safetensors)
    lock         the main thread in ``threading`` lock/Condition/Event waits or joining a thread, or on a line
                 that calls ``.acquire()``/``.wait()``/``.join()``
    sleep        the innermost line calls ``sleep(`` (a retry/backoff loop, a poll)
    busy         the main thread is running Python and holds the GIL (an endless loop, a slow step)
    unknown      none of the above
    """
    main = main_thread(threads, main_pid)
    if watchdog_starved:
        return "native_gil"
    if main is not None and main.owns_gil and main.active is False:
        return "native_gil"   # holding the GIL while not running: only C code can do that
    frames = main.frames if main else []
    if any(_is_dataloader(f) for f in frames):
        return "dataloader"
    if any(_is_collective(f) for f in frames):
        return "collective"
    if any(p.status == "D" for p in processes):
        return "io"
    inner = frames[:4]
    if any(_is_io(f) for f in inner):
        return "io"
    top = frames[0] if frames else None
    if top is not None and (_is_lock(top) or any(_in_file(f, _LOCK_FILES) and f.function in _LOCK_FUNCS
                                                 for f in frames[:3])):
        return "lock"
    if top is not None and top.code and _SLEEP_CODE.search(top.code):
        return "sleep"
    if main is not None and main.active and main.owns_gil:
        return "busy"
    return "unknown"


def _in_file(f: Frame, parts: Sequence[str]) -> bool:
    path = f.file.replace("\\", "/")
    return any(p in path for p in parts)


def _is_dataloader(f: Frame) -> bool:
    fn = f.function.rsplit(".", 1)[-1]
    return fn in _DATALOADER_FUNCS and _in_file(f, ("torch/utils/data", "dataloader"))


def _is_collective(f: Frame) -> bool:
    fn = f.function.rsplit(".", 1)[-1]
    if "nccl" in f.function.lower() or "nccl" in f.file.lower():
        return True
    return fn in _COLLECTIVE_FUNCS and _in_file(f, ("torch/distributed", "deepspeed/comm", "accelerate/utils/oper"))


def _is_io(f: Frame) -> bool:
    fn = f.function.rsplit(".", 1)[-1]
    if _in_file(f, _IO_FILES) and fn in _IO_FUNCS:
        return True
    return bool(f.code and _IO_CODE.search(f.code))


def _is_lock(f: Frame) -> bool:
    fn = f.function.rsplit(".", 1)[-1]
    if fn in _LOCK_FUNCS and _in_file(f, _LOCK_FILES):
        return True
    return bool(f.code and _LOCK_CODE.search(f.code))


def culprit(threads: Sequence[ThreadStack], cause: str, main_pid: int | None = None) -> Frame | None:
    """The frame to name in a finding: the innermost non-library frame of the thread that shows the cause (a stuck
    DataLoader worker's dataset code for ``dataloader``; the main thread otherwise)."""
    if cause == "dataloader":
        for t in threads:
            if t.pid is not None and t.pid != (main_pid or _main_pid(threads)) and t.main:
                own = _first_user_frame(t.frames)
                if own is not None:
                    return own
    main = main_thread(threads, main_pid)
    if main is None or not main.frames:
        return None
    if cause in ("native_gil", "lock", "sleep", "busy", "unknown"):
        return main.frames[0]
    return _first_user_frame(main.frames) or main.frames[0]


def _main_pid(threads: Sequence[ThreadStack]) -> int | None:
    return next((t.pid for t in threads if t.main), None)


_LIBRARY_PARTS = ("/site-packages/", "/dist-packages/", "/lib/python3", "<frozen")


def _first_user_frame(frames: Sequence[Frame]) -> Frame | None:
    for f in frames:
        if not _in_file(f, _LIBRARY_PARTS):
            return f
    return None


# -- the text --------------------------------------------------------------------------------------------

def format_threads(threads: Sequence[ThreadStack], processes: Sequence[ProcessState] = (),
                   header: str | None = None) -> str:
    """Stacks as text, grouped by process, innermost frame first, with the source line where known."""
    states = {p.pid: p for p in processes}
    lines: list[str] = [header] if header else []
    by_pid: dict[int | None, list[ThreadStack]] = {}
    for t in threads:
        by_pid.setdefault(t.pid, []).append(t)
    for pid in list(by_pid) + [p.pid for p in processes if p.pid not in by_pid]:
        st = states.get(pid) if pid is not None else None
        if lines:
            lines.append("")
        desc = [f"Process {pid}" if pid is not None else "Process"]
        if st is not None:
            bits = [b for b in (st.name, st.role, f"state {st.status}" if st.status else None,
                                f"wchan {st.wchan}" if st.wchan else None, st.stack_source) if b]
            if bits:
                desc.append("(" + ", ".join(bits) + ")")
        lines.append(" ".join(desc))
        if st is not None and st.stack_error:
            lines.append(f"  no stacks: {st.stack_error}")
        for t in sorted(by_pid.get(pid, []), key=lambda t: not t.main):
            flags = [x for x in ("main" if t.main else None, "holds the GIL" if t.owns_gil else None,
                                 None if t.active is None else ("active" if t.active else "idle")) if x]
            name = t.name or (f"0x{t.thread_id:x}" if t.thread_id else "thread")
            lines.append(f"Thread {name}" + (f" [{', '.join(flags)}]" if flags else "") + ":")
            for f in t.frames:
                lines.append(f'  File "{f.file}", line {f.line} in {f.function}')
                if f.code:
                    lines.append(f"    {f.code}")
            if not t.frames:
                lines.append("  <no Python frame>")
    text = "\n".join(lines)
    if len(text) > MAX_STACKS_CHARS:
        text = text[:MAX_STACKS_CHARS] + "\n... (truncated)"
    return text
