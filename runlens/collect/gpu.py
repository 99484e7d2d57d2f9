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
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runlens.core.units import bytes_to_gib

log = logging.getLogger(__name__)

NVML_ERROR_NOT_SUPPORTED = 3
NVML_TEMPERATURE_GPU = 0
_DEFAULT: Any = object()


@dataclass
class GpuReading:
    """Job-level GPU figures (GiB, percent) and one ``gpu_samples`` row per device."""

    memory_used_gb: float | None = None
    memory_total_gb: float | None = None
    utilization_percent: float | None = None
    unified_memory: bool = False
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
        self._unified_said = False

    # -- start-up ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start NVML and pick the job's devices; never raises (a missing GPU is one info line)."""
        if self.started:
            return
        self.started = True
        if self.platform == "darwin" and self.machine == "arm64":
            self.apple_unified = True
            log.info("Apple silicon: the GPU shares system memory; GPU memory is reported from the unified "
                     "system pool (no per-GPU utilisation)")
            return
        nvml = self.nvml
        if nvml is None:
            log.info("no GPU metrics: the NVML Python bindings (nvidia-ml-py) are not installed")
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:   # NVMLError (no driver, no library), OSError from ctypes
            log.info("no GPU metrics: NVML is not available (%s)", _text(exc) or type(exc).__name__)
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

    # -- reading -------------------------------------------------------------------------------------

    def _not_supported(self, exc: BaseException) -> bool:
        err = getattr(self.nvml, "NVMLError", None)
        code = getattr(self.nvml, "NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED)
        return err is not None and isinstance(exc, err) and getattr(exc, "value", None) == code

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

    def read(self, host_total_bytes: int | None = None, host_available_bytes: int | None = None) -> GpuReading | None:
        """Read every device of the job. Returns None when there is no GPU to report.

        Args:
            host_total_bytes, host_available_bytes: the system memory just read by the sampler, used as the
                GPU's memory on unified-memory machines.

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
                "power_w": None if power is None else float(power) / 1000.0,
            })
        if reading.unified_memory:
            # The pool is counted once, however many devices draw on it.
            reading.memory_used_gb = used_sum + (pool_used or 0.0) if pool_used is not None else None
            reading.memory_total_gb = total_sum + (pool_total or 0.0) if pool_total is not None else None
        elif have_discrete:
            reading.memory_used_gb, reading.memory_total_gb = used_sum, total_sum
        reading.utilization_percent = sum(utils) / len(utils) if utils else None
        return reading

    def _say_unified(self, dev: _Device) -> None:
        if self._unified_said:
            return
        self._unified_said = True
        log.info("GPU %d (%s) has no memory of its own in NVML (unified memory): GPU memory is reported from "
                 "the shared system pool", dev.index, dev.name)

    def close(self) -> None:
        if self.available and self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
        self.available = False
