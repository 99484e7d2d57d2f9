"""The static HTML report: one self-contained file rendered from the analysis document.

The document (runlens.analyze.contract) may be partial: a run that crashed at start-up has no samples, an
older analyzer leaves fields out, any value may be null. Templates run under ``StrictUndefined`` so that a
typo in a template fails loudly in tests; the price is that they must never meet a missing key.
``build_context`` is where that is settled: it turns whatever arrived into a view model with every key
present, caps every list and text so the file stays under ~2 MB whatever the run's length, and draws the
charts. The templates then only lay out and format.

Escaping is Jinja's job: ``autoescape=True`` is forced (``select_autoescape`` keys off the file extension and
silently stops escaping for names such as ``report.html.j2``). The only ``Markup`` that reaches a template is
the SVG from ``runlens.report.charts``, which escapes its own labels.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from runlens._version import __version__
from runlens.analyze.contract import SCHEMA_VERSION, SEVERITY_ORDER
from runlens.report import charts
from runlens.core.resources import resource_dir

__all__ = ["build_context", "make_environment", "render_report", "write_report"]

# Caps that keep the report bounded (a 24 h run can log thousands of errors with long tracebacks).
MAX_LOG_ERRORS = 200
MAX_TRACEBACK_CHARS = 3_000
MAX_MESSAGE_CHARS = 600
MAX_HANGS = 20
MAX_STACK_CHARS = 20_000
MAX_RECOMMENDATIONS = 50
MAX_VALUE_CHARS = 300
MAX_CONFIG_CHARS = 60_000
MAX_TABLE_ROWS = 200

DASH = "—"

GOODPUT_PARTS: dict[str, str] = {
    "startup": "Startup",
    "data_wait": "Data wait",
    "eval_and_checkpoints": "Eval & checkpoints",
    "stalls_and_hangs": "Stalls & hangs",
    "monitoring": "Monitoring",
    "other": "Other",
}

_STATUS_TONE = {
    "succeeded": "good",
    "completed": "good",
    "finished": "good",
    "running": "info",
    "timed_out": "warning",
    "interrupted": "warning",
    "stalled": "warning",
    "failed": "critical",
    "crashed": "critical",
    "killed": "critical",
    "oom": "critical",
}


# --------------------------------------------------------------------------------------------------- public


def render_report(analysis: Mapping[str, Any]) -> str:
    """Render the analysis document to one self-contained HTML page.

    Args:
        analysis: the analysis document (runlens.analyze.contract.Analysis); missing or null parts are shown
            as "not recorded" rather than failing.

    Returns:
        The HTML text: inline CSS and SVG, no scripts, no external URLs.
    """
    template = make_environment().get_template("report.html")
    return template.render(**build_context(analysis))


def write_report(analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render and write the report to ``path`` (parents created), atomically.

    The file is written beside its destination and renamed into place, so a reader (or a browser reloading the
    page) never sees half a report, and an earlier report survives a failed render.

    Returns:
        The path written, resolved.
    """
    html = render_report(analysis)
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@functools.lru_cache(maxsize=1)
def make_environment() -> jinja2.Environment:
    """The Jinja environment: ``resource_dir("templates")``, escaping forced, undefined names fatal."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    _register_filters(env)
    return env


# --------------------------------------------------------------------------------------------------- filters


def _register_filters(env: jinja2.Environment) -> None:
    """Every formatting rule the templates use, in one place, each one safe with None."""
    env.filters.update(
        gb=fmt_gb,
        duration=fmt_duration,
        minutes=fmt_minutes,
        pct=fmt_pct,
        ts=fmt_timestamp,
        num=fmt_number,
        severity_class=severity_class,
        health_class=health_class,
        tone=status_tone,
        value=fmt_value,
    )


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def fmt_gb(value: Any, digits: int = 1) -> str:
    """``119.2 GB``; a dash for a missing reading (never ``0.0 GB``, which would be a claim)."""
    f = _num(value)
    return DASH if f is None else f"{f:,.{digits}f} GB"


def fmt_duration(seconds: Any) -> str:
    """``2h 03m``, ``4m 12s``, ``12.3s``, ``42 ms``: the precision a reader needs at each scale."""
    f = _num(seconds)
    if f is None:
        return DASH
    f = max(0.0, f)
    if f == 0:
        return "0s"
    if f < 1:
        ms = f * 1000
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    if f < 60:
        return f"{f:.1f}s"
    total = round(f)
    if total < 3600:
        m, s = divmod(total, 60)
        return f"{m}m {s:02d}s"
    h, rest = divmod(total, 3600)
    if h < 48:
        return f"{h}h {rest // 60:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def fmt_minutes(minutes: Any) -> str:
    """A duration given in minutes (the summary's ``duration_minutes``), formatted like ``duration``."""
    f = _num(minutes)
    return fmt_duration(None if f is None else f * 60.0)


def fmt_pct(ratio: Any) -> str:
    """A 0..1 ratio as a percentage, with a decimal only where it matters (``0.4%`` vs ``99%``)."""
    f = _num(ratio)
    if f is None:
        return DASH
    p = f * 100
    if p == 0:
        return "0%"
    if abs(p) < 1:
        return f"{p:.2f}%" if abs(p) >= 0.01 else "<0.01%"
    if abs(p) < 10:
        return f"{p:.1f}%"
    return f"{p:.0f}%"


def fmt_timestamp(value: Any) -> str:
    """UNIX seconds to local ``YYYY-MM-DD HH:MM:SS`` (the footer names the time zone)."""
    f = _num(value)
    if f is None:
        return DASH
    try:
        return datetime.fromtimestamp(f).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return DASH


def fmt_number(value: Any, digits: int = 0) -> str:
    """Thousands separators: ``1,234``; a dash for missing."""
    f = _num(value)
    if f is None:
        return DASH
    return f"{f:,.{digits}f}"


def severity_class(value: Any) -> str:
    return f"sev-{value}" if value in SEVERITY_ORDER else "sev-info"


def health_class(value: Any) -> str:
    return f"health-{value}" if value in ("good", "warning", "critical") else "health-unknown"


def status_tone(status: Any) -> str:
    """The colour family of a job status: good, warning, critical or info."""
    return _STATUS_TONE.get(str(status).lower(), "info") if status else "info"


def fmt_value(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """A config literal as the reader would type it: strings bare, everything else as JSON; bounded."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return _clip(text, limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_middle(text: str, limit: int) -> str:
    """Keep the head and the tail: a traceback's cause is at its end, its context at its start."""
    if len(text) <= limit:
        return text
    head = limit // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n… {omitted:,} characters omitted …\n{text[-tail:]}"


# --------------------------------------------------------------------------------------------------- context


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def build_context(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """The view model the templates render: every key present, every list capped, charts drawn.

    Public so a test (or another front end) can check what the page will show without parsing HTML.
    """
    doc = _mapping(analysis)
    job = _mapping(doc.get("job"))
    timeline = _mapping(doc.get("metrics_timeline"))
    environment = _mapping(doc.get("environment")) or _mapping(job.get("environment"))
    summary = _summary(_mapping(doc.get("summary")), job, _mapping(timeline.get("thresholds")))
    # An environment that lists no GPUs means a CPU run; otherwise a missing GPU figure is just unrecorded.
    gpus = environment.get("gpus")
    summary["gpu_missing_text"] = "no GPU" if isinstance(gpus, list) and not gpus else "not recorded"
    errors_all = [e for e in _list(doc.get("log_errors")) if isinstance(e, Mapping)]
    hangs_all = [h for h in _list(doc.get("hangs")) if isinstance(h, Mapping)]
    recs_all = [r for r in _list(doc.get("recommendations")) if isinstance(r, Mapping)]
    generated_at = _num(doc.get("generated_at")) or time.time()
    return {
        "title": _title(job),
        "job": _job(job),
        "summary": summary,
        "recommendations": [_recommendation(r) for r in recs_all[:MAX_RECOMMENDATIONS]],
        "recommendations_hidden": max(0, len(recs_all) - MAX_RECOMMENDATIONS),
        "memory_chart": charts.memory_timeline(timeline),
        "training_charts": charts.training_charts(timeline),
        "events": _events(timeline),
        "log_errors": [_log_error(e) for e in errors_all[:MAX_LOG_ERRORS]],
        "log_errors_total": len(errors_all),
        "log_errors_hidden": max(0, len(errors_all) - MAX_LOG_ERRORS),
        "hangs": [_hang(h) for h in hangs_all[:MAX_HANGS]],
        "hangs_hidden": max(0, len(hangs_all) - MAX_HANGS),
        "monitoring_cost": _monitoring(doc.get("monitoring_cost")),
        "monitoring_overhead_ratio": summary["monitoring_overhead_ratio"],
        "environment": _environment(environment),
        "gpus": _gpus(environment),
        "job_rows": _job_rows(job),
        "config_json": _config_json(job.get("config")),
        "footer": {
            "runlens_version": _text(doc.get("runlens_version")) or __version__,
            "renderer_version": __version__,
            "schema_version": doc.get("schema_version", SCHEMA_VERSION),
            "generated_at": generated_at,
            "rendered_at": time.time(),
            "timezone": _timezone_label(),
        },
    }


def _title(job: Mapping[str, Any]) -> str:
    name = _text(job.get("name")) or _text(job.get("job_id")) or "unnamed run"
    return f"{name} · runlens report"


def _timezone_label() -> str:
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    return (
        f"{now.tzname() or 'local'} (UTC{offset[:3]}:{offset[3:]})" if offset else (now.tzname() or "local")
    )


def _job(job: Mapping[str, Any]) -> dict[str, Any]:
    started = _num(job.get("started_at")) or _num(job.get("created_at"))
    ended = _num(job.get("ended_at"))
    return {
        "name": _text(job.get("name")) or "Unnamed run",
        "job_id": _text(job.get("job_id")),
        "status": _text(job.get("status")),
        "host": _text(job.get("host")),
        "started_at": started,
        "ended_at": ended,
        "duration_seconds": (ended - started) if started is not None and ended is not None else None,
    }


def _summary(s: Mapping[str, Any], job: Mapping[str, Any], thresholds: Mapping[str, Any]) -> dict[str, Any]:
    health = s.get("health_score")
    peak = _num(s.get("peak_memory_gb"))
    total = _num(s.get("total_memory_gb"))
    ratio = _num(s.get("peak_memory_ratio"))
    if ratio is None and peak is not None and total:
        ratio = peak / total
    gpu_peak = _num(s.get("peak_gpu_memory_gb"))
    gpu_total = _num(s.get("gpu_total_memory_gb"))
    status = _text(s.get("status")) or _text(job.get("status"))
    gpu_ratio = (gpu_peak / gpu_total) if gpu_peak is not None and gpu_total else None
    warn = _num(thresholds.get("warning_ratio")) or 0.85
    crit = _num(thresholds.get("critical_ratio")) or 0.95
    completed = s.get("training_completed") is True
    steps = _num(s.get("steps_completed"))
    if steps is None:
        steps = _num(s.get("last_step"))
    tone = status_tone(status)
    return {
        "health": health if health in ("good", "warning", "critical") else "unknown",
        "health_label": {"good": "Good", "warning": "Warning", "critical": "Critical"}.get(
            str(health), "Unknown"
        ),
        "status": status,
        "status_reason": _text(s.get("status_reason")) or _text(job.get("status_reason")),
        "peak_memory_gb": peak,
        "total_memory_gb": total,
        "peak_memory_ratio": ratio,
        "peak_memory_bar": _bar_percent(ratio),
        "memory_tone": _tone(ratio, warn, crit),
        "peak_gpu_memory_gb": gpu_peak,
        "gpu_total_memory_gb": gpu_total,
        "gpu_ratio": gpu_ratio,
        "gpu_bar": _bar_percent(gpu_ratio),
        "gpu_tone": _tone(gpu_ratio, warn, crit),
        "duration_minutes": _num(s.get("duration_minutes")),
        "completion": _completion(s, status),
        "steps": steps,
        "progress_note": "completed" if completed else (status.replace("_", " ") or "did not complete"),
        "progress_tone": "good" if completed else tone if tone in ("critical", "warning") else "info",
        "completed": completed,
        "error_count": _num(s.get("error_count")),
        "warning_count": _num(s.get("warning_count")),
        "goodput": _goodput(_mapping(s.get("goodput"))),
        "monitoring_overhead_ratio": _num(s.get("monitoring_overhead_ratio")),
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
    steps = _num(s.get("steps_completed"))
    last = _num(s.get("last_step"))
    step = last if last is not None else steps
    if s.get("training_completed") is True:
        return f"{fmt_number(steps if steps is not None else last)} steps, completed"
    verb = status.replace("_", " ") if status else "stopped"
    if step is None:
        return f"{verb}, no steps recorded" if status else "no steps recorded"
    if status == "running":
        return f"running, at step {fmt_number(step)}"
    return f"{verb} at step {fmt_number(step)}"


def _goodput(g: Mapping[str, Any]) -> dict[str, Any]:
    """The goodput ratio and a stacked bar of where the wall time went (widths in percent of wall time)."""
    ratio = _num(g.get("ratio"))
    wall = _num(g.get("wall_seconds"))
    productive = _num(g.get("productive_seconds"))
    lost = _mapping(g.get("lost_seconds"))
    segments: list[dict[str, Any]] = []
    if wall and wall > 0:
        if productive is not None and productive > 0:
            segments.append(_segment("productive", "Productive", productive, wall))
        for key, label in GOODPUT_PARTS.items():
            value = _num(lost.get(key))
            if value:
                segments.append(_segment(key, label, value, wall))
        for key in sorted(str(k) for k in lost if k not in GOODPUT_PARTS):
            value = _num(lost.get(key))
            if value:
                segments.append(_segment("other", key.replace("_", " ").capitalize(), value, wall))
        width_sum = sum(seg["width"] for seg in segments)
        if width_sum > 100:  # parts measured separately can overlap a little; never overflow the bar
            for seg in segments:
                seg["width"] = round(seg["width"] * 100 / width_sum, 2)
    if ratio is None and productive is not None and wall:
        ratio = productive / wall
    lost_total = sum(seg["seconds"] for seg in segments if seg["key"] != "productive")
    return {"ratio": ratio, "wall_seconds": wall, "segments": segments, "lost_seconds": lost_total or None}


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
    evidence = _mapping(r.get("evidence"))
    rid = _text(r.get("id"))
    return {
        "id": rid,
        "anchor": "rec-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in rid),
        "severity": r.get("severity") if r.get("severity") in SEVERITY_ORDER else "info",
        "title": _text(r.get("title")) or rid or "Recommendation",
        "action": _text(r.get("action")),
        "impact": _text(r.get("impact")),
        "config_path": _text(r.get("config_path")),
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
            for a in _list(r.get("alternatives"))
        ],
        "category": _text(r.get("category")),
    }


def _log_error(e: Mapping[str, Any]) -> dict[str, Any]:
    message = _text(e.get("message"))
    text = _text(e.get("text"))
    if not message and text:
        message = text.strip().splitlines()[0] if text.strip() else ""
    count = _num(e.get("count"))
    details = _mapping(e.get("details"))
    return {
        "timestamp": _num(e.get("timestamp")),
        "timestamp_source": _text(e.get("timestamp_source")),
        "level": "warning" if e.get("level") == "warning" else "error",
        "category": _text(e.get("category")),
        "message": _clip(message, MAX_MESSAGE_CHARS),
        "text": _clip_middle(text, MAX_TRACEBACK_CHARS)
        if text.strip() and text.strip() != message.strip()
        else "",
        "line_number": _num(e.get("line_number")),
        "count": int(count) if count is not None and count > 1 else None,
        "memory_at_time_gb": _num(e.get("memory_at_time_gb")),
        "details": [(str(k), fmt_value(v, 80)) for k, v in list(details.items())[:12]],
    }


def _hang(h: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": _num(h.get("timestamp")),
        "phase": _text(h.get("phase")),
        "last_step": _num(h.get("last_step")),
        "seconds_since_progress": _num(h.get("seconds_since_progress")),
        "cause": _text(h.get("cause")),
        "stacks": _clip_middle(_text(h.get("stacks")), MAX_STACK_CHARS),
        "stack_source": _text(h.get("stack_source")),
    }


def _monitoring(value: Any) -> list[dict[str, Any]]:
    rows = []
    for m in _list(value)[:MAX_TABLE_ROWS]:
        if not isinstance(m, Mapping):
            continue
        on_thread = m.get("on_training_thread")
        rows.append(
            {
                "operation": _text(m.get("operation")),
                "calls": _num(m.get("calls")),
                "total_seconds": _num(m.get("total_seconds")),
                "share_of_wall": _num(m.get("share_of_wall")),
                "on_training_thread": "yes" if on_thread is True else "no" if on_thread is False else DASH,
            }
        )
    return rows


def _events(timeline: Mapping[str, Any]) -> list[dict[str, Any]]:
    start = _num(timeline.get("start_time"))
    events = []
    for e in _list(timeline.get("events"))[:MAX_TABLE_ROWS]:
        if not isinstance(e, Mapping):
            continue
        t = _num(e.get("timestamp"))
        events.append(
            {
                "timestamp": t,
                "minute": (t - start) / 60.0 if t is not None and start is not None else None,
                "type": _text(e.get("type")),
                "label": _text(e.get("label")),
                "severity": e.get("severity") if e.get("severity") in SEVERITY_ORDER else "info",
            }
        )
    return events


_LABELS = {
    "cpu": "CPU",
    "gpu": "GPU",
    "gpus": "GPUs",
    "gb": "GB",
    "os": "OS",
    "id": "ID",
    "pid": "PID",
    "cuda": "CUDA",
    "cudnn": "cuDNN",
    "nccl": "NCCL",
    "python": "Python",
    "torch": "PyTorch",
    "runlens": "runlens",
    "argv": "Command",
}


def _label(key: str) -> str:
    """``total_memory_gb`` -> ``Total memory GB``: readable without hiding which field it is."""
    if key in _LABELS:
        return _LABELS[key]
    words = [_LABELS.get(w, w) for w in key.replace("-", "_").split("_") if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:] if text else key


def _display(key: str, value: Any) -> str:
    if key.endswith("_gb"):
        return fmt_gb(value)
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return _clip(", ".join(str(v) for v in value), MAX_VALUE_CHARS * 2)
    return fmt_value(value, MAX_VALUE_CHARS * 2)


def _environment(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (_label(str(k)), _display(str(k), v)) for k, v in list(env.items())[:MAX_TABLE_ROWS] if k != "gpus"
    ]


def _gpus(env: Mapping[str, Any]) -> list[dict[str, Any]]:
    gpus = []
    for g in _list(env.get("gpus"))[:64]:
        if isinstance(g, Mapping):
            gpus.append(
                {
                    "index": _text(g.get("index")),
                    "name": _text(g.get("name")),
                    "memory_total_gb": _num(g.get("memory_total_gb")),
                }
            )
    return gpus


_JOB_SKIP = {"config", "environment", "name", "job_id", "settings"}


def _job_rows(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in list(job.items())[:MAX_TABLE_ROWS]:
        key = str(key)
        if key in _JOB_SKIP or value is None or value == "" or value == []:
            continue
        if key == "argv" and isinstance(value, (list, tuple)):
            text = _clip(shlex.join(str(v) for v in value), MAX_VALUE_CHARS * 3)
        elif key.endswith("_at"):
            text = fmt_timestamp(value)
        else:
            text = _display(key, value)
        rows.append((_label(key), text))
    return rows


def _config_json(config: Any) -> str:
    if not config:
        return ""
    try:
        text = json.dumps(config, indent=2, default=str, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(config)
    return _clip_middle(text, MAX_CONFIG_CHARS)
