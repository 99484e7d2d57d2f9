"""Reading back what a real run left in a test's store (``<tmp_path>/runlens.db``), and writing the small child
scripts those runs execute. Shared by the collect, zero-code and import tests (importable because ``tests/`` is
on sys.path through its conftest.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from runlens.store import Store, open_store


def script(tmp_path: Path, body: str, name: str = "child.py") -> str:
    """``body`` (dedented) written as ``tmp_path/name``; returns its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def only_job(tmp_path: Path) -> tuple[Store, dict[str, Any]]:
    """The store and its one job (asserting there is exactly one); the caller closes the store."""
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    jobs = store.list_jobs()
    assert len(jobs) == 1, jobs
    return store, store.get_job(jobs[0]["job_id"])


def recorded_run(tmp_path: Path) -> dict[str, Any]:
    """The one job with its step and event rows."""
    store, job = only_job(tmp_path)
    try:
        jid = job["job_id"]
        return {"job": job, "steps": store.rows("step_metrics", jid), "events": store.rows("training_events", jid)}
    finally:
        store.close()
