"""Two or more runs side by side: what differs in their configs beside what differs in their results.

One comparison serves the web page (``runlens ui``'s ``/compare``), the API (``/api/compare``) and the terminal
(``runlens compare``): ``gather_runs`` reads each run (its job row, its current analysis, its median step time),
``compare_runs`` turns them into the comparison document, and the page draws ``comparison_charts`` while the
terminal prints ``format_comparison``. The document is plain JSON:

    {
      "schema_version": 1,
      "runs": [{"label": "A", "job_id", "name", "status", "health", "started_at", "duration_minutes",
                "steps_completed"}, ...],
      "metrics": [{"key", "label", "unit", "better": "lower" | "higher" | None, "values": [...],
                   "changes": [None, relative change against run A, ...], "differs": bool}, ...],
      "config": {"differences": [{"path", "values": [...], "present": [bool, ...]}], "same": int,
                 "total": int, "without_config": [job_id, ...], "truncated": bool},
      "curves": {"loss" | "step_time_seconds" | "memory_gb" | "gpu_memory_gb":
                 [{"label", "job_id", "x": [...], "y": [...]}, ...]},
    }

Curves come from each run's ``metrics_timeline`` (already peak-keeping downsampled by the analyzer), cut again to
``CURVE_POINTS`` so a comparison of many runs stays small; memory is drawn against minutes since each run's
start, so runs that started on different days still overlay.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from markupsafe import Markup

from runlens.analyze.downsample import minmax_downsample
from runlens.core import humanize
from runlens.core.configpath import format_path
from runlens.core.numbers import finite_number
from runlens.report import svg
from runlens.report.charts_training import line_chart
from runlens.report.job import current_analysis
from runlens.store.series import read_series
from runlens.store.store import Store

__all__ = ["CURVE_POINTS", "MAX_RUNS", "METRICS", "RunFacts", "compare_runs", "comparison_charts",
           "format_comparison", "gather_runs"]

SCHEMA_VERSION = 1
MAX_RUNS = 8                 # beyond this an overlay is a tangle and a table too wide to read
CURVE_POINTS = 600           # per run and curve
MAX_CONFIG_DIFFERENCES = 500
_LONG_LIST = 20              # a list longer than this is compared as one value, not element by element

# (key, label, unit, which way is better)
METRICS: list[tuple[str, str, str, str | None]] = [
    ("health", "Health", "", "higher"),
    ("peak_memory_gb", "Peak memory", "GiB", "lower"),
    ("peak_gpu_memory_gb", "Peak GPU memory", "GiB", "lower"),
    ("median_step_seconds", "Step time (median)", "s", "lower"),
    ("goodput", "Goodput", "ratio", "higher"),
    ("final_loss", "Final loss", "", "lower"),
    ("steps_completed", "Steps", "", None),
    ("duration_minutes", "Duration", "min", None),
]
_HEALTH_ORDER = {"critical": 0, "warning": 1, "good": 2}

# (curve, title, x label, y label)
CURVES: list[tuple[str, str, str, str]] = [
    ("loss", "Loss", "step", "loss"),
    ("step_time_seconds", "Step time", "step", "seconds"),
    ("memory_gb", "Memory (RAM used)", "minutes", "GiB"),
    ("gpu_memory_gb", "GPU memory", "minutes", "GiB"),
]
_COLOURS = ("blue", "vermillion", "green", "orange", "purple", "sky", "black")
_DASHES = (None, "6 3", "2 2", "8 3 2 3")


@dataclass
class RunFacts:
    """What the comparison needs of one run: its job row, its analysis document and its median step time."""

    job: Mapping[str, Any]
    analysis: Mapping[str, Any]
    median_step_seconds: float | None = None


def gather_runs(store: Store, job_ids: Sequence[str],
                analysis_for: Callable[[Store, str], Mapping[str, Any]] = current_analysis) -> list[RunFacts]:
    """Read each run: the job row, its current analysis (the stored one of a finished job, else one made now and
    not stored) and the median of its recorded step times.

    Raises:
        JobNotFound: a job id that is not in the store.
        StoreUnavailable: the store cannot be read.
    """
    runs = []
    for job_id in job_ids:
        job = store.get_job(job_id)
        runs.append(RunFacts(job, analysis_for(store, job_id), median_step_seconds(store, job_id)))
    return runs


def median_step_seconds(store: Store, job_id: str) -> float | None:
    """The median recorded step time of a job (every rank's steps), None when none was recorded."""
    times = read_series(store, "steps", job_id, columns=("step_time_seconds",))["step_time_seconds"]
    times = times[np.isfinite(times)]
    return float(np.median(times)) if times.size else None


def compare_runs(runs: Sequence[RunFacts]) -> dict[str, Any]:
    """The comparison document (shape in the module docstring) of two or more runs, run A first."""
    labels = _labels(len(runs))
    facts = [_facts(r) for r in runs]
    metrics = []
    for key, label, unit, better in METRICS:
        values = [f[key] for f in facts]
        metrics.append({"key": key, "label": label, "unit": unit, "better": better, "values": values,
                        "changes": [_change(values[0], v) for v in values],
                        "differs": len({json.dumps(v) for v in values}) > 1})
    return {
        "schema_version": SCHEMA_VERSION,
        "runs": [{"label": lab, **{k: f[k] for k in ("job_id", "name", "status", "health", "started_at",
                                                       "duration_minutes", "steps_completed")}}
                 for lab, f in zip(labels, facts)],
        "metrics": metrics,
        "config": _config_differences(runs),
        "curves": {name: [{"label": lab, "job_id": f["job_id"], **_curve(r.analysis, name)}
                          for lab, f, r in zip(labels, facts, runs)] for name, *_ in CURVES},
    }


def _labels(n: int) -> list[str]:
    return [string.ascii_uppercase[i] if i < 26 else f"R{i + 1}" for i in range(n)]


def _facts(run: RunFacts) -> dict[str, Any]:
    doc = run.analysis
    summary = doc.get("summary") if isinstance(doc.get("summary"), Mapping) else {}
    assert isinstance(summary, Mapping)
    goodput = summary.get("goodput") if isinstance(summary.get("goodput"), Mapping) else {}
    assert isinstance(goodput, Mapping)
    loss = _series(doc, "training", "loss")
    final_loss = next((y for y in reversed(loss[1]) if y is not None), None)
    return {
        "job_id": run.job.get("job_id"),
        "name": run.job.get("name"),
        "status": run.job.get("status"),
        "health": summary.get("health_score"),
        "started_at": finite_number(run.job.get("started_at")),
        "duration_minutes": finite_number(summary.get("duration_minutes")),
        "steps_completed": summary.get("steps_completed"),
        "peak_memory_gb": finite_number(summary.get("peak_memory_gb")),
        "peak_gpu_memory_gb": finite_number(summary.get("peak_gpu_memory_gb")),
        "median_step_seconds": run.median_step_seconds,
        "goodput": finite_number(goodput.get("ratio")),
        "final_loss": final_loss,
    }


def _change(base: Any, value: Any) -> float | None:
    """The relative change of ``value`` against run A's ``base``; None where it means nothing (health, a zero
    base, a missing figure)."""
    if isinstance(base, bool) or isinstance(value, bool):
        return None
    if not isinstance(base, (int, float)) or not isinstance(value, (int, float)) or base == 0:
        return None
    change = (value - base) / abs(base)
    return change if math.isfinite(change) else None


def _series(doc: Mapping[str, Any], section: str, name: str) -> tuple[list[float], list[float | None]]:
    timeline = doc.get("metrics_timeline") if isinstance(doc.get("metrics_timeline"), Mapping) else {}
    assert isinstance(timeline, Mapping)
    part = timeline.get(section) if isinstance(timeline.get(section), Mapping) else {}
    assert isinstance(part, Mapping)
    return svg.clean_series(part.get(name))


def _curve(doc: Mapping[str, Any], name: str) -> dict[str, list[Any]]:
    if name in ("loss", "step_time_seconds"):
        xs, ys = _series(doc, "training", name)
    else:
        xs, ys = _series(doc, "memory", "system_used_gb" if name == "memory_gb" else "gpu_used_gb")
        timeline = doc.get("metrics_timeline") if isinstance(doc.get("metrics_timeline"), Mapping) else {}
        assert isinstance(timeline, Mapping)
        start = finite_number(timeline.get("start_time"))
        origin = start if start is not None else (xs[0] if xs else 0.0)
        xs = [(x - origin) / 60.0 for x in xs]
    if len(xs) > CURVE_POINTS:
        xs, ys = minmax_downsample(xs, ys, CURVE_POINTS)
    return {"x": xs, "y": ys}


# -- config ------------------------------------------------------------------------------------------------

def _flatten(value: Any, parts: list[str | int], out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, [*parts, str(k)], out)
    elif isinstance(value, list) and value and len(value) <= _LONG_LIST:
        for i, v in enumerate(value):
            _flatten(v, [*parts, i], out)
    elif parts:
        out[format_path(parts)] = value


def _config_differences(runs: Sequence[RunFacts]) -> dict[str, Any]:
    flats: list[dict[str, Any] | None] = []
    for r in runs:
        config = r.job.get("config")
        if isinstance(config, Mapping):
            flat: dict[str, Any] = {}
            _flatten(config, [], flat)
            flats.append(flat)
        else:
            flats.append(None)
    present = [f for f in flats if f is not None]
    paths = list(dict.fromkeys(p for f in present for p in f))
    differences = []
    same = 0
    for path in paths:
        has = [f is not None and path in f for f in flats]
        values = [f.get(path) if f is not None else None for f in flats]
        if all(has) and len({json.dumps(v, sort_keys=True, default=str) for v in values}) == 1:
            same += 1
            continue
        differences.append({"path": path, "values": values, "present": has})
    return {"differences": differences[:MAX_CONFIG_DIFFERENCES], "same": same, "total": len(paths),
            "without_config": [str(r.job.get("job_id")) for r, f in zip(runs, flats) if f is None],
            "truncated": len(differences) > MAX_CONFIG_DIFFERENCES}


# -- drawing and printing ----------------------------------------------------------------------------------

def _style(i: int) -> svg.LineStyle:
    return svg.LineStyle(_COLOURS[i % len(_COLOURS)], _DASHES[(i // len(_COLOURS) + i) % len(_DASHES)], 1.6)


def comparison_charts(doc: Mapping[str, Any]) -> list[tuple[str, Markup]]:
    """The overlaid curves, ``[(title, figure), ...]``, drawn with the report's own chart kit."""
    curves = doc.get("curves") if isinstance(doc.get("curves"), Mapping) else {}
    assert isinstance(curves, Mapping)
    charts = []
    for name, title, x_label, y_label in CURVES:
        series = []
        for i, c in enumerate(curves.get(name) or []):
            xs, ys = svg.clean_series(c)
            series.append(svg.Series(f"{name}-{i}", f"{c.get('label')}: {c.get('job_id')}", xs, ys, _style(i)))
        if name == "gpu_memory_gb" and not any(s.xs for s in series):
            continue   # CPU runs: no GPU chart rather than an empty one
        charts.append((title, line_chart(series, label=f"{title} of the compared runs", x_label=x_label,
                                         y_label=y_label, zero_based=name != "loss",
                                         clip_outliers=name in ("loss", "step_time_seconds"),
                                         empty_message=f"No {title.lower()} recorded")))
    return charts


def format_value(key: str, value: Any) -> str:
    """One metric's value as the table shows it."""
    if value is None:
        return "-"
    if key in ("peak_memory_gb", "peak_gpu_memory_gb"):
        return humanize.gb(value)
    if key == "median_step_seconds":
        return humanize.duration_fine(value)
    if key == "goodput":
        return f"{value:.0%}"
    if key == "duration_minutes":
        return humanize.run_length(value)
    if key == "final_loss":
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_change(change: float | None) -> str:
    if change is None or abs(change) < 0.0005:
        return ""
    return f" ({change:+.1%})"


def format_comparison(doc: Mapping[str, Any]) -> str:
    """The comparison as terminal text: the runs, their figures with the change against run A, and the config
    keys that differ."""
    runs = list(doc.get("runs") or [])
    heads = [str(r.get("label")) for r in runs]
    rows: list[list[str]] = [["", *heads], ["job", *(str(r.get("job_id")) for r in runs)],
                             ["name", *(str(r.get("name")) for r in runs)],
                             ["status", *(str(r.get("status")) for r in runs)]]
    for m in doc.get("metrics") or []:
        if m["key"] == "health" or any(v is not None for v in m["values"]):
            cells = [format_value(m["key"], v) + format_change(c) for v, c in zip(m["values"], m["changes"])]
            rows.append([m["label"] + (" *" if m["differs"] else ""), *cells])
    lines = _table(rows)
    config = doc.get("config") or {}
    diffs = config.get("differences") or []
    lines.append("")
    if not diffs:
        lines.append(f"config: no differences ({config.get('same', 0)} keys the same)")
    else:
        lines.append(f"config: {len(diffs)} key{'s differ' if len(diffs) != 1 else ' differs'} "
                     f"({config.get('same', 0)} the same)")
        table = [["key", *heads]]
        for d in diffs:
            table.append([d["path"], *(_config_cell(v, p) for v, p in zip(d["values"], d["present"]))])
        lines.extend("  " + line for line in _table(table))
        if config.get("truncated"):
            lines.append("  (more differences not shown)")
    if config.get("without_config"):
        lines.append("no config recorded for: " + ", ".join(config["without_config"]))
    lines.append("* differs between the runs; changes are against run A")
    return "\n".join(lines)


def _config_cell(value: Any, present: bool) -> str:
    if not present:
        return "(absent)"
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
