"""The CLI basics: --version, jobs, db upgrade, and bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

import runlens
from runlens.cli import cli
from runlens.store import Store
from runlens.store.migrate import HEAD_REVISION


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runlens", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def _one_line_error(result: Result | subprocess.CompletedProcess[str], *needles: str) -> None:
    exit_code = result.exit_code if isinstance(result, Result) else result.returncode
    stderr = result.stderr
    assert exit_code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runlens: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"runlens, version {runlens.__version__}"


def test_python_dash_m_runs_the_cli() -> None:
    result = _run("--version")
    assert result.returncode == 0 and runlens.__version__ in result.stdout


def test_jobs_on_an_empty_store(db_url: str, store: Store) -> None:
    result = CliRunner().invoke(cli, ["jobs", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("no jobs in sqlite:///")


def test_jobs_lists_a_monitored_run(db_url: str, store: Store) -> None:
    with runlens.Monitor(name="listed-run", db=db_url) as mon:
        for step in range(12):
            mon.step(step, loss=1.0)
    result = CliRunner().invoke(cli, ["jobs", "--db", db_url])
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split()[:4] == ["JOB", "ID", "NAME", "STATUS"]
    assert row.startswith(mon.job_id) and "listed-run" in row and "succeeded" in row and " 12 " in row

    as_json = CliRunner().invoke(cli, ["jobs", "--db", db_url, "--json"])
    assert as_json.exit_code == 0, as_json.output
    (job,) = json.loads(as_json.output)
    assert job["job_id"] == mon.job_id and job["steps"] == 12


def test_db_upgrade_creates_the_store(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert path.exists() and f"is at schema {HEAD_REVISION}" in result.output


def test_missing_database_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["jobs", "--db", str(tmp_path / "nope.db")])
    _one_line_error(result, "no database file at", "nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_corrupt_database_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database\n" * 100)
    result = CliRunner().invoke(cli, ["jobs", "--db", str(path)])
    _one_line_error(result, "not a SQLite database")


def test_a_directory_as_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["jobs", "--db", str(tmp_path)])
    _one_line_error(result, "is a directory")


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    _one_line_error(_run("jobs", "--db", str(tmp_path / "nope.db")), "no database file at")


def test_unknown_job_id_is_one_line_and_exit_2(db_url: str, store: Store) -> None:
    for command in ("analyze", "report", "recommend"):
        result = CliRunner().invoke(cli, [command, "no-such-job", "--db", db_url])
        _one_line_error(result, "no-such-job")
