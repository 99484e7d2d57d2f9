"""The input pipeline as the steps measured it: how long one batch takes to produce, whether producing it burns
CPU or waits on I/O, and what a number of DataLoader workers would make of the step.

The model is PyTorch's DataLoader: each worker produces whole batches, one at a time, and the loop takes them in
turn (https://pytorch.org/docs/stable/data.html#multi-process-data-loading). A batch takes ``t_b`` to produce.

* With 0 workers the main thread produces each batch itself, so the data wait of a step IS ``t_b``.
* With ``w`` workers the pipeline delivers ``w / t_b`` batches a second. A loop that waits for data is paced by
  it: its step takes ``t_b / w``, so ``t_b = w x step time``.
* The wait disappears once the pipeline is faster than the loop's own work (``c``, the step time without the
  wait): ``w >= t_b / c``. One worker more absorbs the jitter of batches that take longer than the mean.

Producing a batch either keeps a core busy (decoding, augmenting) or waits (a network file system, a slow
disk, a remote store). It is told apart from the training thread's CPU clock (0 workers: the thread stays on the
CPU while it loads) or from the workers' own CPU use (with workers; runs recorded before that was sampled fall
back on the host's CPU use against the main process's, which counts other jobs on the host as loading).

Even loading that mostly waits spends some CPU on each batch (indexing, collating, handing it to the main
process), and every step spends the loop's own CPU. Both come out of the cores the job may use, so no number of
workers brings a step below ``(main CPU per step + loading CPU per batch) / cores``: on a machine with few cores
that floor, not ``c``, is the pace, and workers beyond ``t_b / floor`` only add start-up time and memory. Only
loading measured to wait on I/O is given more workers than the job has CPUs: PyTorch warns above that
(``_check_worker_number_rationality`` in ``torch/utils/data/dataloader.py``).

Each worker starts by importing, forking and filling its own caches, so the first steps of a run with many
workers wait for them; the pace is measured after the first ``max(5, workers)`` steps (each worker's first
batch), and the start-up is left to the run's wall time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from runlens.analyze.configpaths import resolve
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, finite, memo
from runlens.analyze.measures.timing import main_rank_steps, training_window
from runlens.analyze.measures.workers import cpu_count, measured_workers

CPU_BOUND_SHARE = 0.5     # loading that keeps a core busy for over half its time is CPU-bound
MAX_IO_WORKERS = 32       # waiting workers cost no core, but each is a process with its own memory
JITTER_WORKERS = 1        # one worker beyond t_b / floor for batches slower than the mean
WARMUP_STEPS = 5          # steps that include compilation and the first batches (runlens.analyze.measures.timing)


@dataclass(frozen=True)
class Loading:
    """The input pipeline of the training window (means per step, seconds)."""

    workers: int                      # DataLoader workers the run used
    step_seconds: float               # mean step time
    wait_seconds: float               # mean wait for the next batch
    compute_seconds: float            # mean step time without the wait: the loop's own work, c
    batch_seconds: float              # time to produce one batch with no overlap, t_b
    kind: str                         # "cpu" | "io" | "unknown": what producing a batch spends its time on
    cpu_share: float | None           # share of the loading time spent on a CPU, where measured
    cores: int | None                 # CPUs the job may use
    main_cpu_seconds: float | None = None   # the main process's CPU per step, loading excluded
    skipped_steps: int = WARMUP_STEPS       # start-up steps left out of the figures above
    other_cores: float = 0.0                # cores other processes on the host kept busy meanwhile

    @property
    def wait_share(self) -> float:
        return self.wait_seconds / self.step_seconds if self.step_seconds > 0 else 0.0

    def cap(self) -> int:
        """The most workers worth running: the cores left beside the training process when loading is CPU-bound
        (or not known to be otherwise), else a bound on processes."""
        if self.kind == "io" or not self.cores:
            return MAX_IO_WORKERS
        return max(1, self.cores - 1)

    @property
    def batch_cpu_seconds(self) -> float | None:
        """CPU seconds one batch costs to produce, where measured."""
        return self.cpu_share * self.batch_seconds if self.cpu_share is not None else None

    def floor(self) -> float:
        """The step time no number of workers goes below: the loop's own work, or the CPU a step needs (the
        main process's own and one batch's loading) spread over the job's cores, whichever is longer."""
        cpu_b = self.batch_cpu_seconds
        if not self.cores or cpu_b is None:
            return self.compute_seconds
        main = self.main_cpu_seconds if self.main_cpu_seconds is not None else self.compute_seconds
        free = max(1.0, self.cores - self.other_cores)
        return max(self.compute_seconds, (main + cpu_b) / free)

    def needed(self) -> int:
        """Workers that produce batches as fast as the loop can take them, plus one for jitter."""
        pace = self.floor()
        if pace <= 0:
            return self.cap()
        return math.ceil(self.batch_seconds / pace - 1e-9) + JITTER_WORKERS

    def recommended(self) -> int:
        return max(1, min(self.needed(), self.cap()))

    def predict(self, workers: int) -> tuple[float, float]:
        """(mean step time, mean wait) with ``workers`` workers, after their start-up. CPU-bound loading runs on
        at most the cores left, however many workers there are; no count goes below ``floor()``, and the time
        above the loop's own work is waiting for a batch (a worker that waits for a core, or one too few)."""
        if workers <= 0:
            return self.compute_seconds + self.batch_seconds, self.batch_seconds
        effective = min(workers, self.cap()) if self.kind != "io" else workers
        step = max(self.floor(), self.batch_seconds / effective)
        return step, max(0.0, step - self.compute_seconds)


def loading(data: JobData) -> Loading | None:
    """The input pipeline of the run, or None without step and data-wait timings."""
    return memo(data, "loading", lambda: _loading(data))


def _loading(data: JobData) -> Loading | None:
    workers = measured_workers(data) or 0
    configured = _configured_workers(data)
    if configured is not None:
        workers = configured
    steps = _steady_steps(data, workers)
    dt, st = col(steps, "data_time_seconds"), col(steps, "step_time_seconds")
    ok = np.isfinite(dt) & np.isfinite(st) & (st > 0)
    if ok.sum() < 3:
        return None
    step = float(st[ok].mean())
    wait = min(float(dt[ok].mean()), step)
    compute = max(0.0, step - wait)
    batch = wait if workers == 0 else workers * step
    main_cpu: float | None = compute
    if workers == 0:
        cpu_share = _thread_cpu_share(steps, compute, wait)
    else:
        cpu_share = _worker_cpu_share(data, steps, workers)
        main_cpu = _main_cpu_seconds(data, steps, step)
    if cpu_share is None:
        kind = "unknown"
    else:
        kind = "cpu" if cpu_share >= CPU_BOUND_SHARE else "io"
    skipped = len(main_rank_steps(data)) - len(steps)
    cores = cpu_count(data)
    return Loading(workers, step, wait, compute, batch, kind, cpu_share, cores, main_cpu, skipped,
                   _other_cores(data, steps, cores, cpu_share, workers, step))


def _steady_steps(data: JobData, workers: int) -> Any:
    """Steps after the workers' start-up: each worker's first batch comes once that worker has started, so the
    first ``workers`` steps wait for start-up, not for loading. A run too short for that keeps the usual
    warm-up window."""
    skip = max(WARMUP_STEPS, workers)
    if len(main_rank_steps(data)) <= skip * 2:
        return training_window(data)
    return training_window(data, skip_first=skip)


def _configured_workers(data: JobData) -> int | None:
    ref = resolve(data, "num_workers")
    v = ref.current_value
    if ref.source == "config" and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    return None


def _window_samples(data: JobData, steps: Any, column: str) -> np.ndarray:
    """The finite values of a sample column while the given steps ran."""
    s = data.samples
    values, ts = col(s, column), col(s, "timestamp")
    st = finite(col(steps, "timestamp"))
    if st.size < 2:
        return np.array([])
    inside = (ts >= st.min()) & (ts <= st.max()) & np.isfinite(values)
    return values[inside]


def _thread_cpu_share(steps: Any, compute: float, wait: float) -> float | None:
    """With 0 workers: the share of the wait the training thread spent on the CPU, from its CPU clock
    (``thread_cpu_seconds``, read once per flush) over the steady window. The loop's own work is counted as
    CPU time, so a thread that loads from a slow disk shows a CPU share near 0."""
    cpu, ts = col(steps, "thread_cpu_seconds"), col(steps, "timestamp")
    ok = np.isfinite(cpu) & np.isfinite(ts)
    if ok.sum() < 3 or wait <= 0:
        return None
    cpu, ts = cpu[ok], ts[ok]
    wall = float(ts[-1] - ts[0])
    if wall <= 0:
        return None
    busy = float(cpu[-1] - cpu[0]) / wall              # CPU seconds per wall second
    step = compute + wait
    return float(np.clip((busy * step - compute) / wait, 0.0, 1.0))


def _worker_cpu_share(data: JobData, steps: Any, workers: int) -> float | None:
    """With workers: the cores the workers kept busy, per worker, while the steady steps ran (each worker is
    producing a batch all the time in a run that waits for data, so this is the share of a batch's time spent on
    a CPU). Runs recorded without the workers' own CPU use fall back on the host's beyond the main process
    (other processes on the host count as workers' use: that estimate errs towards CPU-bound)."""
    own = _window_samples(data, steps, "worker_cpu_percent")
    if own.size >= 2:
        return float(np.clip(float(np.mean(own)) / 100.0 / workers, 0.0, 1.0))
    cores = cpu_count(data)
    host = _window_samples(data, steps, "cpu_utilization_percent")
    if not cores or host.size < 2:
        return None
    busy = float(np.mean(host)) / 100.0 * cores
    main = _window_samples(data, steps, "process_cpu_percent")
    main_cores = float(np.mean(main)) / 100.0 if main.size else 1.0
    return float(np.clip((busy - main_cores) / workers, 0.0, 1.0))


def _main_cpu_seconds(data: JobData, steps: Any, step: float) -> float | None:
    """With workers: the CPU per step of the training thread (the loop's work and taking each batch from a
    worker), from its CPU clock (``thread_cpu_seconds``, read once per flush); else the main process's sampled
    CPU use, which also counts its other threads. None where neither was measured."""
    cpu, sn = col(steps, "thread_cpu_seconds"), col(steps, "step")
    ok = np.isfinite(cpu) & np.isfinite(sn)
    if ok.sum() >= 2 and sn[ok][-1] > sn[ok][0]:
        return float((cpu[ok][-1] - cpu[ok][0]) / (sn[ok][-1] - sn[ok][0]))
    main = _window_samples(data, steps, "process_cpu_percent")
    if main.size < 2:
        return None
    return float(np.mean(main)) / 100.0 * step


def _other_cores(data: JobData, steps: Any, cores: int | None, cpu_share: float | None, workers: int,
                 step: float) -> float:
    """Cores the host kept busy beyond this job's processes while the steady steps ran (other jobs on a shared
    machine): what the job's own CPU must fit beside. 0 where not measured."""
    host = _window_samples(data, steps, "cpu_utilization_percent")
    main = _window_samples(data, steps, "process_cpu_percent")
    if not cores or host.size < 2 or main.size < 2:
        return 0.0
    job = float(np.mean(main)) / 100.0
    if workers > 0:
        own = _window_samples(data, steps, "worker_cpu_percent")
        if own.size < 2:
            return 0.0   # the workers' share is not known apart from the others'
        job += float(np.mean(own)) / 100.0
    return max(0.0, float(np.mean(host)) / 100.0 * cores - job)
