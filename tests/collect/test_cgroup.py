"""The job's memory cgroup: found from /proc and mountinfo (v2, v1, hybrid, a bind-mounted container root), the
binding limit up the hierarchy, the working set, the OOM-kill count; recorded by the sampler; and a real cgroup's
OOM kill named as such by ``runlens collect``.

The fake trees check the parsing of layouts this machine does not have; the tests marked ``needs_cgroup`` make a
real memory cgroup with a limit and run real processes in it (skipped only without a writable controller).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cgroups import memory_cgroup, writable_memory_controller

from runlens.collect.cgroup import CgroupProbe, find_memory_cgroup, read_memory_cgroup
from runlens.collect.child import end_status
from runlens.collect.sampler import SystemSampler
from runlens.core.oom import CONTAINER_OOM_KILL_REASON, OOM_KILL_REASON
from runlens.store import open_store
from runlens.watch.status import classify_failure

MIB = 1 << 20
V1_NO_LIMIT = "9223372036854771712"
needs_cgroup = pytest.mark.skipif(writable_memory_controller() is not None,
                                  reason=f"needs a writable memory cgroup controller: {writable_memory_controller()}")


def fake_tree(root: Path, cgroup: str, mountinfo: list[str], files: dict[str, str], pid: int = 4242) -> None:
    """``/proc/<pid>/cgroup``, ``/proc/self/mountinfo`` and cgroup files (paths relative to ``root``)."""
    (root / f"proc/{pid}").mkdir(parents=True)
    (root / "proc/self").mkdir(parents=True)
    (root / f"proc/{pid}/cgroup").write_text(textwrap.dedent(cgroup).lstrip())
    (root / "proc/self/mountinfo").write_text("\n".join(mountinfo) + "\n")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"
V1_MEMORY_MOUNT = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"


# -- finding and reading (fake trees) ----------------------------------------------------------------------

def test_v2_limit_on_the_pod_binds_the_container_below_it(tmp_path: Path) -> None:
    """Kubernetes: the container's cgroup says max, the pod's above it has the limit; the pod's usage counts."""
    pod, ctr = "sys/fs/cgroup/kubepods/podA", "sys/fs/cgroup/kubepods/podA/ctr1"
    fake_tree(tmp_path, "0::/kubepods/podA/ctr1\n", [V2_MOUNT], {
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
        f"{ctr}/memory.max": "max\n", f"{ctr}/memory.current": str(900 * MIB),
        f"{ctr}/memory.stat": "anon 1\ninactive_file 1\n",
        f"{ctr}/memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        f"{pod}/memory.max": str(2 * 1024 * MIB), f"{pod}/memory.current": str(1000 * MIB),
        f"{pod}/memory.stat": f"anon {800 * MIB}\nfile {200 * MIB}\ninactive_file {150 * MIB}\n",
        f"{pod}/memory.events": "oom 7\noom_kill 7\n",      # a sibling container's kills: not the job's
        "sys/fs/cgroup/kubepods/memory.max": "max\n",
    })
    cg = find_memory_cgroup(4242, root=tmp_path)
    assert cg is not None and cg.version == 2 and cg.path == tmp_path / ctr
    r = read_memory_cgroup(cg)
    assert r.path == "/kubepods/podA/ctr1" and r.limit_path == "/kubepods/podA"
    assert r.limit_bytes == 2 * 1024 * MIB
    assert r.usage_bytes == 1000 * MIB and r.working_set_bytes == 850 * MIB   # usage - inactive_file, the pod's
    assert r.oom_kills == 1 and r.oom_events == 1                             # the job's own cgroup's


def test_the_smallest_limit_up_the_tree_binds(tmp_path: Path) -> None:
    """A generous limit of the job's own under a tight one on the parent: the parent's is the wall."""
    fake_tree(tmp_path, "0::/slurm/job7/step0\n", [V2_MOUNT], {
        "sys/fs/cgroup/slurm/job7/step0/memory.max": str(64 * 1024 * MIB),
        "sys/fs/cgroup/slurm/job7/step0/memory.current": str(10 * MIB),
        "sys/fs/cgroup/slurm/job7/memory.max": str(4 * 1024 * MIB),
        "sys/fs/cgroup/slurm/job7/memory.current": str(30 * MIB),
    })
    cg = find_memory_cgroup(4242, root=tmp_path)
    assert cg is not None
    r = read_memory_cgroup(cg)
    assert r.limit_bytes == 4 * 1024 * MIB and r.limit_path == "/slurm/job7" and r.usage_bytes == 30 * MIB
    assert r.oom_kills is None      # no memory.events: unknown, not zero


def test_v1_no_limit_is_none_and_the_working_set_drops_inactive_file(tmp_path: Path) -> None:
    """v1's page-rounded 2**63 is no limit; total_inactive_file (the hierarchy's) is preferred over the local."""
    d = "sys/fs/cgroup/memory/docker/abc"
    fake_tree(tmp_path, """
        12:pids:/docker/abc
        4:memory:/docker/abc
        1:name=systemd:/docker/abc
        0::/
    """, [V1_MEMORY_MOUNT, "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"], {
        f"{d}/memory.limit_in_bytes": V1_NO_LIMIT, f"{d}/memory.usage_in_bytes": str(500 * MIB),
        f"{d}/memory.stat": f"inactive_file {10 * MIB}\ntotal_inactive_file {100 * MIB}\n",
        f"{d}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        f"{d}/memory.max_usage_in_bytes": str(700 * MIB),
        "sys/fs/cgroup/memory/docker/memory.limit_in_bytes": V1_NO_LIMIT,
        "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_NO_LIMIT,
        # the cgroup2 mount of a hybrid machine, without the memory controller
        "sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n",
    })
    cg = find_memory_cgroup(4242, root=tmp_path)
    assert cg is not None and cg.version == 1
    r = read_memory_cgroup(cg)
    assert r.limit_bytes is None and r.limit_path is None
    assert r.working_set_bytes == 400 * MIB and r.max_usage_bytes == 700 * MIB
    assert r.oom_kills == 2 and r.under_oom is False


def test_a_bind_mounted_container_root_is_stripped_from_the_path(tmp_path: Path) -> None:
    """Docker on v1 without a cgroup namespace mounts /docker/<id> at /sys/fs/cgroup/memory: that is the cgroup."""
    fake_tree(tmp_path, "9:memory:/docker/abc\n", [
        "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory",
    ], {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": str(1024 * MIB),
        "sys/fs/cgroup/memory/memory.usage_in_bytes": str(300 * MIB),
    })
    cg = find_memory_cgroup(4242, root=tmp_path)
    assert cg is not None and cg.path == tmp_path / "sys/fs/cgroup/memory"
    r = read_memory_cgroup(cg)
    assert r.path == "/" and r.limit_bytes == 1024 * MIB and r.working_set_bytes == 300 * MIB


def test_v2_namespace_root_with_the_memory_controller(tmp_path: Path) -> None:
    """A container with its own cgroup namespace sees itself as 0::/; its limit is in the mount's root."""
    fake_tree(tmp_path, "0::/\n", [V2_MOUNT], {
        "sys/fs/cgroup/cgroup.controllers": "cpu io memory pids\n",
        "sys/fs/cgroup/memory.max": str(2 * 1024 * MIB), "sys/fs/cgroup/memory.current": str(10 * MIB),
    })
    cg = find_memory_cgroup(4242, root=tmp_path)
    assert cg is not None and cg.version == 2
    assert read_memory_cgroup(cg).limit_bytes == 2 * 1024 * MIB


def test_no_readable_memory_cgroup_is_none(tmp_path: Path) -> None:
    """No /proc entry, or a cgroup2 mount without the memory controller and no v1 memory line."""
    assert find_memory_cgroup(4242, root=tmp_path) is None
    fake_tree(tmp_path, "0::/user.slice\n", [V2_MOUNT], {"sys/fs/cgroup/cgroup.controllers": "cpu pids\n"})
    assert find_memory_cgroup(4242, root=tmp_path) is None
    assert CgroupProbe(4242, root=tmp_path).read() is None


def test_the_sampler_records_the_container_columns_in_gib(tmp_path: Path) -> None:
    """Limit and working set in GiB, the OOM-kill count as read; the rise is counted from the first sample."""
    d = "sys/fs/cgroup/job"
    fake_tree(tmp_path, "0::/job\n", [V2_MOUNT], {
        f"{d}/memory.max": str(2 * 1024 * MIB), f"{d}/memory.current": str(1024 * MIB),
        f"{d}/memory.stat": f"inactive_file {512 * MIB}\n", f"{d}/memory.events": "oom 0\noom_kill 3\n",
    })
    sampler = SystemSampler(os.getpid(), include_children=False, pressure_path=None,
                            cgroup=CgroupProbe(4242, root=tmp_path))
    row = sampler.sample().row
    assert row["container_memory_limit_gb"] == 2.0 and row["container_memory_working_set_gb"] == 0.5
    assert row["container_oom_kills"] == 3 and sampler.container_limit_gb == 2.0
    (tmp_path / d / "memory.events").write_text("oom 1\noom_kill 4\n")
    assert sampler.container_oom_kills_rise() == 1
    sampler.close()


def test_outside_a_cgroup_the_container_columns_stay_none(tmp_path: Path) -> None:
    sampler = SystemSampler(os.getpid(), include_children=False, pressure_path=None,
                            cgroup=CgroupProbe(4242, root=tmp_path))
    row = sampler.sample().row
    assert row["container_memory_limit_gb"] is None and row["container_oom_kills"] is None
    assert sampler.container_oom_kills_rise() is None and sampler.container_limit_gb is None
    sampler.close()


# -- how a job ended ---------------------------------------------------------------------------------------

def test_a_sigkill_the_cgroup_counted_is_an_oom_kill_at_the_container_limit() -> None:
    end = end_status(-signal.SIGKILL, container_oom_kills=1, container_limit_gb=2.0)
    assert end["status"] == "failed" and end["exit_code"] == 137
    assert end["status_reason"].startswith(CONTAINER_OOM_KILL_REASON) and "2.00 GiB" in end["status_reason"]
    assert end["oom_suspected"] and end["oom_confirmed"]
    # no count, or none during the run: the old suspicion
    for kills in (None, 0):
        end = end_status(-signal.SIGKILL, container_oom_kills=kills)
        assert end["status_reason"] == OOM_KILL_REASON and not end["oom_confirmed"]


def test_status_names_the_containers_kill_and_keeps_the_hosts_for_a_bare_sigkill() -> None:
    """`runlens status` and the alerts read the wrapper's reason: the container's limit, not "out of RAM"."""
    end = end_status(-signal.SIGKILL, container_oom_kills=1, container_limit_gb=2.0)
    job = {"status": "failed", "status_reason": end["status_reason"], "exit_code": 137, "exit_signal": 9}
    cause, reason = classify_failure(job, {"event_type": "host_oom_suspected", "details": {"confirmed": True}})
    assert cause == "host_oom" and reason == end["status_reason"]
    bare = {"status": "failed", "status_reason": OOM_KILL_REASON, "exit_code": 137, "exit_signal": 9}
    cause, reason = classify_failure(bare, {"event_type": "host_oom_suspected", "details": {}})
    assert cause == "host_oom" and "out of RAM" in reason


def test_a_worker_killed_in_the_cgroup_is_named_when_the_main_process_exits() -> None:
    """A DataLoader worker OOM-killed takes the main process down with an exception: exit 1, kill named."""
    end = end_status(1, container_oom_kills=2)
    assert end["status_reason"] == ("exited with code 1 after the kernel's OOM killer killed 2 processes in its "
                                    "memory cgroup")
    assert end["oom_confirmed"] and not end["oom_suspected"]
    assert end_status(0, container_oom_kills=1)["status"] == "succeeded"


# -- real cgroups -------------------------------------------------------------------------------------------

HOG = """
import sys
held = [b"x" * ({chunk})]
print("ready", flush=True)
sys.stdin.readline()
while True:
    held.append(b"x" * ({chunk}))
"""


@needs_cgroup
def test_a_real_cgroup_limit_working_set_and_oom_kill(tmp_path: Path) -> None:
    """A process in a 256 MiB cgroup: the probe finds the limit and the memory it holds, then counts its kill."""
    with memory_cgroup(256 * MIB) as cg:
        proc = subprocess.Popen(cg.enter_argv([sys.executable, "-c", HOG.format(chunk=96 * MIB)]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            probe = CgroupProbe(proc.pid)
            r = probe.read()
            assert r is not None and r.version == cg.version
            assert r.limit_bytes == 256 * MIB and r.path.endswith(cg.path.name)
            assert r.working_set_bytes is not None and 96 * MIB <= r.working_set_bytes <= 256 * MIB
            assert probe.oom_kills_rise() == 0
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.wait(timeout=60) == -signal.SIGKILL
            assert probe.oom_kills_rise() == 1 == cg.oom_kills()   # read after the process is gone
        finally:
            proc.kill()
            proc.wait()


@needs_cgroup
@pytest.mark.slow
def test_collect_names_an_oom_kill_at_the_container_limit(tmp_path: Path, child_env: dict[str, str]) -> None:
    """`runlens collect` started inside a 512 MiB cgroup: the child grows until the kernel kills it; the job says
    so (not "likely"), the event carries the count, and every sample carries the container's limit."""
    child = tmp_path / "grow.py"
    child.write_text("import time\nheld = []\nwhile True:\n    held.append(b'x' * (32 << 20))\n    time.sleep(0.02)\n")
    env = {**child_env, "RUNLENS_SAMPLE_INTERVAL": "0.2", "RUNLENS_FLUSH_INTERVAL": "0.2"}
    argv = [sys.executable, "-m", "runlens", "collect", "--db", str(tmp_path / "runlens.db"), "--",
            sys.executable, str(child)]
    with memory_cgroup(512 * MIB) as cg:
        result = subprocess.run(cg.enter_argv(argv), cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert result.returncode == 137, result.stderr.decode()
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = store.get_job(store.list_jobs()[0]["job_id"])
    assert job["status"] == "failed" and job["exit_code"] == 137
    assert job["status_reason"].startswith(CONTAINER_OOM_KILL_REASON), job["status_reason"]
    kill = [e for e in store.rows("training_events", job["job_id"]) if e["event_type"] == "host_oom_suspected"]
    assert len(kill) == 1 and kill[0]["details"]["confirmed"] is True
    assert kill[0]["details"]["container_oom_kills"] == 1
    assert kill[0]["details"]["container_memory_limit_gb"] == pytest.approx(0.5)
    samples: list[dict[str, Any]] = store.rows("metrics_samples", job["job_id"])
    assert samples and all(s["container_memory_limit_gb"] == pytest.approx(0.5) for s in samples)
    peak = max(s["container_memory_working_set_gb"] or 0 for s in samples)
    assert 0.25 < peak <= 0.5 + 1e-9     # what it held, below the limit it was killed at
    store.close()
