"""The machine a job ran on, stored with the job so a post-mortem can say "8 CPUs, 31 GiB, one A10G".

Users of every tracker ask for the machine spec to be kept with the run (mlflow#15711). Everything here is read
once at start and must never fail or slow the run down: each probe is guarded, NVML is optional, and torch is
described only when the program already imported it (importing torch here would cost seconds, and calling
into CUDA before DataLoader workers fork would break them).

The Monitor writes the cheap part (``include_gpus=False, include_torch=False``: a few milliseconds) with the
job and the whole description from its sampler thread once the first sample is taken: ``nvmlInit`` alone can
take a second or two on a machine with many GPUs, and the training thread must not wait for it. ``gpus`` lets
the sampler's GPU probe describe the GPUs through the NVML session it already holds.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
from collections.abc import Callable
from typing import Any

from runlens._version import __version__
from runlens.collect.gpu import GpuProbe
from runlens.collect.cgroup import find_memory_cgroup, read_memory_cgroup
from runlens.core.redact import redact_env
from runlens.core.units import bytes_to_gib

log = logging.getLogger(__name__)

# Environment variables that explain a run's behaviour (threads, devices, allocator, distributed set-up).
ENV_NAMES = (
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_MAX_CONNECTIONS",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NVML_BASED_CUDA_CHECK",
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE",
    "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "TRANSFORMERS_CACHE", "ACCELERATE_MIXED_PRECISION",
    "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONFAULTHANDLER",
)
ENV_PREFIXES = ("NCCL_", "TORCH_", "TORCHINDUCTOR_", "RUNLENS_")


def selected_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables above that are set, secrets redacted (HF_TOKEN, URLs with passwords)."""
    environ = dict(os.environ) if environ is None else environ
    picked = {k: v for k, v in environ.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}
    return redact_env(dict(sorted(picked.items())))


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cgroup_memory_limit_gib() -> float | None:
    """This process's memory cgroup's binding limit (runlens.collect.cgroup); None when unlimited or not in one."""
    try:
        cgroup = find_memory_cgroup()
        reading = read_memory_cgroup(cgroup) if cgroup is not None else None
    except OSError:
        return None
    return bytes_to_gib(reading.limit_bytes) if reading is not None else None


def _torch_info() -> dict[str, Any] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    info: dict[str, Any] = {"version": getattr(torch, "__version__", None)}
    try:
        info["cuda_version"] = getattr(torch.version, "cuda", None)
        # is_available and device_count do not create a CUDA context, so forked DataLoader workers stay safe;
        # get_device_name would, which is why GPU names come from NVML below.
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_device_count"] = int(torch.cuda.device_count()) if info["cuda_available"] else 0
        mps = getattr(torch.backends, "mps", None)
        info["mps_available"] = bool(mps.is_available()) if mps is not None else False
        info["num_threads"] = int(torch.get_num_threads())
    except Exception as exc:  # a broken CUDA install must not stop the run
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def _nvml_gpus() -> list[dict[str, Any]] | None:
    """Every GPU on the host through NVML, in an NVML session of its own; None when NVML is missing (no
    driver, no pynvml): fail soft."""
    probe = GpuProbe()
    try:
        return probe.describe_gpus()
    finally:
        probe.close()


def _shm_total_gib(path: str = "/dev/shm") -> float | None:
    """Size of /dev/shm, where DataLoader workers pass batches (Docker's default of 64 MB kills them)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return bytes_to_gib(st.f_blocks * st.f_frsize)


def describe_environment(*, include_gpus: bool = True, include_torch: bool = True,
                         gpus: Callable[[], list[dict[str, Any]] | None] | None = None) -> dict[str, Any]:
    """A JSON-ready description of the host, the Python, torch (if imported), GPUs (if NVML) and key env vars.

    Args:
        include_gpus: describe the GPUs (NVML; slow to start on a big machine); False leaves ``gpus`` None.
        include_torch: describe torch when imported (may initialise the CUDA driver); False leaves it None.
        gpus: what describes the GPUs (a sampler's NVML session); default: a session of its own.

    Never raises: a probe that fails leaves its field None.
    """
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "runlens_version": __version__,
    }
    try:
        env["cpu_affinity_count"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        env["cpu_affinity_count"] = None
    try:
        import psutil

        env["memory_total_gb"] = bytes_to_gib(psutil.virtual_memory().total)
        env["swap_total_gb"] = bytes_to_gib(psutil.swap_memory().total)
    except Exception:
        env["memory_total_gb"] = env["swap_total_gb"] = None
    env["cgroup_memory_limit_gb"] = _cgroup_memory_limit_gib()
    env["shm_total_gb"] = _shm_total_gib()
    env["torch"] = _torch_info() if include_torch else None
    env["gpus"] = None
    if include_gpus:
        try:
            env["gpus"] = (gpus or _nvml_gpus)()
        except Exception as exc:   # describing the GPUs must never stop the run
            log.info("GPUs are not described (%s)", exc)
    env["env"] = selected_env()
    return env
