"""Real memory cgroups for tests: a v1 (or v2) memory cgroup with a limit, made for one test and removed after.

``memory_cgroup(limit_bytes)`` is a context manager that yields a ``TestCgroup``; ``enter_argv(argv)`` is the
command line that moves itself into the cgroup and then execs ``argv`` (so the process and everything it starts
are charged to the cgroup from their first page). ``writable_memory_controller()`` says why a machine cannot
run these tests, for the one skip they have.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runlens.collect.cgroup import _mounts


@dataclass(frozen=True)
class TestCgroup:
    __test__ = False   # not a test class, for pytest

    version: int
    path: Path

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def enter_argv(self, argv: list[str]) -> list[str]:
        """``sh -c 'echo $$ > cgroup.procs && exec argv'``: the process joins the cgroup, then becomes argv."""
        return ["sh", "-c", f"echo $$ > {shlex.quote(str(self.procs))} && exec {shlex.join(argv)}"]

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in self.read(name).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


def _memory_mount() -> tuple[int, Path] | None:
    """A writable memory hierarchy: v1's memory mount, else a cgroup2 mount whose root offers the memory
    controller to its children."""
    root = Path("/")
    for mount in _mounts(root):
        if mount.version == 1 and "memory" in mount.controllers:
            return 1, Path(mount.point)
    for mount in _mounts(root):
        if mount.version == 2:
            point = Path(mount.point)
            try:
                if "memory" in (point / "cgroup.subtree_control").read_text().split():
                    return 2, point
            except OSError:
                continue
    return None


def writable_memory_controller() -> str | None:
    """None when this machine can make memory cgroups with limits; else why it cannot."""
    found = _memory_mount()
    if found is None:
        return "no memory cgroup controller is mounted (v1 memory, or cgroup2 with memory enabled)"
    if not os.access(found[1], os.W_OK):
        return f"the memory cgroup hierarchy at {found[1]} is not writable (not root?)"
    return None


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[TestCgroup]:
    """A fresh memory cgroup ``runlens-test-<id>`` with ``limit_bytes``, removed at the end (its processes
    killed first, so a failing test leaves nothing behind). Swap is capped at the same limit where the kernel
    accounts it, so the workload is OOM-killed at the limit instead of swapping."""
    found = _memory_mount()
    assert found is not None, writable_memory_controller()
    version, point = found
    path = point / f"runlens-test-{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir()
    try:
        if version == 2:
            (path / "memory.max").write_text(str(limit_bytes))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                try:
                    memsw.write_text(str(limit_bytes))
                except OSError:
                    pass
        yield TestCgroup(version, path)
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)   # the killed processes leave the cgroup as the kernel reaps them
