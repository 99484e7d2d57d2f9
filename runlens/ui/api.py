"""The JSON API of ``runlens ui`` (documented in the README's "Web UI and API"):

    GET /api/jobs                      ?status=&name=&limit=&before=   a page of jobs, newest first
    GET /api/jobs/<id>                                                 the job, its figures and its state
    GET /api/jobs/<id>/analysis                                        the analysis (runlens analyze --json)
    GET /api/jobs/<id>/steps           ?since=&max_points=             steps, downsampled keeping peaks
    GET /api/jobs/<id>/samples         ?since=&max_points=             system samples, the same way
    GET /api/jobs/<id>/events          ?since=&limit=                  events, oldest first
    GET /api/compare                   ?jobs=a,b[,c...]                the comparison of runs

An unknown job is a 404 and a bad parameter a 400, both ``{"error": ..., "status": ...}``. Handlers are plain
functions: Starlette runs them in its thread pool, so a slow first analysis never blocks the other requests.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runlens.report.compare import MAX_RUNS
from runlens.store.store import JOB_STATUSES
from runlens.ui.analyses import dumps
from runlens.ui.params import get_choice, get_float, get_int, get_job_ids, get_text
from runlens.ui.series import DEFAULT_POINTS, MAX_POINTS, MIN_REQUEST_POINTS
from runlens.ui.views import DEFAULT_LIMIT, MAX_LIMIT

__all__ = ["JSONBody", "routes"]


class JSONBody(Response):
    """A JSON response from bytes already made, or from a value (NaN and numpy made plain first)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)


def _app(request: Request) -> Any:
    return request.app.state.runlens


def jobs(request: Request) -> JSONBody:
    q = request.query_params
    page = _app(request).views.job_page(
        limit=get_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), status=get_choice(q, "status", JOB_STATUSES),
        name=get_text(q, "name"), before=get_text(q, "before"))
    return JSONBody(page)


def job(request: Request) -> JSONBody:
    job_id = request.path_params["job_id"]
    body = _app(request).views.job(job_id)
    base = f"/api/jobs/{request.path_params['job_id']}"
    body["links"] = {"analysis": f"{base}/analysis", "steps": f"{base}/steps", "samples": f"{base}/samples",
                     "events": f"{base}/events", "page": f"/jobs/{job_id}"}
    return JSONBody(body)


def analysis(request: Request) -> JSONBody:
    return JSONBody(_app(request).analyses.json_bytes(request.path_params["job_id"]))


def _series(request: Request, kind: str) -> JSONBody:
    q = request.query_params
    since = get_float(q, "since")
    max_points = get_int(q, "max_points", DEFAULT_POINTS, MIN_REQUEST_POINTS, MAX_POINTS)
    return JSONBody(_app(request).series.read(kind, request.path_params["job_id"], since=since,
                                             max_points=max_points))


def steps(request: Request) -> JSONBody:
    return _series(request, "steps")


def samples(request: Request) -> JSONBody:
    return _series(request, "samples")


def events(request: Request) -> JSONBody:
    q = request.query_params
    since = get_float(q, "since")
    limit = get_int(q, "limit", 200, 1, 1000)
    job_id = request.path_params["job_id"]
    store = _app(request).store
    store.get_job(job_id)
    rows = store.events_since(job_id, since, limit)
    return JSONBody({"job_id": job_id, "since": since, "events": rows,
                     "last_timestamp": rows[-1]["timestamp"] if rows else since})


def compare(request: Request) -> JSONBody:
    ids = get_job_ids(request.query_params, "jobs", 2, MAX_RUNS)
    return JSONBody(_app(request).analyses.comparison(ids))


def routes() -> list[Route]:
    return [
        Route("/api/jobs", jobs),
        Route("/api/jobs/{job_id:str}", job),
        Route("/api/jobs/{job_id:str}/analysis", analysis),
        Route("/api/jobs/{job_id:str}/steps", steps),
        Route("/api/jobs/{job_id:str}/samples", samples),
        Route("/api/jobs/{job_id:str}/events", events),
        Route("/api/compare", compare),
    ]
