"""The analysis document: one ``JobData`` in, the JSON of runlens.analyze.contract out.

Rules produce findings; this module turns them into the document: resolves config keys to the job's dialect,
ranks the recommendations, picks the one primary memory lever, places log errors against the memory timeline,
and computes the summary, goodput and the drawn timeline. Everything it returns is plain JSON (``json_safe``):
NaN and infinity become null, numpy scalars become Python numbers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import PurePath
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from runlens._version import __version__
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.contract import SCHEMA_VERSION
from runlens.analyze.effects import default_effect, rank_key
from runlens.analyze.findings import Finding
from runlens.analyze.health import goodput, health_score, monitoring_seconds, run_window, step_source
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures import col
from runlens.analyze.measures.memory import ram_peak
from runlens.analyze.measures.ranks import ranks_count
from runlens.analyze.registry import Rule, run_rules
from runlens.analyze.timeline import build_timeline
from runlens.core.redact import redact

__all__ = ["ERROR_EVENTS", "MAX_LOG_ERRORS", "build_analysis", "json_safe", "log_errors", "memory_at",
           "rank_recommendations", "summarize"]

MAX_LOG_ERRORS = 2000
MAX_HANGS = 100
MAX_STACK_CHARS = 200_000           # per stack text; the events table keeps the full evidence
MAX_JOB_FIELD_BYTES = 1_000_000     # a job field bigger than this (a giant config) is left out of the document
ERROR_EVENTS = frozenset({"exception", "oom", "cuda_oom", "host_oom_suspected", "oom_abort"})
WARNING_EVENTS = frozenset({"oom_skip", "buffer_overflow", "monitoring_budget_exceeded"})
_SAME_ERROR_SECONDS = 10.0          # an error event and a log error this close are one error, not two


def build_analysis(data: JobData, *, rules: Iterable[Rule] | None = None,
                   generated_at: float | None = None) -> dict[str, Any]:
    """The whole analysis document for one loaded job (see runlens.analyze.contract)."""
    findings, rule_notes = run_rules(data, rules)
    if step_source(data) is None:
        rule_notes.append("steps unknown: no Monitor in the run and no progress line runlens reads in its output, so "
                          "the rules that read steps (training, throughput, goodput) were skipped; memory, GPU, log "
                          "and hang rules ran on the samples. 'runlens collect --progress-pattern REGEX' reads a "
                          "format of your own.")
    _resolve_config_paths(findings, data, rule_notes)
    for f in findings:
        if f.expected_effect is None:
            f.expected_effect = default_effect(f, data)
    ranked = rank_recommendations(findings)
    start, end, _ = run_window(data)
    wall = (end - start) if start is not None and end is not None and end > start else None

    summary = summarize(data, ranked, wall)
    timeline = build_timeline(data, total_memory_gb=summary.get("total_memory_gb"),
                              gpu_total_memory_gb=summary.get("gpu_total_memory_gb"))
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": time.time() if generated_at is None else generated_at,
        "runlens_version": __version__,
        "job": _job_section(data.job),
        "summary": summary,
        "recommendations": [f.to_dict() for f in ranked],
        "log_errors": log_errors(data),
        "metrics_timeline": timeline,
        "monitoring_cost": monitoring_cost(data, wall),
        "hangs": hangs(data),
        "environment": data.job.get("environment") if isinstance(data.job.get("environment"), dict) else {},
        # Addition to the contract: what the analysis could not do (no log, a rule that failed).
        "notes": [*data.notes, *rule_notes],
    }
    return json_safe(doc)  # type: ignore[no-any-return]


# -- recommendations --------------------------------------------------------------------------------------

def rank_recommendations(findings: Iterable[Finding]) -> list[Finding]:
    """Dedupe by id (the best-ranked copy wins), rank by expected effect (runlens.analyze.effects.rank_key:
    failures first, then severity, time saved per hour, memory freed under pressure), and pick one primary
    memory lever.

    The primary lever is the memory lever with the largest saving that this run measured and that can be
    applied (it names a concrete recommended value); the other levers are its ``alternatives`` and are listed
    after it, so a user changes one thing at a time instead of applying every memory saving at once.
    """
    ordered = sorted(findings, key=rank_key)
    seen: set[str] = set()
    ranked: list[Finding] = []
    for f in ordered:
        if f.id in seen:
            continue
        seen.add(f.id)
        f.primary = False
        ranked.append(f)
    _settle_conflicts(ranked)
    levers = [f for f in ranked if f.memory_lever]
    feasible = [f for f in levers if _feasible(f)]
    if not feasible:
        return ranked
    primary = max(feasible, key=lambda f: (f.impact_value or 0.0, -ranked.index(f)))
    primary.primary = True
    others = [f.id for f in levers if f is not primary]
    primary.alternatives = list(dict.fromkeys([*primary.alternatives, *others]))
    # The primary goes where the first memory lever was, ahead of its alternatives.
    first = ranked.index(levers[0])
    ranked.remove(primary)
    ranked.insert(first, primary)
    return ranked


def _settle_conflicts(ranked: list[Finding]) -> None:
    """One value per config path: when two findings want different values for the same setting (more workers
    for an input-bound run, fewer for a memory-bound one), the better-ranked finding keeps the change and the
    other keeps its diagnosis but says which finding overrides it, so `recommend --apply` never has to pick."""
    owner: dict[str, Finding] = {}
    for f in ranked:
        if not f.config_path or f.recommended_value is None:
            continue
        first = owner.setdefault(f.config_path, f)
        if first is f or first.recommended_value == f.recommended_value:
            continue
        f.evidence["overridden_by"] = {"id": first.id, "recommended_value": first.recommended_value}
        f.action = (f"{f.action} Not applied: {first.id} sets {f.config_path} to {first.recommended_value!r}, "
                    f"which ranks higher.")
        f.recommended_value = None


def _feasible(f: Finding) -> bool:
    value = f.impact_value
    if value is None or not math.isfinite(value) or value <= 0:
        return False
    if f.evidence.get("feasible") is False or f.evidence.get("saving_measured") is False:
        return False   # a saving this run did not measure (an upper bound, a rule of thumb) is not primary
    return f.recommended_value is not None


def _resolve_config_paths(findings: list[Finding], data: JobData, notes: list[str]) -> None:
    """Give findings that name only a concept (``config_key``) the exact path and current value in this job's
    dialect; findings that already carry a path are left as their rule wrote them."""
    for f in [f for f in findings if f.config_key and not f.config_path]:
        try:
            ref = resolve(data, str(f.config_key))
            recommended = f.recommended_value
            current, source = f.current_value, f.current_value_source
            apply_ref(f, ref, recommended)
            if source == "measured" and ref.source != "config":
                f.current_value, f.current_value_source = current, source
        except Exception as exc:  # an odd config must not lose the finding
            notes.append(f"could not resolve the config path of {f.id}: {type(exc).__name__}: {exc}")


# -- summary ----------------------------------------------------------------------------------------------

def summarize(data: JobData, ranked: Sequence[Finding], wall: float | None) -> dict[str, Any]:
    """The ``summary`` section: verdict, memory peaks (from raw samples), progress, errors and goodput."""
    peak, total, limit_source = ram_peak(data)
    gpu_peak, gpu_total = _gpu_peak(data)
    steps = data.steps
    step_numbers = pd.to_numeric(steps["step"], errors="coerce").dropna() if "step" in steps.columns else None
    errors, warnings = error_counts(data)
    gp = goodput(data)
    on_thread = monitoring_seconds(data, include_one_off=False)
    status = str(data.job.get("status") or "unknown")
    return {
        "health_score": health_score(ranked),
        "peak_memory_gb": peak,
        "total_memory_gb": total,
        "memory_limit_source": limit_source,   # "cgroup": total_memory_gb is the container's limit; "host": RAM
        "peak_memory_ratio": peak / total if peak is not None and total else None,
        "peak_gpu_memory_gb": gpu_peak,
        "gpu_total_memory_gb": gpu_total,
        "training_completed": status == "succeeded",
        "status": status,
        "status_reason": data.job.get("status_reason"),
        "steps_completed": int(step_numbers.nunique()) if step_numbers is not None else 0,
        # Addition: "monitor", "output" (read from the command's progress lines) or None (steps unknown).
        "step_source": step_source(data),
        "last_step": int(step_numbers.max()) if step_numbers is not None and len(step_numbers) else None,
        "ranks": ranks_count(data),   # steps_completed counts each step once, whatever the number of ranks
        "duration_minutes": wall / 60.0 if wall is not None else None,
        "error_count": errors,
        "warning_count": warnings,
        "goodput": gp,
        "monitoring_overhead_ratio": on_thread / wall if wall and data.costs is not None and len(data.costs) else None,
    }


def _gpu_peak(data: JobData) -> tuple[float | None, float | None]:
    """Peak GPU memory of the fullest device (per-device rows when recorded), with that device's total."""
    g = data.gpus
    if g is not None and len(g) and "memory_used_gb" in g.columns:
        used = pd.to_numeric(g["memory_used_gb"], errors="coerce")
        if used.notna().any():
            frame = pd.DataFrame({"dev": g["device_index"] if "device_index" in g.columns else 0, "used": used,
                                  "total": pd.to_numeric(g.get("memory_total_gb"), errors="coerce")})
            per = frame.groupby("dev").agg(used=("used", "max"), total=("total", "max"))
            ratio = per["used"] / per["total"]
            best = ratio.idxmax() if ratio.notna().any() else per["used"].idxmax()
            total = per.loc[best, "total"]
            return float(per.loc[best, "used"]), (float(total) if pd.notna(total) else None)
    used = col(data.samples, "gpu_memory_used_gb")
    if not np.isfinite(used).any():
        return None, None
    totals = col(data.samples, "gpu_memory_total_gb")
    return float(np.nanmax(used)), (float(np.nanmax(totals)) if np.isfinite(totals).any() else None)


def error_counts(data: JobData) -> tuple[int, int]:
    """(errors, warnings) from the log findings and the recorded events, an error seen in both counted once.

    An exception event and its traceback in log.txt are the same error: an event within ``_SAME_ERROR_SECONDS``
    of a log error is not counted again, and a log error without a timestamp can stand for one event.
    """
    errors = warnings = 0
    log_error_times: list[float] = []
    untimed_errors = 0
    for lf in data.log_findings:
        level = str(_attr(lf, "level") or "error")
        count = int(_attr(lf, "count") or 1)
        if level == "error":
            errors += count
            ts = _attr(lf, "timestamp")
            if isinstance(ts, (int, float)) and math.isfinite(ts):
                log_error_times.append(float(ts))
            else:
                untimed_errors += 1
        elif level == "warning":
            warnings += count
    ev = data.events
    if ev is not None and len(ev):
        types = ev["event_type"].astype(str)
        err_ts = pd.to_numeric(ev.loc[types.isin(list(ERROR_EVENTS)), "timestamp"], errors="coerce").to_numpy(float)
        known = np.sort(np.array(log_error_times, dtype=float))
        unmatched = 0
        for t in err_ts:
            if known.size and np.isfinite(t):
                k = int(np.searchsorted(known, t))
                near = min(abs(known[j] - t) for j in (k - 1, k) if 0 <= j < known.size)
                if near <= _SAME_ERROR_SECONDS:
                    continue
            unmatched += 1
        errors += max(0, unmatched - untimed_errors)
        warnings += int(types.isin(list(WARNING_EVENTS)).sum())
    return errors, warnings


# -- log errors -------------------------------------------------------------------------------------------

def memory_at(data: JobData, timestamps: Sequence[float | None]) -> list[float | None]:
    """System RAM used at the sample nearest each timestamp, None when the nearest is more than two sample
    intervals away (the figure would describe another moment) or the timestamp is unknown."""
    s = data.samples
    ts = col(s, "timestamp")
    used = col(s, "used_memory_gb")
    ok = np.isfinite(ts) & np.isfinite(used)
    ts, used = ts[ok], used[ok]
    out: list[float | None] = [None] * len(timestamps)
    if ts.size == 0:
        return out
    order = np.argsort(ts, kind="stable")
    ts, used = ts[order], used[order]
    gaps = np.diff(ts)
    # Two intervals, the larger of the configured one and the median seen (event snapshots add extra samples).
    interval = max(float(np.median(gaps)) if gaps.size else 0.0, float(data.settings.sample_interval or 0.0), 0.5)
    tolerance = 2.0 * interval
    q = np.array([float(t) if isinstance(t, (int, float)) and math.isfinite(t) else np.nan for t in timestamps],
                 dtype=float)
    k = np.clip(np.searchsorted(ts, q), 1, max(1, ts.size - 1)) if ts.size > 1 else np.zeros(q.size, dtype=int)
    if ts.size > 1:
        left, right = k - 1, k
        pick = np.where(np.abs(q - ts[left]) <= np.abs(ts[right] - q), left, right)
    else:
        pick = k
    dist = np.abs(ts[pick] - q)
    for i in range(q.size):
        if np.isfinite(q[i]) and dist[i] <= tolerance:
            out[i] = float(used[pick[i]])
    return out


def log_errors(data: JobData, limit: int = MAX_LOG_ERRORS) -> list[dict[str, Any]]:
    """The log findings as the document's ``log_errors``, each with the memory at that moment."""
    findings = list(data.log_findings)[:limit]
    rows = [_finding_dict(lf) for lf in findings]
    mem = memory_at(data, [r.get("timestamp") for r in rows])
    for row, m in zip(rows, mem):
        row["memory_at_time_gb"] = m
    return rows


def _finding_dict(lf: Any) -> dict[str, Any]:
    if isinstance(lf, Mapping):
        d = dict(lf)
    elif hasattr(lf, "to_dict"):
        d = dict(lf.to_dict())
    else:
        d = {k: getattr(lf, k, None) for k in ("level", "category", "message", "text", "line_number", "timestamp",
                                               "timestamp_source", "rank", "count", "details")}
    d.setdefault("count", 1)
    d.setdefault("details", {})
    return d


# -- monitoring cost and hangs ----------------------------------------------------------------------------

def monitoring_cost(data: JobData, wall: float | None) -> list[dict[str, Any]]:
    """One row per monitoring operation (summed over hosts and ranks), most expensive first.

    ``share_of_wall`` is per process: the total over the ``processes`` (ranks, runlens collect) that recorded
    the operation, divided by their number and the wall time. They ran side by side, so the plain total over
    the wall would count one wall second once per rank.
    """
    c = data.costs
    if c is None or c.empty or "operation" not in c.columns:
        return []
    frame = pd.DataFrame({
        "operation": c["operation"].astype(str),
        "calls": pd.to_numeric(c.get("calls"), errors="coerce").fillna(0),
        "total_seconds": pd.to_numeric(c.get("total_seconds"), errors="coerce").fillna(0.0),
        "on_training_thread": c["on_training_thread"].fillna(True).astype(bool)
        if "on_training_thread" in c.columns else True,
        "process": (c["host"].astype(str) if "host" in c.columns else "") + "/"
        + (c["rank"].astype(str) if "rank" in c.columns else ""),
    })
    grouped = frame.groupby("operation", sort=False).agg(
        calls=("calls", "sum"), total_seconds=("total_seconds", "sum"), on_training_thread=("on_training_thread", "max"),
        processes=("process", "nunique"))
    rows = []
    for op, r in grouped.sort_values("total_seconds", ascending=False).iterrows():
        processes = max(1, int(r["processes"]))
        rows.append({"operation": str(op), "calls": int(r["calls"]), "total_seconds": float(r["total_seconds"]),
                     "share_of_wall": float(r["total_seconds"]) / processes / wall if wall else None,
                     "on_training_thread": bool(r["on_training_thread"]), "processes": processes})
    return rows


def hangs(data: JobData) -> list[dict[str, Any]]:
    """Each ``hang_suspected`` event with its evidence; ``cause`` when a rule or the watchdog labelled it."""
    ev = data.events
    if ev is None or ev.empty:
        return []
    rows = ev[ev["event_type"] == "hang_suspected"]
    if len(rows) > MAX_HANGS:   # a run that hung over and over: the first and the last ones
        rows = pd.concat([rows.iloc[: MAX_HANGS // 2], rows.iloc[-(MAX_HANGS - MAX_HANGS // 2):]])
    out = []
    for t, step, details in zip(rows["timestamp"].tolist(), rows["step"].tolist() if "step" in rows.columns
                                else [None] * len(rows), rows["details"].tolist()):
        d = details if isinstance(details, dict) else {}
        last_step = d.get("last_step", step)
        out.append({
            "timestamp": t, "phase": d.get("phase"), "last_step": last_step,
            "seconds_since_progress": d.get("seconds_since_progress"), "cause": d.get("cause"),
            "stacks": _clip_text(d.get("stacks"), MAX_STACK_CHARS), "stack_source": d.get("stack_source"),
        })
    return out


def _clip_text(value: Any, limit: int) -> Any:
    """Strings anywhere in ``value`` cut to ``limit`` characters, keeping the head and the tail (where the
    innermost frames of a dump are)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        half = limit // 2
        return f"{value[:half]}\n... [{len(value) - limit} characters cut] ...\n{value[-half:]}"
    if isinstance(value, Mapping):
        return {k: _clip_text(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clip_text(v, limit) for v in value]
    return value


# -- the job ----------------------------------------------------------------------------------------------

def _job_section(job: Mapping[str, Any]) -> dict[str, Any]:
    """The Job row for the document: secrets redacted again (belt and braces: the collector already did), and any
    field too big for a report replaced by a note."""
    out: dict[str, Any] = {}
    for key, value in redact(dict(job)).items():
        try:
            size = len(json.dumps(json_safe(value), default=str))
        except (TypeError, ValueError):
            size = 0
        out[key] = value if size <= MAX_JOB_FIELD_BYTES else {"omitted": f"{size} bytes, too large for the report"}
    return out


# -- JSON safety ------------------------------------------------------------------------------------------

def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: NaN/inf -> None, numpy/pandas scalars -> Python, tuples/sets -> lists,
    paths and datetimes -> strings, dict keys -> strings. ``json.dumps(..., allow_nan=False)`` accepts the result.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        return value.timestamp()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "to_dict"):
        return json_safe(value.to_dict())
    return str(value)


def _attr(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)



