"""Throughput rules: where the run's time went that was not training.

Each finding's impact is time measured in this run: the data-wait share of step time, minutes lost to a slower
pace or to stalls, the share of wall time in eval/sampling/checkpoints, the monitoring cost against its budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze import effects
from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.health import STALL_MADS
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.loading import Loading, loading
from runlens.analyze.registry import rule
from runlens.core.costs import ONE_OFF_OPERATIONS
from runlens.core.humanize import duration_fine, duration_rough, gb_figure
from runlens.core.phases import EVAL_PHASES, OVERHEAD_PHASES, SAVE_PHASES

# PyTorch profiler TB plugin and TF profiler call >= 5 % of step time waiting for input "moderately input-bound"
# (https://www.tensorflow.org/guide/profiler#input_pipeline_analyzer).
INPUT_BOUND = 0.05
INPUT_BOUND_WARN = 0.10    # below this a data wait costs under 6 min an hour: information, not a warning
HIGHLY_INPUT_BOUND = 0.20  # TF "HIGHLY input-bound"
GPU_UTIL_LOW = 50.0      # TB plugin: "GPU {ids} has low utilization" below 50 %
HEADROOM_RATIO = 0.6     # max(mem_ratio) < 0.6 leaves room for a larger batch
# More workers are recommended only where they are predicted to cut step time by 20 %: less is within what the
# prediction can promise, and a rerun would be told to add workers again for a gain it may not see.
MIN_WORKER_GAIN = 0.20
# NVIDIA Resiliency Extension's straggler threshold 0.7 -> 1.43× the best pace
# (https://github.com/NVIDIA/nvidia-resiliency-ext).
DEGRADED = 1 / 0.7
DEGRADED_WINDOWS = 3
DEGRADED_MIN_LOST = 30.0   # seconds: below this (or 5 % of step time) a slow stretch is not worth a warning
DEGRADED_MIN_SHARE = 0.05
# A stall: a step slower than median + STALL_MADS·MAD and at least 2× the median, so a very regular run's
# jitter is not a stall.
STALL_MIN_RATIO = 2.0
STALL_SHARE = 0.01       # ≥ 1 % of steps, and costing ≥ 1 % of step time
STALL_MIN_SECONDS = 1.0
OVERHEAD_INFO, OVERHEAD_WARN = 0.15, 0.40   # eval/checkpoint share of wall time worth a word, then a warning
MIN_COST_WALL = 30.0     # runlens.collect.cost.CostLedger.min_wall_seconds


def _fmt_pct(x: float) -> str:
    return f"{x * 100:.0f}%" if x >= 0.1 else f"{x * 100:.1f}%"


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- input-bound -----------------------------------------------------------------------------------------

@rule("throughput.input_bound", "throughput")
def input_bound(data: JobData) -> list[Finding]:
    """The training loop waits for the next batch for ≥ 5 % of step time: a warning from 10 %, information
    below. The recommended worker count comes from the measured time to produce a batch against the loop's own
    work (runlens.analyze.measures.loading), and the impact is what that count is predicted to do."""
    dw = m.data_wait(data)
    if dw is None or dw.share < INPUT_BOUND:
        return []
    ld = loading(data)
    # The share that judges the run is the steady pace's: the first batches of many workers wait for their
    # start-up, which more or fewer workers would not change.
    share = ld.wait_share if ld is not None else dw.share
    if share < INPUT_BOUND:
        return []
    ref = resolve(data, "num_workers")
    measured = m.measured_workers(data)
    n = ld.workers if ld is not None else (measured or 0)
    cores = m.cpu_count(data)
    level = "HIGHLY" if share >= HIGHLY_INPUT_BOUND else "moderately"
    ev: dict[str, Any] = {"data_wait_share": share, "data_wait_share_with_startup": dw.share, "data_wait_seconds": dw.data_seconds,
                          "step_seconds": dw.step_seconds, "steps": dw.steps, "from_step": dw.first_step,
                          "warmup_steps_excluded": dw.warmup_steps_excluded, "num_workers": n, "cpu_count": cores,
                          "band": level}
    severity = "warning" if share >= INPUT_BOUND_WARN else "info"
    title = f"Training is input-bound ({_fmt_pct(share)} of step time waiting for data)"
    wait_now = effects.effect("data_wait_share", share, None)
    f = Finding(id="throughput.input_bound", severity=severity, title=title, action="",
                impact=f"{_fmt_pct(share)} of step time ({duration_rough(dw.data_seconds)} over {dw.steps} "
                       "steps) waiting for data",
                category="throughput", evidence=ev, impact_value=share * 100, impact_unit="percent_time")
    if ld is None:
        f.action = "Load data in more worker processes, or cache/pre-process the inputs."
        return [f]
    ev.update(batch_seconds=ld.batch_seconds, compute_seconds=ld.compute_seconds, loading=ld.kind,
              loading_cpu_share=ld.cpu_share, workers_needed=ld.needed(), workers_cap=ld.cap(),
              floor_seconds=ld.floor(), batch_cpu_seconds=ld.batch_cpu_seconds,
              main_cpu_seconds=ld.main_cpu_seconds, other_cores=ld.other_cores,
              steady_step_seconds=ld.step_seconds, startup_steps_excluded=ld.skipped_steps)
    rec = ld.recommended()
    rec = _within_memory(data, ld, rec, ev)
    step_new, wait_new = ld.predict(rec)
    if rec > n and step_new < (1 - MIN_WORKER_GAIN) * ld.step_seconds:
        share_new = wait_new / step_new if step_new > 0 else 0.0
        memory = _worker_memory_effect(data, n, rec)
        f.expected_effect = effects.effect("step_time_seconds", ld.step_seconds, step_new, also=[
            effects.effect("data_wait_share", ld.wait_share, share_new), memory])
        saved = effects.seconds_saved_per_hour(f.expected_effect) or 0.0
        why = (f"a batch takes {duration_fine(ld.batch_seconds)} to produce "
               f"({'on the CPU' if ld.kind == 'cpu' else 'mostly waiting on I/O' if ld.kind == 'io' else 'CPU use not measured'})"
               f" and a step's own work {duration_fine(ld.compute_seconds)}")
        capped = rec < ld.needed()
        f.action = (f"Load data in {rec} worker processes (num_workers {n} -> {rec}): {why}, so {rec} workers "
                    + ("are as many as the free cores allow." if capped and ld.kind != "io" else
                       "keep batches ready when the step needs them."))
        f.impact = (f"Step time {duration_fine(ld.step_seconds)} -> ~{duration_fine(step_new)} with {rec} workers "
                    f"(data wait {_fmt_pct(ld.wait_share)} -> ~{_fmt_pct(share_new)}); ~{duration_rough(saved)} "
                    "saved per hour of training")
        if memory:
            f.impact += (f"; workers' memory +{gb_figure(memory['predicted'] - memory['current'])} GiB "
                         f"(peak ~{gb_figure(memory['current'])} -> ~{gb_figure(memory['predicted'])} GiB)")
        else:
            f.impact += "; each worker adds its own memory (not measured with 0 workers)"
        if share_new >= INPUT_BOUND:
            f.impact += (f": the job's cores hold the step at ~{duration_fine(ld.floor())}, so "
                         f"~{_fmt_pct(share_new)} of the wait remains")
        return [apply_ref(f, ref, rec, measured=measured)]
    if n > 0 and ld.floor() > ld.compute_seconds and ld.floor() >= (1 - MIN_WORKER_GAIN) * ld.step_seconds:
        # More workers would not help: the loading's CPU and the loop's share the job's cores.
        f.expected_effect = wait_now
        f.action = (f"The job's {cores} cores are busy with the loop and loading "
                    f"(a step needs ~{duration_fine(ld.floor())} of them): more workers would not make batches "
                    "sooner. Cache or pre-process the inputs, or run on a machine with more cores.")
        return [f]
    f.expected_effect = wait_now
    pf = resolve(data, "prefetch_factor")
    cur = _count(pf.current_value)
    if n > 0 and pf.path and cur:
        f.action = (f"The machine's {cores} cores are taken; prefetch more batches per worker "
                    f"(prefetch_factor {cur} -> {cur * 2}), or cache/pre-process the data.")
        return [apply_ref(f, pf, cur * 2)]
    f.action = "Cache or pre-process the inputs (decoded images, latents, tokens) so a step does not wait for them."
    return [f]


def _worker_memory_effect(data: JobData, n: int, rec: int) -> dict[str, Any] | None:
    """The peak memory ``rec`` workers are predicted to reach, from the workers' measured memory each, against
    the binding pool (the container's limit when there is one); None when no worker was measured."""
    wp = m.worker_peak(data)
    ram = m.ram_series(data)
    if wp is None or ram is None or ram.peak is None or n <= 0:
        return None
    per = wp[0] / max(1, wp[1])
    return effects.effect("peak_memory_gb", ram.peak, ram.peak + per * (rec - n))


def _within_memory(data: JobData, ld: Loading, rec: int, ev: dict[str, Any]) -> int:
    """``rec`` workers, fewer where the workers' measured memory would take RAM past the warning threshold:
    more workers must not trade a data wait for memory pressure."""
    wp = m.worker_peak(data)
    ram = m.ram_series(data)
    if wp is None or ram is None or ram.peak is None or not ram.total or rec <= ld.workers:
        return rec
    per = wp[0] / max(1, wp[1])
    room = data.settings.memory_warning_threshold * ram.total - ram.peak
    fits = ld.workers + int(max(0.0, room) // per) if per > 0 else rec
    if fits < rec:
        ev.update(workers_limited_by_memory=True, per_worker_gb=per)
        return max(ld.workers, fits)
    return rec


# -- GPU under-utilised / memory headroom -----------------------------------------------------------------

def _gpu_util(data: JobData) -> float | None:
    """Mean GPU utilisation while steps ran, eval/sampling/save phases excluded."""
    s = data.samples
    util, ts = m.col(s, "gpu_utilization_percent"), m.col(s, "timestamp")
    if not np.isfinite(util).any() and data.gpus is not None and not data.gpus.empty:
        g = data.gpus.groupby("timestamp")["utilization_percent"].mean() if "utilization_percent" in data.gpus else None
        if g is not None:
            util, ts = m.num(g.to_numpy()), g.index.to_numpy(dtype=float)
    if not np.isfinite(util).any():
        return None
    st = m.finite(m.col(m.training_window(data), "timestamp"))
    if st.size < 2:
        return None
    ok = (ts >= st.min()) & (ts <= st.max()) & np.isfinite(util)
    ok &= ~m.overlaps(ts, ts, *m.overhead_intervals(data))
    return float(util[ok].mean()) if ok.sum() >= 3 else None


def _headroom(data: JobData) -> tuple[int, int, m.BatchFit] | None:
    """(batch size, largest batch under θ, fit) when device memory peaked under 60 %."""
    dom = m.gpu_series(data)
    if dom is None and m.unified(data):
        dom = m.ram_series(data)
    if dom is None or dom.peak_ratio is None or dom.peak_ratio >= HEADROOM_RATIO:
        return None
    ram = m.ram_series(data)
    if ram is not None and (ram.peak_ratio or 0.0) >= data.settings.memory_warning_threshold:
        return None   # a bigger batch also takes more host memory (inputs, pinned buffers): not while RAM is short
    bs = m.current_batch_size(data)
    fit = m.batch_memory_fit(data, dom)
    if bs is None or fit is None:
        return None
    return bs, fit.max_batch(m.THETA), fit


def _bigger_batch(data: JobData, f: Finding, bs: int, bs_max: int, fit: m.BatchFit) -> Finding:
    rec = min(bs_max, 2 * bs)
    f.evidence.update(batch_size=bs, bs_max=bs_max, static_gb=fit.static_gb, per_sample_gb=fit.per_sample_gb,
                      total_gb=fit.total_gb, fit_method=fit.method)
    # The change costs memory: the card says how much, from the measured relation.
    cost = effects.effect("peak_memory_gb", fit.predict(bs), fit.predict(rec))
    if f.expected_effect is None:
        f.expected_effect = cost
    else:
        f.expected_effect.setdefault("also", []).append(cost)
    f.impact += f"; peak memory ~{gb_figure(fit.predict(bs))} -> ~{gb_figure(fit.predict(rec))} GiB at batch {rec}"
    return apply_ref(f, resolve(data, "batch_size"), rec, measured=bs)


@rule("throughput.gpu_underutilized", "throughput")
def gpu_underutilized(data: JobData) -> list[Finding]:
    """The GPU idles more than half the time while the loop is not waiting for data and memory is free."""
    util = _gpu_util(data)
    if util is None or util >= GPU_UTIL_LOW:
        return []
    dw = m.data_wait(data)
    if dw is not None and dw.share >= INPUT_BOUND:
        return []   # input-bound explains it; throughput.input_bound says so
    gpu = m.gpu_series(data)
    if gpu is not None and gpu.peak_ratio is not None and gpu.peak_ratio >= HEADROOM_RATIO:
        return []
    f = Finding(id="throughput.gpu_underutilized", severity="info",
                title=f"GPU under-utilised ({util:.0f}% busy while training)",
                action="Increase the batch size so each step gives the GPU more work.",
                impact=f"GPU busy {util:.0f}% of training time", category="throughput",
                evidence={"gpu_utilization_percent": util, "data_wait_share": dw.share if dw else None},
                impact_value=100 - util, impact_unit="percent_time", confidence=0.7,
                expected_effect=effects.effect("gpu_utilization_percent", util, None, "percent"))
    hr = _headroom(data)
    if hr is not None and hr[1] > hr[0]:
        bs, bs_max, fit = hr
        f.impact += f"; memory allows batch size {bs_max} (now {bs})"
        return [_bigger_batch(data, f, bs, bs_max, fit)]
    return [f]


@rule("throughput.batch_headroom", "throughput")
def batch_headroom(data: JobData) -> list[Finding]:
    """Device memory peaked under 60 % and the measured relation says twice the batch fits."""
    if gpu_underutilized(data):
        return []
    hr = _headroom(data)
    if hr is None:
        return []
    bs, bs_max, fit = hr
    if bs_max < 2 * bs:
        return []
    f = Finding(id="throughput.batch_headroom", severity="info",
                title=f"Memory headroom allows a larger batch ({bs} -> {min(bs_max, 2 * bs)})",
                action="Raise the batch size (and lower gradient accumulation to keep the effective batch).",
                impact=f"Memory allows batch size {bs_max} under {m.THETA:.0%} of "
                       f"{gb_figure(fit.total_gb)} GiB; currently {bs}",
                category="throughput", evidence={}, impact_value=float(bs_max - bs), impact_unit="samples",
                confidence=0.7)
    return [_bigger_batch(data, f, bs, bs_max, fit)]


# -- degradation, stalls ---------------------------------------------------------------------------------

def _pace(data: JobData, *, without_data_wait: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, timestamp, step_time) of training steps, excluding steps that overlap eval/sampling/save phases.

    ``without_data_wait`` subtracts each step's measured data wait, so time spent waiting for batches (the
    input-bound rule's business) is not reported a second time as a stall.
    """
    steps = m.training_window(data)
    st, ts, sn = m.col(steps, "step_time_seconds"), m.col(steps, "timestamp"), m.col(steps, "step")
    if without_data_wait:
        dw = m.col(steps, "data_time_seconds")
        st = st - np.where(np.isfinite(dw), dw, 0.0)
    ok = np.isfinite(st) & (st > 0)
    ok &= ~m.overlaps(ts - np.nan_to_num(st), ts, *m.overhead_intervals(data))
    return sn[ok], ts[ok], st[ok]


@rule("throughput.degradation", "throughput")
def degradation(data: JobData) -> list[Finding]:
    """The rolling-median step time stays above 1.43× the run's best pace for ≥ 3 windows."""
    sn, ts, st = _pace(data)
    n = st.size
    w = int(min(50, max(5, n // 20)))
    if n < w * (DEGRADED_WINDOWS + 2):
        return []
    blocks = n // w
    med = np.median(st[: blocks * w].reshape(blocks, w), axis=1)
    best = float(med.min())
    if best <= 0:
        return []
    slow = med > DEGRADED * best
    if slow.sum() < DEGRADED_WINDOWS:
        return []
    # Steps of the slow windows; the few steps after the last whole window go with it.
    in_slow = np.r_[np.repeat(slow, w), np.full(n - blocks * w, slow[-1])]
    lost = float(np.clip(st[in_slow] - best, 0, None).sum())
    if lost < max(DEGRADED_MIN_LOST, DEGRADED_MIN_SHARE * float(st.sum())):
        return []   # a slower stretch of a short run: real, but not worth a warning
    first = int(np.nonzero(slow)[0][0])
    k = float(med.max() / best)
    onset_step = int(sn[first * w])
    ev: dict[str, Any] = {"best_median_step_seconds": best, "worst_median_step_seconds": float(med.max()),
                          "window_steps": w, "degraded_windows": int(slow.sum()), "windows": blocks,
                          "onset_step": onset_step, "onset_time": float(ts[first * w])}
    swap = m.col(data.samples, "swap_used_gb")
    cause = ""
    if np.isfinite(swap).any() and np.nanmax(swap) - np.nanmin(swap) > 0.25:
        cause = " It coincides with swap growth (see the memory findings)."
        ev["swap_growth_gb"] = float(np.nanmax(swap) - np.nanmin(swap))
    wall = m.wall_seconds(data)
    return [Finding(id="throughput.degradation", severity="warning",
                    expected_effect=effects.effect("wall_share", lost / wall, 0.0) if wall else None,
                    title=f"Throughput degraded {k:.1f}× during the run (from step {onset_step})",
                    action=("Find what changed at that step: memory pressure and swap, thermal or power throttling, "
                            "other jobs on the machine, a growing input size." + cause),
                    impact=f"Lost ~{duration_rough(lost)} vs the best pace ({best:.3g} s/step)",
                    category="throughput", evidence=ev, impact_value=lost, impact_unit="seconds")]


@rule("throughput.stalls", "throughput")
def stalls(data: JobData) -> list[Finding]:
    """Isolated steps far slower than the median (> median + 5·MAD and ≥ 2× median), ≥ 1 % of steps,
    not explained by eval/sampling/save phases or by waiting for data."""
    sn, ts, st = _pace(data, without_data_wait=True)
    n = st.size
    if n < 20:
        return []
    med = float(np.median(st))
    mad = float(np.median(np.abs(st - med)))
    thr = max(med + STALL_MADS * mad, STALL_MIN_RATIO * med)
    slow = st > thr
    count = int(slow.sum())
    if count < max(2, math.ceil(STALL_SHARE * n)):
        return []
    excess = float((st[slow] - med).sum())
    if excess < max(STALL_MIN_SECONDS, STALL_SHARE * float(st.sum())):
        return []
    worst = np.argsort(-st[slow])[:10]
    listed = [{"step": int(sn[slow][i]), "seconds": float(st[slow][i]), "timestamp": float(ts[slow][i])}
              for i in worst]
    wall = m.wall_seconds(data)
    return [Finding(id="throughput.stalls", severity="info", title=f"Intermittent stalls ({count} slow steps)",
                    expected_effect=effects.effect("wall_share", excess / wall, 0.0) if wall else None,
                    action=("Look at what ran at those moments (I/O, garbage collection, logging, other "
                            "processes); the listed steps carry their timestamps."),
                    impact=f"{count} stalls, {duration_rough(excess)} total",
                    category="throughput", impact_value=excess, impact_unit="seconds",
                    evidence={"median_step_seconds": med, "mad_seconds": mad, "threshold_seconds": thr,
                              "stalled_steps": count, "share": count / n, "worst": listed})]


# -- eval/sampling/checkpoint overhead --------------------------------------------------------------------

@rule("throughput.overhead", "throughput")
def overhead(data: JobData) -> list[Finding]:
    """Eval/sampling/checkpoint phases take > 15 % of wall time."""
    wall = m.wall_seconds(data)
    if not wall:
        return []
    ph = [p for p in m.phases(data) if p.name in OVERHEAD_PHASES]
    if not ph:
        return []
    starts, ends = m.overhead_intervals(data)
    total = float((ends - starts).sum())
    share = total / wall
    if share < OVERHEAD_INFO:
        return []
    evals = [p for p in ph if p.name in EVAL_PHASES]
    saves = [p for p in ph if p.name in SAVE_PHASES]
    eval_s, save_s = sum(p.seconds for p in evals), sum(p.seconds for p in saves)
    group, concept = (evals, "eval_steps") if eval_s >= save_s else (saves, "save_steps")
    what = "evaluation/sampling" if group is evals else "checkpoint saving"
    f = Finding(id="throughput.overhead", severity="warning" if share >= OVERHEAD_WARN else "info",
                title=f"{_fmt_pct(share)} of wall time outside training steps ({what} dominates)",
                action=f"Run {what} less often.", category="throughput",
                impact=f"{_fmt_pct(share)} of wall time ({duration_rough(total)} of {duration_rough(wall)}); "
                       f"eval/sampling {duration_rough(eval_s)}, checkpoints {duration_rough(save_s)}",
                impact_value=share * 100, impact_unit="percent_time",
                expected_effect=effects.effect("wall_share", share, None),
                evidence={"overhead_seconds": total, "wall_seconds": wall, "eval_seconds": eval_s,
                          "save_seconds": save_s, "eval_count": len(evals), "save_count": len(saves)})
    # The interval the run actually used, in steps, measured between consecutive phases of that kind.
    at = m.steps_at(data, np.array([p.start for p in group]))
    d = np.diff(at)
    gaps = [int(x) for x in d[np.isfinite(d) & (d > 0)]]
    ref = resolve(data, concept)
    cur = _count(ref.current_value)
    if concept == "eval_steps" and data.dialect == "lightning" and isinstance(ref.current_value, float):
        cur = None   # val_check_interval as a float is a fraction of an epoch, not steps
    interval = cur if cur and cur > 1 else (int(np.median(gaps)) if gaps else None)
    if interval:
        f.evidence["interval_steps"] = interval
        f.action = f"Run {what} every {interval * 2} steps instead of every {interval}."
        # Half as many of the dominant phases: half of their time back.
        group_s = eval_s if group is evals else save_s
        f.expected_effect = effects.effect("wall_share", share, (total - group_s / 2) / wall)
        return [apply_ref(f, ref, interval * 2, measured=int(np.median(gaps)) if gaps else None)]
    return [f]


# -- monitoring cost -------------------------------------------------------------------------------------

@rule("throughput.monitoring_cost", "throughput")
def monitoring_cost(data: JobData) -> list[Finding]:
    """Runlens's and the user's monitoring work passes the budget (settings.monitoring_budget, 5 % of wall).

    Counted as the collector counts it (runlens.collect.cost): every operation except the one-off start/close,
    threads' CPU included, and no verdict on runs shorter than 30 s, where start-up noise dominates. Each
    process is judged on its own (each rank, and ``runlens collect``'s threads, whose rows carry no rank): the
    ranks run side by side, so their costs are not added up; the finding names the worst one.
    """
    costs, wall = data.costs, m.wall_seconds(data)
    if costs is None or costs.empty or not wall or wall < MIN_COST_WALL or "total_seconds" not in costs.columns:
        return []
    c = costs[~costs["operation"].isin(list(ONE_OFF_OPERATIONS))].copy()
    if c.empty:
        return []
    c["total_seconds"] = m.num(c["total_seconds"])
    c["rank_key"] = m.col(c, "rank")   # NaN: a single-process job, or runlens collect's own threads
    per_rank = c.groupby("rank_key", dropna=False)["total_seconds"].sum()
    worst_key = per_rank.idxmax()
    ranked = bool(np.isfinite(m.col(c, "rank")).any())
    mine = c[c["rank_key"].isna()] if pd.isna(worst_key) else c[c["rank_key"] == worst_key]
    by_op = mine.groupby("operation")["total_seconds"].sum().sort_values(ascending=False)
    spent = float(by_op.sum())
    share = spent / wall
    budget = data.settings.monitoring_budget
    if by_op.empty or share < budget:
        return []
    top = str(by_op.index[0])
    ops = [{"operation": str(k), "seconds": float(v), "share_of_wall": float(v) / wall} for k, v in by_op.items()]
    where = ""
    evidence: dict[str, Any] = {"operations": ops, "budget": budget, "wall_seconds": wall,
                                "monitoring_seconds": spent}
    if ranked:
        where = " on runlens collect's threads" if pd.isna(worst_key) else f" on rank {int(worst_key)}"
        evidence["rank"] = None if pd.isna(worst_key) else int(worst_key)
        shares = (per_rank[per_rank.index.notna()] / wall).sort_values()
        if len(shares):
            evidence["ranks_over_budget"] = int((shares >= budget).sum())
            evidence["typical_rank_share"] = float(shares.iloc[(len(shares) - 1) // 2])
    f = Finding(id="throughput.monitoring_cost", severity="warning",
                title=f"Monitoring cost {_fmt_pct(share)} of wall time{where} (budget {_fmt_pct(budget)})",
                action=f"Do '{top.removeprefix('user:')}' less often or move it off the training thread.",
                impact=f"{_fmt_pct(share)} overhead ({duration_rough(spent)} of {duration_rough(wall)}); "
                       f"'{top}' {duration_rough(float(by_op.iloc[0]))}",
                category="throughput", impact_value=share * 100, impact_unit="percent_time", evidence=evidence,
                expected_effect=effects.effect("wall_share", share, None))
    if top.startswith("thread:") and "sampl" in top:
        ref = resolve(data, "sample_interval")
        cur = ref.current_value if ref.source == "config" else data.job.get("settings", {}).get("sample_interval") \
            if isinstance(data.job.get("settings"), dict) else None
        cur = cur if isinstance(cur, (int, float)) and cur > 0 else data.settings.sample_interval
        f.action = "Sample system metrics less often."
        f.expected_effect = effects.effect("wall_share", share, share - float(by_op.iloc[0]) / wall / 2)
        return [apply_ref(f, ref, float(cur) * 2, measured=float(cur))]
    return [f]
