"""The system sampler: real psutil on this machine, real child processes, and a fake NVML at the hardware edge."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fake_nvml import FakeNVML, two_gpus

from runlens.collect.gpu import GpuProbe, parse_visible_devices
from runlens.collect.procs import ProcessTree, is_launcher
from runlens.collect.sampler import (
    GPU_COLUMNS,
    SAMPLE_COLUMNS,
    Sample,
    SamplerThread,
    SystemSampler,
    cuda_allocator_bytes,
    read_pressure,
)
from runlens.store.models import GpuSample, MetricsSample

MiB = 1 << 20
GiB = 1 << 30
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS and /proc are Linux's")


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def no_gpu() -> GpuProbe:
    return GpuProbe(nvml=None, platform="linux", machine="x86_64")


# -- columns -----------------------------------------------------------------------------------------


def test_sample_rows_use_exactly_the_store_columns() -> None:
    """Every row carries every metrics_samples column (None when unmeasured), so rows batch into one executemany."""
    store_cols = {c.name for c in MetricsSample.__table__.columns} - {"id", "job_id"}
    assert set(SAMPLE_COLUMNS) == store_cols
    gpu_cols = {c.name for c in GpuSample.__table__.columns} - {"id", "sample_id", "job_id", "timestamp"}
    assert set(GPU_COLUMNS) == gpu_cols
    sample = SystemSampler(gpu=no_gpu()).sample()
    assert set(sample.row) == set(SAMPLE_COLUMNS)


# -- host memory, CPU, PSI -----------------------------------------------------------------------------


@linux_only
def test_used_memory_is_total_minus_available_not_free() -> None:
    """used = MemTotal - MemAvailable (within what the machine changes between two reads), not total - free."""
    row = SystemSampler(gpu=no_gpu()).sample().row
    info = _meminfo()
    assert row["total_memory_gb"] * GiB == pytest.approx(info["MemTotal"], abs=1 * MiB)
    assert row["used_memory_gb"] * GiB == pytest.approx(info["MemTotal"] - info["MemAvailable"], abs=100 * MiB)
    assert row["available_memory_gb"] * GiB == pytest.approx(info["MemAvailable"], abs=100 * MiB)
    assert row["used_memory_gb"] + row["available_memory_gb"] == pytest.approx(row["total_memory_gb"])


def test_cpu_swap_rate_and_main_process_figures() -> None:
    """CPU % and the swap-in rate need two readings; the main process is measured by RSS from the first."""
    sampler = SystemSampler(gpu=no_gpu())
    first = sampler.sample().row
    assert first["swap_in_gb_per_s"] is None          # a rate needs an interval
    assert first["process_cpu_percent"] is None       # ditto
    deadline = time.perf_counter() + 0.2
    while time.perf_counter() < deadline:             # burn a little CPU so there is something to see
        sum(range(1000))
    second = sampler.sample().row
    assert second["swap_in_gb_per_s"] is not None and second["swap_in_gb_per_s"] >= 0
    assert 0 <= second["cpu_utilization_percent"] <= 100
    assert second["process_cpu_percent"] > 10
    rss = psutil.Process().memory_info().rss
    assert second["main_process_memory_gb"] * GiB == pytest.approx(rss, rel=0.1)
    assert second["swap_used_gb"] is not None


def test_pressure_file_parsed_and_absent_file_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """PSI 'some/full avg10' come from the file; no file (older kernels, macOS) is not a failure."""
    psi = tmp_path / "memory"
    psi.write_text("some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=4.25 avg60=1.00 avg300=0.10 total=9\n")
    assert read_pressure(str(psi)) == (12.5, 4.25)
    row = SystemSampler(gpu=no_gpu(), pressure_path=str(psi)).sample().row
    assert (row["memory_pressure_some_avg10"], row["memory_pressure_full_avg10"]) == (12.5, 4.25)
    caplog.set_level(logging.INFO)
    sampler = SystemSampler(gpu=no_gpu(), pressure_path=str(tmp_path / "absent"))
    rows = [sampler.sample().row for _ in range(4)]
    assert all(r["memory_pressure_some_avg10"] is None for r in rows)
    assert not sampler.probe_disabled("pressure")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "pressure" in r.getMessage()]


# -- the process tree ---------------------------------------------------------------------------------


def _worker(ready: Any, done: Any, private_mb: int, rename: str | None) -> None:
    if rename:
        with open("/proc/self/comm", "w") as fh:
            fh.write(rename)
    private = bytearray(b"\x02") * (private_mb * MiB)   # written, so resident and private
    ready.set()
    done.wait(60)
    del private


class _Children:
    """N real forked children of this process that each hold ``private_mb`` of their own memory."""

    def __init__(self, n: int, private_mb: int, rename: list[str | None] | None = None) -> None:
        ctx = mp.get_context("fork")
        self.done = ctx.Event()
        readies = [ctx.Event() for _ in range(n)]
        names = rename or [None] * n
        self.procs = [ctx.Process(target=_worker, args=(r, self.done, private_mb, names[i]), daemon=True)
                      for i, r in enumerate(readies)]
        for p in self.procs:
            p.start()
        for r in readies:
            assert r.wait(30), "a child did not start"

    def close(self) -> None:
        self.done.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


@pytest.fixture
def shared_buffer() -> Iterator[bytearray]:
    buf = bytearray(b"\x01") * (300 * MiB)   # touched in the parent before the fork: shared copy-on-write
    yield buf
    del buf


@linux_only
def test_worker_memory_counts_shared_pages_once(shared_buffer: bytearray) -> None:
    """3 forked children with ~100 MB private each and a 300 MB buffer shared with the parent:
    PSS reports ~300 MB plus a share of the buffer, never 3 copies of it (summed RSS would be > 1.2 GB)."""
    # Pages the parent already holds (the interpreter, and torch when an earlier test imported it) are shared
    # with each child too; a child's PSS share of them is at most half.
    parent_rest = max(40 * MiB, psutil.Process().memory_info().rss - 300 * MiB)
    kids = _Children(3, private_mb=100)
    try:
        sampler = SystemSampler(gpu=no_gpu(), pss_budget=None)
        row = sampler.sample().row
        rss_sum = sum(psutil.Process(p.pid).memory_info().rss for p in kids.procs)
    finally:
        kids.close()
    assert row["worker_count"] == 3
    worker_bytes = row["worker_memory_gb"] * GiB
    assert worker_bytes >= 3 * 95 * MiB                       # the private memory is all there
    # PSS gives the 3 workers at most 3/4 of the buffer (the parent holds the rest) plus their share of
    # the parent's other pages; summed RSS counts the buffer 3 times over.
    assert worker_bytes < 300 * MiB + 300 * MiB * 3 / 4 + 3 * parent_rest / 2 + 3 * 20 * MiB
    assert rss_sum > 3 * (100 + 300) * MiB
    assert worker_bytes < rss_sum / 2
    assert sampler.last_tree is not None and sampler.last_tree.worker_metric == "pss"


@linux_only
def test_named_dataloader_workers_are_the_only_workers_once_seen() -> None:
    """torch names its workers pt_data_worker; then other forked children (a Pool, a compile pool) don't count."""
    kids = _Children(3, private_mb=10, rename=["pt_data_worker", "pt_data_worker", None])
    try:
        tree = ProcessTree(os.getpid(), pss_budget=None)
        reading = tree.read()
    finally:
        kids.close()
    assert reading.worker_count == 2
    assert set(reading.worker_pids) == {p.pid for p in kids.procs[:2]}
    assert kids.procs[2].pid in reading.other_pids


@linux_only
def test_exec_children_and_helpers_are_not_workers(wait_until: Any) -> None:
    """A program the process ran (subprocess) and multiprocessing helpers are neither counted nor measured."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    tracker = subprocess.Popen([sys.executable, "-c",
                                "from multiprocessing.resource_tracker import main  # noqa\nimport time; time.sleep(30)"])
    kids = _Children(1, private_mb=10)
    try:
        # until exec, a child is a fork of this process; its command line changes when it has exec'd
        wait_until(lambda: all(psutil.Process(p.pid).cmdline()[1:2] == ["-c"] for p in (sleeper, tracker)))
        reading = ProcessTree(os.getpid(), pss_budget=None).read()
    finally:
        kids.close()
        for p in (sleeper, tracker):
            p.kill()
            p.wait()
    assert reading.worker_pids == [kids.procs[0].pid]
    assert {sleeper.pid, tracker.pid} <= set(reading.other_pids)


@linux_only
def test_main_process_found_below_a_shell_launcher(wait_until: Any) -> None:
    """`runlens collect -- sh run.sh`: the shell is a launcher, the Python below it is the main process."""
    sh = subprocess.Popen(["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(30)'; true"])
    try:
        def python_started() -> psutil.Process | None:
            kids = psutil.Process(sh.pid).children()
            ready = kids and kids[0].cmdline()[:1] == [sys.executable] and kids[0].memory_info().rss > 5 * MiB
            return kids[0] if ready else None

        child = wait_until(python_started, message="the Python below the shell")
        reading = ProcessTree(sh.pid).read()
    finally:
        for p in psutil.Process(sh.pid).children(recursive=True):
            p.kill()
        sh.kill()
        sh.wait()
    assert reading.main_pid == child.pid
    assert reading.main_rss_bytes is not None and reading.main_rss_bytes > 5 * MiB
    assert is_launcher("bash", ["bash", "run.sh"]) and not is_launcher("python3", ["python3", "train.py"])


@pytest.mark.parametrize("name, cmdline, expected", [
    ("bash", ["bash", "run.sh"], True),
    ("uv", ["uv", "run", "train.py"], True),
    ("torchrun", ["/venv/bin/python", "/venv/bin/torchrun", "--nproc-per-node", "1", "train.py"], True),
    ("python", ["python", "-m", "torch.distributed.run", "train.py"], True),
    ("accelerate", ["/venv/bin/python", "/venv/bin/accelerate", "launch", "train.py"], True),
    ("python", ["python", "train.py", "--config", "accelerate.yaml"], False),
    ("python", ["python", "train_deepspeed.py"], False),
    ("pt_data_worker", ["python", "train.py"], False),
])
def test_launchers_are_recognised_by_program_not_by_substring(name: str, cmdline: list[str], expected: bool) -> None:
    assert is_launcher(name, cmdline) is expected


@linux_only
def test_pss_budget_reuses_measurements_with_rss_change(shared_buffer: bytearray) -> None:
    """Between full PSS passes the figure is last PSS + RSS change; a pass happens again once the budget allows."""
    now = [0.0]
    kids = _Children(2, private_mb=20)
    try:
        tree = ProcessTree(os.getpid(), pss_budget=0.005, monotonic=lambda: now[0])
        first = tree.read()
        assert first.pss_seconds is not None and first.estimated_workers == 0
        second = tree.read()
        assert second.pss_seconds is None and second.estimated_workers == 2
        assert second.worker_bytes == pytest.approx(first.worker_bytes, rel=0.05)
        now[0] += first.pss_seconds / 0.005 + 0.001
        third = tree.read()
        assert third.pss_seconds is not None and third.estimated_workers == 0
    finally:
        kids.close()


def test_dead_main_process_gives_empty_process_columns() -> None:
    """A pid that is gone yields None process figures, not an error, and the rest of the sample still works."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    row = SystemSampler(pid=p.pid, gpu=no_gpu()).sample().row
    assert row["main_process_memory_gb"] is None and row["worker_count"] is None
    assert row["total_memory_gb"] > 0


def test_tree_walk_costs_little_without_pss() -> None:
    """The walk itself (no workers) stays around a millisecond; PSS is the only expensive part."""
    sampler = SystemSampler(gpu=no_gpu())
    sampler.sample()
    t0 = time.process_time()
    for _ in range(20):
        sampler.sample()
    per_sample = (time.process_time() - t0) / 20
    assert per_sample < 0.02, f"{per_sample * 1000:.1f} ms per sample"


# -- failing probes ------------------------------------------------------------------------------------


class _PsutilWithBrokenMemory:
    """The real psutil, except that virtual_memory() fails: a probe that keeps raising."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(psutil, name)

    def virtual_memory(self) -> Any:
        self.calls += 1
        raise OSError("no /proc/meminfo here")


def test_failing_probe_is_disabled_after_three_failures(caplog: pytest.LogCaptureFixture) -> None:
    """A probe that raises is retried, turned off after 3 in a row with one warning, and the rest goes on."""
    caplog.set_level(logging.INFO)
    fake = _PsutilWithBrokenMemory()
    sampler = SystemSampler(psutil_module=fake, gpu=no_gpu())
    rows = [sampler.sample().row for _ in range(6)]
    assert fake.calls == 3
    assert sampler.probe_disabled("memory")
    assert all(r["total_memory_gb"] is None for r in rows)
    assert all(r["main_process_memory_gb"] is not None for r in rows)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 times in a row" in warnings[0].getMessage()


# -- the CUDA allocator -------------------------------------------------------------------------------


def test_cuda_allocator_read_only_when_torch_already_uses_cuda() -> None:
    """No torch imported, or CUDA not initialised: None (we never import torch or start CUDA ourselves)."""
    assert cuda_allocator_bytes({}) is None

    class FakeCuda:
        initialized = False

        def is_initialized(self) -> bool:
            return self.initialized

        def device_count(self) -> int:
            return 2

        def memory_allocated(self, i: int) -> int:
            return (i + 1) * GiB

        def memory_reserved(self, i: int) -> int:
            return (i + 2) * GiB

        def max_memory_allocated(self, i: int) -> int:
            return (i + 3) * GiB

    cuda = FakeCuda()
    modules = {"torch": types.SimpleNamespace(cuda=cuda)}
    assert cuda_allocator_bytes(modules) is None
    cuda.initialized = True
    assert cuda_allocator_bytes(modules) == (3 * GiB, 5 * GiB, 7 * GiB)
    row = SystemSampler(gpu=no_gpu(), modules=modules).sample().row
    assert (row["cuda_allocated_gb"], row["cuda_reserved_gb"], row["cuda_max_allocated_gb"]) == (3.0, 5.0, 7.0)


@pytest.mark.needs_torch
def test_cpu_torch_gives_no_cuda_figures() -> None:
    """With the real (CPU) torch imported, CUDA is never initialised: the columns stay None."""
    import torch

    assert not torch.cuda.is_initialized()
    row = SystemSampler(gpu=no_gpu()).sample().row
    assert row["cuda_allocated_gb"] is None
    assert not torch.cuda.is_initialized()


# -- GPUs through a fake NVML ---------------------------------------------------------------------------


def test_gpu_sums_and_means_over_all_devices() -> None:
    """No CUDA_VISIBLE_DEVICES: every device; memory summed, utilisation averaged, one row per device."""
    nvml = two_gpus()
    sampler = SystemSampler(gpu=GpuProbe(nvml, environ={}))
    s1, s2 = sampler.sample(), sampler.sample()
    assert nvml.init_calls == 1                      # NVML started once, not per sample
    row = s2.row
    assert row["gpu_memory_used_gb"] == 40.0 and row["gpu_memory_total_gb"] == 80.0
    assert row["gpu_utilization_percent"] == 70.0 and row["unified_memory"] is False
    assert [g["device_index"] for g in s2.gpus] == [0, 1]
    assert s2.gpus[1] == {"device_index": 1, "name": "NVIDIA A100", "memory_used_gb": 30.0,
                          "memory_total_gb": 40.0, "utilization_percent": 50.0, "temperature_c": 70.0,
                          "power_w": 300.0, "job_gpu_memory_gb": None}   # no process of the job is listed
    assert set(s1.gpus[0]) == set(GPU_COLUMNS)


@pytest.mark.parametrize("spec, expected", [
    ("1", [1]),
    ("1,0", [1, 0]),
    ("GPU-bbbb", [1]),                 # a unique UUID prefix is enough, as for CUDA
    ("GPU-aaaa1111,GPU-bbbb2222", [0, 1]),
    ("0,7,1", [0]),                    # CUDA stops at the first entry that names no device
    ("GPU-", []),                      # ambiguous prefix: no device
    ("-1", []),
    ("", []),
])
def test_cuda_visible_devices_selects_the_jobs_gpus(spec: str, expected: list[int]) -> None:
    nvml = two_gpus()
    reading = GpuProbe(nvml, environ={"CUDA_VISIBLE_DEVICES": spec}).read()
    if not expected:
        assert reading is None
        return
    assert reading is not None
    assert [g["device_index"] for g in reading.devices] == expected
    used = {0: 10.0, 1: 30.0}
    assert reading.memory_used_gb == sum(used[i] for i in expected)


def test_parse_visible_devices_handles_spaces_and_mig_uuids() -> None:
    assert parse_visible_devices(" 1 , 0 ", ["", ""]) == [1, 0]
    assert parse_visible_devices("MIG-abc", ["GPU-x"]) == ["MIG-abc"]
    assert parse_visible_devices(None, ["a", "b", "c"]) == [0, 1, 2]


def test_no_gpu_selected_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runlens")
    sampler = SystemSampler(gpu=GpuProbe(two_gpus(), environ={"CUDA_VISIBLE_DEVICES": ""}))
    rows = [sampler.sample().row for _ in range(3)]
    assert all(r["gpu_memory_used_gb"] is None and r["unified_memory"] is None for r in rows)
    lines = [r.getMessage() for r in caplog.records if "GPU" in r.getMessage()]
    assert lines == ["no GPU metrics: CUDA_VISIBLE_DEVICES='' selects no GPU"]


def test_unified_memory_device_reports_the_system_pool(caplog: pytest.LogCaptureFixture) -> None:
    """GB10-like device: NVML memory is NotSupported, so GPU memory is the host pool (used = total - available)."""
    caplog.set_level(logging.INFO, logger="runlens")
    nvml = FakeNVML([{"name": "NVIDIA GB10", "uuid": "GPU-cccc", "unified": True, "util": 40}])
    sampler = SystemSampler(gpu=GpuProbe(nvml, environ={}))
    s = [sampler.sample() for _ in range(3)][-1]
    row = s.row
    assert row["unified_memory"] is True
    assert row["gpu_memory_total_gb"] == pytest.approx(row["total_memory_gb"])
    assert row["gpu_memory_used_gb"] == pytest.approx(row["used_memory_gb"], abs=0.2)
    assert row["gpu_utilization_percent"] == 40.0
    assert s.gpus[0]["power_w"] is None                    # NotSupported power: None, not a failure
    assert not sampler.probe_disabled("gpu")
    unified_lines = [r for r in caplog.records if "unified memory" in r.getMessage()]
    assert len(unified_lines) == 1 and "GB10" in unified_lines[0].getMessage()


def test_apple_silicon_reports_the_unified_pool_without_nvml() -> None:
    sampler = SystemSampler(gpu=GpuProbe(nvml=None, platform="darwin", machine="arm64"))
    row = sampler.sample().row
    assert row["unified_memory"] is True
    assert row["gpu_memory_total_gb"] == pytest.approx(row["total_memory_gb"])
    assert row["gpu_utilization_percent"] is None


def test_failing_gpu_probe_is_disabled_after_three_and_sampling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A GPU that keeps failing (NVML 'Unknown Error'): 3 tries, one loud warning, GPU fields None, no crash."""
    caplog.set_level(logging.INFO, logger="runlens")
    nvml = two_gpus()
    nvml.fail_utilization = 999
    sampler = SystemSampler(gpu=GpuProbe(nvml, environ={}))
    rows = [sampler.sample().row for _ in range(5)]
    assert sampler.probe_disabled("gpu")
    assert all(r["gpu_memory_used_gb"] is None for r in rows)
    assert all(r["total_memory_gb"] is not None for r in rows)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPU probe failed 3 times in a row" in warnings[0]


def test_recovering_gpu_probe_is_not_disabled() -> None:
    """Failures must be consecutive: a probe that fails twice, then works, keeps going."""
    nvml = two_gpus()
    sampler = SystemSampler(gpu=GpuProbe(nvml, environ={}))
    nvml.fail_utilization = 999
    sampler.sample()
    sampler.sample()
    nvml.fail_utilization = None
    assert sampler.sample().row["gpu_utilization_percent"] == 70.0
    nvml.fail_utilization = 999
    sampler.sample()
    sampler.sample()
    assert not sampler.probe_disabled("gpu")


@pytest.mark.parametrize("probe, message", [
    (GpuProbe(nvml=None, platform="linux", machine="x86_64"), "not installed"),
    (GpuProbe(FakeNVML([], init_error=12), platform="linux", machine="x86_64"), "NVML is not available"),
    (GpuProbe(FakeNVML([]), environ={}, platform="linux", machine="x86_64"), "NVML sees no GPU"),
])
def test_no_nvml_or_no_gpu_is_one_info_line(probe: GpuProbe, message: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runlens")
    sampler = SystemSampler(gpu=probe)
    rows = [sampler.sample().row for _ in range(3)]
    assert all(r["gpu_memory_used_gb"] is None and r["gpu_utilization_percent"] is None for r in rows)
    records = [r for r in caplog.records if r.name == "runlens.collect.gpu"]
    assert len(records) == 1 and records[0].levelno == logging.INFO and message in records[0].getMessage()
    assert not sampler.probe_disabled("gpu")


def test_real_pynvml_without_a_driver_fails_soft() -> None:
    """The real bindings on a machine without a GPU driver: None GPU fields, never an exception."""
    pytest.importorskip("pynvml")
    row = SystemSampler().sample().row
    assert row["total_memory_gb"] > 0   # the sample as a whole is fine whatever the GPU situation


# -- the thread ----------------------------------------------------------------------------------------


class _CountingSampler:
    """Stands in for SystemSampler where only the thread's timing is under test."""

    def __init__(self, cost: float = 0.0) -> None:
        self.cost = cost
        self.times: list[float] = []

    def sample(self) -> Sample:
        self.times.append(time.monotonic())
        if self.cost:
            time.sleep(self.cost)
        return Sample(row={"timestamp": time.time()})


def test_first_sample_is_immediate_and_stop_joins(wait_until: Any) -> None:
    fake = _CountingSampler()
    got: list[Sample] = []
    t0 = time.monotonic()
    thread = SamplerThread(fake, 30.0, got.append).start()   # type: ignore[arg-type]
    wait_until(lambda: got, timeout=2, interval=0.005)
    assert got and fake.times[0] - t0 < 0.5
    t1 = time.monotonic()
    thread.stop()
    assert not thread.alive and time.monotonic() - t1 < 1.0      # stop wakes the 30 s wait at once


def test_interval_is_honoured_on_a_monotonic_schedule(wait_until: Any) -> None:
    fake = _CountingSampler()
    thread = SamplerThread(fake, 0.1, lambda s: None).start()   # type: ignore[arg-type]
    wait_until(lambda: len(fake.times) >= 10)
    thread.stop()
    assert 7 <= len(fake.times) <= 12
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:])]
    assert all(g > 0.05 for g in gaps), gaps                  # never two samples back to back
    assert 0.08 < sorted(gaps)[len(gaps) // 2] < 0.13, gaps   # on the 0.1 s schedule
    assert thread.cpu_seconds >= 0 and thread.samples_taken == len(fake.times)


def test_slow_samples_skip_missed_ticks_instead_of_bursting(wait_until: Any) -> None:
    """A sample taking 2.5 intervals: the next one waits for the next free tick, never runs back to back."""
    fake = _CountingSampler(cost=0.25)
    thread = SamplerThread(fake, 0.1, lambda s: None).start()   # type: ignore[arg-type]
    wait_until(lambda: len(fake.times) >= 5)
    thread.stop()
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:])]
    assert thread.ticks_skipped >= 2 * (len(fake.times) - 1) - 1
    # 0.25 s of work + the wait to the next 0.1 s tick: ~0.3 s apart. A sample that started late (a loaded
    # machine) can be followed after a little less, but never after less than the work itself.
    assert all(g >= 0.25 for g in gaps), gaps
    assert sorted(gaps)[len(gaps) // 2] >= 0.29, gaps


def test_request_takes_an_extra_sample_without_moving_the_schedule(wait_until: Any) -> None:
    fake = _CountingSampler()
    thread = SamplerThread(fake, 10.0, lambda s: None).start()   # type: ignore[arg-type]
    wait_until(lambda: thread.samples_taken == 1)
    thread.request()
    wait_until(lambda: thread.samples_taken == 2)
    thread.request()
    wait_until(lambda: thread.samples_taken == 3)
    thread.stop()
    assert len(fake.times) == 3


def test_failing_callback_does_not_stop_the_thread(caplog: pytest.LogCaptureFixture, wait_until: Any) -> None:
    fake = _CountingSampler()
    calls = []

    def boom(sample: Sample) -> None:
        calls.append(sample)
        raise RuntimeError("store is gone")

    thread = SamplerThread(fake, 0.05, boom).start()   # type: ignore[arg-type]
    wait_until(lambda: len(calls) >= 4)
    thread.stop()
    assert len(calls) >= 4
    assert len([r for r in caplog.records if "callback failed" in r.getMessage()]) == 1


def test_real_sampler_thread_measures_its_own_cpu(wait_until: Any) -> None:
    got: list[Sample] = []
    lock = threading.Lock()

    def keep(s: Sample) -> None:
        with lock:
            got.append(s)

    thread = SamplerThread(SystemSampler(gpu=no_gpu()), 0.05, keep).start()
    wait_until(lambda: len(got) >= 5)
    thread.stop()
    assert len(got) >= 5
    assert 0 < thread.cpu_seconds < 0.4
    assert [s.row["timestamp"] for s in got] == sorted(s.row["timestamp"] for s in got)
