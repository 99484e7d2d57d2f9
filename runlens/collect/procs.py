"""The job's process tree: which process is the training process, which are its DataLoader workers, and how
much memory they hold without counting shared pages more than once.

Why not just sum RSS over the tree (what MLflow's ``include_children`` and W&B's process-tree option do): a
forked DataLoader worker maps every page of its parent copy-on-write, so each worker's RSS repeats the
parent's dataset, model and libraries. Eight workers show as nine copies of the training process. Here:

* **main process: RSS** (``memory_info().rss``). It is what ``top`` shows and what the kernel's OOM killer
  reports (``anon-rss``/``file-rss``), it costs one small read, and the main process is the big one: PSS
  walks every page-table entry (measured: ~8 ms of CPU per GiB resident), so PSS of a 50 GiB trainer would
  cost a sizeable fraction of a second per sample. The pages the main process shares with its workers are
  its own pages, so RSS is the right figure for it.
* **workers: PSS** (``memory_full_info().pss`` from ``/proc/<pid>/smaps_rollup``): each shared page is
  split evenly between the processes that map it, so ``n`` workers forked from a 10 GiB parent add
  ``10 * n/(n+1)`` GiB at most, never ``10 * n``; private pages (what copy-on-read and per-worker buffers
  grow, pytorch/pytorch#13246) count in full. Where PSS does not exist (macOS, Windows) USS is used.
  RSS is never summed. Main RSS + worker PSS can still over-count the pages the workers share with the
  main process by the workers' share of them (bounded by the shared size, not multiplied by the workers).
* **who is a worker**: a process named ``pt_data_worker`` (torch >= 2.2 names its DataLoader workers so
  on Linux). Once one is seen in a tree only named processes count, so a ``torch.compile`` pool, a
  ``multiprocessing.Pool`` or a ``subprocess.run`` of the user's never inflates ``worker_count``. Before
  that (older torch, macOS) a worker is a child that multiprocessing created from a Python process: forked
  without exec (same command line as its parent) or started by ``spawn`` (``--multiprocessing-fork``).
  Never workers: multiprocessing's resource tracker and forkserver, ``torch_shm_manager``, inductor's
  ``compile_worker`` (and anything below those), and programs the training process exec'd. Non-worker
  descendants count neither in ``worker_count`` nor in ``worker_memory_gb``: the host's used memory still
  includes them, and the columns keep meaning "DataLoader workers" for the per-worker rules.
* **which process is "main"**: the given pid, unless it is a launcher (a shell, ``env``, ``uv run``,
  ``torchrun``/``accelerate launch`` of a single process, ...) with exactly one child, in which case we go
  down to that child, so ``runlens collect -- bash train.sh`` measures the Python process, not bash.

The walk is cheap: on Linux the tree comes from ``/proc/<pid>/task/<tid>/children`` (cost grows with the
tree's threads, not with every process on the host as psutil's ``children()`` does), ``psutil.Process``
objects are cached by pid (they carry the CPU-percent state) and dropped when their pid leaves the tree.

PSS is not cheap: ``smaps_rollup`` walks the page tables and counts each page's sharers; measured here ~8 ms
of CPU for one 235 MB DataLoader worker (bench/bench_sampler.py), so 8 workers cost ~60 ms a pass. So PSS is
measured on a CPU budget (``pss_budget``, default 0.5% of one core): a full pass that cost ``c`` seconds is
not repeated for ``c / pss_budget`` seconds; in between each worker's figure is its last PSS plus the change
in its RSS since then (RSS is one 8 µs read). New allocations show at once (private pages raise RSS and PSS
alike); copy-on-read growth (shared pages becoming private, RSS unchanged) shows at the next full pass. A
worker seen for the first time is measured in full at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger(__name__)

WORKER_NAME = "pt_data_worker"

# Process names that only start another program (matched against psutil's name()).
LAUNCHER_NAMES = frozenset({
    "sh", "bash", "dash", "zsh", "ksh", "fish", "env", "time", "timeout", "nohup", "nice", "ionice", "taskset",
    "numactl", "stdbuf", "chrt", "setsid", "tini", "dumb-init", "uv", "conda", "mamba", "micromamba", "pixi",
    "poetry", "pipenv", "hatch", "rye", "make", "just", "xargs", "srun",
})
# Python launchers, recognised from the command line: a program of this name, or ``python -m`` this module.
LAUNCHER_PROGRAMS = frozenset({"torchrun", "accelerate", "deepspeed"})
LAUNCHER_MODULES = frozenset({"torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch",
                              "deepspeed.launcher.runner"})
# Helper processes that are never DataLoader workers, nor is anything below them.
HELPER_MARKERS = ("multiprocessing.resource_tracker", "multiprocessing.semaphore_tracker",
                  "torch._inductor.compile_worker", "torch_shm_manager")
SPAWN_MARKERS = ("--multiprocessing-fork", "multiprocessing.spawn")
DEFAULT_PSS_BUDGET = 0.005   # full PSS passes may use 0.5% of one core


@dataclass
class TreeReading:
    """One look at the tree. Byte counts; None where nothing could be measured."""

    main_pid: int | None
    main_rss_bytes: int | None = None
    main_cpu_percent: float | None = None
    worker_count: int = 0
    worker_bytes: int | None = None
    worker_cpu_percent: float | None = None   # the workers' CPU use since the last reading, summed
    worker_metric: str = "pss"
    worker_pids: list[int] = field(default_factory=list)
    other_pids: list[int] = field(default_factory=list)   # descendants that are not workers (not measured)
    pids: list[int] = field(default_factory=list)   # every process of the tree, the root and launchers included
    unmeasured_workers: int = 0
    estimated_workers: int = 0        # workers whose figure is last PSS + RSS change (see the module doc)
    pss_seconds: float | None = None  # CPU time of this reading's full PSS pass, when one was made


@dataclass
class _Node:
    proc: Any                   # psutil.Process
    primed_cpu: bool = False
    pss: int | None = None      # last measured PSS (or USS) and the RSS at that moment
    pss_rss: int = 0


def _proc_children_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        tid = os.listdir(f"/proc/{os.getpid()}/task")[0]
    except (OSError, IndexError):
        return False
    return os.path.exists(f"/proc/{os.getpid()}/task/{tid}/children")


def _linux_children(pid: int) -> list[int]:
    """Direct children of ``pid`` from every thread's ``children`` file (a child belongs to the thread that forked it)."""
    kids: list[int] = []
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"{base}/{tid}/children", "rb") as fh:
                data = fh.read()
        except OSError:   # the thread ended between listdir and open
            continue
        kids.extend(int(x) for x in data.split())
    return kids


def _is_python(name: str, cmdline: list[str]) -> bool:
    exe = os.path.basename(cmdline[0]) if cmdline else ""
    return name.startswith("python") or exe.startswith("python") or name == WORKER_NAME


def is_helper(cmdline: list[str], name: str = "") -> bool:
    """multiprocessing's trackers, torch's shm manager and inductor's compile pool: never DataLoader workers."""
    joined = " ".join(cmdline)
    return name == "torch_shm_manager" or any(m in joined for m in HELPER_MARKERS)


def is_launcher(name: str, cmdline: list[str]) -> bool:
    """A process whose only job is to start the real one (a shell, ``env``, ``uv run``, ``torchrun``, ...)."""
    if name in LAUNCHER_NAMES:
        return True
    head = cmdline[:3]
    for i, token in enumerate(head):
        base = os.path.basename(token)
        if (i == 0 and base in LAUNCHER_NAMES) or base in LAUNCHER_PROGRAMS:
            return True
        if token == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] in LAUNCHER_MODULES:
            return True
    return False


class ProcessTree:
    """Walks the tree under ``root_pid`` and measures the main process and its DataLoader workers.

    Args:
        root_pid: the process to start from (the training process, or the child of ``runlens collect``).
        psutil_module: the psutil module (a seam for tests).
        include_children: False measures the main process only (no walk, no PSS).
        worker_memory: ``"pss"`` (default; USS where PSS does not exist) or ``"rss"``. RSS over-counts
            shared pages and exists only so the benchmark can show what PSS costs.
        pss_budget: fraction of one core full PSS passes may use; None measures PSS in full every time.
        monotonic: the clock the PSS schedule runs on (a seam for tests).
    """

    def __init__(self, root_pid: int, *, psutil_module: Any = psutil, include_children: bool = True,
                 worker_memory: str = "pss", pss_budget: float | None = DEFAULT_PSS_BUDGET,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if worker_memory not in ("pss", "rss"):
            raise ValueError(f"worker_memory must be 'pss' or 'rss', not {worker_memory!r}")
        if pss_budget is not None and pss_budget <= 0:
            raise ValueError(f"pss_budget must be positive or None, not {pss_budget!r}")
        self.root_pid = root_pid
        self.ps = psutil_module
        self.include_children = include_children
        self.worker_memory = worker_memory
        self.pss_budget = pss_budget
        self.monotonic = monotonic
        self._next_full_pss = float("-inf")
        self._nodes: dict[int, _Node] = {}
        self._named_workers_seen = False
        self._fast_children = psutil_module is psutil and _proc_children_supported()
        self._warned_denied = False

    # -- the walk ------------------------------------------------------------------------------------

    def _node(self, pid: int) -> _Node | None:
        node = self._nodes.get(pid)
        if node is None:
            try:
                node = _Node(self.ps.Process(pid))
            except (self.ps.NoSuchProcess, self.ps.AccessDenied):
                return None
            self._nodes[pid] = node
        return node

    def _children(self, pid: int) -> list[int]:
        if self._fast_children:
            return _linux_children(pid)
        node = self._node(pid)
        if node is None:
            return []
        try:
            return [c.pid for c in node.proc.children(recursive=False)]
        except (self.ps.NoSuchProcess, self.ps.AccessDenied):
            return []

    def _walk(self) -> dict[int, list[int]]:
        """pid -> direct children, for the root and everything below it."""
        tree: dict[int, list[int]] = {}
        stack = [self.root_pid]
        while stack:
            pid = stack.pop()
            if pid in tree:
                continue
            kids = self._children(pid) if self.include_children else []
            tree[pid] = kids
            stack.extend(kids)
        return tree

    def _ident(self, pid: int) -> tuple[str, list[str]] | None:
        node = self._node(pid)
        if node is None:
            return None
        try:
            return node.proc.name(), node.proc.cmdline()
        except (self.ps.NoSuchProcess, self.ps.ZombieProcess):
            return None
        except self.ps.AccessDenied:
            return "", []

    def _resolve_main(self, tree: dict[int, list[int]], ident: dict[int, tuple[str, list[str]]]) -> int:
        pid = self.root_pid
        for _ in range(8):
            info = ident.get(pid)
            if info is None or not is_launcher(*info):
                break
            kids = [k for k in tree.get(pid, []) if k in ident and not is_helper(ident[k][1], ident[k][0])]
            if len(kids) != 1:
                break
            name, cmdline = ident[kids[0]]
            if name == WORKER_NAME or cmdline == info[1] or any(m in " ".join(cmdline) for m in SPAWN_MARKERS):
                break   # a fork of the launcher itself (its worker), not the program it started
            pid = kids[0]
        return pid

    def _classify(self, main: int, tree: dict[int, list[int]],
                  ident: dict[int, tuple[str, list[str]]]) -> tuple[list[int], list[int]]:
        below: list[tuple[int, int]] = []            # (pid, parent) under main, helpers' subtrees cut off
        others: list[int] = []
        stack = [(k, main) for k in tree.get(main, [])]
        while stack:
            pid, parent = stack.pop()
            info = ident.get(pid)
            if info is None:
                continue
            if is_helper(info[1], info[0]):
                others.append(pid)
                continue
            below.append((pid, parent))
            stack.extend((k, pid) for k in tree.get(pid, []))
        if any(ident[p][0] == WORKER_NAME for p, _ in below):
            self._named_workers_seen = True
        workers: list[int] = []
        for pid, parent in below:
            name, cmdline = ident[pid]
            if self._named_workers_seen:
                is_worker = name == WORKER_NAME
            else:
                pinfo = ident.get(parent)
                forked = (pinfo is not None and bool(cmdline) and cmdline == pinfo[1]
                          and _is_python(pinfo[0], pinfo[1]))
                spawned = any(m in " ".join(cmdline) for m in SPAWN_MARKERS)
                is_worker = forked or spawned
            (workers if is_worker else others).append(pid)
        return workers, others

    def pids(self) -> list[int]:
        """Every process of the tree (the root and everything below it), without measuring any: the job's
        processes whose GPU memory is the job's, when that tree is not the one ``read()`` measures."""
        tree = self._walk()
        for pid in [p for p in self._nodes if p not in tree]:
            del self._nodes[pid]
        return sorted(tree)

    # -- measuring -----------------------------------------------------------------------------------

    def _worker_bytes(self, pid: int, full: bool) -> tuple[int | None, bool]:
        """(bytes, estimated) for one worker: PSS (USS) measured, or last PSS + RSS change when not ``full``."""
        node = self._nodes.get(pid)
        if node is None:
            return None, False
        try:
            if self.worker_memory == "rss":
                return int(node.proc.memory_info().rss), False
            if not full and node.pss is not None:
                rss = int(node.proc.memory_info().rss)
                return max(0, node.pss + rss - node.pss_rss), True
            info = node.proc.memory_full_info()
        except (self.ps.NoSuchProcess, self.ps.ZombieProcess):
            return None, False
        except self.ps.AccessDenied:
            if not self._warned_denied:
                self._warned_denied = True
                log.info("cannot read the memory map of worker %d (access denied); its memory is left out", pid)
            return None, False
        value = getattr(info, "pss", None)
        if value is None:
            value = getattr(info, "uss", None)
        if value is None:
            return None, False
        node.pss, node.pss_rss = int(value), int(getattr(info, "rss", 0) or 0)
        return node.pss, False

    def read(self) -> TreeReading:
        """Walk the tree once and measure it; processes that vanish mid-walk are skipped, never an error."""
        tree = self._walk()
        ident: dict[int, tuple[str, list[str]]] = {}
        for pid in tree:
            info = self._ident(pid)
            if info is not None:
                ident[pid] = info
        # Forget processes that left the tree (their pid may be reused by an unrelated process).
        for pid in [p for p in self._nodes if p not in ident]:
            del self._nodes[pid]
        if self.root_pid not in ident:
            return TreeReading(main_pid=None, worker_bytes=None, worker_metric=self._metric_name())
        main = self._resolve_main(tree, ident)
        reading = TreeReading(main_pid=main, worker_metric=self._metric_name(), pids=sorted(ident))
        node = self._nodes[main]
        try:
            reading.main_rss_bytes = int(node.proc.memory_info().rss)
            cpu = float(node.proc.cpu_percent(interval=None))
            reading.main_cpu_percent = cpu if node.primed_cpu else None   # the first call has no interval
            node.primed_cpu = True
        except (self.ps.NoSuchProcess, self.ps.ZombieProcess, self.ps.AccessDenied):
            pass
        if not self.include_children:
            return reading
        workers, others = self._classify(main, tree, ident)
        reading.other_pids = sorted(others)
        total = 0
        measured = 0
        now = self.monotonic()
        full = self.pss_budget is None or now >= self._next_full_pss
        worker_cpu: float | None = None
        cpu0 = time.thread_time()
        for pid in sorted(workers):
            value, estimated = self._worker_bytes(pid, full)
            cpu = self._worker_cpu(pid)
            if cpu is not None:
                worker_cpu = (worker_cpu or 0.0) + cpu
            reading.worker_pids.append(pid)
            if value is None:
                reading.unmeasured_workers += 1
            else:
                total += value
                measured += 1
                reading.estimated_workers += estimated
        if full and workers and self.worker_memory == "pss":
            cost = time.thread_time() - cpu0
            reading.pss_seconds = cost
            if self.pss_budget is not None:
                self._next_full_pss = now + cost / self.pss_budget
        reading.worker_count = len(reading.worker_pids)
        reading.worker_cpu_percent = worker_cpu
        reading.worker_bytes = total if (measured or not workers) else None
        return reading

    def _worker_cpu(self, pid: int) -> float | None:
        """One worker's CPU use since the last reading (100 = one core); None at its first reading, which has
        no interval. Measured per worker, so other jobs on the host do not count as loading work."""
        node = self._nodes.get(pid)
        if node is None:
            return None
        try:
            cpu = float(node.proc.cpu_percent(interval=None))
        except (self.ps.NoSuchProcess, self.ps.ZombieProcess, self.ps.AccessDenied):
            return None
        primed, node.primed_cpu = node.primed_cpu, True
        return cpu if primed else None

    def _metric_name(self) -> str:
        if self.worker_memory == "rss":
            return "rss"
        return "pss" if sys.platform.startswith("linux") else "uss"
