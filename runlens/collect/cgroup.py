"""The job's own memory cgroup: its limit, its working set and its OOM kills, cgroup v2 or v1.

A job in Docker, Kubernetes or a Slurm allocation runs out of memory at its cgroup's limit, not at the host's
RAM: the kernel kills it (exit 137) while ``free`` still shows gigabytes available. So the sampler reads the
cgroup the job's process is in, as the kernel sees it:

* where: ``/proc/<pid>/cgroup`` names the cgroup (v2 ``0::/path``; v1 the line whose controllers include
  ``memory``), and ``/proc/self/mountinfo`` where that hierarchy is mounted (its root may itself be a
  cgroup's path, as in a container without a cgroup namespace: that prefix is stripped). On a hybrid machine
  whose cgroup2 mount lacks the memory controller, the v1 memory hierarchy is the one that counts.
* the limit: v2 ``memory.max``, v1 ``memory.limit_in_bytes``; "max" and v1's page-rounded 2**63 mean none.
  The cgroup itself often has no limit of its own: Kubernetes puts it on the pod's cgroup, a level up, and
  Slurm on the job's, above the step's. So the hierarchy is walked up to the root, and the cgroup whose limit
  is smallest binds (the nearest one on a tie); its usage is the one measured against that limit.
* the working set: usage minus inactive file pages (v2 ``memory.current`` - ``memory.stat`` inactive_file; v1
  ``memory.usage_in_bytes`` - ``total_inactive_file``), the figure kubelet evicts on and ``docker stats``
  shows: the page cache the kernel can drop before it kills anyone is not pressure.
  https://kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction/#active-file-memory-is-not-considered-as-available-memory
* the OOM kills: v2 ``memory.events`` ``oom_kill`` (processes of the cgroup killed by any OOM killer), v1
  ``memory.oom_control`` ``oom_kill`` (kernel 4.13 and later); of the job's own cgroup, so kills elsewhere
  under a shared parent are not counted. v2 ``oom`` (the limit was hit) and v1 ``under_oom``, and v1
  ``memory.max_usage_in_bytes`` (the high-water mark, which catches a peak between two samples), come along.

Everything is read under ``root`` (``"/"`` on a real machine), so tests can point it at a fake tree.
https://docs.kernel.org/admin-guide/cgroup-v2.html#memory-interface-files and
https://docs.kernel.org/admin-guide/cgroup-v1/memory.html
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 bytes with 4 KiB pages); anything at or
# above 2**60 bytes (an exbibyte) is no limit on any machine that exists.
NO_LIMIT_BYTES = 1 << 60


@dataclass(frozen=True)
class MemoryCgroup:
    """Where the job's memory cgroup lives: ``version`` 1 or 2, ``path`` its directory (under ``root``), and
    ``chain`` that directory and its ancestors up to the hierarchy's mount point, nearest first."""

    version: int
    path: Path
    chain: tuple[Path, ...]


@dataclass(frozen=True)
class CgroupReading:
    """One reading of a job's memory cgroup, in bytes; None where the kernel does not say.

    ``limit_bytes`` is the binding limit (the smallest over the cgroup and its ancestors), None when none
    has one; ``usage_bytes``, ``working_set_bytes`` and ``max_usage_bytes`` are of the cgroup that holds it
    (of the job's own cgroup without a limit). ``oom_kills`` and ``oom_events`` count from the cgroup's
    creation, so a rise during the run is what matters.
    """

    version: int
    path: str                        # the cgroup as /proc/<pid>/cgroup names it, e.g. /kubepods/pod1/abc
    limit_path: str | None           # the cgroup that holds the limit (an ancestor, or ``path`` itself)
    limit_bytes: int | None
    usage_bytes: int | None
    working_set_bytes: int | None
    max_usage_bytes: int | None = None
    oom_kills: int | None = None
    oom_events: int | None = None    # v2 ``oom``: times the limit was hit (a kill or a failed charge)
    under_oom: bool | None = None    # v1: the cgroup is out of memory right now


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _keyed(path: Path) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, memory.oom_control) as a dict of ints."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _limit(directory: Path, version: int) -> int | None:
    """The cgroup's own limit in bytes; None for "max", v1's huge no-limit value, or an unreadable file."""
    if version == 2:
        text = (_read(directory / "memory.max") or "").strip()
        value = int(text) if text.isdigit() else None
    else:
        value = _int(directory / "memory.limit_in_bytes")
    return value if value is not None and 0 < value < NO_LIMIT_BYTES else None


@dataclass(frozen=True)
class _Mount:
    root: str         # the path of the hierarchy's root cgroup this mount shows ("/" unless bind-mounted)
    point: str        # where it is mounted
    version: int
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def _mounts(root: Path) -> list[_Mount]:
    """The cgroup mounts of ``/proc/self/mountinfo`` (fields: id parent dev root point opts ... - fstype src super)."""
    out: list[_Mount] = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 1 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        options = frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset()
        out.append(_Mount(_unescape(fields[3]), _unescape(fields[4]), version, options))
    return out


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _within(mount: _Mount, cgroup_path: str) -> str | None:
    """The cgroup's path below the mount point; None when the mount does not show that cgroup."""
    base = mount.root.rstrip("/")
    if base and cgroup_path != base and not cgroup_path.startswith(base + "/"):
        return None
    return cgroup_path[len(base):] or "/"


def _chain(point: Path, directory: Path) -> tuple[Path, ...]:
    chain = [directory]
    while chain[-1] != point and point in chain[-1].parents:
        chain.append(chain[-1].parent)
    return tuple(chain)


def find_memory_cgroup(pid: int | None = None, root: str | os.PathLike[str] = "/") -> MemoryCgroup | None:
    """The memory cgroup of process ``pid`` (default: this process), or None when it is in none that can be read.

    v1 is taken when the process has a v1 ``memory`` line and that hierarchy is mounted (on a hybrid machine
    the memory controller is there); else v2, when the cgroup2 hierarchy has the memory controller.
    """
    base = Path(root)
    text = _read(base / f"proc/{os.getpid() if pid is None else pid}/cgroup")
    if text is None:
        return None
    v1_path = v2_path = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    mounts = _mounts(base)
    if v1_path is not None:
        for mount in mounts:
            if mount.version == 1 and "memory" in mount.controllers:
                below = _within(mount, v1_path)
                if below is not None:
                    point = _under(base, mount.point)
                    directory = _under(point, below)
                    if (directory / "memory.usage_in_bytes").exists():
                        return MemoryCgroup(1, directory, _chain(point, directory))
    if v2_path is not None:
        for mount in mounts:
            if mount.version == 2:
                below = _within(mount, v2_path)
                if below is None:
                    continue
                point = _under(base, mount.point)
                directory = _under(point, below)
                # memory.current exists only where the memory controller is enabled for this cgroup; the
                # root cgroup has no memory.current, but lists the controller in cgroup.controllers.
                if (directory / "memory.current").exists() or (
                        directory == point and "memory" in (_read(point / "cgroup.controllers") or "").split()):
                    return MemoryCgroup(2, directory, _chain(point, directory))
    return None


def read_memory_cgroup(cgroup: MemoryCgroup) -> CgroupReading:
    """Read the cgroup's binding limit, its working set and OOM counters now (a few small files)."""
    version, own = cgroup.version, cgroup.chain[0]
    limits = [(lim, d) for d in cgroup.chain if (lim := _limit(d, version)) is not None]
    limit, holder = min(limits, key=lambda x: x[0]) if limits else (None, own)  # min() keeps the nearest on a tie
    if version == 2:
        usage = _int(holder / "memory.current")
        stat = _keyed(holder / "memory.stat")
        inactive = stat.get("inactive_file")
        events = _keyed(own / "memory.events")
        kills, ooms, under, max_usage = events.get("oom_kill"), events.get("oom"), None, _int(holder / "memory.peak")
    else:
        usage = _int(holder / "memory.usage_in_bytes")
        stat = _keyed(holder / "memory.stat")
        # total_ counts the cgroup and its descendants, as its usage does; the plain key only the cgroup itself
        inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
        control = _keyed(own / "memory.oom_control")
        kills, ooms = control.get("oom_kill"), None
        under = bool(control["under_oom"]) if "under_oom" in control else None
        max_usage = _int(holder / "memory.max_usage_in_bytes")
    working = None if usage is None else max(0, usage - (inactive or 0))
    mount_point = cgroup.chain[-1]
    return CgroupReading(
        version=version, path=_name(mount_point, own), limit_path=_name(mount_point, holder) if limit else None,
        limit_bytes=limit, usage_bytes=usage, working_set_bytes=working, max_usage_bytes=max_usage,
        oom_kills=kills, oom_events=ooms, under_oom=under)


def _name(mount_point: Path, directory: Path) -> str:
    rel = directory.relative_to(mount_point).as_posix()
    return "/" if rel == "." else "/" + rel


class CgroupProbe:
    """The sampler's view of one process's memory cgroup: found once, read on every sample.

    The cgroup is looked up on the first read and kept: a process does not change cgroups during a run in
    practice, and after it dies ``/proc/<pid>/cgroup`` is gone while the cgroup (and its OOM-kill count, the
    reason it died) can still be read. ``oom_kills_rise()`` is the number of OOM kills since the first reading.

    Args:
        pid: the job's main process (default: this process).
        root: where ``/proc`` and the cgroup mounts are found (a seam for tests).
    """

    def __init__(self, pid: int | None = None, root: str | os.PathLike[str] = "/") -> None:
        self.pid = os.getpid() if pid is None else pid
        self.root = root
        self.cgroup: MemoryCgroup | None = None
        self.first: CgroupReading | None = None
        self.last: CgroupReading | None = None
        self._looked = False

    def read(self) -> CgroupReading | None:
        """The cgroup now, or None when the process is in no memory cgroup that can be read."""
        if not self._looked:
            self._looked = True
            self.cgroup = find_memory_cgroup(self.pid, self.root)
            if self.cgroup is None:
                log.debug("process %d is in no readable memory cgroup", self.pid)
        if self.cgroup is None:
            return None
        reading = read_memory_cgroup(self.cgroup)
        if self.first is None:
            self.first = reading
        self.last = reading
        return reading

    def oom_kills_rise(self) -> int | None:
        """OOM kills in the job's cgroup since the first reading (reads the cgroup once more); None unknown."""
        before = self.first.oom_kills if self.first is not None else None
        try:
            now = self.read()
        except OSError:
            now = self.last
        if before is None or now is None or now.oom_kills is None:
            return None
        return max(0, now.oom_kills - before)
