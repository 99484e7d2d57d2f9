"""The run's verdict: a health score from the findings, and goodput with the lost time broken down.

Goodput follows ml-goodput-measurement (https://github.com/AI-Hypercomputer/ml-goodput-measurement):
productive time over wall time from the run's start to its end (or to now / the last heartbeat for a run
without an end), with every lost second assigned to one category and ``other`` as the remainder, so the parts
always add up to the wall time:

    productive            step time minus data wait, minus the stall excess below, minus phase overlap
    startup               start -> the first step began (phases and hangs inside it are counted as those)
    data_wait             sum of data_time_seconds (the step waited for its batch)
    eval_and_checkpoints  phase_start/phase_end pairs of eval, validate, sample, save, checkpoint, predict
                          (an unmatched phase_start runs to the next step, else to the end)
    stalls_and_hangs      for steps slower than median + 5 MAD, the part beyond the median; plus the part of
                          each ``hang_suspected`` stall (last progress -> next step, recovery or end) that no
                          step or phase covers
    monitoring            runlens's (and the user's ``mon.cost``) time on the training thread
    other                 the rest: gaps between steps nobody labelled

Unlike ml-goodput (which ignores steps under 1 s for its ideal step time) short steps count: single-GPU steps
are often well under a second. Step outliers use the whole run's median and MAD rather than a trailing window:
the figure is lost time, not an online alarm, and a run that slowed down for good lost that time too.

A job of several ranks is N training threads sharing one wall clock: each rank's start-up, data wait and
monitoring happened in parallel with the others', so adding them up would count one wall second N times (160
ranks' Monitor start-up read as most of the run). Goodput and monitoring time are computed for each rank on its
own steps, cost rows and events (``measures.ranks.rank_views``); the job's figure is the typical rank's (the
median ratio), and ``ranks`` names the worst one.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

import numpy as np
import pandas as pd

from runlens.analyze.contract import SEVERITY_ORDER, Goodput
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures import col
from runlens.analyze.measures.ranks import rank_of, rank_views
from runlens.core.costs import ONE_OFF_OPERATIONS
from runlens.core.numbers import parse_finite
from runlens.core.phases import is_overhead

__all__ = ["LOST_PARTS", "STALL_MADS", "goodput", "health_score", "main_rank", "monitoring_by_rank",
           "monitoring_seconds", "run_window", "step_source"]

MAX_RANKS_LISTED = 1024   # per-rank goodput rows kept in the document

LOST_PARTS = ("startup", "data_wait", "eval_and_checkpoints", "stalls_and_hangs", "monitoring", "other")
STALL_MADS = 5.0        # outlier steps are > median + 5 MAD
_MAD_FLOOR = 0.01       # ... with MAD at least 1% of the median, so identical timings don't make jitter a stall


def health_score(findings: Iterable[Finding]) -> str:
    """"critical" if any finding is critical, "warning" if any is a warning, else "good"."""
    worst = min((SEVERITY_ORDER.get(f.severity, 3) for f in findings), default=3)
    return "critical" if worst == 0 else "warning" if worst == 1 else "good"


def run_window(data: JobData) -> tuple[float | None, float | None, str]:
    """(start, end, how the end was found) of the run.

    The end is the job's ``ended_at``; for a run without one, "now" while its heartbeat is fresh (it is still
    running), else the last sign of life (heartbeat, last step, sample or event): a crashed run that never
    wrote its end must not accumulate wall time forever.
    """
    job = data.job
    stamps = [s for s in (_last(data.steps), _last(data.samples), _last(data.events),
                          parse_finite(job.get("heartbeat_at")), parse_finite(job.get("progress_at"))) if s is not None]
    firsts = [s for s in (_first(data.steps), _first(data.samples), _first(data.events)) if s is not None]
    start = (parse_finite(job.get("started_at")) or parse_finite(job.get("created_at"))
             or (min(firsts) if firsts else None))
    ended = parse_finite(job.get("ended_at"))
    if ended is not None:
        return start, ended, "ended_at"
    last_seen = max(stamps) if stamps else None
    now = data.now if data.now is not None else time.time()
    if job.get("status") == "running":
        fresh = max(60.0, 6.0 * float(data.settings.sample_interval or 5.0))
        if last_seen is None or now - last_seen <= fresh:
            return start, now, "now"
    if last_seen is None:
        return start, start, "unknown"
    return start, last_seen, "last_seen"


def step_source(data: JobData) -> str | None:
    """Where the job's steps come from: ``"monitor"`` (the loop called runlens), ``"output"`` (``runlens collect``
    read them from the progress lines the command printed), or None when nothing recorded steps: ``runlens
    collect`` ran a command without a Monitor whose output holds no progress line runlens reads. Then the steps
    are unknown, not zero: a run that trained fine must not read as 0% productive."""
    steps = data.steps
    if steps is not None and len(steps):
        if "source" in steps.columns and (steps["source"].astype(str) == "output").all():
            return "output"
        return "monitor"
    ev = data.events
    if ev is None or ev.empty or "event_type" not in ev.columns:
        return "monitor"
    types = set(ev["event_type"].astype(str))
    if "monitor_attached" in types:
        return "monitor"
    if "log_imported" in types:
        return None
    starts = ev[ev["event_type"] == "start"]
    wrapper = any(isinstance(d, dict) and "cmd" in d for d in starts["details"].tolist()) if len(starts) else False
    return None if wrapper else "monitor"


def main_rank(steps: pd.DataFrame) -> pd.DataFrame:
    """The steps of one rank (the lowest; rows without a rank count as it), in time order.

    Multi-rank jobs record each step once per rank; adding them up would count the same wall second N times.
    """
    if steps is None or steps.empty or "rank" not in steps.columns:
        return steps
    ranks = pd.to_numeric(steps["rank"], errors="coerce")
    if ranks.notna().any() and ranks.nunique(dropna=True) > 1:
        return steps[(ranks == ranks.min()) | ranks.isna()]
    return steps


def goodput(data: JobData) -> Goodput:
    """Productive time over wall time, and where the rest went (see the module docstring).

    For a job of several ranks: the typical rank's figures (the median ratio), plus ``rank`` (which one that is)
    and ``ranks`` (how many, the worst rank and its ratio, and each rank's ratio and monitoring seconds).
    """
    views = rank_views(data)
    if not views:
        return _goodput_of_one(data)
    per = {r: _goodput_of_one(view) for r, view in views.items()}
    known = sorted((g["ratio"], r) for r, g in per.items() if g.get("ratio") is not None)
    if not known:
        return per[min(per)]
    typical = known[(len(known) - 1) // 2][1]
    worst_ratio, worst = known[0]
    by_rank = [{"rank": r, "ratio": g.get("ratio"), "monitoring_seconds": g["lost_seconds"]["monitoring"]}
               for r, g in sorted(per.items())][:MAX_RANKS_LISTED]
    return {**per[typical], "rank": typical,
            "ranks": {"count": len(per), "typical_rank": typical, "worst_rank": worst, "worst_ratio": worst_ratio,
                      "best_ratio": known[-1][0], "by_rank": by_rank}}


def _goodput_of_one(data: JobData) -> Goodput:
    """Goodput of one training thread's steps (the lowest rank's, if ``data`` holds several)."""
    start, end, end_source = run_window(data)
    wall = max(0.0, (end or 0.0) - (start or 0.0)) if start is not None and end is not None else 0.0
    zero = {k: 0.0 for k in LOST_PARTS}
    if wall <= 0 or start is None or end is None:
        return {"ratio": None, "productive_seconds": 0.0, "wall_seconds": wall, "lost_seconds": zero,
                "end_source": end_source}
    if step_source(data) is None:
        return {"ratio": None, "productive_seconds": 0.0, "wall_seconds": wall, "lost_seconds": zero,
                "end_source": end_source, "unknown": "no step source: no Monitor in the run and no progress line "
                                                     "runlens reads in its output"}

    steps = main_rank(data.steps)
    ts = col(steps, "timestamp")
    st = col(steps, "step_time_seconds")
    dt = np.nan_to_num(col(steps, "data_time_seconds"), nan=0.0)
    # A row read from printed output stands for the steps since the rank's previous progress line
    # (``interval_steps``: a loop that prints every 10 iterations); its step time is per step.
    interval = col(steps, "x_interval_steps")
    interval = np.where(np.isfinite(interval) & (interval >= 1), interval, 1.0)
    st, dt = st * interval, dt * interval
    ok = np.isfinite(ts) & np.isfinite(st) & (st >= 0)
    ts, st, dt = ts[ok], st[ok], np.clip(dt[ok], 0.0, None)
    dt = np.minimum(dt, st)
    step_lo = ts - st

    phases = _merge(_phase_intervals(data, start, end, col(steps, "timestamp")))
    hangs = _merge(_hang_intervals(data, start, end, col(steps, "timestamp")))
    # A stall is its own lost time even inside an eval or checkpoint phase (a hang in eval that ends in a kill
    # must not read as "eval"); inside a step it is already the step's excess over the median.
    hangs = _subtract(hangs, _merge((step_lo, ts)))
    phases = _subtract(phases, hangs)
    phase_cov = _coverage(phases)

    # Steps: compute time = step time - data wait - any phase that ran inside the step's interval.
    overlap = phase_cov(ts) - phase_cov(step_lo) if len(phases[0]) else np.zeros_like(ts)
    compute = np.clip(st - dt - overlap, 0.0, None)
    stall_excess, n_stalls = 0.0, 0
    if compute.size >= 3:
        med = float(np.median(compute))
        mad = float(np.median(np.abs(compute - med)))
        threshold = med + STALL_MADS * max(mad, _MAD_FLOOR * med)
        slow = compute > threshold
        n_stalls = int(slow.sum())
        stall_excess = float((compute[slow] - med).sum())
    productive = float(compute.sum()) - stall_excess
    data_wait = float(dt.sum())

    eval_seconds = float((phases[1] - phases[0]).sum()) if len(phases[0]) else 0.0

    # Hangs: the part no step accounts for (phases gave theirs up above).
    hang_seconds = float((hangs[1] - hangs[0]).sum()) if len(hangs[0]) else 0.0

    # Start-up: start -> the first step began, minus phases (a baseline sample) and hangs inside it.
    first = float(step_lo.min()) if step_lo.size else end
    first = min(max(first, start), end)
    startup = first - start
    if startup > 0:
        startup -= float(phase_cov(np.array([first]))[0] - phase_cov(np.array([start]))[0])
        if len(hangs[0]):
            lo, hi = np.clip(hangs[0], start, first), np.clip(hangs[1], start, first)
            startup -= float((hi - lo).sum())
        startup = max(0.0, startup)

    monitoring = monitoring_seconds(data)
    parts = {"startup": startup, "data_wait": data_wait, "eval_and_checkpoints": eval_seconds,
             "stalls_and_hangs": stall_excess + max(0.0, hang_seconds), "monitoring": 0.0}
    other = wall - productive - sum(parts.values())
    # Monitoring is spent either between steps (then it sits in `other`) or inside the step intervals runlens
    # times (then it was counted as productive): take it from `other` first, then from productive.
    from_other = min(monitoring, max(0.0, other))
    from_productive = min(monitoring - from_other, max(0.0, productive))
    parts["monitoring"] = from_other + from_productive
    productive -= from_productive
    other -= from_other
    productive, parts, other = _fit(wall, max(0.0, productive), parts, other)
    lost = {**parts, "other": other}
    return {
        "ratio": productive / wall,
        "productive_seconds": productive,
        "wall_seconds": wall,
        "lost_seconds": {k: lost[k] for k in LOST_PARTS},
        # Additions to the contract's Goodput (fields are added, never changed).
        "stall_steps": n_stalls,
        "end_source": end_source,
    }


def _fit(wall: float, productive: float, parts: dict[str, float], other: float) -> tuple[float, dict[str, float],
                                                                                         float]:
    """Make productive + parts + other == wall with nothing negative.

    Categories come from different sources (step timers, events, the clock) and can overlap a little, e.g. a
    phase the integration timed inside a step. When they add up to more than the wall, everything is scaled
    down in proportion rather than letting ``other`` go negative.
    """
    parts = {k: max(0.0, v) for k, v in parts.items()}
    total = productive + sum(parts.values())
    if total > wall > 0:
        scale = wall / total
        productive *= scale
        parts = {k: v * scale for k, v in parts.items()}
        other = 0.0
    else:
        other = max(0.0, wall - productive - sum(parts.values()))
    return productive, parts, other


def monitoring_seconds(data: JobData, *, include_one_off: bool = True) -> float:
    """Monitoring time on the training thread: of the typical rank (the median), never the sum over ranks.

    Goodput counts all of it (it is time the run lost); the overhead ratio leaves out the one-off start and
    close, as the budget check in collect/cost.py does, so a short run is not reported as mostly monitoring.
    """
    by_rank = monitoring_by_rank(data, include_one_off=include_one_off)
    return float(np.median(list(by_rank.values()))) if by_rank else 0.0


def monitoring_by_rank(data: JobData, *, include_one_off: bool = True) -> dict[int | None, float]:
    """Monitoring seconds on each rank's training thread (rows without a rank count as the lowest rank's;
    None keys a job without ranks)."""
    costs = data.costs
    if costs is None or costs.empty or "total_seconds" not in costs.columns:
        return {}
    keep = np.ones(len(costs), dtype=bool)
    if "on_training_thread" in costs.columns:
        keep &= costs["on_training_thread"].fillna(True).astype(bool).to_numpy()
    if not include_one_off and "operation" in costs.columns:
        keep &= ~costs["operation"].isin(ONE_OFF_OPERATIONS).to_numpy()
    if not keep.any():
        return {}
    seconds = pd.to_numeric(costs["total_seconds"], errors="coerce").fillna(0.0).clip(lower=0).to_numpy()[keep]
    ranks = rank_of(costs)[keep] if "rank" in costs.columns else np.full(int(keep.sum()), np.nan)
    if not np.isfinite(ranks).any():
        return {None: float(seconds.sum())}
    sums = pd.Series(seconds).groupby(ranks).sum()
    return {int(r): float(v) for r, v in sums.items()}


# -- intervals --------------------------------------------------------------------------------------------

Intervals = tuple[np.ndarray, np.ndarray]


def _phase_name(details: Any) -> str:
    if isinstance(details, dict):
        return str(details.get("phase") or details.get("name") or "").lower()
    return ""


def _phase_intervals(data: JobData, start: float, end: float, step_ts: np.ndarray) -> Intervals:
    """Eval/checkpoint phases as (starts, ends); an unmatched start runs to the next step, else to the end."""
    ev = data.events
    if ev is None or ev.empty:
        return np.empty(0), np.empty(0)
    ev = ev[ev["event_type"].isin(("phase_start", "phase_end"))]
    if ev.empty:
        return np.empty(0), np.empty(0)
    sorted_steps = np.sort(step_ts[np.isfinite(step_ts)])
    lo: list[float] = []
    hi: list[float] = []
    open_: dict[str, list[float]] = {}
    for etype, t, details in zip(ev["event_type"].tolist(), ev["timestamp"].tolist(), ev["details"].tolist()):
        name = _phase_name(details)
        if not is_overhead(name):
            continue
        if etype == "phase_start":
            open_.setdefault(name, []).append(float(t))
            continue
        starts = open_.get(name)
        if starts:
            lo.append(starts.pop())
            hi.append(float(t))
        else:
            dur = details.get("duration_seconds", details.get("duration")) if isinstance(details, dict) else None
            if isinstance(dur, (int, float)) and math.isfinite(dur) and dur > 0:
                lo.append(float(t) - float(dur))
                hi.append(float(t))
    for starts in open_.values():
        for s in starts:
            k = int(np.searchsorted(sorted_steps, s, side="right"))
            lo.append(s)
            hi.append(float(sorted_steps[k]) if k < sorted_steps.size else end)
    a = np.clip(np.array(lo, dtype=float), start, end)
    b = np.clip(np.array(hi, dtype=float), start, end)
    keep = b > a
    return a[keep], b[keep]


def _hang_intervals(data: JobData, start: float, end: float, step_ts: np.ndarray) -> Intervals:
    """Each suspected stall from its last progress to the next step, its recovery event, or the end."""
    ev = data.events
    if ev is None or ev.empty:
        return np.empty(0), np.empty(0)
    hangs = ev[ev["event_type"] == "hang_suspected"]
    if hangs.empty:
        return np.empty(0), np.empty(0)
    recov = ev[ev["event_type"].isin(("hang_recovered", "stall_recovered", "recovered"))]
    marks = np.sort(np.concatenate([step_ts[np.isfinite(step_ts)],
                                    pd.to_numeric(recov["timestamp"], errors="coerce").to_numpy(float)]))
    lo: list[float] = []
    hi: list[float] = []
    for t, details in zip(hangs["timestamp"].tolist(), hangs["details"].tolist()):
        d = details if isinstance(details, dict) else {}
        since = parse_finite(d.get("seconds_since_progress"))
        begin = float(t) - since if since is not None and since > 0 else float(t)
        k = int(np.searchsorted(marks, float(t), side="right"))
        lo.append(begin)
        hi.append(float(marks[k]) if k < marks.size else end)
    a = np.clip(np.array(lo), start, end)
    b = np.clip(np.array(hi), start, end)
    keep = b > a
    return a[keep], b[keep]


def _merge(iv: Intervals) -> Intervals:
    """The union of intervals as sorted, disjoint (starts, ends)."""
    lo, hi = np.asarray(iv[0], dtype=float), np.asarray(iv[1], dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
    lo, hi = lo[ok], hi[ok]
    if lo.size == 0:
        return lo, hi
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    new = np.empty(lo.size, dtype=bool)
    new[0] = True
    new[1:] = lo[1:] > reach[:-1]
    group = np.cumsum(new) - 1
    starts = lo[new]
    ends = np.full(starts.size, -np.inf)
    np.maximum.at(ends, group, hi)
    return starts, ends


def _subtract(a: Intervals, b: Intervals) -> Intervals:
    """``a`` minus ``b``, both merged (sorted, disjoint): what of ``a`` no interval of ``b`` covers."""
    a_lo, a_hi = a
    b_lo, b_hi = b
    if a_lo.size == 0 or b_lo.size == 0:
        return a_lo, a_hi
    lo: list[float] = []
    hi: list[float] = []
    for s, e in zip(a_lo.tolist(), a_hi.tolist()):
        cur = s
        k = int(np.searchsorted(b_hi, cur, side="right"))   # the first b interval ending after cur
        while k < b_lo.size and b_lo[k] < e:
            if b_lo[k] > cur:
                lo.append(cur)
                hi.append(float(b_lo[k]))
            cur = max(cur, float(b_hi[k]))
            if cur >= e:
                break
            k += 1
        if cur < e:
            lo.append(cur)
            hi.append(e)
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def _coverage(merged: Intervals) -> Any:
    """cov(t): how much of ``merged`` lies before time ``t`` (vectorised over t)."""
    lo, hi = merged
    if lo.size == 0:
        return lambda t: np.zeros_like(np.asarray(t, dtype=float))
    cum = np.concatenate([[0.0], np.cumsum(hi - lo)])

    def cov(t: Any) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        k = np.searchsorted(lo, t, side="right") - 1
        kk = np.clip(k, 0, lo.size - 1)
        inside = np.clip(t - lo[kk], 0.0, hi[kk] - lo[kk])
        return np.where(k < 0, 0.0, cum[kk] + inside)

    return cov


def _first(frame: pd.DataFrame | None) -> float | None:
    ts = col(frame, "timestamp")
    ts = ts[np.isfinite(ts)]
    return float(ts.min()) if ts.size else None


def _last(frame: pd.DataFrame | None) -> float | None:
    ts = col(frame, "timestamp")
    ts = ts[np.isfinite(ts)]
    return float(ts.max()) if ts.size else None
