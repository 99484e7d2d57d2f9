"""Memory rules: what ran out, when, and the lever that frees the most.

    pressure   the shared view: how close the run came to running out, in which memory, whether it swapped;
               and ``@lever``, which registers a lever as a rule and for comparison
    diagnosis  what happened: ``memory.oom``, ``memory.peak``, ``memory.swap``
    levers     how much one setting would free: workers, batch size, quantization, EMA, gradient
               checkpointing, resolution, the sampling peak, allocator fragmentation
    shm        ``/dev/shm`` too small for the DataLoader workers

The modules are imported in this order, and their rules register in it: findings that tie on severity, impact
and confidence keep the order in the report.
"""

from __future__ import annotations

from runlens.analyze.rules.memory.diagnosis import oom, peak, swap
from runlens.analyze.rules.memory.levers import (
    batch_size,
    ema,
    fragmentation,
    gradient_checkpointing,
    quantize,
    resolution,
    sampling_peak,
    workers,
)
from runlens.analyze.rules.memory.pressure import Pressure, pressure
from runlens.analyze.rules.memory.shm import shm

__all__ = ["Pressure", "batch_size", "ema", "fragmentation", "gradient_checkpointing", "oom", "peak",
           "pressure", "quantize", "resolution", "sampling_peak", "shm", "swap", "workers"]
