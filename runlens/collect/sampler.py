"""The system sampler: host memory, swap, CPU, the job's process tree, its GPUs, at one moment.

``SystemSampler.sample()`` returns a ``Sample`` whose ``row`` has exactly the ``metrics_samples`` columns (every
column present, None where not measured, so rows batch into one executemany) and whose ``gpus`` are
``gpu_samples`` rows. ``SamplerThread`` calls it periodically on a monotonic clock and hands each sample to a
callback (the Monitor's or the wrapper's buffer).

What is measured, and why that way:

* ``used_memory_gb = total - available`` (MemAvailable), not total - free: the page cache is reclaimable and
  "free" makes every long-running Linux box look full.
* ``swap_in_gb_per_s``: swapping *in* during training is what makes steps 100x slower (ai-toolkit#1003);
  swap merely used is often harmless. A rate needs two samples, so the first sample has None.
* ``cpu_utilization_percent``: the whole host, from ``cpu_times`` deltas kept here (``psutil.cpu_percent``
  keeps one module-wide state that user code calling it would disturb). ``process_cpu_percent``: the main
  process, top's convention (100 = one core).
* the main process and its DataLoader workers: see ``runlens.collect.procs`` (main = RSS, workers = PSS).
* GPUs: see ``runlens.collect.gpu``: the device's figures, and the job's own memory on it (the processes of
  the tree under ``gpu_job_pid``). One process per node samples the GPUs (``runlens.collect.node``); the
  others pass ``sample_gpus=False``. The process's own CUDA caching-allocator figures when ``torch`` is
  already imported and CUDA already initialised (we never import torch or initialise CUDA ourselves).
* Linux PSI (``/proc/pressure/memory``): % of the last 10 s in which some / all tasks stalled on memory.
* the job's memory cgroup (``runlens.collect.cgroup``): the container's limit, its working set (usage minus
  inactive file pages) and the OOM kills counted in it, since a container is killed at its limit, not the host's.

Each probe fails soft: an exception is logged once and the rest of the sample goes on; after 3 consecutive
failures the probe is turned off for the run with one loud warning (ClearML stops GPU monitoring after 3
failures too, but quietly).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from runlens.collect.cgroup import CgroupProbe
from runlens.collect.gpu import GpuProbe, GpuReading
from runlens.collect.procs import DEFAULT_PSS_BUDGET, ProcessTree, TreeReading
from runlens.core.units import bytes_to_gib

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
PSI_PATH = "/proc/pressure/memory"

SAMPLE_COLUMNS = (
    "timestamp", "total_memory_gb", "used_memory_gb", "available_memory_gb", "swap_used_gb", "swap_in_gb_per_s",
    "cpu_utilization_percent", "process_cpu_percent", "main_process_memory_gb", "worker_memory_gb",
    "worker_count", "gpu_memory_used_gb", "gpu_memory_total_gb", "gpu_utilization_percent", "unified_memory",
    "cuda_allocated_gb", "cuda_reserved_gb", "cuda_max_allocated_gb", "memory_pressure_some_avg10",
    "memory_pressure_full_avg10", "host", "rank", "job_gpu_memory_gb",
    "container_memory_limit_gb", "container_memory_working_set_gb", "container_oom_kills", "worker_cpu_percent",
)
GPU_COLUMNS = ("device_index", "name", "memory_used_gb", "memory_total_gb", "utilization_percent",
               "temperature_c", "power_w", "job_gpu_memory_gb")


@dataclass
class Sample:
    """One system sample: ``row`` for ``metrics_samples`` (incl. ``timestamp``, time.time()), ``gpus`` for
    ``gpu_samples`` (without id, sample_id, job_id and timestamp, which the writer fills in)."""

    row: dict[str, Any]
    gpus: list[dict[str, Any]] = field(default_factory=list)


class _Probe:
    """A measurement that may fail: logged once, turned off after 3 failures in a row, loudly."""

    def __init__(self, name: str, describe: str) -> None:
        self.name = name
        self.describe = describe
        self.failures = 0
        self.disabled = False
        self._logged = False

    def run(self, fn: Callable[[], Any]) -> Any:
        if self.disabled:
            return None
        try:
            result = fn()
        except Exception as exc:
            self.failures += 1
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.failures >= MAX_CONSECUTIVE_FAILURES:
                self.disabled = True
                log.warning("the %s probe failed %d times in a row (%s); %s are off for the rest of "
                            "this run", self.name, self.failures, reason, self.describe)
            elif not self._logged:
                self._logged = True
                log.info("the %s probe failed (%s); retrying on the next sample", self.name, reason)
            return None
        self.failures = 0
        return result


def read_pressure(path: str = PSI_PATH) -> tuple[float, float | None] | None:
    """(some avg10, full avg10) from a PSI file; None when the kernel has no PSI (absent, or psi=0 at boot)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    some = full = None
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for part in rest.split():
            key, _, value = part.partition("=")
            if key == "avg10":
                if kind == "some":
                    some = float(value)
                elif kind == "full":
                    full = float(value)
    return None if some is None else (some, full)


def cuda_allocator_bytes(modules: dict[str, Any] | None = None) -> tuple[int, int, int] | None:
    """(allocated, reserved, max allocated) bytes over this process's CUDA devices, or None.

    Only when torch is already imported and CUDA already initialised: importing torch costs seconds and
    initialising CUDA creates a context (hundreds of MB of GPU memory) in a process that may never use it.
    The figures are host-side counters of the caching allocator: reading them never syncs the device.
    """
    torch = (sys.modules if modules is None else modules).get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return None
    n = int(cuda.device_count())
    alloc = sum(int(cuda.memory_allocated(i)) for i in range(n))
    reserved = sum(int(cuda.memory_reserved(i)) for i in range(n))
    peak = sum(int(cuda.max_memory_allocated(i)) for i in range(n))
    return alloc, reserved, peak


def _busy_idle(times: Any) -> tuple[float, float]:
    """(busy, total) seconds from psutil.cpu_times(), the way psutil's cpu_percent counts them."""
    total = float(sum(times))
    # guest time is already counted in user/nice on Linux
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return total - idle, total


@dataclass
class SamplerStats:
    samples: int = 0
    seconds: float = 0.0          # wall time inside sample()
    last_seconds: float = 0.0


class SystemSampler:
    """Takes one system sample at a time; thread-safe (the sampler thread and event hooks may both call it).

    Args:
        pid: the main process (default: this process). Under ``runlens collect`` it is the child's pid.
        include_children: measure the process tree under ``pid`` (DataLoader workers).
        psutil_module: psutil or a fake (a seam for tests).
        gpu: the GPU probe; None builds the default NVML probe (NVML starts on the first sample, not here).
        sample_gpus: False leaves the GPU columns None and never touches NVML: another process of the job
            samples this node's GPUs (``runlens.collect.node``).
        gpu_job_pid: the root of the job's process tree on this node, whose processes' GPU memory is the
            job's own (default ``pid``; a rank under ``torchrun`` passes the launcher, so its sibling ranks
            count too).
        clock: wall clock for the ``timestamp`` column.
        host, rank: copied into every row (multi-process jobs).
        worker_memory: "pss" (default) or "rss" (only for the benchmark; see ``procs.ProcessTree``).
        pss_budget: share of one core that full PSS passes may use (``procs``); None = PSS on every sample.
        pressure_path: the PSI file; None turns PSI off.
        modules: where to look for an already-imported torch (``sys.modules``).
        cgroup: the memory-cgroup probe; None builds one for ``pid``.
    """

    def __init__(self, pid: int | None = None, *, include_children: bool = True, psutil_module: Any = psutil,
                 gpu: GpuProbe | None = None, clock: Callable[[], float] = time.time, host: str | None = None,
                 rank: int | None = None, worker_memory: str = "pss",
                 pss_budget: float | None = DEFAULT_PSS_BUDGET, pressure_path: str | None = PSI_PATH,
                 modules: dict[str, Any] | None = None, monotonic: Callable[[], float] = time.monotonic,
                 sample_gpus: bool = True, gpu_job_pid: int | None = None,
                 cgroup: CgroupProbe | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.ps = psutil_module
        self.gpu: GpuProbe | None = (gpu if gpu is not None else GpuProbe()) if sample_gpus else None
        self.clock = clock
        self.monotonic = monotonic
        self.host = host
        self.rank = rank
        self.pressure_path = pressure_path
        self.modules = modules
        self.cgroup = cgroup if cgroup is not None else CgroupProbe(self.pid)
        self.tree = ProcessTree(self.pid, psutil_module=psutil_module, include_children=include_children,
                                worker_memory=worker_memory, pss_budget=pss_budget, monotonic=monotonic)
        # The job's processes for its GPU memory: the measured tree's, unless the job's tree on this node is
        # rooted elsewhere (a launcher above this process).
        self.gpu_tree = (ProcessTree(gpu_job_pid, psutil_module=psutil_module)
                         if gpu_job_pid is not None and gpu_job_pid != self.pid else None)
        self.stats = SamplerStats()
        self.last_tree: TreeReading | None = None
        self._lock = threading.Lock()
        self._probes = {
            "memory": _Probe("system memory", "host memory and swap figures"),
            "cpu": _Probe("CPU", "CPU figures"),
            "processes": _Probe("process tree", "main-process and worker figures"),
            "pressure": _Probe("memory pressure", "PSI figures"),
            "gpu": _Probe("GPU", "GPU metrics"),
            "cuda": _Probe("CUDA allocator", "CUDA allocator figures"),
            "cgroup": _Probe("container memory", "container (cgroup) memory figures"),
        }
        self._prev_cpu: tuple[float, float] | None = None
        self._prev_swap: tuple[float, int] | None = None   # (monotonic time, bytes swapped in so far)
        self._psi_present = pressure_path is not None
        try:
            self._prev_cpu = _busy_idle(self.ps.cpu_times())
        except Exception:
            self._prev_cpu = None

    def probe_disabled(self, name: str) -> bool:
        """True once the named probe (memory, cpu, processes, pressure, gpu, cuda, cgroup) was turned off."""
        return self._probes[name].disabled

    def sample(self) -> Sample:
        """Measure everything once. Never raises: a failing probe leaves its columns None."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                return self._sample()
            finally:
                elapsed = time.perf_counter() - t0
                self.stats.samples += 1
                self.stats.seconds += elapsed
                self.stats.last_seconds = elapsed

    def _sample(self) -> Sample:
        row: dict[str, Any] = dict.fromkeys(SAMPLE_COLUMNS)
        row["timestamp"] = self.clock()
        row["host"], row["rank"] = self.host, self.rank
        vm = self._probes["memory"].run(lambda: self._memory(row))
        self._probes["cpu"].run(lambda: self._cpu(row))
        tree: TreeReading | None = self._probes["processes"].run(lambda: self._processes(row))
        if self._psi_present:
            self._probes["pressure"].run(lambda: self._pressure(row))
        self._probes["cgroup"].run(lambda: self._cgroup(row))
        gpus: list[dict[str, Any]] = []
        gpu = self.gpu
        if gpu is not None:
            total, available = (vm.total, vm.available) if vm is not None else (None, None)
            job_pids = self._job_pids(tree)
            reading: GpuReading | None = self._probes["gpu"].run(lambda: gpu.read(total, available, job_pids))
            if reading is not None:
                row["gpu_memory_used_gb"] = reading.memory_used_gb
                row["gpu_memory_total_gb"] = reading.memory_total_gb
                row["gpu_utilization_percent"] = reading.utilization_percent
                row["unified_memory"] = reading.unified_memory
                row["job_gpu_memory_gb"] = reading.job_memory_gb
                gpus = reading.devices
        cuda = self._probes["cuda"].run(lambda: cuda_allocator_bytes(self.modules))
        if cuda is not None:
            row["cuda_allocated_gb"], row["cuda_reserved_gb"], row["cuda_max_allocated_gb"] = (
                bytes_to_gib(v) for v in cuda)
        return Sample(row=row, gpus=gpus)

    def _memory(self, row: dict[str, Any]) -> Any:
        vm = self.ps.virtual_memory()
        row["total_memory_gb"] = bytes_to_gib(vm.total)
        row["available_memory_gb"] = bytes_to_gib(vm.available)
        row["used_memory_gb"] = bytes_to_gib(vm.total - vm.available)
        swap = self.ps.swap_memory()
        row["swap_used_gb"] = bytes_to_gib(swap.used)
        now = self.monotonic()
        sin = int(getattr(swap, "sin", 0) or 0)
        if self._prev_swap is not None:
            dt = now - self._prev_swap[0]
            if dt > 0:
                row["swap_in_gb_per_s"] = bytes_to_gib(max(0, sin - self._prev_swap[1]) / dt)
        self._prev_swap = (now, sin)
        return vm

    def _cpu(self, row: dict[str, Any]) -> None:
        busy, total = _busy_idle(self.ps.cpu_times())
        prev = self._prev_cpu
        self._prev_cpu = (busy, total)
        if prev is not None and total > prev[1]:
            pct = 100.0 * (busy - prev[0]) / (total - prev[1])
            row["cpu_utilization_percent"] = min(100.0, max(0.0, pct))

    def _processes(self, row: dict[str, Any]) -> TreeReading:
        reading = self.tree.read()
        self.last_tree = reading
        row["main_process_memory_gb"] = bytes_to_gib(reading.main_rss_bytes)
        row["process_cpu_percent"] = reading.main_cpu_percent
        if self.tree.include_children and reading.main_pid is not None:
            row["worker_memory_gb"] = bytes_to_gib(reading.worker_bytes)
            row["worker_count"] = reading.worker_count
            row["worker_cpu_percent"] = reading.worker_cpu_percent
        return reading

    def _job_pids(self, tree: TreeReading | None) -> list[int] | None:
        """The job's processes on this node (None when they could not be listed this time)."""
        if self.gpu_tree is not None:
            try:
                return self.gpu_tree.pids()
            except Exception:
                log.debug("the job's process tree could not be walked", exc_info=True)
                return None
        return tree.pids if tree is not None and tree.pids else None

    def describe_gpus(self) -> list[dict[str, Any]] | None:
        """The host's GPUs for the job's environment record, through this sampler's NVML session (so NVML
        starts once); None when this sampler does not sample GPUs or there is no NVML."""
        if self.gpu is None:
            return None
        with self._lock:
            return self.gpu.describe_gpus()

    def _pressure(self, row: dict[str, Any]) -> None:
        assert self.pressure_path is not None
        psi = read_pressure(self.pressure_path)
        if psi is None:
            self._psi_present = False     # no PSI on this kernel: not a failure, just absent
            log.debug("no memory pressure figures: %s is absent or PSI is off", self.pressure_path)
            return
        row["memory_pressure_some_avg10"], row["memory_pressure_full_avg10"] = psi

    def _cgroup(self, row: dict[str, Any]) -> None:
        reading = self.cgroup.read()
        if reading is None:
            return
        row["container_memory_limit_gb"] = bytes_to_gib(reading.limit_bytes)
        row["container_memory_working_set_gb"] = bytes_to_gib(reading.working_set_bytes)
        row["container_oom_kills"] = reading.oom_kills

    @property
    def container_limit_gb(self) -> float | None:
        """The job's memory cgroup's limit at the last sample (None: no limit, or not in a cgroup)."""
        last = self.cgroup.last
        return bytes_to_gib(last.limit_bytes) if last is not None else None

    def container_oom_kills_rise(self) -> int | None:
        """OOM kills in the job's memory cgroup since the first sample (None outside a readable cgroup): read
        once more after the job ended, it tells a kill at the container's limit from another SIGKILL."""
        with self._lock:
            try:
                return self.cgroup.oom_kills_rise()
            except Exception:
                log.debug("the container's OOM-kill count could not be read", exc_info=True)
                return None

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()


class SamplerThread:
    """Calls ``sampler.sample()`` every ``interval`` seconds on a monotonic clock and hands each to ``on_sample``.

    The first sample is taken at once (W&B used to wait one interval, so short runs had none). Missed ticks
    (a sample slower than the interval, a suspended process) are skipped, not made up in a burst. A failing
    ``on_sample`` is logged once and never stops the thread. ``cpu_seconds`` is this thread's own CPU time,
    for runlens's self-overhead accounting.
    """

    def __init__(self, sampler: SystemSampler, interval: float, on_sample: Callable[[Sample], None],
                 name: str = "runlens-sampler", *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0:
            raise ValueError(f"the sample interval must be positive, got {interval}")
        self.sampler = sampler
        self.interval = float(interval)
        self.on_sample = on_sample
        self.monotonic = monotonic
        self.cpu_seconds = 0.0
        self.samples_taken = 0
        self.ticks_skipped = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._requested = False
        self._callback_failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> SamplerThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join (up to ``timeout`` seconds); a sample in progress finishes first."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def request(self) -> None:
        """Take one sample now, out of schedule (the schedule itself does not move)."""
        self._requested = True
        self._wake.set()

    def _take(self, cpu0: float) -> None:
        sample = self.sampler.sample()
        try:
            self.on_sample(sample)
        except Exception:
            if not self._callback_failed:
                self._callback_failed = True
                log.exception("the sample callback failed; sampling continues")
        self.samples_taken += 1
        self.cpu_seconds = time.thread_time() - cpu0

    def _run(self) -> None:
        cpu0 = time.thread_time()
        interval = self.interval
        deadline = self.monotonic()
        while not self._stop.is_set():
            self._take(cpu0)
            deadline += interval
            now = self.monotonic()
            if deadline <= now:   # fell behind: skip the ticks we missed instead of catching up in a burst
                missed = int((now - deadline) // interval) + 1
                self.ticks_skipped += missed
                deadline += missed * interval
            # Sleep until the next tick; an out-of-schedule request wakes us without moving the schedule.
            while not self._stop.is_set():
                self._wake.wait(max(0.0, deadline - self.monotonic()))
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self._requested:
                    self._requested = False
                    self._take(cpu0)
                    continue
                if self.monotonic() >= deadline:
                    break
        self.cpu_seconds = time.thread_time() - cpu0
