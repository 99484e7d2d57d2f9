"""GPU rules: a GPU that idles while the job trains, and the causes this run's evidence supports.

NVML's utilisation is the share of the sample period in which at least one kernel ran on the device
(https://docs.nvidia.com/deploy/nvml-api/structnvmlUtilization__t.html). It reads from samples alone, so the rule
works on a zero-code run (``runlens collect``, no steps): the window is then the run with its idle start-up and
shutdown trimmed. A cause is named only when this run measured it; what runlens cannot see (host-device
synchronisation) is said to be unmeasured, never guessed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze import measures as m
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule
from runlens.analyze.rules.throughput import INPUT_BOUND, gpu_underutilized

# Below 70 % busy the GPU runs no kernel for almost a third of the time: enough to be worth a look. Below 50 %
# (where the PyTorch profiler's TensorBoard plugin calls utilisation low) and for 10 minutes of training or
# more, the run would take noticeably less time and the finding is a warning.
UTIL_LOW = 70.0
UTIL_WARN = 50.0
WARN_MIN_SECONDS = 600.0
MIN_SAMPLES = 6
IDLE_PERCENT = 5.0          # a device under this is idle (start-up, shutdown, a GPU the job does not use)
BUSY_PERCENT = 20.0         # ... while another device of the job is busier than this
CPU_BOUND_PERCENT = 85.0    # the main process's CPU, top's convention (100 = one core), median over the window
SMALL_BATCH_RATIO = 0.5     # the job's GPU memory peaked under half the device
NOT_MEASURED_SYNC = ("host-device synchronisation (.item(), .cpu(), printing a tensor) stalls the GPU between "
                     "kernels; runlens does not measure it (a torch.profiler trace shows it)")

CAUSE_NAMES = {"input_bound": "input-bound", "small_batch": "small batch", "cpu_bound": "CPU-bound loop",
               "idle_devices": "idle GPUs", "not_on_gpu": "nothing ran on it"}
ACTIONS = {
    "input_bound": "feed it faster (more DataLoader workers, pinned memory, pre-processed inputs; "
                   "throughput.input_bound names the setting)",
    "small_batch": "give each step more work (a larger batch, with less gradient accumulation to keep the "
                   "effective batch)",
    "cpu_bound": "take work off the Python loop (data preparation into DataLoader workers, fewer per-step "
                 "Python operations, torch.compile or CUDA graphs for many small kernels)",
    "idle_devices": "use every GPU it sees (one process per GPU with torchrun/DDP) or make only the used ones "
                    "visible (CUDA_VISIBLE_DEVICES)",
    "not_on_gpu": "check that the model and each batch are moved to the GPU",
}


@rule("gpu.underutilized", "throughput")
def underutilized(data: JobData) -> list[Finding]:
    """Mean GPU utilisation while training is under 70 %: the finding names each cause this run measured
    (input-bound, a small batch, a CPU-bound main process, idle devices) and what removing it could give."""
    window = _window(data)
    if window is None:
        return []
    ts, util, per_device, (lo, hi), kind = window
    if util.size < MIN_SAMPLES:
        return []
    mean = float(util.mean())
    if mean >= UTIL_LOW or gpu_underutilized(data):
        return []   # busy enough; or throughput.gpu_underutilized already carries the batch-size change
    causes: list[dict[str, Any]] = []
    not_measured = [NOT_MEASURED_SYNC]
    predicted: float | None = None
    dw = m.data_wait(data)
    if dw is not None and dw.share >= INPUT_BOUND:
        # The GPU is at best idle while the step waits for data: without the wait the same busy time fills a
        # shorter step. An upper bound, since queued kernels may run during part of the wait.
        predicted = min(100.0, mean / (1.0 - dw.share)) if dw.share < 1.0 else 100.0
        causes.append({"cause": "input_bound", "data_wait_share": dw.share,
                       "text": f"input-bound: {dw.share:.0%} of step time waiting for the next batch"})
    elif dw is None:
        not_measured.append("data wait (no step timings with data_time_seconds)")
    if mean < IDLE_PERCENT:
        # Nothing ran on it: a small batch or a busy CPU would not leave a GPU this idle.
        causes.append({"cause": "not_on_gpu", "text": f"the GPU stayed idle ({mean:.1f}% busy) throughout"})
    else:
        causes += _small_batch(data) + _cpu_bound(data, lo, hi) + _idle_devices(per_device)
    return [_finding(mean, causes, not_measured, predicted, util.size, hi - lo, kind, per_device)]


def _finding(mean: float, causes: list[dict[str, Any]], not_measured: list[str], predicted: float | None,
             n: int, seconds: float, kind: str, per_device: dict[int, float]) -> Finding:
    names = [CAUSE_NAMES[c["cause"]] for c in causes]
    while_ = "while training" if kind == "steps" else "while running"
    title = f"GPU under-utilised ({mean:.0f}% busy {while_}" + (f"; {', '.join(names)})" if names else ")")
    if causes:
        action = " ".join(f"{_sentence(c['text'])}; {ACTIONS[c['cause']]}." for c in causes)
    else:
        action = "Profile a few steps (torch.profiler) to see what the GPU waits for."
    action += " Host-device synchronisation (.item(), .cpu()) is not measured by runlens."
    impact = f"GPU busy {mean:.0f}% {while_} ({100 - mean:.0f}% idle)"
    if predicted is not None:
        impact += f"; without the data wait up to ~{predicted:.0f}% busy"
    severity = "warning" if mean < UTIL_WARN and seconds >= WARN_MIN_SECONDS else "info"
    evidence: dict[str, Any] = {
        "gpu_utilization_percent": mean, "samples": n, "window": kind, "window_seconds": seconds,
        "per_device_percent": {str(k): v for k, v in sorted(per_device.items())},
        "causes": causes, "not_measured": not_measured, "predicted_utilization_percent": predicted,
    }
    return Finding(id="gpu.underutilized", severity=severity, title=title, action=action, impact=impact,
                   category="throughput", evidence=evidence, impact_value=100.0 - mean,
                   impact_unit="percent_time", confidence=0.7)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# -- the window and its samples ------------------------------------------------------------------------------

Window = tuple[np.ndarray, np.ndarray, dict[int, float], tuple[float, float], str]


def _window(data: JobData) -> Window | None:
    """(timestamps, job-level utilisation, mean per device, (start, end), "steps" | "run") of the samples taken
    while training: between the first and last step after warm-up, eval/sampling/save phases left out; on a
    run without steps, the whole run less its idle start-up and shutdown. None without GPU utilisation."""
    ts, util = _utilisation(data)
    ok = np.isfinite(ts) & np.isfinite(util)
    if not ok.any():
        return None
    ts, util = ts[ok], util[ok]
    steps = m.finite(m.col(m.training_window(data), "timestamp"))
    if steps.size >= 2:
        lo, hi, kind = float(steps.min()), float(steps.max()), "steps"
    else:
        busy = np.flatnonzero(util > IDLE_PERCENT)
        if busy.size == 0:
            return None   # the GPU never ran a kernel and nothing says the job trained: not a GPU job
        lo, hi, kind = float(ts[busy[0]]), float(ts[busy[-1]]), "run"
    inside = (ts >= lo) & (ts <= hi) & ~m.overlaps(ts, ts, *m.overhead_intervals(data))
    return ts[inside], util[inside], _per_device(data, lo, hi), (lo, hi), kind


def _utilisation(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """The job's GPU utilisation per sample (the mean over its devices), from the samples or the device rows."""
    s = data.samples
    util = m.col(s, "gpu_utilization_percent")
    if np.isfinite(util).any():
        return m.col(s, "timestamp"), util
    g = data.gpus
    if g is None or g.empty or not np.isfinite(m.col(g, "utilization_percent")).any():
        return np.zeros(0), np.zeros(0)
    frame = pd.DataFrame({"t": m.col(g, "timestamp"), "u": m.col(g, "utilization_percent")})
    per = frame.groupby("t")["u"].mean()
    return per.index.to_numpy(dtype=float), per.to_numpy(dtype=float)


def _per_device(data: JobData, lo: float, hi: float) -> dict[int, float]:
    """Mean utilisation of each device inside the window (empty without per-device rows)."""
    g = data.gpus
    if g is None or g.empty or "device_index" not in g.columns:
        return {}
    ts, util, dev = m.col(g, "timestamp"), m.col(g, "utilization_percent"), m.col(g, "device_index")
    ok = np.isfinite(ts) & np.isfinite(util) & np.isfinite(dev) & (ts >= lo) & (ts <= hi)
    if not ok.any():
        return {}
    means = pd.Series(util[ok]).groupby(dev[ok].astype(int)).mean()
    return {int(k): float(v) for k, v in means.items()}


# -- causes ----------------------------------------------------------------------------------------------------

def _small_batch(data: JobData) -> list[dict[str, Any]]:
    """The job left most of the device's memory unused: its own memory where recorded, else the device's."""
    own, device = m.job_gpu_series(data), m.gpu_series(data)
    ser, source = (own, "job") if own is not None and own.peak is not None else (device, "device")
    if ser is None or ser.peak is None:
        return []
    total = device.total if device is not None and device.total else ser.total
    if not total or ser.peak >= SMALL_BATCH_RATIO * total:
        return []
    if source == "job" and m.gpu_device_count(data) > 1:
        total = total * m.gpu_device_count(data)   # the job's figure covers all its devices
        if ser.peak >= SMALL_BATCH_RATIO * total:
            return []
    bs = m.current_batch_size(data)
    at = f" at batch size {bs}" if bs else ""
    return [{"cause": "small_batch", "memory_source": source, "peak_gb": ser.peak, "total_gb": total,
             "batch_size": bs,
             "text": f"small batch: GPU memory peaked at {ser.peak:.1f} of {total:.1f} GiB "
                     f"({ser.peak / total:.0%}){at}"}]


def _cpu_bound(data: JobData, lo: float, hi: float) -> list[dict[str, Any]]:
    """The main process kept a core busy while the GPU idled: the Python loop (or data preparation on the main
    thread) is what the GPU waits for."""
    s = data.samples
    ts, cpu = m.col(s, "timestamp"), m.col(s, "process_cpu_percent")
    ok = np.isfinite(ts) & np.isfinite(cpu) & (ts >= lo) & (ts <= hi)
    if ok.sum() < MIN_SAMPLES:
        return []
    median = float(np.median(cpu[ok]))
    if median < CPU_BOUND_PERCENT:
        return []
    return [{"cause": "cpu_bound", "main_process_cpu_percent": median,
             "text": f"CPU-bound main process: a median {median:.0f}% of one core"}]


def _idle_devices(per_device: dict[int, float]) -> list[dict[str, Any]]:
    """Some of the job's GPUs idle while another works: the job uses fewer GPUs than it can see."""
    if len(per_device) < 2 or max(per_device.values()) < BUSY_PERCENT:
        return []
    idle = sorted(k for k, v in per_device.items() if v < IDLE_PERCENT)
    if not idle:
        return []
    names = ", ".join(str(k) for k in idle)
    return [{"cause": "idle_devices", "idle_devices": idle,
             "text": f"{len(idle)} of {len(per_device)} GPUs idle (GPU {names})"}]
