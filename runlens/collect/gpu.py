"""GPU readings through NVML, for the devices this job can see.

``GpuProbe`` starts NVML once (Aim calls ``nvmlInit`` on every sample), keeps the device handles, and on each
``read()`` returns per-device rows plus the job-level sums. Optional hardware fails soft: no ``pynvml``, no
driver, no GPU, or ``CUDA_VISIBLE_DEVICES`` selecting nothing gives ONE info line and ``None`` GPU fields
(MLflow's ``gpu_monitor.py`` does the same, but silently falls back; we say so).

Unified memory: on GB10 (DGX Spark), Jetson and some Grace Hopper set-ups NVML has no memory figures of the
device's own (``NVML_ERROR_NOT_SUPPORTED``): the GPU allocates from system RAM. There, and on Apple silicon
(no NVML at all), GPU memory is reported from the shared system pool (used = total - available) with
``unified_memory=True``, so nobody adds it to host memory a second time.

Device selection follows CUDA: ``CUDA_VISIBLE_DEVICES`` lists indexes or ``GPU-``/``MIG-`` UUIDs (a unique
prefix is enough); the list ends at the first entry that names no device, as it does for CUDA. Indexes are
NVML's (PCI bus order, as ``nvidia-smi`` numbers them), which is CUDA's order when
``CUDA_DEVICE_ORDER=PCI_BUS_ID``; CUDA's default "fastest first" order can differ on machines with mixed
GPU models. ``device_index`` in the rows is the NVML index, the number users see in ``nvidia-smi``.

The job's own memory: NVML's device figures (``memory_used_gb``) count every process on the GPU, so on a GPU
shared with other jobs their memory would read as ours. ``job_gpu_memory_gb`` is the sum, over the job's
processes (``job_pids``: the process tree the sampler walked), of what NVML's per-process lists say each uses
(``nvmlDeviceGetComputeRunningProcesses``, v3 then older, and ``nvmlDeviceGetGraphicsRunningProcesses``).
It is None, not 0, where those lists cannot be matched to the job: a container in its own PID namespace gets
no entries, or entries under the host's PIDs, which name none of the job's processes. Then only the device's
figures are kept. Where at least one entry is the job's, a device the job holds nothing on reads 0.
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import sys
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from runlens.core.units import bytes_to_gib

log = logging.getLogger(__name__)

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_FUNCTION_NOT_FOUND = 13   # a binding newer than the driver (the v3 process list on an old driver)
NVML_TEMPERATURE_GPU = 0
# The per-process lists, newest API first: nvidia-ml-py names v3 plainly, older bindings have only the plain name.
COMPUTE_PROCESS_FUNCTIONS = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
                             "nvmlDeviceGetComputeRunningProcesses")
GRAPHICS_PROCESS_FUNCTIONS = ("nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v2",
                              "nvmlDeviceGetGraphicsRunningProcesses")
_DEFAULT: Any = object()


@dataclass
class GpuReading:
    """Job-level GPU figures (GiB, percent) and one ``gpu_samples`` row per device."""

    memory_used_gb: float | None = None
    memory_total_gb: float | None = None
    utilization_percent: float | None = None
    unified_memory: bool = False
    job_memory_gb: float | None = None   # the job's processes' share of memory_used_gb; None when unknown
    devices: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Device:
    index: int
    handle: Any
    name: str
    unified: bool = False
    unsupported: set[str] = field(default_factory=set)


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_visible_devices(spec: str | None, uuids: list[str]) -> list[int | str]:
    """Which devices ``CUDA_VISIBLE_DEVICES=spec`` selects: NVML indexes, or ``MIG-...`` UUIDs as given.

    Args:
        spec: the variable's value; None (unset) selects every device, "" selects none.
        uuids: each NVML device's UUID, by index (for ``GPU-...`` entries).
    """
    count = len(uuids)
    if spec is None:
        return list(range(count))
    chosen: list[int | str] = []
    for raw in spec.split(","):
        token = raw.strip()
        pick: int | str | None = None
        if token.lstrip("-").isdigit():
            i = int(token)
            pick = i if 0 <= i < count else None
        elif token.startswith("GPU-"):
            matches = [i for i, u in enumerate(uuids) if u.startswith(token)]
            pick = matches[0] if len(matches) == 1 else None
        elif token.startswith("MIG-"):
            pick = token
        if pick is None or pick in chosen:
            break   # CUDA ignores everything from the first invalid entry on
        chosen.append(pick)
    return chosen


class GpuProbe:
    """NVML readings for the job's GPUs; started lazily on the first ``read()`` (on the sampler's thread).

    ``nvmlInit`` can take a second or two on a machine with many GPUs, so it never runs in the constructor: the
    Monitor builds the probe on the training thread and the sampler thread starts it.

    Args:
        nvml: the NVML module (``pynvml`` by default; a fake in tests; None = no NVML).
        environ: where ``CUDA_VISIBLE_DEVICES`` is read (the job's environment).
        platform: ``sys.platform``; with ``machine`` decides the Apple-silicon unified-memory path.
        machine: ``platform.machine()``.
    """

    def __init__(self, nvml: Any = _DEFAULT, *, environ: Mapping[str, str] | None = None,
                 platform: str | None = None, machine: str | None = None) -> None:
        self.nvml = _load_pynvml() if nvml is _DEFAULT else nvml
        self.environ = os.environ if environ is None else environ
        self.platform = platform or sys.platform
        self.machine = machine or _platform.machine()
        self.devices: list[_Device] = []
        self.started = False
        self.available = False        # True once NVML runs and at least one of the job's devices is seen
        self.apple_unified = False
        self._nvml_tried = False
        self._nvml_up = False         # nvmlInit succeeded (and nvmlShutdown is owed)
        self._unified_said = False
        self._lock = threading.Lock()   # start() and describe_gpus() may come from two threads
        self._process_fns: dict[str, Any] = {}   # "compute"/"graphics" -> the list function this driver has
        self._process_failure_said = False

    # -- start-up ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start NVML and pick the job's devices; never raises (a missing GPU is one info line)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.platform == "darwin" and self.machine == "arm64":
            self.apple_unified = True
            log.info("Apple silicon: the GPU shares system memory; GPU memory is reported from the unified "
                     "system pool (no per-GPU utilisation)")
            return
        if not self._init_nvml():
            return
        try:
            self._pick_devices()
        except Exception as exc:
            log.info("no GPU metrics: NVML could not list the GPUs (%s)", _text(exc) or type(exc).__name__)
            self.devices = []
            return
        spec = self.environ.get("CUDA_VISIBLE_DEVICES")
        if not self.devices:
            if spec is not None:
                log.info("no GPU metrics: CUDA_VISIBLE_DEVICES=%r selects no GPU", spec)
            else:
                log.info("no GPU metrics: NVML sees no GPU")
            return
        self.available = True
        names = ", ".join(f"{d.index}: {d.name}" for d in self.devices)
        log.info("GPU metrics through NVML for %s", names)

    def _init_nvml(self) -> bool:
        """``nvmlInit`` once (tried once); True when NVML runs."""
        if self._nvml_tried:
            return self._nvml_up
        self._nvml_tried = True
        nvml = self.nvml
        if nvml is None:
            log.info("no GPU metrics: the NVML Python bindings (nvidia-ml-py) are not installed")
            return False
        try:
            nvml.nvmlInit()
        except Exception as exc:   # NVMLError (no driver, no library), OSError from ctypes
            log.info("no GPU metrics: NVML is not available (%s)", _text(exc) or type(exc).__name__)
            return False
        self._nvml_up = True
        return True

    def _pick_devices(self) -> None:
        nvml = self.nvml
        count = int(nvml.nvmlDeviceGetCount())
        spec = self.environ.get("CUDA_VISIBLE_DEVICES")
        uuids: list[str] = []
        if spec is not None and "GPU-" in spec:
            uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
        else:
            uuids = [""] * count
        for pick in parse_visible_devices(spec, uuids):
            if isinstance(pick, str):   # a MIG instance: only reachable by its UUID
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(pick)
                except Exception:
                    break
                self.devices.append(_Device(index=len(self.devices), handle=handle, name=f"MIG {pick}"))
                continue
            handle = nvml.nvmlDeviceGetHandleByIndex(pick)
            try:
                name = _text(nvml.nvmlDeviceGetName(handle))
            except Exception:
                name = f"GPU {pick}"
            self.devices.append(_Device(index=pick, handle=handle, name=name))

    def describe_gpus(self) -> list[dict[str, Any]] | None:
        """Every GPU on the host (not only the job's), for the job's environment record: index, name, driver
        version, total memory, UUID. Uses the probe's NVML session (starting it if need be), so describing
        the machine does not pay ``nvmlInit`` a second time. None when there is no NVML; never raises."""
        with self._lock:
            if self.apple_unified or (self.platform == "darwin" and self.machine == "arm64"):
                return None
            if not self._init_nvml():
                return None
            return _describe_host_gpus(self.nvml)

    # -- reading -------------------------------------------------------------------------------------

    def _error_code(self, exc: BaseException) -> int | None:
        err = getattr(self.nvml, "NVMLError", None)
        return getattr(exc, "value", None) if err is not None and isinstance(exc, err) else None

    def _not_supported(self, exc: BaseException) -> bool:
        code = self._error_code(exc)
        return code is not None and code == getattr(self.nvml, "NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED)

    def _field(self, dev: _Device, key: str, fn: Any, *args: Any) -> Any:
        """One NVML call; NotSupported marks the field off for this device, other errors propagate."""
        if key in dev.unsupported:
            return None
        try:
            return fn(dev.handle, *args)
        except Exception as exc:
            if self._not_supported(exc):
                dev.unsupported.add(key)
                return None
            raise

    def read(self, host_total_bytes: int | None = None, host_available_bytes: int | None = None,
             job_pids: Collection[int] | None = None) -> GpuReading | None:
        """Read every device of the job. Returns None when there is no GPU to report.

        Args:
            host_total_bytes, host_available_bytes: the system memory just read by the sampler, used as the
                GPU's memory on unified-memory machines.
            job_pids: the job's processes (on this host); their memory on each device is the job's own
                (``job_gpu_memory_gb``). None leaves the job's figures None and skips the per-process lists.

        Raises:
            the NVML error of a failing device (the sampler counts it and turns the probe off after 3 in a row).
        """
        self.start()
        pool_used = pool_total = None
        if host_total_bytes is not None and host_available_bytes is not None:
            pool_used = bytes_to_gib(host_total_bytes - host_available_bytes)
            pool_total = bytes_to_gib(host_total_bytes)
        if self.apple_unified:
            return GpuReading(memory_used_gb=pool_used, memory_total_gb=pool_total, unified_memory=True)
        if not self.available:
            return None
        nvml = self.nvml
        reading = GpuReading()
        used_sum = total_sum = 0.0
        have_discrete = False
        utils: list[float] = []
        temp_kind = getattr(nvml, "NVML_TEMPERATURE_GPU", NVML_TEMPERATURE_GPU)
        processes: list[dict[int, int | None] | None] = []
        for dev in self.devices:
            used = total = None
            mem = self._field(dev, "memory", nvml.nvmlDeviceGetMemoryInfo)
            if mem is None and "memory" in dev.unsupported and not dev.unified:
                dev.unified = True
                self._say_unified(dev)
            if mem is not None:
                used, total = bytes_to_gib(mem.used), bytes_to_gib(mem.total)
                used_sum += used or 0.0
                total_sum += total or 0.0
                have_discrete = True
            elif dev.unified:
                used, total = pool_used, pool_total
                reading.unified_memory = True
            util = self._field(dev, "utilization", nvml.nvmlDeviceGetUtilizationRates)
            util_pct = None if util is None else float(util.gpu)
            if util_pct is not None:
                utils.append(util_pct)
            temp = self._field(dev, "temperature", nvml.nvmlDeviceGetTemperature, temp_kind)
            power = self._field(dev, "power", nvml.nvmlDeviceGetPowerUsage)
            reading.devices.append({
                "device_index": dev.index, "name": dev.name, "memory_used_gb": used, "memory_total_gb": total,
                "utilization_percent": util_pct, "temperature_c": None if temp is None else float(temp),
                "power_w": None if power is None else float(power) / 1000.0, "job_gpu_memory_gb": None,
            })
            if job_pids is not None:
                processes.append(self._device_processes(dev))
        if job_pids is not None:
            reading.job_memory_gb = _job_memory(reading.devices, processes, job_pids)
        if reading.unified_memory:
            # The pool is counted once, however many devices draw on it.
            reading.memory_used_gb = used_sum + (pool_used or 0.0) if pool_used is not None else None
            reading.memory_total_gb = total_sum + (pool_total or 0.0) if pool_total is not None else None
        elif have_discrete:
            reading.memory_used_gb, reading.memory_total_gb = used_sum, total_sum
        reading.utilization_percent = sum(utils) / len(utils) if utils else None
        return reading

    def _device_processes(self, dev: _Device) -> dict[int, int | None] | None:
        """pid -> bytes this device holds for it (None where NVML cannot say, as under Windows' WDDM), from
        the compute and graphics lists; None when the driver gives neither. Never raises: the per-process
        lists failing must not cost the device's own figures."""
        if "processes" in dev.unsupported:
            return None
        out: dict[int, int | None] = {}
        listed = False
        try:
            for kind, names in (("compute", COMPUTE_PROCESS_FUNCTIONS), ("graphics", GRAPHICS_PROCESS_FUNCTIONS)):
                entries = self._process_list(dev, kind, names)
                if entries is None:
                    continue
                listed = True
                for entry in entries:   # a process with both kinds of context is listed twice
                    pid, used = int(entry.pid), getattr(entry, "usedGpuMemory", None)
                    if used is None:
                        out.setdefault(pid, None)
                    else:
                        out[pid] = max(out.get(pid) or 0, int(used))
        except Exception as exc:
            if not self._process_failure_said:
                self._process_failure_said = True
                log.info("NVML's per-process GPU memory failed (%s); the job's own GPU memory is not recorded "
                         "for that sample", _text(exc) or type(exc).__name__)
            return None
        if not listed:
            dev.unsupported.add("processes")
            return None
        return out

    def _process_list(self, dev: _Device, kind: str, names: tuple[str, ...]) -> list[Any] | None:
        """One kind of per-process list, through the newest function this driver has (found once, then kept).
        None when the device does not support it."""
        known = self._process_fns.get(kind)
        candidates = [known] if known is not None else [getattr(self.nvml, n, None) for n in names]
        for fn in candidates:
            if fn is None:
                continue
            try:
                entries = fn(dev.handle)
            except Exception as exc:
                if self._not_supported(exc):
                    return None
                if known is None and self._error_code(exc) in _OLDER_API_ERRORS:
                    continue   # a binding newer than the driver: try the older function
                raise
            self._process_fns[kind] = fn
            return list(entries or ())
        return None

    def _say_unified(self, dev: _Device) -> None:
        if self._unified_said:
            return
        self._unified_said = True
        log.info("GPU %d (%s) has no memory of its own in NVML (unified memory): GPU memory is reported from "
                 "the shared system pool", dev.index, dev.name)

    def close(self) -> None:
        if self._nvml_up and self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
        self._nvml_up = False
        self.available = False


_OLDER_API_ERRORS = frozenset({NVML_ERROR_FUNCTION_NOT_FOUND, 25})   # 25: NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def _job_memory(devices: list[dict[str, Any]], processes: list[dict[int, int | None] | None],
                job_pids: Collection[int]) -> float | None:
    """Fill each device row's ``job_gpu_memory_gb`` and return their sum (None when no device's is known).

    The lists speak for the job only when at least one entry, on any device, is one of its processes: in a
    container with its own PID namespace NVML lists nothing, or host PIDs that name none of the job's, and a
    0 there would claim the job holds no GPU memory. So then every device's figure stays None.
    """
    pids = job_pids if isinstance(job_pids, (set, frozenset)) else set(job_pids)
    if not any(pid in pids for procs in processes if procs for pid in procs):
        return None
    total: float | None = None
    for row, procs in zip(devices, processes):
        if procs is None:
            continue
        mine = [used for pid, used in procs.items() if pid in pids]
        known = [used for used in mine if used is not None]
        if mine and not known:
            continue   # the job is on this device but NVML cannot say how much it holds
        gib = bytes_to_gib(sum(known)) or 0.0
        row["job_gpu_memory_gb"] = gib
        total = (total or 0.0) + gib
    return total


def _describe_host_gpus(nvml: Any) -> list[dict[str, Any]]:
    """Each GPU NVML sees, for the environment record; a failing query leaves the list as far as it got."""
    gpus: list[dict[str, Any]] = []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu: dict[str, Any] = {"index": index, "name": _text(nvml.nvmlDeviceGetName(handle)),
                                   "driver_version": driver}
            try:
                gpu["memory_total_gb"] = bytes_to_gib(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            except Exception:  # unified-memory parts (GB10, Grace Hopper) may not report it
                gpu["memory_total_gb"] = None
            try:
                gpu["uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
            except Exception:
                pass
            gpus.append(gpu)
    except Exception as exc:
        log.info("NVML query failed (%s): GPU description incomplete", exc)
    return gpus
