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
disk, a remote store). Only CPU-bound loading is capped by the cores the machine has left. It is told apart
from the training thread's CPU clock (0 workers: the thread stays on the CPU while it loads) or from the host's
CPU use against the main process's (with workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runlens.analyze.configpaths import resolve
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, finite, memo
from runlens.analyze.measures.timing import data_wait, training_window
from runlens.analyze.measures.workers import cpu_count, measured_workers

CPU_BOUND_SHARE = 0.5     # loading that keeps a core busy for over half its time is CPU-bound
MAX_IO_WORKERS = 32       # waiting workers cost no core, but each is a process with its own memory
JITTER_WORKERS = 1        # one worker beyond t_b / c for batches slower than the mean


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

    @property
    def wait_share(self) -> float:
        return self.wait_seconds / self.step_seconds if self.step_seconds > 0 else 0.0

    def cap(self) -> int:
        """The most workers worth running: the cores left beside the training process when loading is CPU-bound
        (or not known to be otherwise), else a bound on processes."""
        if self.kind == "io" or not self.cores:
            return MAX_IO_WORKERS
        return max(1, self.cores - 1)

    def needed(self) -> int:
        """Workers that produce batches faster than the loop uses them, plus one for jitter."""
        if self.compute_seconds <= 0:
            return self.cap()
        return math.ceil(self.batch_seconds / self.compute_seconds - 1e-9) + JITTER_WORKERS

    def recommended(self) -> int:
        return max(1, min(self.needed(), self.cap()))

    def predict(self, workers: int) -> tuple[float, float]:
        """(mean step time, mean wait) with ``workers`` workers. CPU-bound loading runs on at most the cores
        left, however many workers there are."""
        if workers <= 0:
            wait = self.batch_seconds
        else:
            effective = min(workers, self.cap()) if self.kind != "io" else workers
            wait = max(0.0, self.batch_seconds / effective - self.compute_seconds)
        return self.compute_seconds + wait, wait


def loading(data: JobData) -> Loading | None:
    """The input pipeline of the run, or None without step and data-wait timings."""
    return memo(data, "loading", lambda: _loading(data))


def _loading(data: JobData) -> Loading | None:
    dw = data_wait(data)
    if dw is None or dw.steps == 0:
        return None
    step = dw.step_seconds / dw.steps
    wait = dw.data_seconds / dw.steps
    compute = max(0.0, step - wait)
    workers = measured_workers(data) or 0
    configured = _configured_workers(data)
    if configured is not None:
        workers = configured
    batch = wait if workers == 0 else workers * step
    cpu_share = _thread_cpu_share(data, compute, wait) if workers == 0 else _worker_cpu_share(data, workers)
    if cpu_share is None:
        kind = "unknown"
    else:
        kind = "cpu" if cpu_share >= CPU_BOUND_SHARE else "io"
    return Loading(workers, step, wait, compute, batch, kind, cpu_share, cpu_count(data))


def _configured_workers(data: JobData) -> int | None:
    ref = resolve(data, "num_workers")
    v = ref.current_value
    if ref.source == "config" and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    return None


def _thread_cpu_share(data: JobData, compute: float, wait: float) -> float | None:
    """With 0 workers: the share of the wait the training thread spent on the CPU, from its CPU clock
    (``thread_cpu_seconds``, read once per flush) over the training window. The loop's own work is counted as
    CPU time, so a thread that loads from a slow disk shows a CPU share near 0."""
    steps = training_window(data)
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


def _worker_cpu_share(data: JobData, workers: int) -> float | None:
    """With workers: the cores the host was busy on beyond the main process, per worker, while steps ran
    (other processes on the host count as workers' use: the estimate errs towards CPU-bound)."""
    cores = cpu_count(data)
    s = data.samples
    host, main, ts = col(s, "cpu_utilization_percent"), col(s, "process_cpu_percent"), col(s, "timestamp")
    st = finite(col(training_window(data), "timestamp"))
    if not cores or st.size < 2 or not np.isfinite(host).any():
        return None
    inside = (ts >= st.min()) & (ts <= st.max()) & np.isfinite(host)
    if inside.sum() < 2:
        return None
    busy = float(np.mean(host[inside])) / 100.0 * cores
    main_cores = float(np.nanmean(main[inside])) / 100.0 if np.isfinite(main[inside]).any() else 1.0
    return float(np.clip((busy - main_cores) / workers, 0.0, 1.0))
