"""The view model of the HTML report: ``build_context`` turns the analysis document into what the templates
render.

The document (runlens.analyze.contract) may be partial: a run that crashed at start-up has no samples, an
older analyzer leaves fields out, any value may be null. Templates run under ``StrictUndefined`` so that a
typo in a template fails loudly in tests; the price is that they must never meet a missing key. This is where
that is settled: every key present, every list and text capped so the file stays under ~2 MB whatever the
run's length, and the charts drawn. The templates then only lay out and format. This module builds the top of
the page (summary, goodput, recommendations); ``context_tables`` the tables below the charts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runlens._version import __version__
from runlens.analyze.contract import SCHEMA_VERSION, SEVERITY_ORDER
from runlens.analyze.effects import effect_text
from runlens.report.charts_memory import memory_timeline
from runlens.report.charts_training import training_charts
from runlens.report.context_tables import (
    config_json,
    environment_rows,
    event_rows,
    gpu_rows,
    hang_row,
    job_rows,
    log_error_row,
    monitoring_rows,
)
from runlens.report.formatting import (
    MAX_HANGS,
    MAX_LOG_ERRORS,
    MAX_RECOMMENDATIONS,
    MAX_TABLE_ROWS,
    as_list,
    as_mapping,
    as_text,
    fmt_number,
    fmt_value,
    number,
    status_tone,
)

__all__ = ["GOODPUT_PARTS", "build_context"]

GOODPUT_PARTS: dict[str, str] = {
    "startup": "Startup",
    "data_wait": "Data wait",
    "eval_and_checkpoints": "Eval & checkpoints",
    "stalls_and_hangs": "Stalls & hangs",
    "monitoring": "Monitoring",
    "other": "Other",
}


def build_context(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """The view model the templates render: every key present, every list capped, charts drawn.

    Public so a test (or another front end) can check what the page will show without parsing HTML.
    """
    doc = as_mapping(analysis)
    job = as_mapping(doc.get("job"))
    timeline = as_mapping(doc.get("metrics_timeline"))
    environment = as_mapping(doc.get("environment")) or as_mapping(job.get("environment"))
    summary = _summary(as_mapping(doc.get("summary")), job, as_mapping(timeline.get("thresholds")))
    # An environment that lists no GPUs means a CPU run; otherwise a missing GPU figure is just unrecorded.
    gpus = environment.get("gpus")
    summary["gpu_missing_text"] = "no GPU" if isinstance(gpus, list) and not gpus else "not recorded"
    errors_all = [e for e in as_list(doc.get("log_errors")) if isinstance(e, Mapping)]
    hangs_all = [h for h in as_list(doc.get("hangs")) if isinstance(h, Mapping)]
    recs_all = [r for r in as_list(doc.get("recommendations")) if isinstance(r, Mapping)]
    generated_at = number(doc.get("generated_at")) or time.time()
    return {
        "title": _title(job),
        "job": _job(job),
        "summary": summary,
        "recommendations": [_recommendation(r) for r in recs_all[:MAX_RECOMMENDATIONS]],
        "recommendations_hidden": max(0, len(recs_all) - MAX_RECOMMENDATIONS),
        "memory_chart": memory_timeline(timeline),
        "training_charts": training_charts(timeline),
        "events": event_rows(timeline),
        "log_errors": [log_error_row(e) for e in errors_all[:MAX_LOG_ERRORS]],
        "log_errors_total": len(errors_all),
        "log_errors_hidden": max(0, len(errors_all) - MAX_LOG_ERRORS),
        "hangs": [hang_row(h) for h in hangs_all[:MAX_HANGS]],
        "hangs_hidden": max(0, len(hangs_all) - MAX_HANGS),
        "monitoring_cost": monitoring_rows(doc.get("monitoring_cost")),
        "monitoring_overhead_ratio": summary["monitoring_overhead_ratio"],
        "environment": environment_rows(environment),
        "gpus": gpu_rows(environment),
        "job_rows": job_rows(job),
        "config_json": config_json(job.get("config")),
        "footer": {
            "runlens_version": as_text(doc.get("runlens_version")) or __version__,
            "renderer_version": __version__,
            "schema_version": doc.get("schema_version", SCHEMA_VERSION),
            "generated_at": generated_at,
            "rendered_at": time.time(),
            "timezone": _timezone_label(),
        },
    }


def _title(job: Mapping[str, Any]) -> str:
    name = as_text(job.get("name")) or as_text(job.get("job_id")) or "unnamed run"
    return f"{name} · runlens report"


def _timezone_label() -> str:
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    return (
        f"{now.tzname() or 'local'} (UTC{offset[:3]}:{offset[3:]})" if offset else (now.tzname() or "local")
    )


def _job(job: Mapping[str, Any]) -> dict[str, Any]:
    started = number(job.get("started_at")) or number(job.get("created_at"))
    ended = number(job.get("ended_at"))
    return {
        "name": as_text(job.get("name")) or "Unnamed run",
        "job_id": as_text(job.get("job_id")),
        "status": as_text(job.get("status")),
        "host": as_text(job.get("host")),
        "started_at": started,
        "ended_at": ended,
        "duration_seconds": (ended - started) if started is not None and ended is not None else None,
    }


def _summary(s: Mapping[str, Any], job: Mapping[str, Any], thresholds: Mapping[str, Any]) -> dict[str, Any]:
    health = s.get("health_score")
    peak = number(s.get("peak_memory_gb"))
    total = number(s.get("total_memory_gb"))
    ratio = number(s.get("peak_memory_ratio"))
    if ratio is None and peak is not None and total:
        ratio = peak / total
    gpu_peak = number(s.get("peak_gpu_memory_gb"))
    gpu_total = number(s.get("gpu_total_memory_gb"))
    status = as_text(s.get("status")) or as_text(job.get("status"))
    gpu_ratio = (gpu_peak / gpu_total) if gpu_peak is not None and gpu_total else None
    warn = number(thresholds.get("warning_ratio")) or 0.85
    crit = number(thresholds.get("critical_ratio")) or 0.95
    completed = s.get("training_completed") is True
    steps = number(s.get("steps_completed"))
    if steps is None:
        steps = number(s.get("last_step"))
    tone = status_tone(status)
    ranks = int(number(s.get("ranks")) or 1)
    return {
        "health": health if health in ("good", "warning", "critical") else "unknown",
        "health_label": {"good": "Good", "warning": "Warning", "critical": "Critical"}.get(
            str(health), "Unknown"
        ),
        "status": status,
        "status_reason": as_text(s.get("status_reason")) or as_text(job.get("status_reason")),
        "peak_memory_gb": peak,
        "total_memory_gb": total,
        "memory_limit_source": as_text(s.get("memory_limit_source")) or "host",
        "peak_memory_ratio": ratio,
        "peak_memory_bar": _bar_percent(ratio),
        "memory_tone": _tone(ratio, warn, crit),
        "peak_gpu_memory_gb": gpu_peak,
        "gpu_total_memory_gb": gpu_total,
        "gpu_ratio": gpu_ratio,
        "gpu_bar": _bar_percent(gpu_ratio),
        "gpu_tone": _tone(gpu_ratio, warn, crit),
        "duration_minutes": number(s.get("duration_minutes")),
        "completion": _completion(s, status),
        "steps": steps,
        "ranks": ranks,
        "progress_note": ("completed" if completed else (status.replace("_", " ") or "did not complete"))
        + (f" · {ranks} ranks" if ranks > 1 else ""),
        "progress_tone": "good" if completed else tone if tone in ("critical", "warning") else "info",
        "completed": completed,
        "error_count": number(s.get("error_count")),
        "warning_count": number(s.get("warning_count")),
        "goodput": _goodput(as_mapping(s.get("goodput"))),
        "monitoring_overhead_ratio": number(s.get("monitoring_overhead_ratio")),
    }


def _tone(ratio: float | None, warn: float, crit: float) -> str:
    """The colour of a memory meter, on the same thresholds as the chart's shaded zones."""
    if ratio is None:
        return "info"
    return "critical" if ratio >= crit else "warning" if ratio >= warn else "good"


def _bar_percent(ratio: float | None) -> float | None:
    return None if ratio is None else round(min(max(ratio, 0.0), 1.0) * 100, 1)


def _completion(s: Mapping[str, Any], status: str) -> str:
    """``1,234 steps, completed`` / ``failed at step 812``: what a reader asks first after "did it crash"."""
    steps = number(s.get("steps_completed"))
    last = number(s.get("last_step"))
    step = last if last is not None else steps
    ranks = number(s.get("ranks")) or 1
    if s.get("training_completed") is True:
        per_rank = f" x {fmt_number(ranks)} ranks" if ranks > 1 else ""
        return f"{fmt_number(steps if steps is not None else last)} steps{per_rank}, completed"
    verb = status.replace("_", " ") if status else "stopped"
    if step is None:
        return f"{verb}, no steps recorded" if status else "no steps recorded"
    if status == "running":
        return f"running, at step {fmt_number(step)}"
    return f"{verb} at step {fmt_number(step)}"


def _goodput(g: Mapping[str, Any]) -> dict[str, Any]:
    """The goodput ratio and a stacked bar of where the wall time went (widths in percent of wall time)."""
    ratio = number(g.get("ratio"))
    wall = number(g.get("wall_seconds"))
    productive = number(g.get("productive_seconds"))
    lost = as_mapping(g.get("lost_seconds"))
    segments: list[dict[str, Any]] = []
    if wall and wall > 0:
        if productive is not None and productive > 0:
            segments.append(_segment("productive", "Productive", productive, wall))
        for key, label in GOODPUT_PARTS.items():
            value = number(lost.get(key))
            if value:
                segments.append(_segment(key, label, value, wall))
        for key in sorted(str(k) for k in lost if k not in GOODPUT_PARTS):
            value = number(lost.get(key))
            if value:
                segments.append(_segment("other", key.replace("_", " ").capitalize(), value, wall))
        width_sum = sum(seg["width"] for seg in segments)
        if width_sum > 100:  # parts measured separately can overlap a little; never overflow the bar
            for seg in segments:
                seg["width"] = round(seg["width"] * 100 / width_sum, 2)
    if ratio is None and productive is not None and wall:
        ratio = productive / wall
    lost_total = sum(seg["seconds"] for seg in segments if seg["key"] != "productive")
    return {"ratio": ratio, "wall_seconds": wall, "segments": segments, "lost_seconds": lost_total or None,
            "rank_note": _rank_note(as_mapping(g.get("ranks")))}


def _rank_note(ranks: Mapping[str, Any]) -> str:
    """``rank 3 of 8 (typical); worst: rank 5, 61%``: whose goodput a job of several ranks shows (each rank's
    is its own; they are never added up)."""
    count, worst = number(ranks.get("count")), number(ranks.get("worst_ratio"))
    if not count or count < 2 or worst is None:
        return ""
    return (f"rank {fmt_value(ranks.get('typical_rank'))} of {fmt_number(count)} (typical); "
            f"worst: rank {fmt_value(ranks.get('worst_rank'))}, {worst:.0%}")


def _segment(key: str, label: str, seconds: float, wall: float) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "seconds": seconds,
        "share": seconds / wall,
        "width": round(min(100.0, seconds / wall * 100), 2),
    }


def _recommendation(r: Mapping[str, Any]) -> dict[str, Any]:
    source = r.get("current_value_source")
    current = r.get("current_value")
    if source == "default":
        current_text = (
            f"not set (default {fmt_value(current)})" if current is not None else "not set (default)"
        )
    elif current is None:
        current_text = "unknown" if source in (None, "unknown") else "not set"
    else:
        current_text = fmt_value(current) + (" (measured)" if source == "measured" else "")
        if source == "measured" and r.get("config_value") is not None:
            current_text = f"{fmt_value(current)} (ran; config {fmt_value(r.get('config_value'))})"
    evidence = as_mapping(r.get("evidence"))
    rid = as_text(r.get("id"))
    return {
        "id": rid,
        "anchor": "rec-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in rid),
        "severity": r.get("severity") if r.get("severity") in SEVERITY_ORDER else "info",
        "title": as_text(r.get("title")) or rid or "Recommendation",
        "action": as_text(r.get("action")),
        "impact": as_text(r.get("impact")),
        "expected": effect_text(as_mapping(r.get("expected_effect"))),
        "config_path": as_text(r.get("config_path")),
        "has_change": r.get("recommended_value") is not None or bool(r.get("config_path")),
        "current_text": current_text,
        "recommended_text": fmt_value(r.get("recommended_value"))
        if r.get("recommended_value") is not None
        else "",
        "evidence": [(str(k), fmt_value(v)) for k, v in list(evidence.items())[:MAX_TABLE_ROWS]],
        "primary": r.get("primary") is True,
        "alternatives": [
            {
                "id": str(a),
                "anchor": "rec-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in str(a)),
            }
            for a in as_list(r.get("alternatives"))
        ],
        "category": as_text(r.get("category")),
    }
