"""The HTML pages of ``runlens ui``: the job list, the job page, the comparison, and the tuned-config download.

They render the report's own templates (``templates/``, through ``runlens.report.html.make_environment``: the
same escaping, filters and partials), so the static report and the page stay one design. Each page answers with
a Content-Security-Policy that lets only its own inline script run (by nonce) and lets it fetch only this app:
even a log line that got past escaping could neither run nor call out.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from runlens._version import __version__
from runlens.report.compare import MAX_RUNS, comparison_charts, format_change, format_value
from runlens.report.html import make_environment
from runlens.store.store import JOB_STATUSES
from runlens.ui.params import get_choice, get_int, get_job_ids, get_text
from runlens.ui.tuned import tuned_config
from runlens.ui.views import DEFAULT_LIMIT, MAX_LIMIT

__all__ = ["STATE_TONES", "html_page", "routes"]

STATE_TONES = {"RUNNING": "info", "WARNING": "warning", "TIMED_OUT": "warning", "SUCCEEDED": "good",
               "FAILED": "critical", "NEVER_STARTED": "unknown"}
LIVE_INTERVAL_MS = 2000


def html_page(request: Request, template: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
    """Render ``template`` with the app's common context (``ui``, ``footer``) and the page's CSP."""
    nonce = secrets.token_urlsafe(16)
    app = request.app.state.runlens
    ui = {"nonce": nonce, "store_url": app.store.shown_url, "timezone": _timezone()}
    footer = {"renderer_version": __version__, "runlens_version": __version__, "generated_at": None,
              "schema_version": None, "timezone": ui["timezone"]}
    html = make_environment().get_template(template).render(**{"footer": footer, **context, "ui": ui})
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": csp})


def _timezone() -> str:
    now = datetime.now().astimezone()
    return f"{now.tzname() or 'local'} (UTC{now.strftime('%z')[:3]}:{now.strftime('%z')[3:]})"


def jobs_page(request: Request) -> HTMLResponse:
    q = request.query_params
    limit = get_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    status, name, before = get_choice(q, "status", JOB_STATUSES), get_text(q, "name"), get_text(q, "before")
    page = request.app.state.runlens.views.job_page(limit=limit, status=status, name=name, before=before)
    keep = {k: v for k, v in (("name", name), ("status", status)) if v}
    if limit != DEFAULT_LIMIT:
        keep["limit"] = str(limit)
    first_url = "/" + (f"?{urlencode(keep)}" if keep else "")
    next_url = f"/?{urlencode({**keep, 'before': page['next_before']})}" if page["next_before"] else None
    jobs = [{**j, "state_tone": STATE_TONES.get(j["state"], "info")} for j in page["jobs"]]
    return html_page(request, "ui/jobs.html", {
        "jobs": jobs, "filters": page["filters"], "statuses": JOB_STATUSES, "limit": limit,
        "max_limit": MAX_LIMIT, "first_url": first_url, "next_url": next_url})


def job_page(request: Request) -> HTMLResponse:
    app = request.app.state.runlens
    job_id = request.path_params["job_id"]
    job = app.views.job(job_id)
    doc, context = app.analyses.context(job_id)
    running = job.get("status") == "running"
    live: dict[str, Any] = {"running": running}
    if running:
        marker = app.store.data_marker(job_id)
        sample = app.store.latest_sample(job_id) or {}
        live["memory_gb"] = [sample.get("used_memory_gb"), sample.get("total_memory_gb")]
        live.update(api=f"/api/jobs/{job_id}", interval_ms=LIVE_INTERVAL_MS, step_since=marker[0],
                    sample_since=marker[2], event_since=marker[3], tones=STATE_TONES, seed=_seed(doc))
    return html_page(request, "ui/job.html", {
        **context,
        "ui_job": {**job, "state_tone": STATE_TONES.get(job["state"]["state"], "info")},
        "ui_live": live,
        "ui_tuned": _tuned_note(job, doc),
        "ui_analysis_note": _analysis_note(job, doc, app.store.latest_analysis_id(job_id)),
    })


def _seed(doc: Mapping[str, Any]) -> list[list[float]]:
    """The analysis's loss curve, for the live chart to start from."""
    training = (doc.get("metrics_timeline") or {}).get("training") or {}
    loss = training.get("loss") or {}
    return [[x, y] for x, y in zip(loss.get("x") or [], loss.get("y") or []) if x is not None and y is not None]


def _tuned_note(job: Mapping[str, Any], doc: Mapping[str, Any]) -> str | None:
    """What the download would change, or None when it has nothing to apply or no config to apply it to."""
    settable = [r for r in doc.get("recommendations") or []
                if r.get("config_path") and r.get("recommended_value") is not None]
    if not settable or (job.get("config") is None and not job.get("config_path")):
        return None
    return f"{len(settable)} recommended value{'s' if len(settable) != 1 else ''}"


def _analysis_note(job: Mapping[str, Any], doc: Mapping[str, Any], stored_id: int | None) -> str:
    if job.get("status") == "running":
        return "analysis of the run so far, made now (not stored)"
    if stored_id is None:
        return "not analysed yet: analysis made now, not stored ('runlens analyze' stores one)"
    return "stored analysis"


def tuned_config_download(request: Request) -> Response:
    app = request.app.state.runlens
    job_id = request.path_params["job_id"]
    job = app.store.get_job(job_id)
    _, doc = app.analyses.document(job_id)
    tuned = tuned_config(job, doc.get("recommendations") or [])
    if tuned is None:
        return html_page(request, "ui/error.html", {"status": 404, "title": "No config",
                                                     "message": f"Job {job_id} recorded no config to tune."}, 404)
    return Response(tuned.text, media_type=tuned.media_type, headers={
        "Content-Disposition": f'attachment; filename="{tuned.filename}"',
        "X-Runlens-Applied": str(tuned.applied), "X-Runlens-Skipped": str(tuned.skipped),
        "X-Runlens-Source": tuned.source})


def compare_page(request: Request) -> HTMLResponse:
    ids = get_job_ids(request.query_params, "jobs", 2, MAX_RUNS)
    doc = request.app.state.runlens.analyses.comparison(ids)
    return html_page(request, "ui/compare.html", {
        "runs": doc["runs"], "metrics": [_metric_row(m) for m in doc["metrics"]],
        "config": {**doc["config"], "differences": [
            {"path": d["path"], "cells": [_config_text(v) if p else None for v, p in zip(d["values"], d["present"])]}
            for d in doc["config"]["differences"]]},
        "charts": comparison_charts(doc)})


def _metric_row(m: Mapping[str, Any]) -> dict[str, Any]:
    cells = []
    for i, (value, change) in enumerate(zip(m["values"], m["changes"])):
        tone = ""
        if i and change and m["better"] in ("lower", "higher") and abs(change) >= 0.0005:
            tone = "change-better" if (change < 0) == (m["better"] == "lower") else "change-worse"
        cells.append({"text": format_value(m["key"], value), "change": format_change(change).strip(), "tone": tone})
    return {"label": m["label"], "differs": m["differs"], "cells": cells}


def _config_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def routes() -> list[Route]:
    return [
        Route("/", jobs_page),
        Route("/jobs/{job_id:str}", job_page),
        Route("/jobs/{job_id:str}/tuned-config", tuned_config_download),
        Route("/compare", compare_page),
    ]

