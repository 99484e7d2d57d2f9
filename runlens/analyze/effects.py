"""Expected effects: what a recommendation is predicted to change, in one of a few currencies, and the ranking
those currencies give.

Each recommendation carries ``expected_effect = {metric, current, predicted, unit}``: the figure this run
measured and the figure the rule predicts for the recommended value (not for the best case), computed from the
same run. ``predicted`` is null where the run measured nothing to predict it from; ``also`` lists the other
figures the change moves (the data-wait share beside the step time, the memory a fix costs):

    failure            the run fails from this (out of memory, a kill, divergence, a hang): current true;
                       predicted false when the recommended value is measured to avoid it
    step_time_seconds  mean step time over the training window, seconds
    data_wait_share    share of step time waiting for the next batch, 0..1
    wall_share         share of the run's wall time lost to it (stalls, eval, a straggler), 0..1
    peak_memory_gb     peak memory of the pool that binds the run (a GPU, the host, or the container), GiB

Ranking compares like with like: first what makes the run fail, then by severity, then the wall-clock time a
change saves per hour of training, then the memory it frees when memory is under pressure, then the rest in
rule order. A raw number is never compared with a number of another unit.

Rules of other families that set no effect (logs, hangs, ranks, GPU) get one here from their own figures
(``default_effect``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from runlens.analyze.contract import SEVERITY_ORDER
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.timing import wall_seconds
from runlens.core.humanize import duration_fine, gb_figure

__all__ = ["FAILURE", "METRIC_UNITS", "default_effect", "effect", "effect_text", "failure", "memory_saved_gb",
           "rank_key", "run_failed", "seconds_saved_per_hour", "tier"]

FAILURE = "failure"
METRIC_UNITS: dict[str, str] = {
    FAILURE: "bool", "step_time_seconds": "s", "data_wait_share": "ratio", "wall_share": "ratio",
    "peak_memory_gb": "GiB",
}
TIME_METRICS = frozenset({"step_time_seconds", "wall_share"})
# Tiers, in ranking order after the failures.
TIER_FAILURE, TIER_TIME, TIER_MEMORY, TIER_OTHER = 0, 1, 2, 3


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def effect(metric: str, current: Any, predicted: Any, unit: str | None = None,
           also: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One expected effect; ``unit`` defaults to the metric's own (``METRIC_UNITS``)."""
    out: dict[str, Any] = {"metric": metric, "current": current, "predicted": predicted,
                           "unit": unit or METRIC_UNITS.get(metric, "")}
    if also:
        out["also"] = [a for a in also if a]
    return out


def failure(predicted_fixed: bool | None, *, failed: bool = True,
            also: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The run fails (``failed``) from this; ``predicted_fixed``: True when the recommended value is measured
    to avoid it, None when nothing measured says so."""
    return effect(FAILURE, failed, (not predicted_fixed) if predicted_fixed is not None else None, also=also)


def run_failed(data: JobData) -> bool:
    """The job ended in failure: a failed or timed-out status, or a non-zero exit."""
    job = data.job
    return job.get("status") in ("failed", "timed_out", "killed") or job.get("exit_code") not in (None, 0)


def default_effect(f: Finding, data: JobData) -> dict[str, Any] | None:
    """An effect for a finding whose rule set none, from the figures it carries: a fatal log line or a hang that
    stopped the run is a failure (no fix measured), lost time is a share of the wall time that the fix gives
    back, a rank's extra memory is what it would free by matching the others."""
    ev = f.evidence or {}
    share = f.impact_value / 100.0 if f.impact_unit == "percent_time" and _num(f.impact_value) is not None \
        else None
    if f.id == "hangs.stall":
        if ev.get("killed") or not ev.get("recovered"):
            return failure(None)
        return effect("wall_share", share, 0.0) if share is not None else None
    if f.id == "ranks.stopped_first":
        return failure(None, failed=run_failed(data))
    if f.id == "ranks.straggler":
        return effect("wall_share", share, 0.0) if share is not None else None
    if f.id == "ranks.memory_imbalance":
        return effect("peak_memory_gb", _num(ev.get("peak_gb")), _num(ev.get("others_median_gb")))
    if f.id == "gpu.underutilized":
        return effect("gpu_utilization_percent", _num(ev.get("gpu_utilization_percent")),
                      _num(ev.get("predicted_utilization_percent")), "percent")
    if f.category == "logs":
        if f.severity == "critical":
            return failure(None, failed=True)
        return effect("occurrences", _num(f.impact_value), None, "count")
    if f.impact_unit == "seconds" and _num(f.impact_value) is not None:
        wall = wall_seconds(data)
        return effect("wall_share", f.impact_value / wall, 0.0) if wall else None   # type: ignore[operator]
    if share is not None:
        return effect("wall_share", share, None)
    return None


# -- the currencies --------------------------------------------------------------------------------------

def seconds_saved_per_hour(eff: Mapping[str, Any] | None) -> float | None:
    """Wall-clock seconds the change saves per hour of training, from a time effect; None for other metrics
    or an unknown prediction."""
    if not eff:
        return None
    cur, pred = _num(eff.get("current")), _num(eff.get("predicted"))
    if cur is None or pred is None:
        return None
    if eff.get("metric") == "step_time_seconds":
        return 3600.0 * (1.0 - pred / cur) if cur > 0 else None
    if eff.get("metric") == "wall_share":
        return 3600.0 * (cur - pred)
    return None


def memory_saved_gb(eff: Mapping[str, Any] | None) -> float | None:
    """GiB of peak memory the change frees, from the effect or its ``also`` list; None when not predicted."""
    if not eff:
        return None
    for e in [eff, *(eff.get("also") or [])]:
        if isinstance(e, Mapping) and e.get("metric") == "peak_memory_gb":
            cur, pred = _num(e.get("current")), _num(e.get("predicted"))
            if cur is not None and pred is not None:
                return cur - pred
    return None


def tier(f: Finding) -> int:
    """Which currency ranks ``f``: failure, time saved, memory freed under pressure, or none of them."""
    eff = f.expected_effect or {}
    metric = eff.get("metric")
    if metric == FAILURE and eff.get("current") is True:
        return TIER_FAILURE
    if metric in TIME_METRICS:
        return TIER_TIME
    saved = memory_saved_gb(eff)
    if metric == "peak_memory_gb" and saved is not None and saved > 0 and f.severity in ("critical", "warning"):
        return TIER_MEMORY
    return TIER_OTHER


def rank_key(f: Finding) -> tuple[Any, ...]:
    """Sort key: failures first (those with a measured fix, then the diagnosis before its levers, then the
    memory each frees), then severity, then seconds saved per hour, then GiB freed under pressure."""
    t = tier(f)
    eff = f.expected_effect or {}
    severity = SEVERITY_ORDER.get(f.severity, 3)
    if t == TIER_FAILURE:
        fixes = 0 if eff.get("predicted") is False else 1
        return (0, severity, fixes, int(f.memory_lever), -(memory_saved_gb(eff) or 0.0), -f.confidence)
    if t == TIER_TIME:
        value = seconds_saved_per_hour(eff) or 0.0
    elif t == TIER_MEMORY:
        value = memory_saved_gb(eff) or 0.0
    else:
        value = 0.0
    return (1, severity, t, -value, 0, -f.confidence)


# -- words -----------------------------------------------------------------------------------------------

def _figure(metric: str, value: Any) -> str:
    if value is None:
        return "?"
    if metric == FAILURE:
        return "fails" if value else "completes"
    v = _num(value)
    if v is None:
        return str(value)
    if metric == "step_time_seconds":
        return duration_fine(v)
    if metric in ("data_wait_share", "wall_share"):
        return f"{v:.0%}" if v >= 0.01 or v == 0 else f"{v:.1%}"
    if metric == "peak_memory_gb":
        return f"{gb_figure(v)} GiB"
    return f"{v:g}"


_NAMES = {FAILURE: "run", "step_time_seconds": "step time", "data_wait_share": "data wait",
          "wall_share": "time lost", "peak_memory_gb": "peak memory"}


def effect_text(eff: Mapping[str, Any] | None) -> str:
    """``step time 95 ms -> ~15 ms; data wait 85% -> ~0%``: an effect as one line (empty when there is none)."""
    if not isinstance(eff, Mapping) or not eff.get("metric"):
        return ""
    parts = []
    for e in [eff, *(eff.get("also") or [])]:
        if not isinstance(e, Mapping) or not e.get("metric"):
            continue
        metric = str(e["metric"])
        name = _NAMES.get(metric, metric.replace("_", " "))
        cur, pred = _figure(metric, e.get("current")), e.get("predicted")
        if pred is None:
            parts.append(f"{name} {cur} (no prediction measured)")
        else:
            parts.append(f"{name} {cur} -> ~{_figure(metric, pred)}" if metric != FAILURE
                         else f"{name} {cur} -> {_figure(metric, pred)}")
    return "; ".join(parts)
