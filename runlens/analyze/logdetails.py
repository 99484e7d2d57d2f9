"""The figures a log finding carries, by category: OOM sizes in GiB, NCCL timeouts and sequence numbers, exit
codes, signals, loss scales, errnos, the arguments argparse rejected, the port a rendezvous could not bind, why
a scheduler ended a job, the Hub repo or network host that failed, which quantity went non-finite.

Sizes printed by PyTorch are binary whatever their label (MPS prints "GB" and "MB" for GiB and MiB), so every
unit is read as 1024-based through ``runlens.core.units``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from runlens.analyze import logcategories as lc
from runlens.analyze.logcategories import MIN_SCALE, rx
from runlens.core.units import GIB, unit_to_gib

_SIZE = r"(\d+(?:\.\d+)?)\s*(bytes|[KMGT]i?B|B)\b"
def _to_gib(number: str, unit: str) -> float:
    """``"20.00", "MiB"`` -> GiB, rounded to 9 places (a finding's figure, not a measurement)."""
    return round(unit_to_gib(float(number), unit), 9)


def _first_size(text: str, patterns: tuple[re.Pattern[str], ...]) -> float | None:
    for p in patterns:
        m = p.search(text)
        if m:
            return _to_gib(m.group(1), m.group(2))
    return None


_OOM_FIGURES: dict[str, tuple[re.Pattern[str], ...]] = {
    "tried_to_allocate_gb": rx(r"Tried to allocate " + _SIZE),
    "total_capacity_gb": rx(r"total capa\w* of " + _SIZE, _SIZE + r" total capacity"),
    "free_gb": rx(r"of which " + _SIZE + r" is free", _SIZE + r" free\b"),
    "allocated_by_pytorch_gb": rx(_SIZE + r" is allocated by PyTorch", _SIZE + r" already allocated"),
    "reserved_unallocated_gb": rx(_SIZE + r" is reserved by PyTorch but unallocated"),
    "process_in_use_gb": rx(r"this process has " + _SIZE + r" memory in use"),
    "reserved_total_gb": rx(_SIZE + r" reserved in total by PyTorch", _SIZE + r" cached\b"),
}
_GPU_INDEX = re.compile(r"\bGPU (\d+)\b")
_MPS_FIGURES: dict[str, tuple[re.Pattern[str], ...]] = {
    "mps_allocated_gb": rx(r"MPS allocated: " + _SIZE),
    "other_allocations_gb": rx(r"other allocations: " + _SIZE),
    "max_allowed_gb": rx(r"max allowed: " + _SIZE),
    "tried_to_allocate_gb": rx(r"Tried to allocate " + _SIZE),
}
_CPU_TRIED = re.compile(r"tried to allocate (\d+) bytes", re.IGNORECASE)
_NCCL = {
    "seq_num": re.compile(r"SeqNum=(\d+)"),
    "timeout_ms": re.compile(r"Timeout\(ms\)=(\d+)"),
    "ran_for_ms": re.compile(r"ran for (\d+) milliseconds"),
    "reported_rank": re.compile(r"\[Rank (\d+)\]"),
}
_OP_TYPE = re.compile(r"OpType=(\w+)")
_PIDS = re.compile(r"\bpid(?:\(s\))? ([\d, ]*\d)", re.IGNORECASE)
_SIGNAL = re.compile(r"killed by signal: ([A-Za-z][\w ]*?)(?:\.|\s*\(|$)")
_EXIT = re.compile(
    r"\b(?:exit ?(?:code|status)|return code)\s*[:=]?\s*(-?\d+)|\bexitcode\s*:\s*(-?\d+)", re.IGNORECASE
)
_KILLED_PROC = re.compile(r"Killed process (\d+) \(([^)]+)\)")
_SCALE = re.compile(
    r"(?:reducing (?:the )?loss scale to|reducing to|loss scale(?: to)?:?)\s*([\d.]+(?:e[+-]?\d+)?)",
    re.IGNORECASE,
)
_ERRNO = re.compile(r"\[Errno (\d+)\]|os error (\d+)|code: (\d+)")
_NCCL_CODE = re.compile(r"\b(nccl\w+Error)\b|NCCL version ([\d.]+)")
_CUDA_STATUS = re.compile(r"\b((?:CUDNN|CUBLAS|CUSOLVER)_STATUS_\w+)")
_UNRECOGNIZED = re.compile(
    r"unrecognized arguments: (.+)$|the following arguments are required: (.+)$", re.MULTILINE
)


def _oom_figures(text: str, table: dict[str, tuple[re.Pattern[str], ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, patterns in table.items():
        v = _first_size(text, patterns)
        if v is not None:
            out[key] = v
    return out


def details_for(category: str, text: str, message: str) -> dict[str, Any]:
    """Category-specific figures from a finding's message (preferred) and text. Sizes are GiB."""
    src = message if category in ("cuda_oom", "mps_oom") and "allocate" in message else text
    d: dict[str, Any] = {}
    if category == "cuda_oom":
        d = _oom_figures(src, _OOM_FIGURES)
        if "reserved_unallocated_gb" not in d and "reserved_total_gb" in d and "allocated_by_pytorch_gb" in d:
            # Older PyTorch prints "reserved in total"; what is reserved but not allocated is the difference.
            d["reserved_unallocated_gb"] = round(
                max(0.0, d["reserved_total_gb"] - d["allocated_by_pytorch_gb"]), 9
            )
        m = _GPU_INDEX.search(src)
        if m:
            d["gpu_index"] = int(m.group(1))
        if "expandable_segments" in text or "max_split_size_mb" in text:
            d["allocator_hint"] = (
                "expandable_segments" if "expandable_segments" in text else "max_split_size_mb"
            )
    elif category == "mps_oom":
        d = _oom_figures(src, _MPS_FIGURES)
    elif category == "cpu_oom":
        m = _CPU_TRIED.search(text)
        if m:
            d["tried_to_allocate_gb"] = round(int(m.group(1)) / GIB, 9)
    elif category == "nccl_timeout":
        for key, p in _NCCL.items():
            m = p.search(text)
            if m:
                d[key] = int(m.group(1))
        m = _OP_TYPE.search(text)
        if m:
            d["op_type"] = m.group(1)
        if "socket has timed out" in text:
            d["kind"] = "rendezvous"
    elif category in ("dataloader_worker_died", "shm_bus_error"):
        m = _PIDS.search(text)
        if m:
            d["pids"] = [int(p) for p in re.findall(r"\d+", m.group(1))][:32]
        m = _SIGNAL.search(text)
        if m:
            d["signal"] = m.group(1).strip()
        if category == "shm_bus_error" and "DataLoader worker" in text:
            d["dataloader_worker_died"] = True
        if d.get("signal") == "Killed":
            d["likely_cause"] = "host_oom_kill"
    elif category == "host_oom_kill":
        m = _EXIT.search(text)
        if m:
            d["exit_code"] = int(m.group(1) or m.group(2))
        m = _KILLED_PROC.search(text)
        if m:
            d["pid"], d["process"] = int(m.group(1)), m.group(2)
        if "SIGKILL" in text or "Killed" in text or d.get("exit_code") in (137, -9):
            d["signal"] = "SIGKILL"
    elif category == "fp16_overflow":
        scales = _SCALE.findall(text)
        if scales:
            try:
                d["loss_scale"] = float(scales[-1])
            except ValueError:
                pass
        d["at_minimum"] = bool(MIN_SCALE.search(text))
    elif category in ("disk_full", "too_many_open_files", "checkpoint_save_failed"):
        m = _ERRNO.search(text)
        if m:
            d["errno"] = int(next(g for g in m.groups() if g))
        if "quota" in text.lower():
            d["quota"] = True
    elif category == "nccl_error":
        m = _NCCL_CODE.search(text)
        if m and m.group(1):
            d["nccl_code"] = m.group(1)
        m = re.search(r"NCCL version ([\d.]+)", text)
        if m:
            d["nccl_version"] = m.group(1)
    elif category == "cudnn_cublas":
        m = _CUDA_STATUS.search(text)
        if m:
            d["status"] = m.group(1)
    elif category in _MORE:
        d = _MORE[category](text)
    elif category == "config_error":
        m = _UNRECOGNIZED.search(text)
        if m:
            d["arguments"] = (m.group(1) or m.group(2)).strip()[:200]
        d["source"] = (
            "argparse"
            if " error: " in text and ("usage:" in text or "arguments" in text)
            else "yaml"
            if "yaml" in text.lower()
            else "python"
        )
    return d


# -- signals, schedulers, ports, the Hub, the network, non-finite values ---------------------------------------

_SIGNAL_WORDS = (
    ("SIGABRT", re.compile(r"\bAbort|\bSIGABRT\b|\bexitcode\s*:\s*-6\b|\bexit(?:ed with)?[ _]?code:? ?134\b"
                           r"|corrupt|free\(\)|munmap_chunk|stack smashing|terminate called")),
    ("SIGBUS", re.compile(r"Bus error|\bSIGBUS\b")),
    ("SIGILL", re.compile(r"Illegal instruction|\bSIGILL\b")),
)
_WORKER = re.compile(r"DataLoader worker|encountered in worker", re.IGNORECASE)
_SIGNAL_PID = re.compile(r"received by PID (\d+)|\(pid: (\d+)\)")
_PORT = re.compile(r"\[::\]:(\d+)|0\.0\.0\.0:(\d+)|\bport:? (\d+)|:(\d+) \(errno: 98")
_KINDS = (  # why a scheduler ended the job, first match wins
    ("preemption", re.compile(r"PREEMPT", re.IGNORECASE)),
    ("node_failure", re.compile(r"NODE FAIL", re.IGNORECASE)),
    ("requeue", re.compile(r"REQUEUE", re.IGNORECASE)),
    ("time_limit", re.compile(r"TIME LIMIT|DUE TO TIME|walltime|cput|wallclock|RUNLIMIT|CPULIMIT|DeadlineExceeded"
                              r"|active longer than", re.IGNORECASE)),
    ("cancelled", re.compile(r"CANCELLED AT|TERM_(?:FORCE_)?(?:OWNER|ADMIN)", re.IGNORECASE)),
    ("terminated", re.compile(r"Terminated")),
)
_SCHEDULERS = (
    ("slurm", re.compile(r"slurmstepd|\bsrun\b|\*\*\* (?:JOB|STEP) ")),
    ("pbs", re.compile(r"\bPBS\b")),
    ("lsf", re.compile(r"\bTERM_[A-Z_]+:|\bLSF\b")),
    ("moab", re.compile(r"MOAB|wallclock limit")),
    ("sge", re.compile(r"hard wallclock")),
    ("kubernetes", re.compile(r"DeadlineExceeded|active longer than specified deadline")),
)
_JOB_ID = re.compile(r"\*\*\* (?:JOB|STEP) (\S+)")
_HUB_REPO = re.compile(
    r"huggingface\.co/(?:api/models/|datasets/)?([\w.\-]+/[\w.\-]+)/(?:resolve|tree|revision|raw)"
    r"|(?:Repo model|Access to model) ([\w.\-]+/[\w.\-]+) is"
    r"|huggingface\.co/([\w.\-]+)/resolve|(\S+) is not a local folder"
)
_NOT_FOUND = re.compile(r"not ?found|not a valid model|can't load")
_HOST = re.compile(r"host='([^']+)'|https?://([^/\s'\")]+)")


def _segfault(text: str) -> dict[str, Any]:
    """The signal (SIGSEGV unless the text says abort, bus error or illegal instruction), the exit code, and
    whether a DataLoader worker crashed, with its pids."""
    d: dict[str, Any] = {}
    if any(p.search(text) for p in lc.BY_ID["segfault"].patterns):
        d["signal"] = "SIGSEGV"
    else:
        d["signal"] = next((sig for sig, p in _SIGNAL_WORDS if p.search(text)), "SIGSEGV")
    m = _EXIT.search(text)
    if m:
        d["exit_code"] = int(m.group(1) or m.group(2))
    if _WORKER.search(text):
        d["dataloader_worker"] = True
        m = _PIDS.search(text)
        if m:
            d["pids"] = [int(p) for p in re.findall(r"\d+", m.group(1))][:32]
    m = _SIGNAL_PID.search(text)
    if m and "pids" not in d:
        d["pid"] = int(m.group(1) or m.group(2))
    return d


def _address_in_use(text: str) -> dict[str, Any]:
    m = _PORT.search(text)
    return {"port": int(next(g for g in m.groups() if g))} if m else {}


def _scheduler_kill(text: str) -> dict[str, Any]:
    """Why the scheduler ended the job (time_limit, preemption, node_failure, requeue, cancelled, terminated),
    which scheduler said so, and the job id."""
    d: dict[str, Any] = {"kind": next((kind for kind, p in _KINDS if p.search(text)), "cancelled")}
    sched = next((name for name, p in _SCHEDULERS if p.search(text)), None)
    if sched:
        d["scheduler"] = sched
    m = _JOB_ID.search(text)
    if m:
        d["job_id"] = m.group(1)
    return d


def _sighup(text: str) -> dict[str, Any]:
    return {"signal": "SIGHUP"}


def _terminated(text: str) -> dict[str, Any]:
    sigint = re.search(r"\b(?:2|Signals\.SIGINT) death signal|got signal: 2\b", text)
    return {"signal": "SIGINT" if sigint else "SIGTERM"}


def _hub_access(text: str) -> dict[str, Any]:
    """The repo the Hub refused and why: gated (terms not accepted or not logged in), not_found (a wrong id, or
    a local path that does not exist and was taken for an id), unauthorized (a bad or missing token)."""
    low = text.lower()
    kind = ("gated" if "gated" in low else "not_found" if _NOT_FOUND.search(low) else "unauthorized")
    d: dict[str, Any] = {"kind": kind}
    m = _HUB_REPO.search(text)
    if m:
        d["repo"] = next(g for g in m.groups() if g)[:200]
    return d


def _network(text: str) -> dict[str, Any]:
    m = _HOST.search(text)
    return {"host": (m.group(1) or m.group(2))[:200]} if m else {}


def _nan_loss(text: str) -> dict[str, Any]:
    """Which quantity went non-finite: the loss, or only the gradient norm (with the loss stuck at 0 or not)."""
    if lc.nan_is_gradient_only(text):
        return {"quantity": "gradient_norm", "loss_zero": lc.LOSS_ZERO.search(text) is not None}
    if "norm" in text and not re.search(r"loss", text, re.IGNORECASE):
        return {"quantity": "gradient_norm"}   # clip_grad_norm_'s "total norm ... is non-finite"
    return {"quantity": "loss"}


_MORE: dict[str, Callable[[str], dict[str, Any]]] = {
    "segfault": _segfault,
    "address_in_use": _address_in_use,
    "scheduler_kill": _scheduler_kill,
    "sighup": _sighup,
    "terminated": _terminated,
    "hub_access": _hub_access,
    "network_timeout": _network,
    "nan_loss": _nan_loss,
}
