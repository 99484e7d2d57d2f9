"""The terminal summary of an analysis: what ``runlens analyze`` prints.

Plain text built from the document alone (so ``runlens report`` and ``recommend`` can reuse it on a stored
analysis), coloured only when asked (the CLI asks when stdout is a terminal).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import click

from runlens.analyze.effects import effect_text
from runlens.core import humanize

__all__ = ["format_applied", "format_recommendations", "format_summary", "format_value"]

_HEALTH_COLOURS = {"good": "green", "warning": "yellow", "critical": "red"}
_SEVERITY_COLOURS = {"critical": "red", "warning": "yellow", "info": "cyan"}
_LOST_NAMES = {"startup": "startup", "data_wait": "data wait", "eval_and_checkpoints": "eval/checkpoints",
               "stalls_and_hangs": "stalls/hangs", "monitoring": "monitoring", "other": "other"}


def format_summary(analysis: Mapping[str, Any], *, html_path: str | Path | None = None, color: bool = False,
                   max_recommendations: int = 10) -> str:
    """The readable summary: health, memory, duration, progress, errors, goodput, then the recommendations."""
    s = analysis.get("summary") or {}
    job = analysis.get("job") or {}
    style = _styler(color)
    health = str(s.get("health_score") or "unknown")
    lines = [
        f"{style('runlens analysis', bold=True)} of {job.get('job_id', '?')}"
        + (f" ({job['name']})" if job.get("name") and job.get("name") != job.get("job_id") else ""),
        "",
        _row("Health", style(health.upper(), fg=_HEALTH_COLOURS.get(health), bold=True)),
        _row("Peak memory", _memory(s.get("peak_memory_gb"), s.get("total_memory_gb"),
                                    container=s.get("memory_limit_source") == "cgroup")),
    ]
    if s.get("peak_gpu_memory_gb") is not None:
        lines.append(_row("Peak GPU memory", _memory(s.get("peak_gpu_memory_gb"), s.get("gpu_total_memory_gb"))))
    lines += [
        _row("Duration", _duration(s.get("duration_minutes"))),
        _row("Steps", _steps(s)),
        _row("Completed", _completion(s)),
        _row("Errors", _errors(s)),
        _row("Goodput", _goodput(s.get("goodput"))),
    ]
    overhead = s.get("monitoring_overhead_ratio")
    if isinstance(overhead, (int, float)) and math.isfinite(overhead):
        shown = "<0.01%" if 0 < overhead < 0.0001 else f"{overhead:.2%}"
        where = "each rank's training thread (typical)" if (s.get("ranks") or 1) > 1 else "the training thread"
        lines.append(_row("Monitoring cost", f"{shown} of wall time on {where}"))
    recs = list(analysis.get("recommendations") or [])
    lines.append("")
    lines.append(format_recommendations(recs, color=color, limit=max_recommendations))
    for note in analysis.get("notes") or []:
        lines.append(style(f"note: {note}", dim=True))
    if html_path:
        lines += ["", f"Report: {html_path}"]
    return "\n".join(lines)


def format_recommendations(recs: list[Mapping[str, Any]], *, color: bool = False, limit: int | None = None) -> str:
    """The ranked recommendations, one block each: severity and title, impact, the predicted effect, the change
    (the value the run measurably used, and the config's own when that differs)."""
    style = _styler(color)
    if not recs:
        return "No recommendations: nothing in this run needs changing."
    shown = recs if limit is None else recs[:limit]
    lines = [style(f"Recommendations ({len(recs)})", bold=True)]
    for i, r in enumerate(shown, 1):
        sev = str(r.get("severity") or "info")
        tag = style(f"[{sev.upper()}]", fg=_SEVERITY_COLOURS.get(sev), bold=True)
        primary = style(" (primary memory lever)", bold=True) if r.get("primary") else ""
        lines.append(f"{i:>2}. {tag} {r.get('title') or r.get('id')}{primary}")
        if r.get("impact"):
            lines.append(f"      impact: {r['impact']}")
        predicted = effect_text(r.get("expected_effect"))
        if predicted:
            lines.append(f"      expected: {predicted}")
        if r.get("config_path"):
            current = format_value(r.get("current_value"), r.get("current_value_source"))
            if r.get("current_value_source") == "measured" and r.get("config_value") is not None:
                current += f" (ran; the config says {format_value(r.get('config_value'))})"
            lines.append(f"      change: {r['config_path']}: {current} -> {format_value(r.get('recommended_value'))}")
        elif r.get("action"):
            lines.append(f"      action: {r['action']}")
        alts = r.get("alternatives") or []
        if r.get("primary") and alts:
            lines.append(f"      alternatives: {', '.join(str(a) for a in alts)}")
    if limit is not None and len(recs) > limit:
        lines.append(f"    ... and {len(recs) - limit} more (see the report or --json)")
    return "\n".join(lines)


def format_applied(result: Any) -> str:
    """What ``runlens recommend --apply`` did: each key set, each recommendation skipped and why, the file
    written. ``result`` is a ``runlens.report.tuned_config.ApplyResult``."""
    lines = []
    for c in result.applied:
        lines.append(f"set {c.file_path}: {format_value(c.old_value) if c.reason != 'key added' else 'not set'}"
                     f" -> {format_value(c.new_value)}  ({c.rec_id})")
    for c in result.skipped:
        lines.append(f"skipped {c.config_path} ({c.rec_id}): {c.reason}")
    if not result.changes:
        lines.append("no recommendation of this run sets a config key")
    lines.append(f"wrote {result.output}")
    return "\n".join(lines)


def format_value(value: Any, source: Any = None) -> str:
    """A config value as the user would write it; an absent key shows as ``not set (default X)``."""
    if source == "default":
        return f"not set (default {_literal(value)})"
    if source == "unknown" and value is None:
        return "not set"
    return _literal(value)


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value and not any(c in value for c in " :#,") else repr(value)
    return str(value)


def _row(label: str, value: str) -> str:
    return f"  {label + ':':<17}{value}"


def _memory(peak: Any, total: Any, container: bool = False) -> str:
    """"2.3 / 23.5 GiB (10%)"; "2.1 / 2.0 GiB container limit (104%)" when the total is a container's limit."""
    if not isinstance(peak, (int, float)):
        return "not sampled"
    if isinstance(total, (int, float)) and total > 0:
        limit = " container limit" if container else ""
        return f"{humanize.gb(peak, total)}{limit} ({peak / total:.0%})"
    return humanize.gb(peak)


def _duration(minutes: Any) -> str:
    return humanize.run_length(minutes if isinstance(minutes, (int, float)) else None)


def _steps(s: Mapping[str, Any]) -> str:
    if "step_source" in s and s.get("step_source") is None:
        return "unknown (no Monitor in the run and no progress line runlens reads in its output)"
    n = s.get("steps_completed") or 0
    if s.get("step_source") == "output":
        last = s.get("last_step")
        return f"{n:,} read from the output" + (f" (last step {last:,})" if isinstance(last, int) else "")
    last = s.get("last_step")
    ranks = s.get("ranks")
    per_rank = f" x {ranks} ranks" if isinstance(ranks, int) and ranks > 1 else ""
    return f"{n:,}{per_rank}" + (f" (last step {last:,})" if isinstance(last, int) else "")


def _completion(s: Mapping[str, Any]) -> str:
    status = str(s.get("status") or "unknown")
    reason = s.get("status_reason")
    if s.get("training_completed"):
        return "yes"
    return f"no ({status}{': ' + str(reason) if reason else ''})"


def _errors(s: Mapping[str, Any]) -> str:
    e, w = int(s.get("error_count") or 0), int(s.get("warning_count") or 0)
    return f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"


def _goodput(g: Any) -> str:
    if isinstance(g, Mapping) and g.get("unknown"):
        return "unknown (steps unknown)"
    if not isinstance(g, Mapping) or not isinstance(g.get("ratio"), (int, float)):
        return "unknown (no step timings)"
    text = f"{g['ratio']:.0%} of wall time in productive steps"
    lost = g.get("lost_seconds") or {}
    wall = g.get("wall_seconds") or 0
    parts = sorted(((k, v) for k, v in lost.items() if isinstance(v, (int, float)) and v > 0),
                   key=lambda kv: -kv[1])
    shown = [f"{_LOST_NAMES.get(k, k)} {v / wall:.0%}" for k, v in parts[:3] if wall and v / wall >= 0.005]
    if shown:
        text += "; lost: " + ", ".join(shown)
    ranks = g.get("ranks")
    if isinstance(ranks, Mapping) and isinstance(ranks.get("worst_ratio"), (int, float)):
        text += (f" (typical of {ranks.get('count')} ranks; worst: rank {ranks.get('worst_rank')}, "
                 f"{ranks['worst_ratio']:.0%})")
    return text


def _styler(color: bool) -> Any:
    def style(text: str, **kw: Any) -> str:
        kw = {k: v for k, v in kw.items() if v is not None}
        return click.style(text, **kw) if color else text

    return style
