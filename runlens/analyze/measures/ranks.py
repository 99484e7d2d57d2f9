"""Per-rank figures of a data-parallel job: each rank's steps, pace, data wait, training-thread CPU, arrival
time, memory, and a view of the job as one rank saw it.

Why per rank: the ranks of a synchronous data-parallel job meet at every gradient all-reduce, so each waits for
the slowest and all of them record the same step times. Step time alone cannot name the rank everyone waits
for; three things each rank records can:

    cpu       how much of a step the rank's training thread spent on the CPU (``thread_cpu_seconds``, read
              once per flush): the rank the others wait for computes while they sit blocked in the collective
    data      the rank's wait for its next batch (``data_time_seconds``, from ``mon.loader``)
    arrival   how long after the first rank on its host the rank's ``mon.step()`` arrives, for loops whose
              extra work comes after the collective. Compared only within a host: clocks of two machines can
              differ by more than a step

A rank's *excess* is its figure minus the median of the other ranks', in seconds per step: the time the others
spend waiting for it each step. Where a waiting rank spins instead of blocking (a CUDA synchronize in its
default spin mode, an MPI busy-poll) every rank looks busy and the CPU signal stays silent rather than wrong.

Rows without a rank (a single process, or steps parsed from the output) count as the lowest rank, as
``timing.main_rank_steps`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, memo
from runlens.analyze.measures.phases import overhead_intervals, overlaps

__all__ = ["RankExcess", "RankMemory", "RankPace", "rank_excess", "rank_hosts", "rank_ids", "rank_memory",
           "rank_of", "rank_pace", "rank_views", "ranks_count", "typical_step_seconds"]

WARMUP_STEPS = 5            # each rank's first steps wait for workers, compilation and the first collectives
MIN_CPU_STEPS = 10          # steps between CPU readings needed for a rank's CPU figure
MAX_ARRIVAL_STEPS = 2000    # arrival lag is read on at most this many step numbers, evenly spread
MEMORY_COLUMNS = ("cuda_reserved_gb", "cuda_max_allocated_gb", "gpu_memory_used_gb", "main_process_memory_gb")


def rank_of(frame: pd.DataFrame | None, lowest: float | None = None) -> np.ndarray:
    """The frame's ``rank`` column as floats, rows without one given ``lowest`` (default: the lowest rank in
    the frame; NaN when none has a rank)."""
    ranks = col(frame, "rank")
    if not ranks.size:
        return ranks
    known = ranks[np.isfinite(ranks)]
    fill = lowest if lowest is not None else (float(known.min()) if known.size else np.nan)
    return np.where(np.isfinite(ranks), ranks, fill)


def rank_ids(data: JobData) -> list[int]:
    """The ranks that recorded steps, in order; empty when no step carries a rank."""
    def build() -> list[int]:
        ranks = col(data.steps, "rank")
        return sorted(int(r) for r in np.unique(ranks[np.isfinite(ranks)]))
    return memo(data, "rank_ids", build)


def ranks_count(data: JobData) -> int:
    """How many ranks recorded steps (1 for a job without ranks)."""
    return max(1, len(rank_ids(data)))


def rank_hosts(data: JobData) -> dict[int, str]:
    """The host each rank ran on, from the events, samples and cost rows that carry both."""
    def build() -> dict[int, str]:
        out: dict[int, str] = {}
        for frame in (data.events, data.samples, data.costs):
            if frame is None or frame.empty or "host" not in frame.columns or "rank" not in frame.columns:
                continue
            pairs = frame[["rank", "host"]].dropna().drop_duplicates()
            for rank, host in zip(pd.to_numeric(pairs["rank"], errors="coerce").tolist(), pairs["host"].tolist()):
                if rank == rank and int(rank) not in out:
                    out[int(rank)] = str(host)
        return out
    return memo(data, "rank_hosts", build)


def rank_views(data: JobData) -> dict[int, JobData]:
    """The job as each rank saw it: that rank's steps and cost rows, and the events of that rank plus those
    without one (the job's own: start, end, a hang ``runlens collect`` saw). Empty for a single-rank job."""
    return memo(data, "rank_views", lambda: _rank_views(data))


def _rank_views(data: JobData) -> dict[int, JobData]:
    ranks = rank_ids(data)
    if len(ranks) < 2:
        return {}
    lowest = float(ranks[0])
    steps = _split(data.steps, lowest)
    costs = _split(data.costs, lowest)
    shared_events, events = _split_events(data.events)
    views: dict[int, JobData] = {}
    for r in ranks:
        own = events.get(r)
        ev = shared_events if own is None else pd.concat([shared_events, own]).sort_values("timestamp", kind="stable")
        views[r] = dataclasses.replace(data, steps=steps.get(r, data.steps.iloc[:0]),
                                       costs=costs.get(r, _empty(data.costs)), events=ev)
    return views


def _empty(frame: pd.DataFrame | None) -> pd.DataFrame:
    return frame.iloc[:0] if frame is not None else pd.DataFrame()


def _split(frame: pd.DataFrame | None, lowest: float) -> dict[int, pd.DataFrame]:
    if frame is None or frame.empty:
        return {}
    keys = rank_of(frame, lowest)
    return {int(k): part for k, part in frame.groupby(keys, sort=True)}


def _split_events(events: pd.DataFrame | None) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    if events is None or events.empty or "rank" not in events.columns:
        return (events if events is not None else pd.DataFrame()), {}
    ranks = col(events, "rank")
    ranked = np.isfinite(ranks)
    own = {int(k): part for k, part in events[ranked].groupby(ranks[ranked], sort=True)}
    return events[~ranked], own


# -- pace ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankPace:
    """One rank's steps, over its training window (its first ``WARMUP_STEPS`` left out)."""

    rank: int
    host: str | None
    steps: int
    last_step: int | None
    last_step_at: float | None
    step_seconds: float | None       # median recorded step time
    data_seconds: float | None       # mean data wait per step
    cpu_per_step: float | None       # training-thread CPU seconds per step, between CPU readings
    wall_per_step: float | None      # wall seconds per step over the same spans
    arrival_lag: float | None        # median seconds after the first rank of its host reached the same step

    @property
    def busy_share(self) -> float | None:
        """Share of the step the training thread was on the CPU (the rest it waited: collective, data, GPU)."""
        if self.cpu_per_step is None or not self.wall_per_step:
            return None
        return self.cpu_per_step / self.wall_per_step

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "busy_share": self.busy_share}


def rank_pace(data: JobData) -> list[RankPace]:
    """Each rank's pace, in rank order; empty for a single-rank job."""
    return memo(data, "rank_pace", lambda: _rank_pace(data))


def _rank_pace(data: JobData) -> list[RankPace]:
    views = rank_views(data)
    if not views:
        return []
    hosts = rank_hosts(data)
    phases = overhead_intervals(data)
    lags = _arrival_lags(data, hosts)
    out = []
    for r, view in views.items():
        s = view.steps
        sn, ts = col(s, "step"), col(s, "timestamp")
        ok = np.isfinite(sn) & np.isfinite(ts)
        last = int(np.argmax(np.where(ok, sn, -np.inf))) if ok.any() else None
        window = _window(s)
        st = col(window, "step_time_seconds")
        st = st[np.isfinite(st)]
        dt = col(window, "data_time_seconds")
        dt = dt[np.isfinite(dt)]
        cpu, wall = _cpu_per_step(window, phases)
        out.append(RankPace(
            rank=r, host=hosts.get(r), steps=int(len(s)),
            last_step=int(sn[last]) if last is not None else None,
            last_step_at=float(ts[last]) if last is not None else None,
            step_seconds=float(np.median(st)) if st.size else None,
            data_seconds=float(dt.mean()) if dt.size else None,
            cpu_per_step=cpu, wall_per_step=wall, arrival_lag=lags.get(r)))
    return out


def _window(steps: pd.DataFrame) -> pd.DataFrame:
    """A rank's steps after its warm-up."""
    if len(steps) <= 2 * WARMUP_STEPS:
        return steps.iloc[1:] if len(steps) > 2 else steps
    first = np.nanmin(col(steps, "step"))
    return steps[col(steps, "step") >= first + WARMUP_STEPS]


def _cpu_per_step(window: pd.DataFrame, phases: tuple[np.ndarray, np.ndarray]) -> tuple[float | None, float | None]:
    """(CPU seconds, wall seconds) per step between consecutive CPU readings, leaving out the spans that
    overlap an eval or checkpoint phase (a rank saving a checkpoint while the others wait is not a straggler)
    and those across a restart (the clock of a new process starts again)."""
    cpu = col(window, "thread_cpu_seconds")
    have = np.isfinite(cpu)
    if have.sum() < 2:
        return None, None
    sn, ts, cpu = col(window, "step")[have], col(window, "timestamp")[have], cpu[have]
    order = np.argsort(ts, kind="stable")
    sn, ts, cpu = sn[order], ts[order], cpu[order]
    d_step, d_ts, d_cpu = np.diff(sn), np.diff(ts), np.diff(cpu)
    keep = (d_step > 0) & (d_ts > 0) & (d_cpu >= 0)
    keep &= ~overlaps(ts[:-1], ts[1:], *phases)
    steps = float(d_step[keep].sum())
    if steps < MIN_CPU_STEPS:
        return None, None
    return float(d_cpu[keep].sum()) / steps, float(d_ts[keep].sum()) / steps


def _arrival_lags(data: JobData, hosts: dict[int, str]) -> dict[int, float]:
    """Per rank, the median over steps of how long after the first rank of its host it reached that step.

    Ranks alone on their host get none: against another machine's clock the lag would be clock offset.
    """
    steps = data.steps
    if steps is None or steps.empty or "rank" not in steps.columns:
        return {}
    frame = pd.DataFrame({"step": col(steps, "step"), "rank": rank_of(steps), "t": col(steps, "timestamp")}).dropna()
    if frame.empty:
        return {}
    numbers = np.unique(frame["step"].to_numpy())
    numbers = numbers[numbers >= numbers.min() + WARMUP_STEPS]
    if numbers.size > MAX_ARRIVAL_STEPS:
        numbers = numbers[np.linspace(0, numbers.size - 1, MAX_ARRIVAL_STEPS).astype(int)]
    frame = frame[frame["step"].isin(numbers)]
    if frame.empty:
        return {}
    table = frame.groupby(["step", "rank"], sort=True)["t"].last().unstack("rank")
    groups: dict[str | None, list[Any]] = {}
    for r in table.columns:
        groups.setdefault(hosts.get(int(r)), []).append(r)
    out: dict[int, float] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        sub = table[members].dropna()
        if len(sub) < 3:
            continue
        lag = sub.sub(sub.min(axis=1), axis=0).median(axis=0)
        out.update({int(r): float(v) for r, v in lag.items()})
    return out


# -- excess: who the others wait for ------------------------------------------------------------------------

@dataclass(frozen=True)
class RankExcess:
    """How much longer than the others a rank takes per step, by the signal that shows it most."""

    rank: int
    seconds_per_step: float
    signal: str                      # "cpu", "data" or "arrival"
    by_signal: dict[str, float]


def rank_excess(data: JobData) -> list[RankExcess]:
    """Each rank's excess over the median of the other ranks, largest first; empty for a single-rank job.

    The signals overlap (data loaded on the training thread is CPU and data wait at once), so a rank's excess
    is its largest signal, not their sum.
    """
    return memo(data, "rank_excess", lambda: _rank_excess(rank_pace(data)))


def _rank_excess(pace: list[RankPace]) -> list[RankExcess]:
    if len(pace) < 2:
        return []
    signals = {"cpu": [p.cpu_per_step for p in pace], "data": [p.data_seconds for p in pace],
               "arrival": [p.arrival_lag for p in pace]}
    out = []
    for i, p in enumerate(pace):
        by: dict[str, float] = {}
        for name, values in signals.items():
            mine = values[i]
            others = [v for j, v in enumerate(values) if j != i and v is not None]
            if mine is not None and others:
                by[name] = float(mine - np.median(others))
        if by:
            name = max(by, key=lambda k: by[k])
            out.append(RankExcess(p.rank, by[name], name, by))
    return sorted(out, key=lambda e: -e.seconds_per_step)


def typical_step_seconds(data: JobData) -> float | None:
    """The wall time of a step, as the median rank measured it (between CPU readings, else its step time)."""
    pace = rank_pace(data)
    wall = [p.wall_per_step for p in pace if p.wall_per_step]
    if not wall:
        wall = [p.step_seconds for p in pace if p.step_seconds]
    return float(np.median(wall)) if wall else None


# -- memory -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankMemory:
    """The peak of one rank's (or one GPU's) memory, in GiB, with the limit it is measured against."""

    key: str                         # "rank 3" or "GPU 2 on host-b"
    rank: int | None
    host: str | None
    device: int | None
    peak_gb: float
    total_gb: float | None
    measure: str                     # the column the peak comes from


def rank_memory(data: JobData) -> tuple[list[RankMemory], list[RankMemory]]:
    """(per rank, per GPU) memory peaks. Per rank: the first of ``MEMORY_COLUMNS`` that every sampled rank
    recorded (the allocator's reservation is what runs out first on a GPU; the process's RSS on a CPU job).
    Per GPU: each device's used memory from the per-device samples, by host."""
    return memo(data, "rank_memory", lambda: (_per_rank_memory(data), _per_gpu_memory(data)))


def _per_rank_memory(data: JobData) -> list[RankMemory]:
    s = data.samples
    if s is None or s.empty or "rank" not in s.columns:
        return []
    ranks = col(s, "rank")
    ranked = np.isfinite(ranks)
    if np.unique(ranks[ranked]).size < 2:
        return []
    hosts = rank_hosts(data)
    totals = col(s, "gpu_memory_total_gb")
    for column in MEMORY_COLUMNS:
        values = col(s, column)
        ok = ranked & np.isfinite(values)
        present = np.unique(ranks[ok])
        if present.size < 2 or present.size < np.unique(ranks[ranked]).size:
            continue
        frame = pd.DataFrame({"rank": ranks[ok], "v": values[ok], "total": totals[ok]})
        peaks = frame.groupby("rank").agg(v=("v", "max"), total=("total", "max"))
        is_gpu = column != "main_process_memory_gb"
        return [RankMemory(f"rank {int(r)}", int(r), hosts.get(int(r)), None, float(row["v"]),
                           float(row["total"]) if is_gpu and np.isfinite(row["total"]) else None, column)
                for r, row in peaks.iterrows()]
    return []


def _per_gpu_memory(data: JobData) -> list[RankMemory]:
    g = data.gpus
    if g is None or g.empty or "memory_used_gb" not in g.columns or "device_index" not in g.columns:
        return []
    host_of_sample: dict[int, str] = {}
    s = data.samples
    if s is not None and not s.empty and "host" in s.columns and "sample_id" in g.columns:
        host_of_sample = {int(i): str(h) for i, h in zip(col(s, "id"), s["host"].tolist())
                          if i == i and isinstance(h, str)}
    sample_ids = col(g, "sample_id") if "sample_id" in g.columns else np.full(len(g), np.nan)
    frame = pd.DataFrame({
        "host": [host_of_sample.get(int(i), "") if i == i else "" for i in sample_ids],
        "device": col(g, "device_index"), "used": col(g, "memory_used_gb"), "total": col(g, "memory_total_gb"),
    }).dropna(subset=["device", "used"])
    if frame.empty:
        return []
    peaks = frame.groupby(["host", "device"], sort=True).agg(used=("used", "max"), total=("total", "max"))
    if len(peaks) < 2:
        return []
    many_hosts = peaks.index.get_level_values("host").nunique() > 1
    return [RankMemory(f"GPU {int(dev)}" + (f" on {host}" if many_hosts and host else ""), None, host or None,
                       int(dev), float(row["used"]), float(row["total"]) if np.isfinite(row["total"]) else None,
                       "memory_used_gb")
            for (host, dev), row in peaks.iterrows()]
