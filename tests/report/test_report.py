"""The HTML report: renders full and partial documents, escapes everything, stays small and self-contained."""

from __future__ import annotations

import copy
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest

from runlens.analyze.contract import SCHEMA_VERSION
from runlens.report import charts_memory, charts_training, svg
from runlens.report.context import build_context
from runlens.report.formatting import (
    MAX_LOG_ERRORS,
    fmt_duration,
    fmt_gb,
    fmt_pct,
    fmt_timestamp,
    fmt_value,
    severity_class,
)
from runlens.report.html import make_environment, render_report, write_report

XSS = "<script>window.__pwned=1</script>"
SECTION_ORDER = [
    "summary",
    "recommendations",
    "memory",
    "training",
    "log-errors",
    "hangs",
    "monitoring-cost",
    "environment",
]


def _load_sample_analysis() -> Callable[..., dict[str, Any]]:
    """The realistic document from bench/make_sample_report.py: the tests check what the lead looks at."""
    path = Path(__file__).resolve().parents[2] / "bench" / "make_sample_report.py"
    spec = importlib.util.spec_from_file_location("runlens_bench_make_sample_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sample_analysis  # type: ignore[no-any-return]


sample_analysis = _load_sample_analysis()


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    return sample_analysis()


@pytest.fixture(scope="module")
def full_html(full: dict[str, Any]) -> str:
    return render_report(full)


# --------------------------------------------------------------------------------------------------- content


def test_full_report_has_every_section_in_order(full_html: str) -> None:
    positions = [full_html.index(f'id="{section}"') for section in SECTION_ORDER]
    assert positions == sorted(positions)
    assert full_html.index("<header") < positions[0] < full_html.index("<footer")


def test_header_names_the_job(full_html: str) -> None:
    assert "<h1>llama-7b-sft</h1>" in full_html
    assert "20260101-100000-llama7b-sft-3f9c" in full_html
    assert 'class="pill tone-critical">failed</span>' in full_html
    assert "<title>llama-7b-sft · runlens report</title>" in full_html


def test_summary_card_shows_health_peak_and_completion(full_html: str) -> None:
    summary = full_html[full_html.index('id="summary"') : full_html.index('id="recommendations"')]
    assert "health-critical" in summary
    assert "Critical" in summary
    assert "119.2 / 120.0 GiB <small>(99%)</small>" in summary
    assert "Failed at step 8,120" in summary
    assert "76%" in summary  # goodput
    assert 'class="stack"' in summary and "gp-data_wait" in summary


def test_recommendation_cards_show_change_and_impact(full_html: str) -> None:
    recs = full_html[full_html.index('id="recommendations"') : full_html.index('id="memory"')]
    assert recs.count('<article class="rec') == 4
    assert '<code class="path">config.process[0].datasets[0].num_workers</code>' in recs
    assert '<code class="cur" title="current value">8</code>' in recs
    assert '<code class="new" title="recommended value">4</code>' in recs
    assert "not set (default 2)" in recs
    assert "Saves ~29 GiB at peak" in recs
    assert "Primary fix" in recs
    # Ranked order is kept.
    assert recs.index("memory.workers") < recs.index("memory.prefetch") < recs.index("throughput.data_wait")
    assert 'href="#rec-memory.prefetch"' in recs and 'id="rec-memory.prefetch"' in recs


def test_charts_are_inline_svg(full_html: str) -> None:
    memory = full_html[full_html.index('id="memory"') : full_html.index('id="training"')]
    assert memory.count("<svg") >= 1 and 'viewBox="0 0 920 320"' in memory
    assert "zone-warning" in memory and "zone-critical" in memory
    assert "OOM killer: worker pid 48213" in memory  # event tooltip/label
    assert "peak 119.2 GiB" in memory
    training = full_html[full_html.index('id="training"') : full_html.index('id="log-errors"')]
    for title in ("Loss", "Learning rate", "Gradient norm", "Step time"):
        assert f"<h3>{title}</h3>" in training
    assert training.count('class="chart-svg chart-small"') == 4


def test_log_errors_have_collapsed_tracebacks(full_html: str) -> None:
    errors = full_html[full_html.index('id="log-errors"') : full_html.index('id="hangs"')]
    assert "<details><summary>" in errors
    assert "DataLoader worker (pid 48213) is killed by signal: Killed." in errors
    assert "Traceback (most recent call last):" in errors


def test_footer_names_versions(full_html: str) -> None:
    footer = full_html[full_html.index("<footer") :]
    assert f"schema v{SCHEMA_VERSION}" in footer
    assert "runlens" in footer


# --------------------------------------------------------------------------------------------------- partial


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"summary": {}, "job": {}, "metrics_timeline": {}},
        {"schema_version": 1, "summary": {"health_score": "good"}},
        {
            "summary": {
                "goodput": {"ratio": None, "productive_seconds": 0, "wall_seconds": 0, "lost_seconds": {}}
            }
        },
    ],
    ids=["empty", "empty-parts", "health-only", "zero-goodput"],
)
def test_minimal_documents_render_without_undefined(document: dict[str, Any]) -> None:
    html = render_report(document)
    assert "No memory samples recorded" in html
    assert "No recommendations" in html
    assert "No hangs detected." in html
    assert "No errors or warnings found in the log." in html


def test_every_value_null_renders(full: dict[str, Any]) -> None:
    """Any value may be null: the contract says so, and the report must not fall over on it."""
    doc = copy.deepcopy(full)

    def nullify(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: None for k in node}
        return node

    doc["summary"] = nullify(doc["summary"])
    doc["job"] = nullify(doc["job"])
    doc["environment"] = nullify(doc["environment"])
    doc["recommendations"] = [nullify(r) for r in doc["recommendations"]]
    doc["log_errors"] = [nullify(e) for e in doc["log_errors"][:3]]
    doc["hangs"] = [nullify(h) for h in doc["hangs"]]
    doc["monitoring_cost"] = [nullify(m) for m in doc["monitoring_cost"]]
    doc["metrics_timeline"] = nullify(doc["metrics_timeline"])
    html = render_report(doc)
    assert "Unknown" in html  # the health badge
    html2 = render_report({k: None for k in full})
    assert "Unnamed run" in html2


def test_wrong_types_do_not_crash() -> None:
    doc = {
        "summary": {"peak_memory_gb": "lots", "goodput": [], "steps_completed": "7"},
        "recommendations": ["not a dict", {"title": "ok", "severity": "bogus"}],
        "log_errors": {"not": "a list"},
        "metrics_timeline": {
            "memory": {"system_used_gb": {"x": [1, "2", None], "y": ["a", 2.0, 3.0]}},
            "events": [{"timestamp": "soon"}],
        },
        "environment": {"gpus": "none"},
    }
    html = render_report(doc)
    assert "sev-info" in html


def test_running_job_completion_text() -> None:
    ctx = build_context({"summary": {"status": "running", "last_step": 40, "training_completed": False}})
    assert ctx["summary"]["completion"] == "running, at step 40"
    ctx = build_context({"summary": {"training_completed": True, "steps_completed": 1234}})
    assert ctx["summary"]["completion"] == "1,234 steps, completed"
    ctx = build_context({"summary": {"status": "failed", "last_step": 812}})
    assert ctx["summary"]["completion"] == "failed at step 812"


# --------------------------------------------------------------------------------------------------- escaping


def _hostile(full: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(full)
    doc["job"]["name"] = '<img src=x onerror="window.__pwned=1">'
    doc["job"]["argv"] = ["python", XSS]
    doc["job"]["config"]["config"]["name"] = XSS
    doc["log_errors"][0]["message"] = XSS
    doc["log_errors"][0]["text"] = f"Traceback\n{XSS}\n"
    doc["log_errors"][1]["category"] = "<b>cat</b>"
    doc["log_errors"][1]["details"] = {"<k>": "<v>"}
    rec = doc["recommendations"][0]
    rec["title"] = XSS
    rec["action"] = "<iframe src=//evil>"
    rec["current_value"] = XSS
    rec["recommended_value"] = {"x": XSS}
    rec["config_path"] = 'a["<script>"]'
    rec["evidence"] = {"<script>": XSS}
    rec["alternatives"] = ['"><script>alert(1)</script>']
    doc["environment"]["host"] = XSS
    doc["environment"][XSS] = "key is hostile"
    doc["hangs"][0]["stacks"] = XSS
    doc["hangs"][0]["cause"] = XSS
    doc["monitoring_cost"][0]["operation"] = XSS
    timeline = doc["metrics_timeline"]
    timeline["events"][0]["label"] = XSS
    timeline["events"][1]["type"] = XSS
    timeline["memory"]["</svg><script>x=1</script>"] = {"x": [timeline["start_time"]], "y": [1.0]}
    doc["summary"]["status_reason"] = XSS
    return doc


def test_hostile_text_is_escaped_everywhere(full: dict[str, Any]) -> None:
    html = render_report(_hostile(full))
    # The report has no script of its own, so any "<script" would be an injection.
    assert "<script" not in html.lower()
    assert "<iframe" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html
    assert "&lt;/svg&gt;&lt;script&gt;x=1&lt;/script&gt;" in html
    assert "<b>cat</b>" not in html


def test_charts_are_well_formed_xml_with_hostile_labels(full: dict[str, Any]) -> None:
    """Parsing as XML proves every label was escaped (an unescaped '<' or '&' breaks the parse)."""
    ctx = build_context(_hostile(full))
    figures = [ctx["memory_chart"]] + [fig for _, fig in ctx["training_charts"]]
    for figure in figures:
        root = ET.fromstring(str(figure))
        assert root.tag == "figure"
        svg = root.find(".//{http://www.w3.org/2000/svg}svg")
        assert svg is not None
        assert svg.get("width") == "100%" and svg.get("viewBox", "").startswith("0 0 ")


def test_environment_is_forced_to_escape_and_strict() -> None:
    env = make_environment()
    assert env.autoescape is True
    assert env.undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing_key }}").render()
    assert env.from_string("{{ v }}").render(v="<b>") == "&lt;b&gt;"
    for name in ("gb", "duration", "minutes", "pct", "ts", "num", "severity_class", "health_class", "value"):
        assert name in env.filters


# ------------------------------------------------------------------------------------------- self-contained


def test_report_makes_no_external_reference(full_html: str) -> None:
    # The only URL allowed is the SVG namespace, which is an identifier, never fetched.
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", full_html))
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", full_html, re.IGNORECASE)
    assert not re.search(r"url\(\s*(?!#)", full_html)  # CSS/SVG url() only for in-page clip paths
    assert "@import" not in full_html and "@font-face" not in full_html
    assert "<script" not in full_html.lower() and '<link rel="stylesheet"' not in full_html


# --------------------------------------------------------------------------------------------------- size


def test_big_run_report_is_under_two_megabytes() -> None:
    """1,000,000 steps and 100,000 samples, downsampled as the analyzer does, plus 2,000 log findings."""
    doc = sample_analysis(steps=1_000_000, samples=100_000, errors=2_000)
    html = render_report(doc)
    assert len(html.encode("utf-8")) < 2_000_000


def test_charts_defend_themselves_against_raw_series() -> None:
    """An analyzer that forgot to downsample must not produce a huge report."""
    doc = sample_analysis(steps=200_000, samples=50_000, errors=10, max_points=None)
    ctx = build_context(doc)
    for figure in [ctx["memory_chart"]] + [fig for _, fig in ctx["training_charts"]]:
        assert len(str(figure)) < 300_000
    assert len(render_report(doc).encode("utf-8")) < 2_000_000


def test_log_errors_are_capped_and_counted() -> None:
    doc = sample_analysis(errors=2_000)
    html = render_report(doc)
    section = html[html.index('id="log-errors"') : html.index('id="hangs"')]
    assert section.count('<td class="nowrap">') == MAX_LOG_ERRORS
    assert "Showing the first 200 of 2,000; 1,800 more" in section


def test_long_texts_are_clipped() -> None:
    doc = {
        "log_errors": [{"message": "boom", "text": "frame\n" * 50_000 + "ValueError: the real cause"}],
        "hangs": [{"stacks": "x" * 1_000_000}],
        "job": {"config": {"blob": "y" * 1_000_000}},
    }
    html = render_report(doc)
    assert len(html) < 250_000
    assert "ValueError: the real cause" in html  # the tail of a traceback is kept
    assert "characters omitted" in html


# --------------------------------------------------------------------------------------------------- writing


def test_write_report_writes_utf8_atomically(tmp_path: Path, full: dict[str, Any]) -> None:
    target = tmp_path / "nested" / "dir" / "report.html"
    written = write_report(full, target)
    assert written == target.resolve()
    text = written.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "→" in text
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left behind


def test_write_report_keeps_old_file_when_rendering_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report", encoding="utf-8")

    def boom(_: Any) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr("runlens.report.html.render_report", boom)
    with pytest.raises(RuntimeError):
        write_report({}, target)
    assert target.read_text(encoding="utf-8") == "old report"


# --------------------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (119.2, "119.2 GiB"),
        (0, "0.0 GiB"),
        (None, "—"),
        (float("nan"), "—"),
        ("x", "—"),
        (1234.56, "1,234.6 GiB"),
    ],
)
def test_fmt_gb(value: Any, expected: str) -> None:
    assert fmt_gb(value) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "—"),
        (0, "0s"),
        (0.042, "42 ms"),
        (0.0004, "0.4 ms"),
        (12.34, "12.3s"),
        (252, "4m 12s"),
        (7380, "2h 03m"),
        (3 * 86400 + 7200, "3d 02h"),
    ],
)
def test_fmt_duration(seconds: Any, expected: str) -> None:
    assert fmt_duration(seconds) == expected


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (None, "—"),
        (0, "0%"),
        (0.993, "99%"),
        (0.004, "0.40%"),
        (0.09, "9.0%"),
        (0.00001, "<0.01%"),
        (1.0, "100%"),
    ],
)
def test_fmt_pct(ratio: Any, expected: str) -> None:
    assert fmt_pct(ratio) == expected


def test_fmt_timestamp_is_local_time() -> None:
    t = 1_767_261_600.0
    assert fmt_timestamp(t) == datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    assert fmt_timestamp(None) == "—"
    assert fmt_timestamp(1e30) == "—"


def test_fmt_value_and_severity_class() -> None:
    assert fmt_value(8) == "8"
    assert fmt_value(True) == "true"
    assert fmt_value("adamw") == "adamw"
    assert fmt_value([1, 2]) == "[1, 2]"
    assert len(fmt_value("z" * 10_000)) <= 300
    assert severity_class("critical") == "sev-critical"
    assert severity_class("<x>") == "sev-info"


# --------------------------------------------------------------------------------------------------- charts


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0, 122.4, [0, 25, 50, 75, 100, 125]),
        (0, 1, [0, 0.25, 0.5, 0.75, 1]),
        (0, 3e-4, [0, 1e-4, 2e-4, 3e-4]),
    ],
)
def test_nice_ticks(lo: float, hi: float, expected: list[float]) -> None:
    ticks, _ = svg.nice_ticks(lo, hi, 5 if hi != 122.4 else 6)
    assert ticks == pytest.approx(expected)


def test_nice_ticks_degenerate_range() -> None:
    ticks, step = svg.nice_ticks(5.0, 5.0)
    assert ticks[0] <= 5.0 <= ticks[-1] and step > 0


@pytest.mark.parametrize(
    ("value", "step", "expected"),
    [
        (0, 1, "0"),
        (2500, 2500, "2500"),
        (250_000, 250_000, "250k"),
        (1_500_000, 500_000, "1.5M"),
        (3e-4, 1e-4, "3e-4"),
        (2.5e-5, 2.5e-5, "2.5e-5"),
        (0.25, 0.25, "0.25"),
        (1.5, 0.5, "1.5"),
    ],
)
def test_format_tick(value: float, step: float, expected: str) -> None:
    assert svg.format_tick(value, step) == expected


@pytest.mark.parametrize(
    "memory",
    [{}, {"system_used_gb": {"x": [], "y": []}}, {"system_used_gb": {"x": [1.0, 2.0], "y": [None, None]}}],
    ids=["no-series", "empty-series", "all-none"],
)
def test_memory_chart_placeholder(memory: dict[str, Any]) -> None:
    figure = str(charts_memory.memory_timeline({"memory": memory}))
    assert "No memory samples recorded" in figure
    ET.fromstring(figure)


def test_one_point_series_draws_a_dot() -> None:
    figure = str(
        charts_memory.memory_timeline(
            {"start_time": 100.0, "memory": {"system_used_gb": {"x": [100.0], "y": [4.2]}}}
        )
    )
    assert "<circle" in figure and "No memory" not in figure
    small = str(
        charts_training.line_chart(
            [svg.Series("loss", "Loss", [3.0], [1.0], svg.LineStyle("blue"))], label="Loss"
        )
    )
    assert "<circle" in small


def test_training_chart_placeholders_keep_the_grid() -> None:
    figures = charts_training.training_charts({"training": {"loss": {"x": [1, 2, 3], "y": [3.0, 2.0, 1.0]}}})
    assert [title for title, _ in figures] == ["Loss", "Learning rate", "Gradient norm", "Step time"]
    assert "No learning rate recorded" in str(figures[1][1])
    assert "<path" in str(figures[0][1])


def test_gaps_break_the_line() -> None:
    figure = str(
        charts_memory.memory_timeline(
            {"memory": {"system_used_gb": {"x": [0, 60, 120, 180, 240], "y": [1.0, 2.0, None, 3.0, 4.0]}}}
        )
    )
    d = re.search(r'<path d="([^"]+)"', figure)
    assert d is not None and d.group(1).count("M") == 2


def test_events_have_tooltips_and_thresholds_have_zones() -> None:
    timeline = {
        "start_time": 0.0,
        "memory": {"system_used_gb": {"x": [0, 600, 1200], "y": [50.0, 110.0, 118.0]}},
        "total_memory_gb": 120.0,
        "thresholds": {"warning_ratio": 0.85, "critical_ratio": 0.95},
        "events": [{"timestamp": 1200.0, "type": "oom_kill", "label": "OOM kill", "severity": "critical"}],
    }
    figure = str(charts_memory.memory_timeline(timeline))
    assert "<title>OOM kill (oom_kill, critical) at 20.0 min" in figure
    assert 'class="zone zone-warning"' in figure and 'class="zone zone-critical"' in figure
    assert "RAM total 120.0 GiB" in figure


def test_small_usage_of_a_big_machine_keeps_the_lines_readable() -> None:
    figure = str(
        charts_memory.memory_timeline(
            {"memory": {"system_used_gb": {"x": [0, 60], "y": [10.0, 12.0]}}, "total_memory_gb": 1024.0}
        )
    )
    assert "off the scale" in figure


def test_step_time_outliers_run_off_the_top() -> None:
    ys = [0.4] * 500
    ys[0] = 40.0
    figures = dict(
        charts_training.training_charts({"training": {"step_time_seconds": {"x": list(range(500)), "y": ys}}})
    )
    assert "Peaks up to 40 s run off the top" in str(figures["Step time"])


def test_raw_peak_from_the_analyzer_is_labelled() -> None:
    """metrics_timeline.peaks (raw maxima) wins over the drawn points when the analyzer sends it."""
    timeline = {
        "start_time": 0.0,
        "memory": {"system_used_gb": {"x": [0, 60, 120], "y": [1.0, 5.0, 2.0]}},
        "peaks": {"system_used_gb": {"value": 5.26, "timestamp": 60.0}},
    }
    assert "peak 5.3 GiB" in str(charts_memory.memory_timeline(timeline))
    del timeline["peaks"]
    assert "peak 5.0 GiB" in str(charts_memory.memory_timeline(timeline))
