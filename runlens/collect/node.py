"""One GPU sampler per node: which of a job's processes on a host samples the host's GPUs.

Every rank of a data-parallel job runs its own Monitor. If each sampled the GPUs it sees, a node with 8 ranks
would have its 8 GPUs read 8 times every interval (and NVML started 8 times), and each rank's job would count
the others' memory as its own. So one process per node samples the GPUs:

* inside ``runlens collect`` (the Monitor attached to the wrapper's job, which has the wrapper's log) the
  wrapper samples the child's whole process tree, GPUs included: no rank touches NVML;
* under a launcher that sets ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` (torchrun, accelerate, DeepSpeed) local
  rank 0 samples the node's GPUs, and counts as the job's own GPU memory that of every process under the
  launcher (its sibling ranks and their DataLoader workers); the other local ranks sample their own process
  (host memory, their process tree) and leave the GPU columns empty;
* a single process samples its GPUs itself.

https://pytorch.org/docs/stable/elastic/run.html#environment-variables lists the variables torchrun sets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runlens.collect.procs import is_launcher

log = logging.getLogger(__name__)

# Who samples this node's GPUs, as the start event records it.
BY_THIS_PROCESS = "this process"
BY_LOCAL_RANK_0 = "local rank 0"
BY_WRAPPER = "runlens collect"


@dataclass(frozen=True)
class GpuSampling:
    """Whether this process samples the node's GPUs, and whose processes' GPU memory is the job's.

    ``sampled_by`` names the process that does (``BY_*``); ``job_root_pid`` is the root of the job's process
    tree on this node (this process, or the launcher above it).
    """

    sample_gpus: bool
    job_root_pid: int
    sampled_by: str


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def launcher_parent(pid: int, psutil_module: Any = None) -> int | None:
    """The pid of ``pid``'s parent when that parent is a launcher (torchrun, accelerate, a shell, ...)."""
    try:
        if psutil_module is None:
            import psutil as psutil_module
        parent = psutil_module.Process(pid).parent()
        if parent is None:
            return None
        return int(parent.pid) if is_launcher(parent.name(), parent.cmdline()) else None
    except Exception:   # the parent is gone or unreadable: this process is the job's root
        return None


def gpu_sampling(*, wrapper_samples: bool, pid: int | None = None, environ: Mapping[str, str] | None = None,
                 psutil_module: Any = None) -> GpuSampling:
    """Decide who samples this node's GPUs (see the module docstring).

    Args:
        wrapper_samples: the Monitor writes into ``runlens collect``'s job, whose wrapper samples the process
            tree.
        pid: this process (default ``os.getpid()``).
        environ: where ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` are read (default ``os.environ``).
        psutil_module: psutil or a fake, to find the launcher above local rank 0.
    """
    pid = os.getpid() if pid is None else pid
    environ = os.environ if environ is None else environ
    if wrapper_samples:
        return GpuSampling(False, pid, BY_WRAPPER)
    local_rank = _env_int(environ, "LOCAL_RANK")
    local_world = _env_int(environ, "LOCAL_WORLD_SIZE")
    if local_rank is None or local_world == 1:
        return GpuSampling(True, pid, BY_THIS_PROCESS)
    if local_rank != 0:
        log.debug("local rank %d: local rank 0 samples this node's GPUs", local_rank)
        return GpuSampling(False, pid, BY_LOCAL_RANK_0)
    root = launcher_parent(pid, psutil_module)
    return GpuSampling(True, root if root is not None else pid, BY_LOCAL_RANK_0)
