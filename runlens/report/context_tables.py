"""The report's tables as view-model rows: log errors, hangs, monitoring cost, events, the environment, the
job and its config.

Each row has every key the templates read (they run under ``StrictUndefined``), each text is clipped, each
list capped; whatever the document holds, wrong types included, becomes a dash or an empty row.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from runlens.analyze.contract import SEVERITY_ORDER
from runlens.report.formatting import (
    DASH,
    MAX_CONFIG_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_STACK_CHARS,
    MAX_TABLE_ROWS,
    MAX_TRACEBACK_CHARS,
    MAX_VALUE_CHARS,
    as_list,
    as_mapping,
    as_text,
    clip,
    clip_middle,
    fmt_gb,
    fmt_timestamp,
    fmt_value,
    number,
)

__all__ = ["config_json", "environment_rows", "event_rows", "gpu_rows", "hang_row", "job_rows", "log_error_row",
           "monitoring_rows"]


def log_error_row(e: Mapping[str, Any]) -> dict[str, Any]:
    """One log error: its first line as the message, the rest as a traceback clipped in the middle."""
    message = as_text(e.get("message"))
    text = as_text(e.get("text"))
    if not message and text:
        message = text.strip().splitlines()[0] if text.strip() else ""
    count = number(e.get("count"))
    details = as_mapping(e.get("details"))
    return {
        "timestamp": number(e.get("timestamp")),
        "timestamp_source": as_text(e.get("timestamp_source")),
        "level": "warning" if e.get("level") == "warning" else "error",
        "category": as_text(e.get("category")),
        "message": clip(message, MAX_MESSAGE_CHARS),
        "text": clip_middle(text, MAX_TRACEBACK_CHARS)
        if text.strip() and text.strip() != message.strip()
        else "",
        "line_number": number(e.get("line_number")),
        "count": int(count) if count is not None and count > 1 else None,
        "memory_at_time_gb": number(e.get("memory_at_time_gb")),
        "details": [(str(k), fmt_value(v, 80)) for k, v in list(details.items())[:12]],
    }


def hang_row(h: Mapping[str, Any]) -> dict[str, Any]:
    """One stall: when, in which phase, its cause, and the stacks taken (head and tail kept)."""
    return {
        "timestamp": number(h.get("timestamp")),
        "phase": as_text(h.get("phase")),
        "last_step": number(h.get("last_step")),
        "seconds_since_progress": number(h.get("seconds_since_progress")),
        "cause": as_text(h.get("cause")),
        "stacks": clip_middle(as_text(h.get("stacks")), MAX_STACK_CHARS),
        "stack_source": as_text(h.get("stack_source")),
    }


def monitoring_rows(value: Any) -> list[dict[str, Any]]:
    """runlens's own cost per operation, and whether it ran on the training thread."""
    rows = []
    for m in as_list(value)[:MAX_TABLE_ROWS]:
        if not isinstance(m, Mapping):
            continue
        on_thread = m.get("on_training_thread")
        rows.append(
            {
                "operation": as_text(m.get("operation")),
                "calls": number(m.get("calls")),
                "total_seconds": number(m.get("total_seconds")),
                "share_of_wall": number(m.get("share_of_wall")),
                "on_training_thread": "yes" if on_thread is True else "no" if on_thread is False else DASH,
            }
        )
    return rows


def event_rows(timeline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The timeline's events with their minute since start, as the memory chart marks them."""
    start = number(timeline.get("start_time"))
    events = []
    for e in as_list(timeline.get("events"))[:MAX_TABLE_ROWS]:
        if not isinstance(e, Mapping):
            continue
        t = number(e.get("timestamp"))
        events.append(
            {
                "timestamp": t,
                "minute": (t - start) / 60.0 if t is not None and start is not None else None,
                "type": as_text(e.get("type")),
                "label": as_text(e.get("label")),
                "severity": e.get("severity") if e.get("severity") in SEVERITY_ORDER else "info",
            }
        )
    return events


_LABELS = {
    "cpu": "CPU",
    "gpu": "GPU",
    "gpus": "GPUs",
    "gb": "GiB",
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
    """``total_memory_gb`` -> ``Total memory GiB``: readable without hiding which field it is."""
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
        return clip(", ".join(str(v) for v in value), MAX_VALUE_CHARS * 2)
    return fmt_value(value, MAX_VALUE_CHARS * 2)


def environment_rows(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows for the environment snapshot; the GPUs have their own table."""
    return [
        (_label(str(k)), _display(str(k), v)) for k, v in list(env.items())[:MAX_TABLE_ROWS] if k != "gpus"
    ]


def gpu_rows(env: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per GPU of the environment snapshot."""
    gpus = []
    for g in as_list(env.get("gpus"))[:64]:
        if isinstance(g, Mapping):
            gpus.append(
                {
                    "index": as_text(g.get("index")),
                    "name": as_text(g.get("name")),
                    "memory_total_gb": number(g.get("memory_total_gb")),
                }
            )
    return gpus


_JOB_SKIP = {"config", "environment", "name", "job_id", "settings"}


def job_rows(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows for the job record, the command line joined as a shell would read it."""
    rows: list[tuple[str, str]] = []
    for key, value in list(job.items())[:MAX_TABLE_ROWS]:
        key = str(key)
        if key in _JOB_SKIP or value is None or value == "" or value == []:
            continue
        if key == "argv" and isinstance(value, (list, tuple)):
            text = clip(shlex.join(str(v) for v in value), MAX_VALUE_CHARS * 3)
        elif key.endswith("_at"):
            text = fmt_timestamp(value)
        else:
            text = _display(key, value)
        rows.append((_label(key), text))
    return rows


def config_json(config: Any) -> str:
    """The job's config (secrets already redacted by the collector) as indented JSON, clipped."""
    if not config:
        return ""
    try:
        text = json.dumps(config, indent=2, default=str, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(config)
    return clip_middle(text, MAX_CONFIG_CHARS)
