"""A job that is still running, seen to advance through the polling endpoints of a real ``runlens ui``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from ui_helpers import RUN_JOB, StartUi, clean_env  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow


def test_a_running_job_advances_through_the_polling_endpoints(tmp_path: Path, start_ui: StartUi,
                                                              wait_until: Callable[..., Any]) -> None:
    db = f"sqlite:///{tmp_path / 'runlens.db'}"
    stop = tmp_path / "stop"
    job = subprocess.Popen([sys.executable, str(RUN_JOB), "--name", "live", "--steps", "5", "--step-time", "0.05",
                            "--until", str(stop), "--db", db], cwd=tmp_path, env=clean_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / "runlens.db").exists(), timeout=60, message="the job's store")
        server = start_ui(db)
        jobs = wait_until(lambda: server.json("/api/jobs")["jobs"], timeout=60, message="the job to be listed")
        job_id = jobs[0]["job_id"]
        assert server.json(f"/api/jobs/{job_id}")["status"] == "running"
        since = None
        seen: list[int] = []

        def poll() -> bool:
            nonlocal since
            body = server.json(f"/api/jobs/{job_id}/steps" + (f"?since={since!r}" if since is not None else ""))
            assert all(s > max(seen, default=-1) for s in body["columns"].get("step", []))   # only new rows
            seen.extend(body["columns"].get("step", []))
            since = body["last_timestamp"]
            return len(seen) >= 40 and len(set(seen)) == len(seen)

        wait_until(poll, timeout=90, interval=0.2, message="40 steps seen through ?since=")
        assert seen == list(range(len(seen)))
        state = server.json(f"/api/jobs/{job_id}")["state"]
        assert state["state"] in ("RUNNING", "WARNING")
        stop.touch()
        assert job.wait(timeout=60) == 0, job.stderr.read() if job.stderr else ""
        done = wait_until(lambda: (j := server.json(f"/api/jobs/{job_id}"))["status"] == "succeeded" and j,
                          timeout=30, message="the job to end")
        assert done["state"]["state"] == "SUCCEEDED"
        rest = server.json(f"/api/jobs/{job_id}/steps?since={since!r}")
        assert seen + rest["columns"].get("step", []) == list(range(done["steps"]))
    finally:
        stop.touch()
        if job.poll() is None:
            job.kill()
        job.wait()
