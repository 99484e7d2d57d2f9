"""``analyze_job``: load, analyse, store, render. What ``runlens analyze`` does, callable from Python.

It lives in the report layer because it is the one place that runs the whole read side in order: the
analyzer builds the document, the store keeps it, the report renders it.

    from runlens.store import open_store
    from runlens.report.job import analyze_job

    result = analyze_job(open_store("runlens.db", create=False), "lora-run-20261122-110642-3fa9c1")
    result.analysis["summary"]["health_score"], result.html_path
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runlens.analyze.analysis import build_analysis
from runlens.analyze.load import load_job
from runlens.core.errors import JobNotFound
from runlens.report.html import write_report
from runlens.store.frames import latest_analysis, save_analysis
from runlens.store.store import Store

log = logging.getLogger(__name__)

__all__ = ["HEALTH_RANK", "AnalyzeResult", "analyze_job", "current_analysis", "default_html_path",
           "health_at_least", "render_html", "resolve_job_id"]

HEALTH_RANK = {"good": 0, "warning": 1, "critical": 2}


@dataclass
class AnalyzeResult:
    """The document, the id of the AnalysisReport row it was stored as, and the HTML report written.

    ``html_error`` says why no report was written when one was asked for (the path is not
    writable); the analysis itself is still complete and stored.
    """

    analysis: dict[str, Any]
    report_id: int | None
    html_path: Path | None
    html_error: str | None = None


def analyze_job(store: Store, job_id: str, *, log_path: str | os.PathLike[str] | None = None,
                html_path: str | os.PathLike[str] | None = None, save: bool = True, write_html: bool = True,
                now: float | None = None) -> AnalyzeResult:
    """Analyse ``job_id``: store an AnalysisReport row (``save``) and write the HTML report (``write_html``).

    Args:
        store: an open store.
        job_id: the job, or "latest" for the most recently created one.
        log_path: a log file to parse instead of the one recorded with the job.
        html_path: where to write the report; default ``default_html_path``.
        save: store the document as an AnalysisReport row.
        write_html: write the HTML report.
        now: the analysis time, for a job still running (tests pin it).

    Raises:
        JobNotFound, StoreUnavailable, LogUnreadable.
    """
    job_id = resolve_job_id(store, job_id)
    data = load_job(store, job_id, log_path=log_path, now=now)
    analysis = build_analysis(data)
    report_id = save_analysis(store, job_id, analysis) if save else None
    written: Path | None = None
    error: str | None = None
    if write_html:
        target = Path(html_path) if html_path is not None else default_html_path(data.job)
        written, error = render_html(analysis, target)
    return AnalyzeResult(analysis, report_id, written, error)


def resolve_job_id(store: Store, job_id: str) -> str:
    """``latest`` means the most recently created job; anything else is taken as it is."""
    if job_id != "latest":
        return job_id
    jobs = store.list_jobs(limit=1)
    if not jobs:
        raise JobNotFound("latest")
    return str(jobs[0]["job_id"])


def default_html_path(job: Mapping[str, Any]) -> Path:
    """Next to the job's log (``runlens-runs/<job_id>/report.html``) when that folder exists, else
    ``./runlens-report-<job_id>.html``."""
    log_path = job.get("log_path")
    if log_path:
        folder = Path(str(log_path)).expanduser().parent
        if folder.is_dir() and os.access(folder, os.W_OK):
            return folder / "report.html"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(job.get("job_id") or "job"))
    return Path.cwd() / f"runlens-report-{safe}.html"


def render_html(analysis: Mapping[str, Any], path: Path) -> tuple[Path | None, str | None]:
    """Write the report; returns (path written, None) or (None, why not). Never raises on an unwritable
    path: the analysis is the product, the HTML a view of it."""
    try:
        return write_report(dict(analysis), path), None
    except OSError as exc:
        return None, f"cannot write {path}: {exc.strerror or exc}"


def current_analysis(store: Store, job_id: str) -> dict[str, Any]:
    """The analysis to act on now: the stored one of a finished job, else (a running job, or none stored yet)
    one made now and not stored."""
    job = store.get_job(job_id)
    analysis = latest_analysis(store, job_id) if job.get("status") != "running" else None
    if analysis is None:
        analysis = analyze_job(store, job_id, save=False, write_html=False).analysis
    return analysis


def health_at_least(analysis: Mapping[str, Any], level: str) -> bool:
    """Whether the analysis's health is ``level`` ("warning", "critical") or worse; a missing health is good."""
    health = str((analysis.get("summary") or {}).get("health_score") or "good")
    return HEALTH_RANK.get(health, 0) >= HEALTH_RANK[level]
