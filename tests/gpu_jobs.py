"""GPU jobs for the analysis and report tests, written the way the collectors write them: ``Store.create_job``,
then the BatchWriter thread fed with rows shaped as ``SystemSampler.sample()`` makes them (every
``metrics_samples`` column present, None where not measured; one ``gpu_samples`` row per device), and steps and
events as the Monitor records them. Only the NVML edge is faked, in the collector tests; here the figures are
the ones NVML would have given.

Imported by test modules as ``gpu_jobs`` (tests/ is on sys.path through its conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runlens.analyze.analysis import build_analysis
from runlens.analyze.load import load_job
from runlens.collect.sampler import GPU_COLUMNS, SAMPLE_COLUMNS
from runlens.store import Store
from runlens.store.writer import BatchWriter

T0 = 1_760_000_000.0
H200_TOTAL_GB = 143_771 / 1024   # NVML's 143,771 MiB: 140.4 GiB
HOST_TOTAL_GB = 125.6

Figure = float | Callable[[int], float] | None


def _at(value: Figure, i: int) -> float | None:
    return value(i) if callable(value) else value


def gpu_job(store: Store, *, n_samples: int = 120, interval: float = 5.0, devices: int = 1,
            gpu_used: Figure | Sequence[Figure] = 30.0, gpu_total: float = H200_TOTAL_GB,
            util: Figure | Sequence[Figure] = 95.0, ram_used: Figure = 40.0, ram_total: float = HOST_TOTAL_GB,
            process_cpu: Figure = 60.0, n_steps: int = 0, step_time: float = 1.0, data_time: float = 0.01,
            batch_size: int | None = 32, cuda_oom: bool = False, status: str = "succeeded") -> str:
    """A finished job with ``n_samples`` system samples ``interval`` s apart and, optionally, steps.

    ``gpu_used`` and ``util`` are one figure for every device or one per device; each figure is a number or a
    function of the sample's index. ``n_steps`` steps of ``step_time`` s run from the second sample on.
    """
    wall = n_samples * interval
    jid = store.create_job(name="gpu-test", status=status, started_at=T0, ended_at=T0 + wall,
                           environment={"host": "test", "cpu_count": 16})
    writer = BatchWriter(store, jid, flush_interval=0.05).start()
    per_used = list(gpu_used) if isinstance(gpu_used, Sequence) else [gpu_used] * devices
    per_util = list(util) if isinstance(util, Sequence) else [util] * devices
    for i in range(n_samples):
        t = T0 + i * interval
        ram = _at(ram_used, i)
        gpus = []
        for d in range(devices):
            gpus.append({**dict.fromkeys(GPU_COLUMNS), "device_index": d, "name": "NVIDIA H200",
                         "memory_used_gb": _at(per_used[d], i), "memory_total_gb": gpu_total,
                         "utilization_percent": _at(per_util[d], i), "temperature_c": 60.0, "power_w": 400.0})
        used = [g["memory_used_gb"] for g in gpus if g["memory_used_gb"] is not None]
        utils = [g["utilization_percent"] for g in gpus if g["utilization_percent"] is not None]
        row = {**dict.fromkeys(SAMPLE_COLUMNS), "timestamp": t, "total_memory_gb": ram_total,
               "used_memory_gb": ram, "available_memory_gb": None if ram is None else ram_total - ram,
               "swap_used_gb": 0.0, "cpu_utilization_percent": 20.0, "process_cpu_percent": _at(process_cpu, i),
               "main_process_memory_gb": 8.0, "worker_memory_gb": 2.0, "worker_count": 2,
               "gpu_memory_used_gb": sum(used) if used else None,
               "gpu_memory_total_gb": gpu_total * devices if devices else None,
               "gpu_utilization_percent": float(np.mean(utils)) if utils else None,
               "unified_memory": False if devices else None, "host": "test"}
        writer.put_sample(row, gpus)
    for i in range(n_steps):
        writer.put_step({"step": i, "timestamp": T0 + interval + (i + 1) * step_time, "loss": 2.0 / (1 + i / 50),
                         "batch_size": batch_size, "step_time_seconds": step_time,
                         "data_time_seconds": data_time})
    writer.put_event({"timestamp": T0 + 1.0, "event_type": "start", "details": {}})
    if cuda_oom:
        message = (f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                   f"{gpu_total:.2f} GiB of which 1.12 GiB is free.")
        writer.put_event({"timestamp": T0 + wall - 1.0, "event_type": "exception",
                          "details": {"type": "torch.OutOfMemoryError", "message": message}})
        writer.put_event({"timestamp": T0 + wall - 1.0, "event_type": "cuda_oom",
                          "details": {"message": message, "tried_to_allocate_gb": 2.0}})
    writer.put_event({"timestamp": T0 + wall, "event_type": "end", "details": {"status": status}})
    writer.close()
    return jid


def analysis_of(store: Store, job_id: str) -> dict[str, Any]:
    """The analysis document of a stored job, as ``runlens analyze --json`` makes it."""
    return build_analysis(load_job(store, job_id))


def rising(lo: float, hi: float, n: int) -> Callable[[int], float]:
    """A figure that climbs from ``lo`` to ``hi`` over ``n`` samples (memory filling up)."""
    return lambda i: lo + (hi - lo) * min(i, n - 1) / max(n - 1, 1)
