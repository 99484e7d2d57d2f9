"""``runlens ui`` over PostgreSQL: the same endpoints against the server CI starts (``pg_url``), read-only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runlens.store import open_store

from ui_helpers import RUN_JOB, StartUi, clean_env, runlens_cli  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow


def test_every_endpoint_over_postgresql(pg_url: str, tmp_path: Path, start_ui: StartUi) -> None:
    (tmp_path / "a.yaml").write_text("lr: 0.001\nbatch_size: 8\n")
    (tmp_path / "b.yaml").write_text("lr: 0.01\nbatch_size: 8\n")
    for name in ("a", "b"):
        out = subprocess.run([sys.executable, str(RUN_JOB), "--name", name, "--steps", "50", "--db", pg_url,
                              "--config", f"{name}.yaml"], cwd=tmp_path, env=clean_env(), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    server = start_ui(pg_url)
    jobs = server.json("/api/jobs")["jobs"]
    assert [j["name"] for j in jobs] == ["b", "a"] and all(j["steps"] == 50 for j in jobs)
    b, a = (j["job_id"] for j in jobs)
    runlens_cli("analyze", a, "--db", pg_url, "--no-html", cwd=tmp_path)
    assert server.json("/api/jobs?status=succeeded&name=a")["jobs"][0]["health"] is not None
    assert server.json(f"/api/jobs/{a}")["config"] == {"lr": 0.001, "batch_size": 8}
    assert server.json(f"/api/jobs/{b}/analysis")["summary"]["steps_completed"] == 50
    steps = server.json(f"/api/jobs/{a}/steps?max_points=64")
    assert steps["count"] == 50 and steps["returned"] == 50
    assert server.json(f"/api/jobs/{a}/samples")["count"] >= 1
    assert server.json(f"/api/jobs/{a}/events")["events"]
    doc = server.json(f"/api/compare?jobs={a},{b}")
    assert [d["path"] for d in doc["config"]["differences"]] == ["lr"]
    for path in ("/", f"/jobs/{a}", f"/jobs/{b}", f"/compare?jobs={a},{b}"):
        assert server.get(path)[0] == 200, path
    assert server.json("/api/jobs/no-such-job", status=404)["status"] == 404
    assert server.json("/api/jobs?limit=x", status=400)["status"] == 400
    # Nothing was stored by the app: b still has no analysis, and its sessions refuse writes.
    store = open_store(pg_url, read_only=True)
    assert store.latest_analysis_id(b) is None
    with pytest.raises(Exception, match="read-only"):
        store.update_job(b, name="renamed")
