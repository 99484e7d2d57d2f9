"""Analysis when a job ends, and the monitoring switches, with real subprocesses.

``runlens collect`` analyses the job once the child has ended (success, failure, a kill), prints the summary and
the report's path on stderr and exits with the child's code; a Monitor's own job is analysed in a detached
process; ``--no-analyze``, ``monitoring: analyze_on_complete: false`` and ``RUNLENS_ANALYZE_ON_COMPLETE=0`` turn
that off, and ``monitoring: enabled: false`` turns runlens off altogether.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from recorded_jobs import only_job, script

from runlens.cli.collect import analyze_completed
from runlens.collect.background_analysis import ANALYSIS_LOG, analysis_environment, job_folder
from runlens.core.errors import ConfigError
from runlens.core.settings import Settings, settings_from_env, settings_from_monitoring_section
from runlens.store import open_store
from runlens.store.frames import latest_analysis

TINY = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny.py"


@pytest.fixture
def env(child_env: dict[str, str]) -> dict[str, str]:
    """A child's environment with analysis on completion at its default (on) and a fast sampler."""
    out = {**child_env, "RUNLENS_SAMPLE_INTERVAL": "0.5", "RUNLENS_FLUSH_INTERVAL": "0.2"}
    out.pop("RUNLENS_ANALYZE_ON_COMPLETE", None)
    return out


def collect(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "runlens", "collect", "--db", str(tmp_path / "runlens.db"), *args]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def assert_analysed(tmp_path: Path, result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The job is analysed and stored, its report written, and the summary and the report's path are on stderr."""
    store, job = only_job(tmp_path)
    job_id = job["job_id"]
    analysis = latest_analysis(store, job_id)
    assert analysis is not None, result.stderr
    report = Path(job["log_path"]).parent / "report.html"
    assert report.is_file()
    assert f"runlens: analysing {job_id}" in result.stderr
    assert f"runlens analysis of {job_id}" in result.stderr
    assert f"Report: {report}" in result.stderr
    assert "runlens analysis of" not in result.stdout   # stdout stays the child's own output
    return job


def assert_not_analysed(tmp_path: Path, result: subprocess.CompletedProcess[str]) -> None:
    store, job = only_job(tmp_path)
    assert latest_analysis(store, job["job_id"]) is None
    assert not (Path(job["log_path"]).parent / "report.html").exists()
    assert "analysing" not in result.stderr and "runlens analysis of" not in result.stderr


# -- runlens collect -------------------------------------------------------------------------------------


def test_collect_analyses_a_successful_run_and_keeps_its_stdout(tmp_path: Path, env: dict[str, str]) -> None:
    """Exit 0: the job is analysed, the summary and report path go to stderr, stdout is the child's alone."""
    child = script(tmp_path, "print('hello from the child')\n")
    result = collect(tmp_path, env, "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the child\n"
    job = assert_analysed(tmp_path, result)
    assert job["status"] == "succeeded"


@pytest.mark.slow
def test_collect_analyses_a_failing_run_and_exits_with_its_code(tmp_path: Path, env: dict[str, str]) -> None:
    """Exit 3 stays exit 3; the analysis says the run did not complete."""
    child = script(tmp_path, "import sys\nprint('failing', file=sys.stderr)\nsys.exit(3)\n")
    result = collect(tmp_path, env, "--", sys.executable, child)
    assert result.returncode == 3, result.stderr
    assert_analysed(tmp_path, result)
    assert "failed: exited with code 3" in result.stderr


@pytest.mark.slow
def test_collect_analyses_a_killed_run(tmp_path: Path, env: dict[str, str]) -> None:
    """A child killed by SIGKILL (what the kernel's OOM killer sends): exit 137, analysed all the same."""
    child = script(tmp_path, "import os, signal\nprint('about to die', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = collect(tmp_path, env, "--", sys.executable, child)
    assert result.returncode == 137, result.stderr
    assert_analysed(tmp_path, result)


@pytest.mark.slow
def test_collect_analyses_a_run_it_killed_for_a_hang(tmp_path: Path, env: dict[str, str]) -> None:
    """runlens kills a silent child (--no-output-timeout): exit 124, the timed-out job is analysed."""
    child = script(tmp_path, "import time\nprint('starting', flush=True)\ntime.sleep(60)\n")
    result = collect(tmp_path, env, "--no-output-timeout", "1", "--kill-grace", "1", "--", sys.executable, child)
    assert result.returncode == 124, result.stderr
    job = assert_analysed(tmp_path, result)
    assert job["status"] == "timed_out"


@pytest.mark.slow
@pytest.mark.needs_torch
def test_collect_analyses_a_real_training_run(tmp_path: Path, env: dict[str, str]) -> None:
    """train_tiny.py with a Monitor inside (attached): the wrapper analyses once; the Monitor starts no analysis
    of its own, and the exit code is the script's."""
    result = collect(tmp_path, {**env, "TINY_STEPS": "20", "TINY_WORKERS": "0"}, "--", sys.executable, str(TINY),
                     "--monitor", "--exit-code", "3")
    assert result.returncode == 3, result.stderr
    job = assert_analysed(tmp_path, result)
    assert "Steps:" in result.stderr and "20 (last step 19)" in result.stderr
    assert "in the background" not in result.stderr
    assert not (Path(job["log_path"]).parent / ANALYSIS_LOG).exists()


def test_no_analyze_skips_the_analysis(tmp_path: Path, env: dict[str, str]) -> None:
    child = script(tmp_path, "print('x')\n")
    result = collect(tmp_path, env, "--no-analyze", "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    assert_not_analysed(tmp_path, result)


@pytest.mark.slow
def test_config_and_environment_turn_the_analysis_off(tmp_path: Path, env: dict[str, str]) -> None:
    """``monitoring: analyze_on_complete: false`` and RUNLENS_ANALYZE_ON_COMPLETE=0 skip it; --analyze wins."""
    child = script(tmp_path, "print('x')\n")
    config = tmp_path / "config.yaml"
    config.write_text("lr: 0.1\nmonitoring:\n  analyze_on_complete: false\n")
    result = collect(tmp_path, env, "--config", str(config), "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    assert_not_analysed(tmp_path, result)

    (tmp_path / "runlens.db").unlink()
    result = collect(tmp_path, {**env, "RUNLENS_ANALYZE_ON_COMPLETE": "0"}, "--", sys.executable, child)
    assert_not_analysed(tmp_path, result)

    (tmp_path / "runlens.db").unlink()
    result = collect(tmp_path, env, "--config", str(config), "--analyze", "--", sys.executable, child)
    assert_analysed(tmp_path, result)


def test_a_failed_analysis_is_one_line_and_does_not_raise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the CLI does after the child ended: an error is one line on stderr, never an exception (the exit
    code stays the child's)."""
    store = open_store(str(tmp_path / "runlens.db"))
    store.close()
    analyze_completed("no-such-job", f"sqlite:///{tmp_path / 'runlens.db'}")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("runlens: analysing no-such-job")
    assert len(err) == 2 and err[1].startswith("runlens: could not analyse no-such-job: "), err


# -- monitoring: enabled: false ----------------------------------------------------------------------------


def test_collect_with_monitoring_disabled_runs_the_command_unrecorded(tmp_path: Path, env: dict[str, str]) -> None:
    """``monitoring: enabled: false``: one line says runlens is off; the command runs with its output and exit
    code, nothing is stored, and a Monitor inside is off too."""
    config = tmp_path / "config.yaml"
    config.write_text("monitoring:\n  enabled: false\n")
    child = script(tmp_path, """
        import os, sys
        import runlens
        with runlens.Monitor(name="inner", db="inner.db") as mon:
            mon.step(0, loss=1.0)
        print("job", mon.job_id, os.environ.get("RUNLENS_DISABLE"))
        sys.exit(5)
    """)
    result = collect(tmp_path, env, "--config", str(config), "--", sys.executable, child)
    assert result.returncode == 5, result.stderr
    assert result.stdout == "job None 1\n"
    assert result.stderr.count("runlens:") == 1 and "monitoring is off" in result.stderr, result.stderr
    assert not (tmp_path / "runlens.db").exists() and not (tmp_path / "inner.db").exists()
    assert not (tmp_path / "runlens-runs").exists()


def test_monitor_with_monitoring_disabled_in_its_config_records_nothing(tmp_path: Path) -> None:
    import runlens

    db = tmp_path / "runlens.db"
    with runlens.Monitor(name="off", config={"lr": 0.1, "monitoring": {"enabled": False}}, db=str(db)) as mon:
        mon.step(0, loss=1.0)
        mon.event("checkpoint_saved")
    assert mon.job_id is None and mon.settings.disabled
    assert not db.exists()


def test_monitoring_switches_in_config_and_environment() -> None:
    assert settings_from_monitoring_section({"enabled": False}).disabled
    assert not settings_from_monitoring_section({"enabled": "yes"}).disabled
    assert not settings_from_monitoring_section({"analyze_on_complete": "off"}).analyze_on_complete
    assert Settings().analyze_on_complete and not Settings().disabled
    with pytest.raises(ConfigError, match="monitoring.enabled must be true or false"):
        settings_from_monitoring_section({"enabled": "sometimes"})
    off = Settings(analyze_on_complete=False)
    assert settings_from_env(off, {"RUNLENS_ANALYZE_ON_COMPLETE": "1"}).analyze_on_complete
    assert not settings_from_env(None, {"RUNLENS_ANALYZE_ON_COMPLETE": "false"}).analyze_on_complete
    with pytest.raises(ConfigError, match="RUNLENS_ANALYZE_ON_COMPLETE"):
        settings_from_env(None, {"RUNLENS_ANALYZE_ON_COMPLETE": "maybe"})


# -- a Monitor's own job -----------------------------------------------------------------------------------


MONITOR_SCRIPT = """
    import sys, time
    import runlens
    with runlens.Monitor(name="own", db="runlens.db") as mon:
        for step in range(30):
            mon.step(step, loss=1.0 / (step + 1), batch_size=8)
            time.sleep(0.005)
    print("job", mon.job_id, flush=True)
"""


@pytest.mark.slow
def test_a_monitors_own_job_is_analysed_in_a_detached_process(tmp_path: Path, env: dict[str, str],
                                                              wait_until: Callable[..., Any]) -> None:
    """The training process exits without waiting; the analysis is stored shortly after, its report written
    where the Monitor announced, its output in analysis.log, nothing of it on the training's terminal."""
    child = script(tmp_path, MONITOR_SCRIPT)
    result = subprocess.run([sys.executable, child], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[-1]
    folder = job_folder(job_id, f"sqlite:///{tmp_path / 'runlens.db'}")
    report = folder / "report.html"
    assert f"analysing {job_id} in the background; report will be at {report}" in result.stderr
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    analysis = wait_until(lambda: latest_analysis(store, job_id), timeout=90, interval=0.1,
                          message="the background analysis to be stored")
    assert analysis["summary"]["steps_completed"] == 30
    wait_until(report.is_file, timeout=30, interval=0.1, message="the background analysis's report")
    assert f"runlens analysis of {job_id}" in wait_until(
        lambda: (folder / ANALYSIS_LOG).read_text(), timeout=30, message="the analysis log")


@pytest.mark.slow
def test_a_monitor_with_analysis_off_starts_none(tmp_path: Path, env: dict[str, str]) -> None:
    child = script(tmp_path, MONITOR_SCRIPT)
    result = subprocess.run([sys.executable, child], cwd=tmp_path, env={**env, "RUNLENS_ANALYZE_ON_COMPLETE": "0"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[-1]
    assert "background" not in result.stderr
    assert not (job_folder(job_id, f"sqlite:///{tmp_path / 'runlens.db'}") / ANALYSIS_LOG).exists()
    assert latest_analysis(open_store(str(tmp_path / "runlens.db"), create=False), job_id) is None


def test_background_analysis_environment_hands_over_the_store_not_the_job(tmp_path: Path) -> None:
    """The URL travels in RUNLENS_DB (not on a command line ``ps`` shows), absolute; RUNLENS_JOB_ID does not."""
    env = analysis_environment("sqlite:///runlens.db", {"RUNLENS_JOB_ID": "x", "PYTHONPATH": "/elsewhere"})
    assert "RUNLENS_JOB_ID" not in env
    assert env["RUNLENS_DB"].startswith("sqlite:////")
    import runlens

    root = str(Path(runlens.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(":")[0] == root and env["PYTHONPATH"].endswith("/elsewhere")
    assert job_folder("j", f"sqlite:///{tmp_path / 'a.db'}") == tmp_path / "runlens-runs" / "j"
