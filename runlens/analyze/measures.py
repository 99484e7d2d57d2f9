"""Figures the rules share, measured from a loaded job: wall time, phases, memory peaks, OOMs, the
memory-vs-batch-size relation, data-wait share.

Every function takes a ``JobData`` and returns plain values; none raises on a job with missing columns or empty
frames (a crashed run, a run without a GPU, a run that never stepped), it returns None instead. Rules stay small
because the measuring lives here once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData

GIB = float(1 << 30)

# Phases whose time is not training (research/analysis.md §3.4: these explain most step-time spikes).
EVAL_PHASES = frozenset({"eval", "evaluate", "evaluation", "validate", "validation", "val", "sample", "sampling",
                         "predict", "test", "generate", "baseline_sample"})
SAVE_PHASES = frozenset({"save", "checkpoint", "checkpoint_save", "saving"})
OVERHEAD_PHASES = EVAL_PHASES | SAVE_PHASES

# OOM markers: accelerate's should_reduce_batch_size (research/analysis.md §2.6) plus MPS and Python's own.
_OOM_TEXT = re.compile(r"out of memory|DefaultCPUAllocator: can't allocate memory|Cannot allocate memory|"
                       r"MPS backend out of memory|PT_DEVMEM Allocation failed|OutOfMemoryError", re.IGNORECASE)
_OOM_TYPES = ("OutOfMemoryError", "MemoryError")
_UNIT = {"b": 1 / GIB, "kib": 1 / (1 << 20), "kb": 1 / (1 << 20), "mib": 1 / 1024, "mb": 1 / 1024,
         "gib": 1.0, "gb": 1.0, "tib": 1024.0, "tb": 1024.0, "bytes": 1 / GIB}


def num(values: Any) -> np.ndarray:
    """A float array with NaN for None and non-numbers (SQLite turns NaN into NULL)."""
    out: np.ndarray = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")
    return out


def col(frame: pd.DataFrame | None, name: str) -> np.ndarray:
    """Column ``name`` as floats; all-NaN when the column is missing."""
    if frame is None or frame.empty or name not in frame.columns:
        return np.full(0 if frame is None else len(frame), np.nan)
    return num(frame[name])


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (for JSON-bound figures read from rows and details)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def finite(a: np.ndarray) -> np.ndarray:
    out: np.ndarray = a[np.isfinite(a)]
    return out


def fmt_gb(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "?"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def details_of(row: Mapping[str, Any]) -> dict[str, Any]:
    d = row.get("details")
    return d if isinstance(d, dict) else {}


T = TypeVar("T")


def memo(data: JobData, name: str, fn: Callable[[], T]) -> T:
    """Compute ``fn()`` once per job for every rule that needs it (a 1M-step run is analysed in seconds only if
    the main-rank steps, phases and memory series are derived once, not once per rule).

    The key includes the identity of the frames and config, so assigning a new frame recomputes; frames are
    treated as immutable once analysed (mutating a column in place is not seen).
    """
    cache: dict[tuple[Any, ...], Any] = data.__dict__.setdefault("_runlens_memo", {})
    key = (name, id(data.steps), id(data.samples), id(data.events), id(data.gpus), id(data.costs),
           id(data.config), data.dialect, len(data.log_findings), id(data.settings))
    if key not in cache:
        cache[key] = fn()
    return cache[key]  # type: ignore[no-any-return]


# -- time ------------------------------------------------------------------------------------------------

def time_bounds(data: JobData) -> tuple[float | None, float | None]:
    """(start, end) of the run: the job row's times, else the first/last thing recorded."""
    return memo(data, "time_bounds", lambda: _time_bounds(data))


def _time_bounds(data: JobData) -> tuple[float | None, float | None]:
    job = data.job
    stamps: list[float] = []
    for frame in (data.steps, data.samples, data.events):
        ts = finite(col(frame, "timestamp"))
        if ts.size:
            stamps += [float(ts.min()), float(ts.max())]
    start = job.get("started_at") or job.get("created_at") or (min(stamps) if stamps else None)
    end = job.get("ended_at") or (max(stamps) if stamps else None)
    if job.get("ended_at") is None and data.now is not None and job.get("status") == "running":
        end = max(end or 0.0, data.now)
    return (float(start) if start is not None else None, float(end) if end is not None else None)


def wall_seconds(data: JobData) -> float | None:
    start, end = time_bounds(data)
    if start is None or end is None or end <= start:
        return None
    return end - start


def main_rank_steps(data: JobData) -> pd.DataFrame:
    """Steps of one rank (the lowest, or the rows without one), ordered by step: multi-rank jobs write each
    step once per rank, and curves must not interleave them."""
    return memo(data, "main_rank_steps", lambda: _main_rank_steps(data))


def _main_rank_steps(data: JobData) -> pd.DataFrame:
    steps = data.steps
    if steps is None or steps.empty:
        return pd.DataFrame(columns=["step", "timestamp"])
    if "rank" in steps.columns and steps["rank"].notna().any():
        ranks = pd.to_numeric(steps["rank"], errors="coerce")
        lowest = ranks.min()
        steps = steps[(ranks == lowest) | ranks.isna()]
    if "step" in steps.columns and not steps["step"].is_monotonic_increasing:
        steps = steps.sort_values(["step", "timestamp"], kind="stable")
    return steps


def _step_clock(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, steps) of the main rank, sorted by timestamp, for lookups by time."""
    def build() -> tuple[np.ndarray, np.ndarray]:
        steps = main_rank_steps(data)
        ts, sn = col(steps, "timestamp"), col(steps, "step")
        ok = np.isfinite(ts) & np.isfinite(sn)
        ts, sn = ts[ok], sn[ok]
        order = np.argsort(ts, kind="stable")
        return ts[order], sn[order]
    return memo(data, "step_clock", build)


def steps_at(data: JobData, times: np.ndarray) -> np.ndarray:
    """For each time, the last step recorded at or before it (NaN before the first step)."""
    ts, sn = _step_clock(data)
    times = np.asarray(times, dtype=float)
    if ts.size == 0:
        return np.full(times.shape, np.nan)
    idx = np.searchsorted(ts, times + 1e-6, side="right") - 1
    out = np.where(idx >= 0, sn[np.clip(idx, 0, None)], np.nan)
    return out


def step_at(data: JobData, t: float | None) -> int | None:
    """The last step recorded at or before ``t``."""
    if t is None or _isnan(t):
        return None
    v = steps_at(data, np.array([t]))[0]
    return None if np.isnan(v) else int(v)


def sample_at(data: JobData, t: float | None, snapshot_id: Any = None) -> dict[str, Any] | None:
    """The sample with ``snapshot_id`` (an event's memory snapshot), else the nearest one at or before ``t``."""
    samples = data.samples
    if samples is None or samples.empty:
        return None
    if snapshot_id is not None and "id" in samples.columns and not _isnan(snapshot_id):
        hit = samples[samples["id"] == snapshot_id]
        if not hit.empty:
            return dict(hit.iloc[0])
    if t is None:
        return None
    ts = col(samples, "timestamp")
    before = np.nonzero(ts <= t + 1e-6)[0]
    i = int(before[-1]) if before.size else int(np.nanargmin(np.abs(ts - t)))
    return dict(samples.iloc[i])


def _isnan(x: Any) -> bool:
    try:
        return bool(math.isnan(x))
    except TypeError:
        return False


# -- phases ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def _phase_name(details: Mapping[str, Any]) -> str:
    return str(details.get("phase") or details.get("name") or "phase").lower()


def phases(data: JobData) -> list[Phase]:
    """Phase intervals from phase_start/phase_end events (a phase still open at the end runs to the run's end)."""
    return memo(data, "phases", lambda: _phases(data))


def merged_intervals(intervals: Iterable[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals as sorted, disjoint (starts, ends)."""
    starts: list[float] = []
    ends: list[float] = []
    for a, b in sorted(intervals):
        if starts and a <= ends[-1]:
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    return np.array(starts, dtype=float), np.array(ends, dtype=float)


def overhead_intervals(data: JobData) -> tuple[np.ndarray, np.ndarray]:
    """Merged eval/sampling/save phase intervals."""
    return memo(data, "overhead_intervals",
                lambda: merged_intervals((p.start, p.end) for p in phases(data) if p.name in OVERHEAD_PHASES))


def overlaps(a: np.ndarray, b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each [a, b], whether it overlaps one of the sorted disjoint intervals (starts, ends)."""
    if starts.size == 0:
        return np.zeros(np.shape(a), dtype=bool)
    idx = np.searchsorted(starts, b, side="right") - 1
    return (idx >= 0) & (ends[np.clip(idx, 0, None)] >= a)


def _phases(data: JobData) -> list[Phase]:
    ev = data.events_of("phase_start", "phase_end")
    if ev is None or ev.empty:
        return []
    open_: dict[str, list[float]] = {}
    out: list[Phase] = []
    for row in ev.to_dict("records"):
        d = details_of(row)
        name, t = _phase_name(d), float(row["timestamp"])
        if row["event_type"] == "phase_start":
            open_.setdefault(name, []).append(t)
        else:
            starts = open_.get(name)
            duration = d.get("duration") if d.get("duration") is not None else d.get("duration_seconds")
            if starts:
                start = starts.pop()
            elif isinstance(duration, (int, float)):
                start = t - float(duration)
            else:
                continue
            out.append(Phase(name, start, t))
    _, end = time_bounds(data)
    for name, starts in open_.items():
        for s in starts:
            out.append(Phase(name, s, max(s, end or s)))
    return sorted(out, key=lambda p: p.start)


def phase_at(data: JobData, t: float | None) -> str:
    """The innermost phase open at ``t``; "train" once steps were recorded, "startup" before the first step."""
    if t is not None:
        inside = [p for p in phases(data) if p.start - 1e-6 <= t <= p.end + 1e-6]
        if inside:
            return max(inside, key=lambda p: p.start).name
    first = finite(col(main_rank_steps(data), "timestamp"))
    if t is not None and first.size and t >= first.min() - 1e-6:
        return "train"
    return "startup"


# -- memory ----------------------------------------------------------------------------------------------

@dataclass
class MemorySeries:
    """One memory domain over time: ``kind`` "gpu" (discrete device memory) or "system" (RAM, unified memory)."""

    kind: str
    timestamps: np.ndarray
    used: np.ndarray
    total: float | None

    @property
    def peak(self) -> float | None:
        f = finite(self.used)
        return float(f.max()) if f.size else None

    @property
    def peak_time(self) -> float | None:
        if not np.isfinite(self.used).any():
            return None
        return float(self.timestamps[int(np.nanargmax(self.used))])

    @property
    def peak_ratio(self) -> float | None:
        p = self.peak
        return p / self.total if p is not None and self.total else None


def unified(data: JobData) -> bool:
    if data.samples is None or "unified_memory" not in data.samples.columns:
        return False
    return bool((pd.to_numeric(data.samples["unified_memory"], errors="coerce") > 0).any())


def ram_series(data: JobData) -> MemorySeries | None:
    """System RAM used (total - available) over time; the total is a container's limit when lower."""
    return memo(data, "ram_series", lambda: _ram_series(data))


def _ram_series(data: JobData) -> MemorySeries | None:
    s = data.samples
    if s is None or s.empty:
        return None
    used = col(s, "used_memory_gb")
    if not np.isfinite(used).any():
        used = col(s, "total_memory_gb") - col(s, "available_memory_gb")
    total = finite(col(s, "total_memory_gb"))
    env_total = (data.job.get("environment") or {}).get("cgroup_memory_limit_gb") \
        if isinstance(data.job.get("environment"), dict) else None
    tot = float(np.median(total)) if total.size else None
    if env_total and (tot is None or env_total < tot):
        tot = float(env_total)   # a container's limit is the wall the job hits, not the host's RAM
    if not np.isfinite(used).any():
        return None
    return MemorySeries("system", col(s, "timestamp"), used, tot)


def gpu_series(data: JobData) -> MemorySeries | None:
    """The fullest discrete GPU over time (per-device rows when recorded); None on unified memory or no GPU."""
    return memo(data, "gpu_series", lambda: _gpu_series(data))


def _gpu_series(data: JobData) -> MemorySeries | None:
    if unified(data):
        return None
    g = data.gpus
    if g is not None and not g.empty and np.isfinite(col(g, "memory_used_gb")).any():
        best: MemorySeries | None = None
        for _, dev in g.groupby("device_index") if "device_index" in g.columns else [(0, g)]:
            tot = finite(col(dev, "memory_total_gb"))
            ser = MemorySeries("gpu", col(dev, "timestamp"), col(dev, "memory_used_gb"),
                               float(np.median(tot)) if tot.size else None)
            if best is None or (ser.peak_ratio or 0) > (best.peak_ratio or 0):
                best = ser
        return best
    s = data.samples
    used = col(s, "gpu_memory_used_gb")
    if not np.isfinite(used).any():
        return None
    tot = finite(col(s, "gpu_memory_total_gb"))
    return MemorySeries("gpu", col(s, "timestamp"), used, float(np.median(tot)) if tot.size else None)


def memory_domain(data: JobData) -> MemorySeries | None:
    """The memory the job is most likely to run out of: the fuller of GPU and RAM (by peak ratio)."""
    ram, gpu = ram_series(data), gpu_series(data)
    if gpu is not None and gpu.total and (ram is None or (gpu.peak_ratio or 0) >= (ram.peak_ratio or 0)):
        return gpu
    return ram or gpu


# -- out of memory ---------------------------------------------------------------------------------------

@dataclass
class OomOccurrence:
    timestamp: float | None
    kind: str                  # cuda | mps | cpu | host
    source: str                # event | log (an OOM seen) | suspected | exit (a SIGKILL that may be the OOM killer)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    snapshot_id: Any = None
    count: int = 1


def parse_allocator_figures(text: str) -> dict[str, float]:
    """GiB figures from a CUDA/CPU allocator OOM message (research/analysis.md §3.6)."""
    out: dict[str, float] = {}
    pats = {
        "tried_to_allocate_gb": r"Tried to allocate ([\d.]+) ?([KMGT]i?B|B)\b",
        "total_capacity_gb": r"total capac(?:i)?ty of ([\d.]+) ?([KMGT]i?B)",
        "free_gb": r"of which ([\d.]+) ?([KMGT]i?B) is free",
        "allocated_by_pytorch_gb": r"([\d.]+) ?([KMGT]i?B) is allocated by PyTorch",
        "reserved_unallocated_gb": r"([\d.]+) ?([KMGT]i?B) is reserved by PyTorch but unallocated",
    }
    for key, pat in pats.items():
        m = re.search(pat, text, re.IGNORECASE)
        if m:
            out[key] = float(m.group(1)) * _UNIT.get(m.group(2).lower(), 1.0)
    m = re.search(r"you tried to allocate (\d+) bytes", text, re.IGNORECASE)
    if m and "tried_to_allocate_gb" not in out:
        out["tried_to_allocate_gb"] = int(m.group(1)) / GIB
    return out


def _kind_of(text: str, default: str = "cpu") -> str:
    if re.search(r"\bMPS\b", text):
        return "mps"
    if re.search(r"CUDA|HIP|GPU \d|cuda", text):
        return "cuda"
    return default


def oom_occurrences(data: JobData) -> list[OomOccurrence]:
    """Every sign of an out-of-memory failure, earliest first: OOM and exception events, OOM log findings,
    a host OOM kill suspected by the collector, and an exit by SIGKILL (137). The last two are only
    suspicions: a scheduler or a user also sends SIGKILL."""
    found: list[OomOccurrence] = []
    ev = data.events
    if ev is not None and not ev.empty:
        for row in ev[ev["event_type"].isin(["cuda_oom", "oom", "exception", "host_oom_suspected",
                                             "oom_skip", "oom_abort"])].to_dict("records"):
            d = details_of(row)
            text = " ".join(str(d.get(k) or "") for k in ("type", "message", "error"))
            etype = row["event_type"]
            if etype == "exception" and not (str(d.get("type", "")).endswith(_OOM_TYPES) or _OOM_TEXT.search(text)):
                continue
            kind = "host" if etype == "host_oom_suspected" else _kind_of(text, "cuda" if etype == "cuda_oom" else "cpu")
            source = "suspected" if etype == "host_oom_suspected" else "event"
            figs = parse_allocator_figures(text + " " + str(d.get("traceback") or "")[-2000:])
            figs.update({k: v for k, v in d.items() if k.endswith("_gb") and isinstance(v, (int, float))})
            step = row.get("step")
            found.append(OomOccurrence(float(row["timestamp"]), kind, source, (d.get("message") or etype)[:500],
                                       figs, None if _isnan(step) or step is None else int(step),
                                       row.get("memory_snapshot_id")))
    kinds = {"cuda_oom": "cuda", "mps_oom": "mps", "cpu_oom": "cpu", "host_oom_kill": "host"}
    for lf in data.log_findings:
        cat = getattr(lf, "category", None)
        if cat in kinds:
            det = dict(getattr(lf, "details", None) or {})
            det = {**parse_allocator_figures(getattr(lf, "text", "") or getattr(lf, "message", "")), **det}
            found.append(OomOccurrence(getattr(lf, "timestamp", None), kinds[cat], "log",
                                       str(getattr(lf, "message", ""))[:500], det,
                                       count=int(getattr(lf, "count", 1) or 1)))
    job = data.job
    if job.get("exit_code") in (137, -9) or job.get("exit_signal") == 9:
        found.append(OomOccurrence(job.get("ended_at"), "host", "exit",
                                   "the process was killed by SIGKILL (exit 137)", {}))
    found.sort(key=lambda o: (o.timestamp is None, o.timestamp or 0.0))
    return found


# -- workers, batch size, data wait ----------------------------------------------------------------------

def cpu_count(data: JobData) -> int | None:
    env = data.job.get("environment")
    if isinstance(env, dict):
        for key in ("cpu_affinity_count", "cpu_count"):
            v = env.get(key)
            if isinstance(v, (int, float)) and v > 0:
                return int(v)
    return None


def worker_peak(data: JobData) -> tuple[float, int, float] | None:
    """(worker PSS in GB, worker count, timestamp) at the sample where the workers held the most memory."""
    s = data.samples
    w = col(s, "worker_memory_gb")
    if not np.isfinite(w).any() or np.nanmax(w) <= 0:
        return None
    i = int(np.nanargmax(w))
    n = col(s, "worker_count")[i]
    if not np.isfinite(n) or n <= 0:
        counts = finite(col(s, "worker_count"))
        n = float(counts.max()) if counts.size else float("nan")
    if not np.isfinite(n) or n <= 0:
        return None
    return float(w[i]), int(n), float(col(s, "timestamp")[i])


def measured_workers(data: JobData) -> int | None:
    counts = finite(col(data.samples, "worker_count"))
    return int(np.median(counts[counts > 0])) if (counts > 0).any() else (0 if counts.size else None)


def training_window(data: JobData, skip_first: int = 5) -> pd.DataFrame:
    """Steps after warm-up: the first steps include worker start-up and compilation, which are not the pace."""
    steps = main_rank_steps(data)
    if len(steps) <= skip_first * 2:
        return steps.iloc[1:] if len(steps) > 2 else steps
    return steps.iloc[skip_first:]


@dataclass(frozen=True)
class DataWait:
    """Data wait over the training window (warm-up steps excluded: they wait for workers to start)."""

    share: float
    data_seconds: float
    step_seconds: float
    steps: int
    first_step: int | None = None
    warmup_steps_excluded: int = 0


def data_wait(data: JobData) -> DataWait | None:
    """Share of step time spent waiting for the next batch (research/analysis.md §3.1: data_frac)."""
    steps = training_window(data)
    dt, st = col(steps, "data_time_seconds"), col(steps, "step_time_seconds")
    ok = np.isfinite(dt) & np.isfinite(st) & (st > 0)
    if ok.sum() < 3:
        return None
    d, s = float(dt[ok].sum()), float(st[ok].sum())
    sn = col(steps, "step")
    first = int(sn[ok][0]) if np.isfinite(sn[ok][0]) else None
    return DataWait(min(1.0, d / s), d, s, int(ok.sum()), first, len(main_rank_steps(data)) - len(steps))


def current_batch_size(data: JobData) -> int | None:
    bs = finite(col(main_rank_steps(data), "batch_size"))
    return int(bs[-1]) if bs.size else None


@dataclass(frozen=True)
class BatchFit:
    """``M = static_gb + batch_size × per_sample_gb`` in one memory domain (DeepSpeed autotuner model, §2.4)."""

    static_gb: float
    per_sample_gb: float
    total_gb: float
    domain: str
    method: str                  # "fit" (≥2 batch sizes) or "static_snapshot"
    points: tuple[tuple[int, float], ...]

    def max_batch(self, theta: float = 0.85) -> int:
        if self.per_sample_gb <= 0:
            return 0
        return math.floor((theta * self.total_gb - self.static_gb) / self.per_sample_gb)


_STATIC_EVENTS = ("model_loaded", "static_memory", "setup_done")
_STATIC_PHASES = ("load", "setup", "model_load", "loading", "init")


def batch_memory_fit(data: JobData, series: MemorySeries | None = None) -> BatchFit | None:
    """The measured memory-vs-batch-size relation (research/analysis.md §5.2 "Batch size").

    With two or more batch sizes observed (``batch_size_changed``), the least-squares line through each batch
    size's peak; with one, the static memory from a snapshot taken after load (an event, or the last sample before
    the first step) and ``per_sample = (peak - static) / bs``.
    """
    series = series or memory_domain(data)
    if series is None or not series.total:
        return None
    total = float(series.total)
    return memo(data, f"batch_fit:{series.kind}:{id(series)}", lambda: _batch_memory_fit(data, series, total))


def _batch_memory_fit(data: JobData, series: MemorySeries, total: float) -> BatchFit | None:
    steps = main_rank_steps(data)
    bs = col(steps, "batch_size")
    ts = col(steps, "timestamp")
    if not np.isfinite(bs).any():
        return None
    # Each sample belongs to the step whose interval [end - step_time, end] holds it (steps sorted by time);
    # a batch size's point is the peak over its own steps' samples, so 4 -> 8 -> 4 does not mix them.
    st = col(steps, "step_time_seconds")
    order = np.argsort(ts, kind="stable")
    ts_o, bs_o = ts[order], bs[order]
    med = float(np.nanmedian(st)) if np.isfinite(st).any() else 0.0
    start_o = ts_o - np.where(np.isfinite(st[order]), st[order], med)
    t = series.timestamps
    idx = np.searchsorted(ts_o, t, side="left")
    inside = idx < ts_o.size
    j = np.clip(idx, 0, max(ts_o.size - 1, 0))
    inside &= (start_o[j] <= t) & np.isfinite(series.used) & np.isfinite(bs_o[j]) & (bs_o[j] > 0)
    points: dict[int, float] = {}
    if inside.any():
        frame = pd.DataFrame({"bs": bs_o[j][inside].astype(int), "used": series.used[inside]})
        points = {int(k): float(v) for k, v in frame.groupby("bs")["used"].max().items()}
    if len(points) >= 2:
        x = np.array(list(points), dtype=float)
        y = np.array(list(points.values()))
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:
            return BatchFit(float(intercept), float(slope), total, series.kind, "fit",
                            tuple(points.items()))
    b = current_batch_size(data)
    peak = points.get(b) if b is not None else None
    static = _static_memory(data, series)
    if b is None or peak is None or static is None or peak <= static or b <= 0:
        return None
    return BatchFit(static, (peak - static) / b, total, series.kind, "static_snapshot", ((b, peak),))


def _static_memory(data: JobData, series: MemorySeries) -> float | None:
    """Memory after the model and optimizer are loaded, before activations: an explicit event's snapshot,
    else the end of a load/setup phase, else the last sample before the first step."""
    cand = memo(data, "static_time", lambda: _static_time(data))
    if cand is None:
        return None
    ok = (series.timestamps < cand) & np.isfinite(series.used)
    if not ok.any():
        return None
    return float(series.used[np.nonzero(ok)[0][-1]])


def _static_time(data: JobData) -> float | None:
    steps = main_rank_steps(data)
    first_step = finite(col(steps, "timestamp"))
    t0 = None
    if first_step.size:
        # The first step() call comes after the first forward/backward: go back one step time, so the
        # snapshot is from before the first activations.
        st = col(steps, "step_time_seconds")
        back = st[0] if st.size and np.isfinite(st[0]) else (np.nanmedian(st) if np.isfinite(st).any() else 0.0)
        t0 = float(first_step.min()) - float(back)
    cand: float | None = None
    ev = data.events_of(*_STATIC_EVENTS, "phase_end")
    if ev is not None and not ev.empty:
        for row in ev.to_dict("records"):
            d = details_of(row)
            static = row["event_type"] in _STATIC_EVENTS or _phase_name(d) in _STATIC_PHASES
            if static and (t0 is None or row["timestamp"] <= t0 + 1e-6):
                cand = float(row["timestamp"])
    return cand if cand is not None else t0


def model_info(data: JobData) -> dict[str, Any]:
    """Parameter counts a run reported (a ``model_info``/``model_loaded`` event), for closed-form savings."""
    info: dict[str, Any] = {}
    ev = data.events
    if ev is not None and not ev.empty:
        for row in ev[ev["event_type"].isin(["model_info", "model_loaded", "model"])].to_dict("records"):
            d = details_of(row)
            for key, names in (("parameters", ("parameters", "num_parameters", "params", "total_parameters")),
                               ("trainable_parameters", ("trainable_parameters", "trainable_params")),
                               ("bytes_per_param", ("bytes_per_param",))):
                for n in names:
                    if isinstance(d.get(n), (int, float)):
                        info[key] = d[n]
            if isinstance(d.get("dtype"), str):
                info["dtype"] = d["dtype"]
    return info


def bytes_per_param(dtype: Any) -> float | None:
    """Bytes per parameter of a dtype name (research/analysis.md §5.2 "Quantization")."""
    if not isinstance(dtype, str):
        return None
    d = dtype.lower().replace("torch.", "")
    table = {"fp32": 4, "float32": 4, "float": 4, "32": 4, "32-true": 4, "bf16": 2, "bfloat16": 2, "fp16": 2,
             "float16": 2, "half": 2, "16": 2, "bf16-mixed": 2, "16-mixed": 2, "bf16-true": 2,
             "qfloat8": 1, "float8": 1, "uint8": 1, "int8": 1, "convrot8": 1, "fp8": 1, "nf4": 0.5, "fp4": 0.5,
             "nvfp4": 0.5, "convrot4": 0.5, "uint4": 0.5, "uint3": 0.375, "uint2": 0.25}
    return float(table[d]) if d in table else None


EXACT_BASELINE_MAX = 20_000   # points; longer series use the block approximation below


def trailing_baseline(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(median, robust σ = IQR / 1.349) of the ``window`` values before each point; NaN while fewer than half
    a window precede it.

    Exact (pandas rolling) up to EXACT_BASELINE_MAX points. Beyond that, rolling medians and quantiles cost
    ~0.5 s per million points each, so the window is cut into 5 blocks: each block's median and IQR are taken
    once (numpy, vectorised) and a point's baseline is the median of the 5 blocks before its own block. The
    window then lags by up to one block (window / 5 points), which does not matter for spikes that must persist.
    """
    n = x.size
    if n <= EXACT_BASELINE_MAX or window < 10:
        past = pd.Series(x).shift(1).rolling(window, min_periods=max(5, window // 2))
        return past.median().to_numpy(), ((past.quantile(0.75) - past.quantile(0.25)) / 1.349).to_numpy()
    b = window // 5
    nb = n // b
    blocks = x[: nb * b].reshape(nb, b)
    med = np.median(blocks, axis=1)
    q75, q25 = np.percentile(blocks, [75, 25], axis=1)
    iqr = (q75 - q25) / 1.349
    k = 5
    base_b = np.full(nb + 1, np.nan)
    sig_b = np.full(nb + 1, np.nan)
    if nb >= k:
        from numpy.lib.stride_tricks import sliding_window_view

        base_b[k:] = np.median(sliding_window_view(med, k), axis=1)
        sig_b[k:] = np.median(sliding_window_view(iqr, k), axis=1)
    idx = np.minimum(np.arange(n) // b, nb)
    return base_b[idx], sig_b[idx]


def robust_mad(a: np.ndarray) -> float:
    f = finite(a)
    if f.size == 0:
        return float("nan")
    return float(np.median(np.abs(f - np.median(f))))


def runs_of(mask: Iterable[bool] | np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where ``mask`` is true (vectorised: masks are a million steps long)."""
    arr = np.asarray(mask if isinstance(mask, np.ndarray) else list(mask), dtype=bool)
    if arr.size == 0:
        return []
    edges = np.diff(np.r_[0, arr.astype(np.int8), 0])
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return list(zip(starts.tolist(), ends.tolist()))
