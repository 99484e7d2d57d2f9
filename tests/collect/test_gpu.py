"""The job's own GPU memory (NVML's per-process lists over the job's process tree), one GPU sampler per node,
and NVML kept off the training thread. A fake NVML at the hardware edge (``tests/fake_nvml.py``); processes,
process trees, Monitors and ``runlens collect`` are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import UNKNOWN, FakeNVML, GiB, two_gpus

import runlens
from runlens.collect.gpu import GpuProbe
from runlens.collect.node import BY_LOCAL_RANK_0, BY_THIS_PROCESS, BY_WRAPPER, gpu_sampling
from runlens.collect.sampler import SystemSampler
from runlens.store import Store, open_store

TESTS = Path(__file__).resolve().parents[1]
FOREIGN = 1   # init: never in the test's process tree, so a process of someone else's on the GPU


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A second process of the job (a DataLoader worker, a rank): a child of this process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def sampler_with(nvml: FakeNVML) -> SystemSampler:
    return SystemSampler(gpu=GpuProbe(nvml, environ={}), pss_budget=None, pressure_path=None)


def shared_gpus(me: int, child: int) -> FakeNVML:
    """GPU 0: the job's two processes (2 + 1 GiB) beside another job's 10 GiB; GPU 1: only the other job."""
    nvml = two_gpus()
    nvml.devices[0]["procs"] = [(me, 2 * GiB), (child, 1 * GiB), (FOREIGN, 10 * GiB)]
    nvml.devices[1]["procs"] = [(FOREIGN, 5 * GiB)]
    return nvml


# -- the job's own memory ------------------------------------------------------------------------------------

def test_the_jobs_gpu_memory_is_the_sum_of_its_own_processes(child: subprocess.Popen[bytes]) -> None:
    """Two processes of the job and one foreign on a GPU: the job holds its two; the device's figures stay."""
    nvml = shared_gpus(os.getpid(), child.pid)
    sample = sampler_with(nvml).sample()
    assert sample.row["job_gpu_memory_gb"] == 3.0
    assert [g["job_gpu_memory_gb"] for g in sample.gpus] == [3.0, 0.0]   # nothing of the job's on GPU 1
    assert [g["memory_used_gb"] for g in sample.gpus] == [10.0, 30.0]    # the device's, every process included
    assert sample.row["gpu_memory_used_gb"] == 40.0


def test_a_process_in_both_lists_counts_once(child: subprocess.Popen[bytes]) -> None:
    nvml = shared_gpus(os.getpid(), child.pid)
    nvml.devices[0]["graphics"] = [(os.getpid(), 2 * GiB)]   # a compute and a graphics context
    assert sampler_with(nvml).sample().row["job_gpu_memory_gb"] == 3.0


@pytest.mark.parametrize("procs", [
    pytest.param([], id="no-entries"),
    pytest.param([(FOREIGN, 4 * GiB), (4_000_000, 6 * GiB)], id="pids-of-another-namespace"),
])
def test_a_container_without_the_jobs_entries_records_none_not_zero(procs: list[Any]) -> None:
    """In a container NVML may list no process, or host PIDs naming none of the job's: the job's figure is
    unknown (None), and the device's figures are kept."""
    nvml = two_gpus()
    for dev in nvml.devices:
        dev["procs"] = list(procs)
    sample = sampler_with(nvml).sample()
    assert sample.row["job_gpu_memory_gb"] is None
    assert [g["job_gpu_memory_gb"] for g in sample.gpus] == [None, None]
    assert sample.row["gpu_memory_used_gb"] == 40.0


def test_memory_nvml_cannot_give_leaves_that_device_unknown(child: subprocess.Popen[bytes]) -> None:
    """Windows' WDDM gives no per-process memory: that device's figure is None, the others still count."""
    nvml = shared_gpus(os.getpid(), child.pid)
    nvml.devices[1]["procs"] = [(child.pid, None)]
    sample = sampler_with(nvml).sample()
    assert [g["job_gpu_memory_gb"] for g in sample.gpus] == [3.0, None]
    assert sample.row["job_gpu_memory_gb"] == 3.0


def test_an_older_driver_falls_back_to_the_older_process_list() -> None:
    """nvidia-ml-py's v3 list on a driver without it (Function Not Found): v2, found once and kept."""
    lacks = frozenset({"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3"})
    nvml = two_gpus(driver_lacks=lacks)
    nvml.devices[0]["procs"] = [(os.getpid(), 2 * GiB)]
    sampler = sampler_with(nvml)
    assert sampler.sample().row["job_gpu_memory_gb"] == 2.0
    nvml.process_calls.clear()
    assert sampler.sample().row["job_gpu_memory_gb"] == 2.0
    assert set(nvml.process_calls) == {"nvmlDeviceGetComputeRunningProcesses_v2",
                                       "nvmlDeviceGetGraphicsRunningProcesses_v2"}


def test_older_bindings_with_only_the_plain_names_work() -> None:
    nvml = two_gpus(functions=frozenset({"nvmlDeviceGetComputeRunningProcesses",
                                         "nvmlDeviceGetGraphicsRunningProcesses"}))
    nvml.devices[1]["procs"] = [(os.getpid(), 5 * GiB)]
    assert sampler_with(nvml).sample().row["job_gpu_memory_gb"] == 5.0


def test_a_device_without_process_lists_is_not_asked_again() -> None:
    nvml = two_gpus()
    for dev in nvml.devices:
        dev["procs"] = dev["graphics"] = None   # Not Supported
    sampler = sampler_with(nvml)
    assert sampler.sample().row["job_gpu_memory_gb"] is None
    nvml.process_calls.clear()
    row = sampler.sample().row
    assert row["job_gpu_memory_gb"] is None and row["gpu_memory_used_gb"] == 40.0
    assert nvml.process_calls == []


def test_failing_process_lists_cost_only_the_jobs_figure() -> None:
    """The per-process lists failing (NVML 'Unknown Error') leave the job's figure None; the GPU probe goes on."""
    nvml = two_gpus()
    nvml.devices[0]["procs"] = UNKNOWN
    sampler = sampler_with(nvml)
    rows = [sampler.sample().row for _ in range(4)]
    assert all(r["job_gpu_memory_gb"] is None and r["gpu_memory_used_gb"] == 40.0 for r in rows)
    assert not sampler.probe_disabled("gpu")


def test_the_job_tree_can_be_rooted_at_the_launcher(child: subprocess.Popen[bytes]) -> None:
    """Local rank 0 under torchrun counts its sibling ranks: the tree under the launcher (here: this process,
    with the sampler measuring only the child)."""
    nvml = shared_gpus(os.getpid(), child.pid)
    own = SystemSampler(pid=child.pid, gpu=GpuProbe(nvml, environ={}), pss_budget=None, pressure_path=None)
    assert own.sample().row["job_gpu_memory_gb"] == 1.0
    nvml = shared_gpus(os.getpid(), child.pid)
    rooted = SystemSampler(pid=child.pid, gpu=GpuProbe(nvml, environ={}), gpu_job_pid=os.getpid(),
                           pss_budget=None, pressure_path=None)
    assert rooted.sample().row["job_gpu_memory_gb"] == 3.0


# -- one GPU sampler per node --------------------------------------------------------------------------------

class _Proc:
    def __init__(self, pid: int, parent: Any = None, name: str = "python", cmdline: list[str] | None = None):
        self.pid, self._parent, self._name, self._cmdline = pid, parent, name, cmdline or ["python", "train.py"]

    def parent(self) -> Any:
        return self._parent

    def name(self) -> str:
        return self._name

    def cmdline(self) -> list[str]:
        return self._cmdline


def _psutil_with(procs: dict[int, _Proc]) -> Any:
    return types.SimpleNamespace(Process=lambda pid: procs[pid])


def test_local_rank_0_samples_the_nodes_gpus_and_counts_the_ranks_under_the_launcher() -> None:
    agent = _Proc(100, name="python", cmdline=["/usr/bin/python", "/venv/bin/torchrun", "--nproc_per_node", "8"])
    ps = _psutil_with({101: _Proc(101, parent=agent), 102: _Proc(102, parent=agent)})
    env = {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "8", "RANK": "8"}
    rank0 = gpu_sampling(wrapper_samples=False, pid=101, environ=env, psutil_module=ps)
    assert (rank0.sample_gpus, rank0.job_root_pid, rank0.sampled_by) == (True, 100, BY_LOCAL_RANK_0)
    other = gpu_sampling(wrapper_samples=False, pid=102, environ={**env, "LOCAL_RANK": "1"}, psutil_module=ps)
    assert (other.sample_gpus, other.job_root_pid, other.sampled_by) == (False, 102, BY_LOCAL_RANK_0)


def test_a_single_process_and_a_wrapped_rank() -> None:
    alone = gpu_sampling(wrapper_samples=False, pid=7, environ={})
    assert (alone.sample_gpus, alone.job_root_pid, alone.sampled_by) == (True, 7, BY_THIS_PROCESS)
    one = gpu_sampling(wrapper_samples=False, pid=7, environ={"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    assert one.sample_gpus and one.job_root_pid == 7
    wrapped = gpu_sampling(wrapper_samples=True, pid=7, environ={"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"})
    assert (wrapped.sample_gpus, wrapped.sampled_by) == (False, BY_WRAPPER)


def test_local_rank_0_without_a_launcher_parent_is_its_own_root() -> None:
    ps = _psutil_with({101: _Proc(101, parent=_Proc(1, name="systemd", cmdline=["/sbin/init"]))})
    role = gpu_sampling(wrapper_samples=False, pid=101, environ={"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
                        psutil_module=ps)
    assert role.sample_gpus and role.job_root_pid == 101


FAKE_PYNVML = '''
"""pynvml for this test: the fake NVML over two GPUs listing every process of this host's process group as the
job's (1 GiB each); every nvmlInit is logged with the process and thread that made it."""
import json, os, sys, threading
sys.path.insert(0, {tests!r})
from fake_nvml import GiB, two_gpus

_fake = two_gpus()


def nvmlInit():
    with open(os.environ["FAKE_NVML_LOG"], "a") as fh:
        fh.write(json.dumps({{"pid": os.getpid(), "thread": threading.current_thread().name,
                             "argv": sys.argv}}) + "\\n")
    _fake.nvmlInit()


def _procs(handle):
    import psutil
    me = psutil.Process()
    return [(p.pid, GiB) for p in [me.parent(), me, *me.parent().children(recursive=True)] if p is not None]


def nvmlDeviceGetComputeRunningProcesses_v3(handle):
    import types
    return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in _procs(handle)]


def __getattr__(name):
    return getattr(_fake, name)
'''

RANK_SCRIPT = '''
import os, sys, runlens
with runlens.Monitor(name="rank" + os.environ["LOCAL_RANK"], db=sys.argv[1], sample_interval=0.2) as mon:
    for step in range(3):
        mon.step(step, loss=1.0)
    print(mon.job_id, flush=True)
'''


def _nvml_env(tmp_path: Path, child_env: dict[str, str]) -> dict[str, str]:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_PYNVML.format(tests=str(TESTS)))
    return {**child_env, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]),
            "FAKE_NVML_LOG": str(tmp_path / "nvml.log")}


def _inits(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "nvml.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_of_two_local_ranks_only_rank_0_samples_the_gpus(tmp_path: Path, child_env: dict[str, str],
                                                          db_url: str, store: Store) -> None:
    """Two ranks of one job on one host, each with a Monitor: NVML is started by local rank 0 only, whose
    job has the GPU samples; rank 1's job has its own process's samples and no GPU figures."""
    env = _nvml_env(tmp_path, child_env)
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    procs = [subprocess.Popen([sys.executable, str(script), db_url], stdout=subprocess.PIPE, text=True,
                              env={**env, "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2", "RANK": str(r),
                                   "WORLD_SIZE": "2"}) for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    job0, job1 = (out.strip().splitlines()[-1] for out in outs)
    inits = _inits(tmp_path)
    assert {i["pid"] for i in inits} == {procs[0].pid}
    assert all(i["thread"] != "MainThread" for i in inits)
    assert store.count("gpu_samples", job0) >= 2 and store.count("gpu_samples", job1) == 0
    rows1 = store.rows("metrics_samples", job1)
    assert rows1 and all(r["gpu_memory_used_gb"] is None and r["main_process_memory_gb"] for r in rows1)
    rows0 = store.rows("metrics_samples", job0)
    assert all(r["job_gpu_memory_gb"] is not None and r["job_gpu_memory_gb"] > 0 for r in rows0)
    start = [e for e in store.rows("training_events", job1) if e["event_type"] == "start"][0]
    assert start["details"]["gpus_sampled_by"] == BY_LOCAL_RANK_0
    assert store.get_job(job0)["environment"]["gpus"][0]["name"] == "NVIDIA A100"


def test_under_runlens_collect_only_the_wrapper_starts_nvml(tmp_path: Path, child_env: dict[str, str]) -> None:
    """``runlens collect -- python train.py`` with a Monitor inside: the wrapper samples the tree's GPUs and
    records the job's own GPU memory; the attached Monitor never starts NVML."""
    env = _nvml_env(tmp_path, child_env)
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    db = tmp_path / "r.db"
    proc = subprocess.run([sys.executable, "-m", "runlens", "collect", "--db", str(db), "--",
                           sys.executable, str(script), f"sqlite:///{db}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**env, "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                                                       "RUNLENS_SAMPLE_INTERVAL": "0.2"})
    assert proc.returncode == 0, proc.stderr
    inits = _inits(tmp_path)
    assert inits and not [i for i in inits if i["argv"][0] == str(script)]   # the wrapper's only
    store = open_store(str(db), create=False)
    try:
        (job,) = store.list_jobs()
        rows = store.rows("metrics_samples", job["job_id"])
        wrapper_rows = [r for r in rows if r["rank"] is None]
        assert any(r["job_gpu_memory_gb"] for r in wrapper_rows)
        assert all(r["gpu_memory_used_gb"] is None for r in rows if r["rank"] is not None)
        attached = [e for e in store.rows("training_events", job["job_id"]) if e["event_type"] == "monitor_attached"]
        assert attached[0]["details"]["gpus_sampled_by"] == BY_WRAPPER
    finally:
        store.close()


# -- NVML off the training thread ----------------------------------------------------------------------------

def test_monitor_start_leaves_nvml_to_the_sampler_thread(monkeypatch: pytest.MonkeyPatch, db_url: str,
                                                         store: Store) -> None:
    """nvmlInit can take seconds on a big machine: the Monitor's start never calls it on the training thread;
    the sampler thread starts NVML once, for its samples and for the environment record alike."""
    nvml = two_gpus()
    nvml.devices[0]["procs"] = [(os.getpid(), 3 * GiB), (FOREIGN, 10 * GiB)]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with runlens.Monitor(name="nvml-thread", db=db_url, sample_interval=0.2) as mon:
        assert "MainThread" not in nvml.init_threads
        mon.step(0, loss=1.0)
    assert nvml.init_threads == ["runlens-sampler"]
    job = store.get_job(mon.job_id)
    assert [g["name"] for g in job["environment"]["gpus"]] == ["NVIDIA A100", "NVIDIA A100"]
    rows = store.rows("gpu_samples", mon.job_id, order_by="id")
    assert rows and [r["job_gpu_memory_gb"] for r in rows[:2]] == [3.0, 0.0]
    samples = store.rows("metrics_samples", mon.job_id)
    assert samples[0]["job_gpu_memory_gb"] == 3.0
