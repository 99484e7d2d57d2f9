"""``runlens analyze`` / ``report`` / ``recommend`` end to end on real SQLite files: the printed summary, the
JSON document, the stored row and the HTML report, exit codes, one-line errors, applying recommendations,
and a job recorded by the real Monitor."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sample_jobs import AITK_YAML, CONTRACT_KEYS, SUMMARY_KEYS, make_job

import runlens
from runlens.analyze import registry
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.cli import cli
from runlens.store import Store


@pytest.fixture
def warn_rule(only_test_rules: dict[str, registry.Rule]) -> None:
    """One warning with a config path: the health is "warning" and `recommend --apply` has something to set."""

    @registry.rule("test.workers", "test")
    def _workers(data: JobData) -> list[Finding]:
        return [Finding(id="test.workers", severity="warning", title="Fewer workers", action="Lower num_workers",
                        impact="Saves ~2.0 GB", category="memory", impact_value=2.0, impact_unit="GB",
                        config_path="config.process[0].datasets[0].num_workers", current_value=4,
                        current_value_source="config", recommended_value=0, memory_lever=True)]


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_analyze_prints_the_summary_stores_the_row_and_writes_html(
        store: Store, db_url: str, tmp_path: Path, warn_rule: None) -> None:
    jid = make_job(store, n_steps=120, n_samples=30, peak_gb=31.0)
    html = tmp_path / "r" / "report.html"
    result = _run(["analyze", jid, "--db", db_url, "--html", str(html)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Health:          WARNING" in out
    assert "Peak memory:     31.0 / 32.0 GiB (97%)" in out
    assert "Steps:           120 (last step 119)" in out
    assert "Completed:       yes" in out
    assert "config.process[0].datasets[0].num_workers: 4 -> 0" in out
    assert store.count("analysis_reports", jid) == 1
    assert html.is_file() and f"Report: {html.resolve()}" in out
    assert "<svg" in html.read_text()


def test_analyze_json_prints_only_the_document(store: Store, db_url: str, warn_rule: None) -> None:
    jid = make_job(store, n_steps=30, n_samples=10)
    result = CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--json", "--no-html"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert CONTRACT_KEYS <= set(doc) and SUMMARY_KEYS <= set(doc["summary"])
    assert doc["job"]["job_id"] == jid and doc["summary"]["steps_completed"] == 30
    assert doc["recommendations"][0]["primary"] is True


def test_analyze_latest_and_fail_on(store: Store, db_url: str, warn_rule: None) -> None:
    make_job(store, n_steps=10, n_samples=5)
    assert _run(["analyze", "latest", "--db", db_url, "--no-html", "--fail-on", "warning"]).exit_code == 3
    assert _run(["analyze", "latest", "--db", db_url, "--no-html", "--fail-on", "critical"]).exit_code == 0


def _one_line_error(result: Any, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("runlens: "), result.output
    for n in needles:
        assert n in lines[0]


def test_analyze_unknown_job_and_missing_store(store: Store, db_url: str, tmp_path: Path) -> None:
    _one_line_error(CliRunner().invoke(cli, ["analyze", "nope", "--db", db_url]), 2, "no job with id 'nope'")
    missing = tmp_path / "absent.db"
    _one_line_error(CliRunner().invoke(cli, ["analyze", "x", "--db", str(missing)]), 2, "no database file")
    assert not missing.exists()


def test_analyze_unreadable_log(store: Store, db_url: str, tmp_path: Path) -> None:
    jid = make_job(store, n_steps=3, n_samples=3)
    _one_line_error(CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--log", str(tmp_path / "no.txt")]),
                    2, "cannot read log file", "no such file")
    _one_line_error(CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--log", str(tmp_path)]),
                    2, "is a directory")


def test_missing_recorded_log_is_a_note(store: Store, db_url: str, tmp_path: Path,
                                        only_test_rules: dict[str, registry.Rule]) -> None:
    jid = make_job(store, n_steps=3, n_samples=3, log_path=str(tmp_path / "gone" / "log.txt"))
    result = CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--json", "--no-html"])
    assert result.exit_code == 0, result.output
    assert any("not there any more" in n for n in json.loads(result.stdout)["notes"])


def test_report_rerenders_the_stored_analysis(store: Store, db_url: str, tmp_path: Path,
                                              only_test_rules: dict[str, registry.Rule]) -> None:
    jid = make_job(store, n_steps=3, n_samples=3)
    _one_line_error(CliRunner().invoke(cli, ["report", jid, "--db", db_url]), 2,
                    f"no analysis stored for job {jid}; run 'runlens analyze {jid}' first")
    assert _run(["analyze", jid, "--db", db_url, "--no-html"]).exit_code == 0
    out = tmp_path / "again.html"
    result = _run(["report", jid, "--db", db_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out.resolve()) and out.stat().st_size > 1000


def test_recommend_prints_and_applies(store: Store, db_url: str, tmp_path: Path, warn_rule: None) -> None:
    jid = make_job(store, n_steps=10, n_samples=5)
    result = _run(["recommend", jid, "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "[WARNING] Fewer workers" in result.output
    assert json.loads(_run(["recommend", jid, "--db", db_url, "--json"]).output)[0]["id"] == "test.workers"

    src = tmp_path / "config.yaml"
    src.write_text(AITK_YAML)
    out = tmp_path / "tuned.yaml"
    result = _run(["recommend", jid, "--db", db_url, "--apply", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "set config.process[0].datasets[0].num_workers: 4 -> 0" in result.output
    assert src.read_text() == AITK_YAML
    assert "num_workers: 0   # dataloader workers" in out.read_text()
    same = CliRunner().invoke(cli, ["recommend", jid, "--db", db_url, "--apply", str(src), "-o", str(src)])
    _one_line_error(same, 2, "never modifies the input config")
    assert CliRunner().invoke(cli, ["recommend", jid, "--db", db_url, "--apply", str(src)]).exit_code == 2


def test_every_command_has_help() -> None:
    for cmd in ("analyze", "report", "recommend"):
        result = _run([cmd, "--help"])
        assert result.exit_code == 0 and "--db" in result.output


def test_analyze_a_job_recorded_by_the_real_monitor(db_url: str, tmp_path: Path,
                                                    only_test_rules: dict[str, registry.Rule]) -> None:
    with runlens.Monitor(name="real", db=db_url, sample_interval=0.05) as mon:
        for i in range(30):
            mon.step(i, loss=1.0 / (i + 1), lr=1e-3, batch_size=2, extra_metric=float(i))
            time.sleep(0.005)
        with mon.phase("eval"):
            time.sleep(0.05)
        job_id = mon.job_id
    result = CliRunner().invoke(cli, ["analyze", job_id, "--db", db_url, "--json", "--no-html"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["steps_completed"] == 30 and doc["summary"]["status"] == "succeeded"
    g = doc["summary"]["goodput"]
    assert g["productive_seconds"] + sum(g["lost_seconds"].values()) == pytest.approx(g["wall_seconds"], abs=1e-9)
    assert g["lost_seconds"]["eval_and_checkpoints"] > 0.03
