"""The JSON API of ``runlens ui`` against a real server process over a real SQLite store with real jobs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator
import pytest

from runlens.store import open_store
from runlens.store.frames import latest_analysis
from runlens.store.series import read_series

from ui_helpers import Server, StartUi, UiJobs, UiServers, clean_env, file_state, free_port, poll_until  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ids(ui_jobs: UiJobs) -> dict[str, str]:
    return ui_jobs.ids


@pytest.fixture(scope="module")
def server(ui_jobs: UiJobs) -> Iterator[Server]:
    """One server for the module's read-only tests (tests that need their own start one with ``start_ui``)."""
    servers = UiServers(poll_until)
    try:
        yield servers.start(ui_jobs.db)
    finally:
        servers.close()


def test_job_list_is_newest_first_with_state_health_and_figures(server: Server, ids: dict[str, str]) -> None:
    page = server.json("/api/jobs")
    assert [j["name"] for j in page["jobs"]] == ["gamma", "beta", "alpha"]
    assert page["next_before"] is None
    by_name = {j["name"]: j for j in page["jobs"]}
    assert by_name["alpha"]["health"] in ("good", "warning", "critical")   # analysed: its stored health
    assert by_name["beta"]["health"] is None                              # never analysed
    for j in page["jobs"]:
        assert j["status"] == "succeeded" and j["state"] == "SUCCEEDED"
        assert j["steps"] > 0 and j["duration_seconds"] is not None and j["peak_memory_gb"] is not None


def test_list_filters_by_name_and_status_and_pages_with_before(server: Server, ids: dict[str, str]) -> None:
    assert [j["name"] for j in server.json("/api/jobs?name=ALP")["jobs"]] == ["alpha"]
    assert server.json("/api/jobs?status=failed")["jobs"] == []
    assert len(server.json("/api/jobs?status=succeeded")["jobs"]) == 3
    seen = []
    before = None
    while True:
        page = server.json("/api/jobs?limit=1" + (f"&before={before}" if before else ""))
        seen += [j["name"] for j in page["jobs"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == ["gamma", "beta", "alpha"]


def test_job_shows_the_row_figures_state_and_links(server: Server, ids: dict[str, str]) -> None:
    job = server.json(f"/api/jobs/{ids['alpha']}")
    assert job["job_id"] == ids["alpha"] and job["name"] == "alpha"
    assert job["config"]["optimizer"]["lr"] == 0.001
    assert job["state"]["state"] == "SUCCEEDED" and job["health"] is not None
    assert job["links"]["analysis"] == f"/api/jobs/{ids['alpha']}/analysis"
    assert job["steps"] == 80


def test_analysis_is_the_stored_one_or_a_fresh_one_that_is_not_stored(server: Server, ui_jobs: UiJobs,
                                                                       ids: dict[str, str]) -> None:
    store = open_store(ui_jobs.db, read_only=True)
    stored = latest_analysis(store, ids["alpha"])
    assert server.json(f"/api/jobs/{ids['alpha']}/analysis") == stored
    fresh = server.json(f"/api/jobs/{ids['beta']}/analysis")
    assert fresh["job"]["job_id"] == ids["beta"] and fresh["summary"]["steps_completed"] == 80
    assert {"summary", "recommendations", "log_errors", "metrics_timeline"} <= set(fresh)
    assert latest_analysis(store, ids["beta"]) is None   # the app never writes


def test_analysis_has_the_contract_of_runlens_analyze_json(server: Server, ui_jobs: UiJobs,
                                                           ids: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "runlens", "analyze", ids["gamma"], "--db", ui_jobs.db, "--json",
                          "--no-html"], env=clean_env(), capture_output=True, text=True, cwd=ui_jobs.folder)
    # (runs against the module's store: this stores gamma's analysis, which the server then serves)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    api = server.json(f"/api/jobs/{ids['gamma']}/analysis")
    assert api == cli


def test_steps_and_samples_are_downsampled_keeping_peaks(server: Server, ui_jobs: UiJobs,
                                                         ids: dict[str, str]) -> None:
    whole = server.json(f"/api/jobs/{ids['alpha']}/steps")
    assert whole["count"] == 80 and whole["returned"] == 80 and not whole["downsampled"]
    assert whole["columns"]["step"] == list(range(80))
    cut = server.json(f"/api/jobs/{ids['alpha']}/steps?max_points=64")
    assert cut["returned"] <= 64 and cut["downsampled"]
    assert max(cut["columns"]["loss"]) == max(whole["columns"]["loss"])   # the mid-run spike survives
    assert cut["columns"]["step"][0] == 0 and cut["columns"]["step"][-1] == 79
    samples = server.json(f"/api/jobs/{ids['alpha']}/samples")
    store = open_store(ui_jobs.db, read_only=True)
    raw = read_series(store, "samples", ids["alpha"])
    assert samples["count"] == len(raw["timestamp"]) > 0
    assert max(samples["columns"]["used_memory_gb"]) == pytest.approx(float(raw["used_memory_gb"].max()))


def test_since_returns_only_rows_after_it(server: Server, ids: dict[str, str]) -> None:
    whole = server.json(f"/api/jobs/{ids['alpha']}/steps")
    ts = whole["columns"]["timestamp"]
    later = server.json(f"/api/jobs/{ids['alpha']}/steps?since={ts[69]!r}")
    assert later["columns"]["step"] == list(range(70, 80))
    assert later["last_timestamp"] == ts[-1]
    none = server.json(f"/api/jobs/{ids['alpha']}/steps?since={ts[-1]!r}")
    assert none["count"] == 0 and none["last_timestamp"] == ts[-1]
    events = server.json(f"/api/jobs/{ids['alpha']}/events")["events"]
    assert events and {"start", "end"} <= {e["event_type"] for e in events}
    after = server.json(f"/api/jobs/{ids['alpha']}/events?since={events[-1]['timestamp']!r}")
    assert after["events"] == []


def test_compare_puts_config_differences_beside_results(server: Server, ids: dict[str, str]) -> None:
    doc = server.json(f"/api/compare?jobs={ids['alpha']},{ids['beta']}")
    assert [r["label"] for r in doc["runs"]] == ["A", "B"]
    diffs = {d["path"]: d["values"] for d in doc["config"]["differences"]}
    assert diffs == {"optimizer.lr": [0.001, 0.0003], "batch_size": [8, 16]}
    keys = {m["key"] for m in doc["metrics"]}
    assert {"peak_memory_gb", "median_step_seconds", "goodput", "final_loss", "health"} <= keys
    assert all(len(c) == 2 for c in doc["curves"].values())
    assert server.json(f"/api/compare?jobs={ids['alpha']}&jobs={ids['beta']}")["runs"] == doc["runs"]


@pytest.mark.parametrize("path, status", [
    ("/api/jobs/no-such-job", 404),
    ("/api/jobs/no-such-job/analysis", 404),
    ("/api/jobs/no-such-job/steps", 404),
    ("/api/jobs/no-such-job/samples", 404),
    ("/api/jobs/no-such-job/events", 404),
    ("/api/jobs?before=no-such-job", 404),
    ("/api/nothing-here", 404),
    ("/api/jobs?limit=0", 400),
    ("/api/jobs?limit=many", 400),
    ("/api/jobs?status=exploded", 400),
    ("/api/jobs?limit=1&limit=2", 400),
    ("/api/jobs/{alpha}/steps?since=yesterday", 400),
    ("/api/jobs/{alpha}/steps?since=nan", 400),
    ("/api/jobs/{alpha}/samples?max_points=3", 400),
    ("/api/compare?jobs={alpha}", 400),
    ("/api/compare", 400),
    ("/api/compare?jobs={alpha},no-such-job", 404),
])
def test_errors_are_json_with_their_status(server: Server, ids: dict[str, str], path: str, status: int) -> None:
    body = server.json(path.format(**ids), status=status)
    assert body["status"] == status and body["error"]


def test_pages_render_and_unknown_jobs_are_404_pages(server: Server, ids: dict[str, str]) -> None:
    for path in ("/", f"/jobs/{ids['alpha']}", f"/jobs/{ids['beta']}", f"/compare?jobs={ids['alpha']},{ids['beta']}",
                 "/?name=alpha&status=succeeded&limit=2"):
        status, headers, body = server.get(path)
        assert status == 200, (path, body[:300])
        assert headers["content-type"].startswith("text/html")
        assert "script-src 'nonce-" in headers["content-security-policy"]
    status, _, body = server.get("/jobs/no-such-job")
    assert status == 404 and b"no-such-job" in body
    status, _, _ = server.get("/?limit=-1")
    assert status == 400


def test_apply_recommended_settings_downloads_the_tuned_config(server: Server, ui_jobs: UiJobs,
                                                               ids: dict[str, str]) -> None:
    status, headers, body = server.get(f"/jobs/{ids['alpha']}/tuned-config")
    assert status == 200, body[:300]
    assert headers["content-disposition"] == f'attachment; filename="{ids["alpha"]}-tuned.yaml"'
    assert headers["x-runlens-source"] == "file"
    text = body.decode()
    assert "optimizer:" in text and "name: adamw" in text     # the job's own file, keys kept
    status, _, _ = server.get("/jobs/no-such-job/tuned-config")
    assert status == 404


def _digest(path: Path) -> tuple[str, int]:
    data, mtime = file_state(path)
    return hashlib.sha256(data).hexdigest(), mtime


def test_the_store_is_never_written(ui_jobs: UiJobs, start_ui: StartUi, ids: dict[str, str],
                                    tmp_path: Path) -> None:
    """Every endpoint exercised; the database file's bytes and mtime are as before, and it refuses writes."""
    db_file = ui_jobs.folder / "runlens.db"
    before = _digest(db_file)
    rows_before = sqlite3.connect(db_file).execute("SELECT count(*) FROM analysis_reports").fetchone()
    server = start_ui(ui_jobs.db)
    a, b, g = ids["alpha"], ids["beta"], ids["gamma"]
    for path in ("/", f"/jobs/{a}", f"/jobs/{b}", f"/jobs/{g}", f"/jobs/{a}/tuned-config",
                 f"/compare?jobs={a},{b},{g}", "/api/jobs", f"/api/jobs/{b}", f"/api/jobs/{b}/analysis",
                 f"/api/jobs/{b}/steps", f"/api/jobs/{b}/samples", f"/api/jobs/{b}/events",
                 f"/api/compare?jobs={a},{b}", "/api/jobs/no-such-job", "/api/jobs?limit=0"):
        server.get(path)
    assert _digest(db_file) == before
    assert sqlite3.connect(db_file).execute("SELECT count(*) FROM analysis_reports").fetchone() == rows_before
    store = open_store(ui_jobs.db, read_only=True)
    with pytest.raises(Exception, match="readonly|read-only|read only"):
        store.update_job(a, name="renamed")


def test_a_store_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "runlens", "ui", "--db", str(tmp_path / "missing.db"),
                          "--port", str(free_port())], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "missing.db" in out.stderr
    assert not (tmp_path / "missing.db").exists()


def test_binding_beyond_localhost_needs_a_token(ui_jobs: UiJobs) -> None:
    out = subprocess.run([sys.executable, "-m", "runlens", "ui", "--db", ui_jobs.db, "--host", "0.0.0.0",
                          "--port", str(free_port())], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--token" in out.stderr


TOKEN = "s3cret-token-for-the-test-0123456789"


def test_the_token_is_checked_on_every_request(ui_jobs: UiJobs, start_ui: StartUi, ids: dict[str, str]) -> None:
    server = start_ui(ui_jobs.db, "--token", TOKEN, host="0.0.0.0", connect="127.0.0.1")
    for path in ("/", "/api/jobs", f"/api/jobs/{ids['alpha']}/analysis", f"/jobs/{ids['alpha']}",
                 "/api/jobs/no-such-job"):
        status, headers, body = server.get(path)
        assert status == 401, path
        assert json.loads(body)["status"] == 401 and "bearer" in headers["www-authenticate"].lower()
        assert server.get(path, {"Authorization": "Bearer wrong-" + TOKEN})[0] == 401
    assert server.json("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})["jobs"]
    status, headers, _ = server.get(f"/?token={TOKEN}")
    assert status == 200 and "runlens_token=" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";")[0]
    assert server.get("/api/jobs", {"Cookie": cookie})[0] == 200
    assert server.get("/api/jobs", {"Cookie": "runlens_token=wrong"})[0] == 401


def test_without_a_token_only_requests_to_this_machine_are_answered(server: Server) -> None:
    assert server.get("/api/jobs", {"Host": "attacker.example:8765"})[0] == 403
    assert server.get("/api/jobs", {"Host": "localhost:8765"})[0] == 200

