"""Rank rules for data-parallel jobs: the straggler everyone waits for, memory far above the other ranks' (or
GPUs'), and the rank that stopped first when the job hung or died.

The figures come from ``runlens.analyze.measures.ranks``; none of these rules says anything about a job of one
rank. Each registers under the family its finding belongs to (throughput, memory, hangs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runlens.analyze.findings import Finding
from runlens.analyze.health import run_window
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures import ranks as mr
from runlens.analyze.registry import rule
from runlens.core.humanize import duration_fine, duration_rough, gb_figure

# A rank is a straggler when the others wait for it at least this share of a step and this long: below that,
# rank-to-rank jitter (scheduling, a shared core) is as large as the effect.
STRAGGLER_MIN_SHARE = 0.05
STRAGGLER_MIN_SECONDS = 0.001
STRAGGLER_SPREAD = 3.0       # with 5+ ranks, also more than 3 MADs above the other ranks' excess
STRAGGLER_WARN_SHARE = 0.10  # the others wait this share of every step: a warning; below (a few %), info
MIN_RANKS_FOR_SPREAD = 5
EVIDENCE_RANKS = 16          # rows of the per-rank table a finding carries (the slowest first)

# Memory: a rank (or GPU) whose peak is at least 1 GiB (0.5 GiB of a process's RAM) above the median of the
# others, and either 25 % above it or 10 % of the device's memory above it. A typical cause is every rank
# creating its CUDA context on GPU 0 (a few hundred MiB each), or rank 0 alone gathering a full state dict or
# running evaluation.
MEMORY_RATIO = 1.25
MEMORY_DEVICE_SHARE = 0.10
MEMORY_MIN_GB = {"gpu": 1.0, "ram": 0.5}

_SIGNAL_WHAT = {
    "cpu": "its training thread computes {x} more per step than the others' (they wait for it in the collective)",
    "data": "it waits {x} longer per step for its batches",
    "arrival": "its steps reach the collective {x} after the other ranks on its host",
}
_SIGNAL_ACTION = {
    "cpu": ("Look for work only that rank does inside the step (logging, metrics, a larger data shard or "
            "longer sequences) or a slower CPU on its host (another process on its cores, frequency "
            "throttling); balance the work, or move rank-only work off the step."),
    "data": ("Its data loading is slower: give its DataLoader more workers or prefetching, or check the disk, "
             "network or cache its host reads from."),
    "arrival": ("It does extra work between the collective and the next step (rank-0 logging, evaluation or a "
                "checkpoint outside runlens's phases); move it off the training loop or to a background thread."),
}


def _where(rank: int, host: str | None) -> str:
    return f"rank {rank}" + (f" (host {host})" if host else "")


def _pace_rows(pace: list[mr.RankPace], order: list[int]) -> list[dict[str, Any]]:
    by_rank = {p.rank: p for p in pace}
    rows = [by_rank[r].to_dict() for r in order if r in by_rank]
    return rows[:EVIDENCE_RANKS]


@rule("ranks.straggler", "throughput")
def straggler(data: JobData) -> list[Finding]:
    """Name the rank the others wait for each step, by how much, and what that wait cost the run."""
    excess = mr.rank_excess(data)
    step = mr.typical_step_seconds(data)
    if not excess or not step:
        return []
    top = excess[0]
    threshold = max(STRAGGLER_MIN_SHARE * step, STRAGGLER_MIN_SECONDS)
    if top.seconds_per_step < threshold:
        return []
    values = np.array([e.seconds_per_step for e in excess[1:]])
    if len(excess) >= MIN_RANKS_FOR_SPREAD:
        mad = float(np.median(np.abs(values - np.median(values))))
        if top.seconds_per_step - float(np.median(values)) <= STRAGGLER_SPREAD * mad:
            return []
    pace = mr.rank_pace(data)
    me = next(p for p in pace if p.rank == top.rank)
    n_steps = me.steps
    lost = top.seconds_per_step * n_steps
    start, end, _ = run_window(data)
    wall = (end - start) if start is not None and end is not None and end > start else None
    share = lost / wall if wall else top.seconds_per_step / step
    others = len(pace) - 1
    also = [e.rank for e in excess[1:] if e.seconds_per_step >= threshold]
    x = duration_fine(top.seconds_per_step)
    step_share = top.seconds_per_step / step
    severity = "warning" if step_share >= STRAGGLER_WARN_SHARE else "info"
    where = _where(top.rank, me.host)
    title = f"Straggler: {where} holds the other {others} rank{'s' * (others != 1)} back by {x} per step"
    impact = (f"~{duration_rough(lost)} of the run" + (f" ({share:.0%} of {duration_rough(wall)} wall time)" if wall
                                                       else "")
              + f": {x} of each {duration_fine(step)} step, over {n_steps} steps, that every other rank waited")
    action = f"{where.capitalize()}: {_SIGNAL_WHAT[top.signal].format(x=x)}. {_SIGNAL_ACTION[top.signal]}"
    if also:
        action += f" Ranks {', '.join(map(str, also[:8]))} are slow too."
    order = [top.rank] + [e.rank for e in excess[1:]][::-1]   # the straggler, then the least-waited-for first
    evidence: dict[str, Any] = {
        "rank": top.rank, "host": me.host, "signal": top.signal, "seconds_per_step": top.seconds_per_step,
        "excess_by_signal": top.by_signal, "step_seconds": step, "share_of_step": step_share, "steps": n_steps,
        "lost_seconds": lost,
        "wall_seconds": wall, "ranks": len(pace), "other_slow_ranks": also,
        "per_rank": _pace_rows(pace, order),
    }
    return [Finding(id="ranks.straggler", severity=severity, title=title, action=action, impact=impact,
                    category="throughput", evidence=evidence, impact_value=share * 100,
                    impact_unit="percent_time")]


@rule("ranks.memory_imbalance", "memory")
def memory_imbalance(data: JobData) -> list[Finding]:
    """A rank, or a GPU, whose memory peak is far above the median of the others'."""
    per_rank, per_gpu = mr.rank_memory(data)
    found = [f for f in (_imbalance(data, per_rank, "ranks"), _imbalance(data, per_gpu, "GPUs")) if f is not None]
    # One finding: the ranks' and the GPUs' view usually show the same imbalance; the larger one says it.
    return [max(found, key=lambda f: f.impact_value or 0.0)] if found else []


def _imbalance(data: JobData, peaks: list[mr.RankMemory], what: str) -> Finding | None:
    if len(peaks) < 2:
        return None
    values = np.array([p.peak_gb for p in peaks])
    i = int(np.argmax(values))
    high = peaks[i]
    rest = np.delete(values, i)
    typical = float(np.median(rest))
    kind = "ram" if high.measure == "main_process_memory_gb" else "gpu"
    extra = high.peak_gb - typical
    if extra < MEMORY_MIN_GB[kind]:
        return None
    if high.peak_gb < MEMORY_RATIO * typical and not (high.total_gb and extra >= MEMORY_DEVICE_SHARE * high.total_gb):
        return None
    ratio = high.peak_gb / high.total_gb if high.total_gb else None
    severity = "warning" if ratio is not None and ratio >= data.settings.memory_warning_threshold else "info"
    label = high.key + (f" (host {high.host})" if high.host and high.rank is not None else "")
    of_total = f" of {gb_figure(high.total_gb)} GiB" if high.total_gb else ""
    title = (f"Memory imbalance: {label} peaks at {gb_figure(high.peak_gb)} GiB{of_total}, "
             f"{gb_figure(extra)} GiB above the other {what}' {gb_figure(typical)} GiB")
    if kind == "gpu":
        action = ("Find what only it holds: every rank creating its CUDA context on GPU 0 (call "
                  "torch.cuda.set_device(local_rank) before any CUDA work), rank 0 alone gathering a full state "
                  "dict or running evaluation, or an uneven data shard. Its headroom, not the others', limits the "
                  "batch size of every rank.")
    else:
        action = ("Find what only that process holds in RAM (a dataset or cache loaded on rank 0 alone, metrics "
                  "gathered to it); the host runs out when that rank does.")
    evidence: dict[str, Any] = {
        "key": high.key, "rank": high.rank, "host": high.host, "device": high.device, "peak_gb": high.peak_gb,
        "total_gb": high.total_gb, "peak_ratio": ratio, "others_median_gb": typical, "measure": high.measure,
        "peaks": [{"key": p.key, "peak_gb": p.peak_gb, "total_gb": p.total_gb}
                  for p in sorted(peaks, key=lambda p: -p.peak_gb)[:EVIDENCE_RANKS]],
    }
    impact = (f"{gb_figure(extra)} GiB more than the typical {what[:-1]}"
              + (f"; at {ratio:.0%} of its memory it runs out first" if ratio is not None else ""))
    return Finding(id="ranks.memory_imbalance", severity=severity, title=title, action=action, impact=impact,
                   category="memory", evidence=evidence, impact_value=extra, impact_unit="GB")


@rule("ranks.stopped_first", "hangs")
def stopped_first(data: JobData) -> list[Finding]:
    """When a job of several ranks hung or ended without finishing, the rank whose last step is earliest: in a
    collective the others then wait for it, so its stack and log are the ones to read first."""
    pace = mr.rank_pace(data)
    if len(pace) < 2:
        return []
    status = str(data.job.get("status") or "")
    hung = data.events is not None and not data.events.empty and "event_type" in data.events.columns \
        and bool((data.events["event_type"] == "hang_suspected").any())
    if status in ("succeeded", "running") and not hung:
        return []
    known = [p for p in pace if p.last_step is not None]
    if len(known) < 2:
        return []
    lowest = min(p.last_step for p in known if p.last_step is not None)
    highest = max(p.last_step for p in known if p.last_step is not None)
    if lowest >= highest:
        return []
    first = [p for p in known if p.last_step == lowest]
    first.sort(key=lambda p: p.last_step_at if p.last_step_at is not None else float("inf"))
    culprit = first[0]
    rest = [p for p in known if p.last_step != lowest]
    reached = int(np.median([p.last_step for p in rest]))
    names = ", ".join(_where(p.rank, p.host) for p in first[:8]) + ("…" if len(first) > 8 else "")
    lead = (f"{_where(culprit.rank, culprit.host).capitalize()} stopped first" if len(first) == 1
            else f"{len(first)} ranks stopped first ({names})")
    title = f"{lead}, after step {lowest}; the other ranks reached step {reached}"
    action = (f"Read {_where(culprit.rank, culprit.host)}'s stack and log first: the other ranks went on to the "
              "next collective and waited there for it. Look for an exception, an out-of-memory kill or a stuck "
              "data loader on that rank.")
    evidence: dict[str, Any] = {
        "rank": culprit.rank, "host": culprit.host, "last_step": lowest, "others_last_step": reached,
        "stopped_first": [p.rank for p in first], "status": status, "hang_suspected": hung,
        "last_steps": [{"rank": p.rank, "host": p.host, "last_step": p.last_step, "last_step_at": p.last_step_at}
                       for p in sorted(known, key=lambda p: (p.last_step, p.rank))[:EVIDENCE_RANKS]],
    }
    return [Finding(id="ranks.stopped_first", severity="warning", title=title, action=action,
                    impact=f"{highest - lowest} step{'s' * (highest - lowest != 1)} behind the furthest rank",
                    category="hangs", evidence=evidence)]
