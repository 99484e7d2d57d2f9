"""``runlens ui`` in a real browser: headless Chromium (Playwright, the system's /usr/bin/chromium, no download)
opens the list, a job page and a comparison with no console error and no request beyond the server; a log line
holding ``<script>`` is shown, not run; the live page updates while a job writes steps. A screenshot of each
is kept under ``tests/artifacts/ui/`` (ignored by git) and the test's tmp dir.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ui_helpers import RUN_JOB, Server, StartUi, UiJobs, clean_env  # type: ignore[import-not-found]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = "<script>window.__pwned=1</script>"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """What a page asked for and complained about; requests beyond the server are blocked and listed."""

    def __init__(self, page: Any, origin: str) -> None:
        self.origin = origin
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.origin):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def assert_clean(self) -> None:
        assert self.console_errors == [] and self.page_errors == []
        assert self.blocked == [] and all(u.startswith(self.origin) for u in self.requests), self.requests


def _open(browser: Any, server: Server, path: str) -> tuple[Any, Any, PageWatch]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = PageWatch(page, server.url.rstrip("/"))
    page.goto(server.url.rstrip("/") + path, wait_until="load")
    return context, page, watch


def _screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert shot.stat().st_size > 20_000   # laid out, not a blank page
    return shot


@pytest.fixture
def server(ui_jobs: UiJobs, start_ui: StartUi) -> Server:
    return start_ui(ui_jobs.db)


def test_the_list_renders_cleanly(browser: Any, server: Server, ui_jobs: UiJobs, tmp_path: Path) -> None:
    context, page, watch = _open(browser, server, "/")
    try:
        page.wait_for_timeout(200)   # any late request (an icon) shows itself
        rows = page.locator("#jobs-table tbody tr")
        assert rows.count() == 3
        assert "alpha" in page.inner_text("#jobs-table")
        _screenshot(page, "ui-jobs", tmp_path)
        page.fill("input[name=name]", "bet")
        page.click("button[type=submit] >> text=Filter")
        page.wait_for_load_state("load")
        assert page.locator("#jobs-table tbody tr").count() == 1
        watch.assert_clean()
    finally:
        context.close()


def test_a_job_page_renders_the_report_cleanly(browser: Any, server: Server, ui_jobs: UiJobs,
                                               tmp_path: Path) -> None:
    context, page, watch = _open(browser, server, f"/jobs/{ui_jobs.ids['alpha']}")
    try:
        page.wait_for_timeout(200)
        for section in ("#summary", "#recommendations", "#memory", "#training", "#log-errors", "#environment"):
            assert page.locator(section).is_visible(), section
        box = page.locator("#memory svg.chart-svg").bounding_box()
        assert box is not None and box["width"] > 600
        _screenshot(page, "ui-job", tmp_path)
        watch.assert_clean()
    finally:
        context.close()


def test_script_in_log_text_is_shown_not_run(browser: Any, server: Server, ui_jobs: UiJobs) -> None:
    context, page, watch = _open(browser, server, f"/jobs/{ui_jobs.ids['beta']}")
    try:
        assert XSS in page.inner_text("#log-errors")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("script").count() == 0   # a finished job's page runs no script at all
        watch.assert_clean()
    finally:
        context.close()


def test_the_comparison_renders_cleanly(browser: Any, server: Server, ui_jobs: UiJobs, tmp_path: Path) -> None:
    context, page, watch = _open(browser, server, "/")
    try:
        page.check(f"input[value='{ui_jobs.ids['alpha']}']")
        page.check(f"input[value='{ui_jobs.ids['beta']}']")
        page.click("text=Compare selected")
        page.wait_for_load_state("load")
        assert "/compare?" in page.url
        assert page.locator("#config-table").inner_text().count("optimizer.lr") == 1
        assert page.locator("#curves svg.chart-svg").count() >= 3
        _screenshot(page, "ui-compare", tmp_path)
        watch.assert_clean()
    finally:
        context.close()


def test_the_live_page_updates_while_the_job_writes_steps(browser: Any, tmp_path: Path, start_ui: StartUi,
                                                          wait_until: Callable[..., Any]) -> None:
    db = f"sqlite:///{tmp_path / 'runlens.db'}"
    stop = tmp_path / "stop"
    job = subprocess.Popen([sys.executable, str(RUN_JOB), "--name", "live", "--steps", "5", "--step-time", "0.05",
                            "--until", str(stop), "--db", db], cwd=tmp_path, env=clean_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (tmp_path / "runlens.db").exists(), timeout=60, message="the job's store")
        server = start_ui(db)
        jobs = wait_until(lambda: server.json("/api/jobs")["jobs"], timeout=60, message="the job to be listed")
        wait_until(lambda: server.json(f"/api/jobs/{jobs[0]['job_id']}")["steps"], timeout=60)
        context, page, watch = _open(browser, server, f"/jobs/{jobs[0]['job_id']}")
        try:
            def shown_step() -> int:
                text = page.inner_text("#live-step").replace(",", "").strip()
                return int(text) if text.isdigit() else -1

            first = wait_until(lambda: shown_step() >= 0 and shown_step(), timeout=30, interval=0.1,
                               message="the live panel's first update")
            wait_until(lambda: shown_step() >= first + 20, timeout=60, interval=0.1,
                       message="the live panel to show newer steps")
            assert int(page.inner_text("#live-points")) > 0
            assert page.get_attribute("#live-path", "d")
            assert "updated" in page.inner_text("#live-updated")
            _screenshot(page, "ui-live", tmp_path)
            stop.touch()
            wait_until(lambda: "has ended" in page.inner_text("#live-note"), timeout=60, interval=0.1,
                       message="the page to see the job end")
            watch.assert_clean()
        finally:
            context.close()
    finally:
        stop.touch()
        if job.poll() is None:
            job.kill()
        job.wait()
