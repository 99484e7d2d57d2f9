"""Figures the rules share, measured from a loaded job: wall time, phases, memory peaks, OOMs, the
memory-vs-batch-size relation, data-wait share.

Every function takes a ``JobData`` and returns plain values; none raises on a job with missing columns or empty
frames (a crashed run, a run without a GPU, a run that never stepped), it returns None instead. Rules stay small
because the measuring lives here once, one concern per module:

    columns    numbers out of frames and rows, and the per-job cache (``memo``)
    timing     the run's bounds, the main rank's steps, the step or sample at a moment, data wait
    phases     eval/checkpoint/load phase intervals and the phase open at a moment
    memory     RAM and GPU memory series, the domain the job is likeliest to run out of, the binding pool(s)
    workers    DataLoader worker count and memory, usable CPUs
    oom        every sign of an out-of-memory failure
    batchfit   memory against batch size, static memory, reported parameter counts
    stats      trailing baselines, MAD, runs of a mask
    loading    the input pipeline: time to produce a batch, CPU- or I/O-bound, the workers that hide it
    batches    the batch sizes that ran, and the batch size to recommend
    divergence where a diverging run's growth began, how fast, at which learning rate
    ranks      per-rank steps, pace, CPU, data wait, arrival and memory of a data-parallel job

The last four are imported by module (``from runlens.analyze.measures.loading import loading``), not
re-exported.

Rules read them as ``from runlens.analyze import measures as m``; ``m.col``, ``m.phase_at`` and so on.
"""

from __future__ import annotations

from runlens.analyze.measures.batchfit import (
    THETA,
    BatchFit,
    batch_memory_fit,
    bytes_per_param,
    current_batch_size,
    model_info,
    static_memory,
)
from runlens.analyze.measures.columns import col, details_of, finite, is_nan, memo, num
from runlens.analyze.measures.memory import (
    CONTAINER_LIMIT_COLUMN,
    CONTAINER_WORKING_SET_COLUMN,
    JOB_GPU_COLUMN,
    Binding,
    MemoryLimit,
    MemorySeries,
    binding,
    gpu_device_count,
    gpu_series,
    job_gpu_series,
    memory_domain,
    memory_limit,
    ram_peak,
    ram_series,
    unified,
)
from runlens.analyze.measures.oom import OomOccurrence, oom_occurrences
from runlens.analyze.measures.phases import (
    Phase,
    merged_intervals,
    overhead_intervals,
    overlaps,
    phase_at,
    phase_name,
    phases,
)
from runlens.analyze.measures.stats import EXACT_BASELINE_MAX, robust_mad, runs_of, trailing_baseline
from runlens.analyze.measures.timing import (
    DataWait,
    data_wait,
    main_rank_steps,
    sample_at,
    step_at,
    steps_at,
    time_bounds,
    training_window,
    wall_seconds,
)
from runlens.analyze.measures.workers import cpu_count, measured_workers, worker_peak

__all__ = [
    "CONTAINER_LIMIT_COLUMN", "CONTAINER_WORKING_SET_COLUMN", "EXACT_BASELINE_MAX", "JOB_GPU_COLUMN", "THETA",
    "BatchFit", "Binding", "DataWait", "MemoryLimit", "MemorySeries",
    "OomOccurrence", "Phase", "batch_memory_fit", "binding", "bytes_per_param", "col", "cpu_count",
    "current_batch_size", "data_wait", "details_of", "finite", "gpu_device_count", "gpu_series", "is_nan",
    "job_gpu_series", "main_rank_steps", "measured_workers", "memo",
    "memory_domain", "memory_limit", "merged_intervals", "model_info", "num", "oom_occurrences", "overhead_intervals",
    "overlaps", "phase_at", "phase_name", "phases", "ram_peak", "ram_series", "robust_mad", "runs_of", "sample_at",
    "static_memory", "step_at", "steps_at", "time_bounds", "training_window", "trailing_baseline", "unified",
    "wall_seconds", "worker_peak",
]
