"""Recognising an out-of-memory failure, in one place: from an exception object, from its text, and from the
figures an allocator prints.

The collectors use it to record a ``cuda_oom`` event as it happens; status uses it to name why a job
failed; the analyzer to find every sign of an OOM in events and logs. The log parser has its own, wider
categories (``runlens.analyze.logcategories``) for lines that are not exceptions.
"""

from __future__ import annotations

import re
import sys

from runlens.core.units import GIB, unit_to_gib

# What the OS reports when it ends a process for memory.
SIGKILL_EXIT = 137                       # 128 + SIGKILL: the kernel's OOM killer (or an external kill -9)
OOM_KILL_REASON = "killed by SIGKILL (likely the host OOM killer)"
# ... and when the job's memory cgroup counted the kill: certain, and at the container's limit, not the host's RAM.
CONTAINER_OOM_KILL_REASON = "killed by the kernel's OOM killer at the container's memory limit"

# An exception's text that says out of memory: torch's CUDA/HIP/MPS/CPU allocators, XLA, and accelerate's
# `should_reduce_batch_size` list (https://github.com/huggingface/accelerate/blob/main/src/accelerate/utils/memory.py).
OOM_TEXT = re.compile(r"out of memory|DefaultCPUAllocator: can't allocate memory|Cannot allocate memory|"
                      r"MPS backend out of memory|PT_DEVMEM Allocation failed|OutOfMemoryError|"
                      r"CUDA_ERROR_OUT_OF_MEMORY|RESOURCE_EXHAUSTED", re.IGNORECASE)
OOM_TYPES = ("OutOfMemoryError", "MemoryError")
CUDA_OOM_TEXT = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY", re.IGNORECASE)
HOST_OOM_TEXT = re.compile(r"host.?oom|oom.?kill", re.IGNORECASE)

_ALLOCATOR_FIGURES = {
    "tried_to_allocate_gb": re.compile(r"Tried to allocate ([\d.]+) ?([KMGT]i?B|B)\b", re.IGNORECASE),
    "total_capacity_gb": re.compile(r"total capac(?:i)?ty of ([\d.]+) ?([KMGT]i?B)", re.IGNORECASE),
    "free_gb": re.compile(r"of which ([\d.]+) ?([KMGT]i?B) is free", re.IGNORECASE),
    "allocated_by_pytorch_gb": re.compile(r"([\d.]+) ?([KMGT]i?B) is allocated by PyTorch", re.IGNORECASE),
    "reserved_unallocated_gb": re.compile(r"([\d.]+) ?([KMGT]i?B) is reserved by PyTorch but unallocated",
                                          re.IGNORECASE),
}
_CPU_ALLOC_BYTES = re.compile(r"you tried to allocate (\d+) bytes", re.IGNORECASE)


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error, without importing torch (a program that never imported it
    cannot raise it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        for owner in (torch, getattr(torch, "cuda", None)):
            cls = getattr(owner, "OutOfMemoryError", None)
            if isinstance(cls, type) and isinstance(exc, cls):
                return True
    for cls in type(exc).__mro__:
        if cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch"):
            return True
    # torch < 2.0 raised a plain RuntimeError
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def is_oom_text(text: str, type_name: str = "") -> bool:
    """An exception (by its type name and message) that reports running out of memory."""
    return type_name.endswith(OOM_TYPES) or bool(OOM_TEXT.search(text))


def allocator_figures(text: str) -> dict[str, float]:
    """GiB figures from a CUDA/CPU allocator OOM message: ``tried_to_allocate_gb``, ``total_capacity_gb``,
    ``free_gb``, ``allocated_by_pytorch_gb``, ``reserved_unallocated_gb`` (those present)."""
    out: dict[str, float] = {}
    for key, pat in _ALLOCATOR_FIGURES.items():
        m = pat.search(text)
        if m:
            out[key] = unit_to_gib(float(m.group(1)), m.group(2))
    m = _CPU_ALLOC_BYTES.search(text)
    if m and "tried_to_allocate_gb" not in out:
        out["tried_to_allocate_gb"] = int(m.group(1)) / GIB
    return out
