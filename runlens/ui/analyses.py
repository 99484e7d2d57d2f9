"""A job's analysis as the app serves it, made at most once per state of the job.

The same rule as ``runlens recommend``: a finished job's newest stored analysis, else (a running job, or one
never analysed) an analysis made now and not stored, with the ``runlens analyze --json`` contract. Making one
reads every row of the job (seconds for a million steps), so each is kept, keyed by what would make it stale:
the stored analysis's id, or the job's newest step, sample and event. A running job's fresh analysis is
reused for ``FRESH_SECONDS`` whatever it wrote meanwhile: the live panel shows the newest steps, and the
analysis need not be remade on every poll of a run that writes every second.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Hashable

from runlens.analyze.analysis import json_safe
from runlens.report.compare import compare_runs, gather_runs
from runlens.report.context import build_context
from runlens.report.job import analyze_job
from runlens.store.frames import latest_analysis
from runlens.store.store import Store
from runlens.ui.cache import Memo

__all__ = ["FRESH_SECONDS", "Analyses"]

FRESH_SECONDS = 10.0


class Analyses:
    """Analyses, report contexts and comparisons of ``store``'s jobs, kept between requests."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic, size: int = 32) -> None:
        self.store = store
        self.clock = clock
        self._docs = Memo(size)
        self._contexts = Memo(size)
        self._json = Memo(size)
        self._compare = Memo(size)
        self._running: dict[str, tuple[float, Hashable]] = {}
        self._lock = threading.Lock()

    def key(self, job_id: str) -> Hashable:
        """What identifies the job's current analysis (see the module docstring).

        Raises:
            JobNotFound, StoreUnavailable.
        """
        job = self.store.get_job(job_id)
        if job.get("status") != "running":
            stored = self.store.latest_analysis_id(job_id)
            if stored is not None:
                return ("stored", job_id, stored)
            return ("fresh", job_id, job.get("status"), self.store.data_marker(job_id))
        now = self.clock()
        with self._lock:
            recent = self._running.get(job_id)
            if recent is not None and now - recent[0] < FRESH_SECONDS and self._docs.peek(recent[1]) is not None:
                return recent[1]
        key = ("fresh", job_id, "running", self.store.data_marker(job_id))
        with self._lock:
            if recent is None or recent[1] != key:
                self._running[job_id] = (now, key)
        return key

    def document(self, job_id: str) -> tuple[Hashable, dict[str, Any]]:
        """``(key, analysis document)`` of the job's current analysis."""
        key = self.key(job_id)
        return key, self._docs.get(key, lambda: self._make(key, job_id))

    def document_only(self, store: Store, job_id: str) -> dict[str, Any]:
        """The document alone, in the shape ``runlens.report.compare.gather_runs`` asks for."""
        return self.document(job_id)[1]

    def _make(self, key: Hashable, job_id: str) -> dict[str, Any]:
        if isinstance(key, tuple) and key[0] == "stored":
            doc = latest_analysis(self.store, job_id)
            if doc is not None:
                return doc
        return analyze_job(self.store, job_id, save=False, write_html=False).analysis

    def json_bytes(self, job_id: str) -> bytes:
        """The document as the API sends it (made once per analysis: a big run's document is megabytes)."""
        key, doc = self.document(job_id)
        return self._json.get(key, lambda: dumps(doc))

    def context(self, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(document, report context)``: the context (charts drawn) is the costly half of a page."""
        key, doc = self.document(job_id)
        return doc, self._contexts.get(key, lambda: build_context(doc))

    def comparison(self, job_ids: Sequence[str]) -> dict[str, Any]:
        """The comparison document of these jobs (runlens.report.compare), kept while none of them changes."""
        keys = tuple(self.key(j) for j in job_ids)
        return self._compare.get(keys, lambda: compare_runs(gather_runs(self.store, job_ids, self.document_only)))


def dumps(doc: Mapping[str, Any] | list[Any]) -> bytes:
    """Compact JSON; a value that is not plain JSON (NaN, numpy) is made so rather than failing."""
    try:
        text = json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = json.dumps(json_safe(doc), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")
