"""A fake NVML module for the GPU probe: the functions ``runlens.collect.gpu`` calls, over a list of devices
(dicts), with per-process lists and a record of which thread started NVML. The hardware edge is the only
place the tests fake; everything above it (the probe, the sampler, the Monitor) runs for real."""

from __future__ import annotations

import threading
import types
from typing import Any, Callable

GiB = 1 << 30

NOT_SUPPORTED = 3
FUNCTION_NOT_FOUND = 13
UNKNOWN = 999
LIBRARY_NOT_FOUND = 12

# The per-process functions of nvidia-ml-py (v3 and v2 by name, and the plain name, which is v3 there).
PROCESS_FUNCTIONS = frozenset({
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v2", "nvmlDeviceGetGraphicsRunningProcesses",
})


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__({NOT_SUPPORTED: "Not Supported", UNKNOWN: "Unknown Error", FUNCTION_NOT_FOUND:
                          "Function Not Found", LIBRARY_NOT_FOUND: "NVML Shared Library Not Found"}.get(value))


class FakeNVML:
    """Devices are dicts: name, uuid, used, total (bytes), util, temp, power_mw, unified; ``procs`` and
    ``graphics`` list (pid, bytes or None) for the per-process lists (absent: no process; None: the device
    does not support the list; an int: the NVML error the list fails with).

    Args:
        devices: the devices, by NVML index.
        init_error: an NVML error code ``nvmlInit`` raises.
        functions: the per-process functions this binding has (default: all of nvidia-ml-py's).
        driver_lacks: functions the binding has but the driver does not (they raise Function Not Found).
    """

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, devices: list[dict[str, Any]], init_error: int | None = None, *,
                 functions: frozenset[str] = PROCESS_FUNCTIONS, driver_lacks: frozenset[str] = frozenset()) -> None:
        self.devices = devices
        self.init_error = init_error
        self.init_calls = 0
        self.init_threads: list[str] = []
        self.shutdown_calls = 0
        self.fail_utilization: int | None = None
        self.functions = functions
        self.driver_lacks = driver_lacks
        self.process_calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[[dict[str, Any]], list[Any]]:
        if name not in PROCESS_FUNCTIONS or name not in self.functions:
            raise AttributeError(name)
        key = "graphics" if "Graphics" in name else "procs"

        def listing(h: dict[str, Any]) -> list[Any]:
            self.process_calls.append(name)
            if name in self.driver_lacks:
                raise FakeNVMLError(FUNCTION_NOT_FOUND)
            entries = h.get(key, [])
            if entries is None:
                raise FakeNVMLError(NOT_SUPPORTED)
            if isinstance(entries, int):   # an NVML error code this list fails with
                raise FakeNVMLError(entries)
            return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in entries]

        return listing

    def nvmlInit(self) -> None:
        self.init_calls += 1
        self.init_threads.append(threading.current_thread().name)
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.95.05"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.devices[i]

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> bytes:
        return str(h["name"]).encode()   # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        if h.get("unified"):
            raise FakeNVMLError(NOT_SUPPORTED)
        return types.SimpleNamespace(used=h["used"], total=h["total"], free=h["total"] - h["used"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        if self.fail_utilization is not None:
            raise FakeNVMLError(self.fail_utilization)
        return types.SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetTemperature(self, h: dict[str, Any], kind: int) -> int:
        assert kind == 0
        return int(h.get("temp", 50))

    def nvmlDeviceGetPowerUsage(self, h: dict[str, Any]) -> int:
        if "power_mw" not in h:
            raise FakeNVMLError(NOT_SUPPORTED)
        return int(h["power_mw"])


def two_gpus(**kwargs: Any) -> FakeNVML:
    """Two 40 GiB A100s holding 10 and 30 GiB, no processes listed."""
    return FakeNVML([
        {"name": "NVIDIA A100", "uuid": "GPU-aaaa1111", "used": 10 * GiB, "total": 40 * GiB, "util": 90,
         "temp": 60, "power_mw": 250_000},
        {"name": "NVIDIA A100", "uuid": "GPU-bbbb2222", "used": 30 * GiB, "total": 40 * GiB, "util": 50,
         "temp": 70, "power_mw": 300_000},
    ], **kwargs)
