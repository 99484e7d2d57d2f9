"""The Starlette application of ``runlens ui``: the pages, the API, and the errors as their callers expect them
(JSON for ``/api``, a page otherwise): an unknown job 404, a bad parameter 400, a store that stopped answering
503. Nothing here writes to the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from runlens.core.errors import BadParameter, JobNotFound, StoreUnavailable
from runlens.store.store import Store
from runlens.ui import api, pages
from runlens.ui.analyses import Analyses
from runlens.ui.guard import LOCAL_HOSTS, Guard
from runlens.ui.series import SeriesReader
from runlens.ui.views import JobViews

log = logging.getLogger(__name__)

__all__ = ["UiState", "create_app"]


@dataclass
class UiState:
    """What the handlers share: the store (opened read-only) and the caches in front of it."""

    store: Store
    views: JobViews
    analyses: Analyses
    series: SeriesReader


def create_app(store: Store, *, token: str | None = None, host: str = "127.0.0.1",
               clock: Callable[[], float] = time.time) -> Guard:
    """The app over ``store``, guarded: ``token`` required on every request when given; without one, only
    requests addressed to this machine (``host`` and the loopback names) are answered.

    Args:
        store: an open store; ``open_store(db, read_only=True)`` makes sure nothing can write through it.
        token: the shared secret (``--token``); None on loopback only.
        host: the address the server listens on, accepted in ``Host`` headers.
        clock: the wall clock job states are judged at (injected by tests).
    """
    app = Starlette(routes=[*api.routes(), *pages.routes()], exception_handlers={
        JobNotFound: _not_found, BadParameter: _bad_parameter, StoreUnavailable: _unavailable,
        HTTPException: _http_error,
    })
    app.state.runlens = UiState(store, JobViews(store, clock=clock), Analyses(store), SeriesReader(store))
    allowed = None if token else frozenset({*LOCAL_HOSTS, host.lower()})
    return Guard(app, token=token, allowed_hosts=allowed)


def _error(request: Request, status: int, title: str, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return api.JSONBody({"error": message, "status": status}, status_code=status)
    return pages.html_page(request, "ui/error.html", {"status": status, "title": title, "message": message}, status)


def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobNotFound)
    return _error(request, 404, "Not found", f"no job with id {exc.job_id!r} in this store")


def _bad_parameter(request: Request, exc: Exception) -> Response:
    return _error(request, 400, "Bad request", str(exc))


def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s", exc)
    return _error(request, 503, "Store unavailable", str(exc))


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = "Not found" if exc.status_code == 404 else "Error"
    return _error(request, exc.status_code, title, str(exc.detail))
