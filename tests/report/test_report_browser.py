"""The report in a real browser: headless Chromium opens the file offline and finds nothing wrong.

These tests need /usr/bin/chromium (CI installs it) and the playwright package (test extra). Playwright drives
the system Chromium through ``executable_path``; ``playwright install`` (a browser download) is never needed.
"""

from __future__ import annotations

import copy
import importlib.util
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runlens.report.html import write_report

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<script>window.__pwned=1</script>"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium"),
]


def _load_sample_analysis() -> Callable[..., dict[str, Any]]:
    path = Path(__file__).resolve().parents[2] / "bench" / "make_sample_report.py"
    spec = importlib.util.spec_from_file_location("runlens_bench_make_sample_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sample_analysis  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    doc = copy.deepcopy(_load_sample_analysis()())
    doc["log_errors"][0]["message"] = XSS
    doc["log_errors"][0]["text"] = f"Traceback (most recent call last):\n{XSS}\n"
    doc["recommendations"][0]["title"] = f"Workers {XSS}"
    return write_report(doc, tmp_path_factory.mktemp("report") / "report.html")


class PageWatch:
    """Everything a page did that a self-contained report must not: requests, console errors, page errors."""

    def __init__(self, page: Any, file_url: str) -> None:
        self.file_url = file_url
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        # Belt and braces: even if something asked for the network, it would not get there.
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()


def _open(browser: Any, report_path: Path, **context_args: Any) -> tuple[Any, Any, PageWatch]:
    context = browser.new_context(**context_args)
    page = context.new_page()
    url = report_path.as_uri()
    watch = PageWatch(page, url)
    page.goto(url, wait_until="load")
    return context, page, watch


def test_opens_offline_without_errors_or_requests(browser: Any, report_path: Path) -> None:
    context, page, watch = _open(browser, report_path, viewport={"width": 1280, "height": 900})
    try:
        page.wait_for_timeout(200)  # let any late request (a favicon, a lazy image) show itself
        assert watch.requests == [watch.file_url]
        assert watch.blocked == []
        assert watch.console_errors == []
        assert watch.page_errors == []
    finally:
        context.close()


def test_script_in_a_log_line_is_shown_as_text(browser: Any, report_path: Path) -> None:
    context, page, watch = _open(browser, report_path)
    try:
        body = page.inner_text("body")
        assert XSS in body
        assert f"Workers {XSS}" in body
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("script").count() == 0
        assert watch.page_errors == []
    finally:
        context.close()


def test_traceback_is_collapsed_and_expands(browser: Any, report_path: Path) -> None:
    context, page, _ = _open(browser, report_path)
    try:
        first = page.locator("#log-errors details").first
        pre = first.locator("pre")
        assert not pre.is_visible()
        first.locator("summary").click()
        assert pre.is_visible()
        assert "Traceback (most recent call last):" in pre.inner_text()
    finally:
        context.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_full_page_screenshot_is_non_trivial(browser: Any, report_path: Path, tmp_path: Path) -> None:
    context, page, _ = _open(browser, report_path, viewport={"width": 1280, "height": 900})
    try:
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        data = shot.read_bytes()
        width, height = _png_size(data)
        assert width == 1280
        assert height > 3000  # every section laid out, not an error page
        assert len(data) > 100_000  # charts and text, not a blank canvas
        # The charts were laid out at a real size.
        box = page.locator("#memory svg.chart-svg").bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 150
    finally:
        context.close()


@pytest.mark.slow
def test_phone_viewport_has_no_horizontal_overflow(browser: Any, report_path: Path, tmp_path: Path) -> None:
    context, page, watch = _open(
        browser,
        report_path,
        viewport={"width": 375, "height": 800},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        widths = page.evaluate(
            "({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,"
            " inner: window.innerWidth})"
        )
        assert widths["inner"] == 375
        assert widths["doc"] <= 375, widths
        assert widths["body"] <= 375, widths
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        assert watch.page_errors == []
    finally:
        context.close()


def test_dark_mode_and_print_render(browser: Any, report_path: Path) -> None:
    context, page, watch = _open(browser, report_path, color_scheme="dark")
    try:
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        channels = [int(c) for c in background[background.index("(") + 1 : -1].split(",")[:3]]
        assert max(channels) < 80, background  # dark, not the light page
        page.emulate_media(media="print", color_scheme="light")
        pdf = page.pdf(format="A4", print_background=True)
        assert pdf[:5] == b"%PDF-" and len(pdf) > 50_000
        assert watch.requests == [watch.file_url]
    finally:
        context.close()


def test_the_watch_would_see_a_network_request(browser: Any, tmp_path: Path) -> None:
    """The no-request assertions above mean something: a page that does reach out is caught and blocked."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        '<!DOCTYPE html><link rel="icon" href="data:,"><img src="http://203.0.113.9/x.png">', encoding="utf-8"
    )
    context, page, watch = _open(browser, leaky)
    try:
        page.wait_for_timeout(200)
        assert watch.blocked == ["http://203.0.113.9/x.png"]
        assert "http://203.0.113.9/x.png" in watch.requests
    finally:
        context.close()
