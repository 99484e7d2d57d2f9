"""``runlens import LOG``: a job made from an old log with the parser ``runlens collect`` uses live, then the same
analysis."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from recorded_jobs import recorded_run
from click.testing import CliRunner

from runlens.cli import cli

CORPUS = Path(__file__).resolve().parents[1] / "data" / "progress"


def run_import(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["import", *args, "--db", str(tmp_path / "runlens.db")])


def test_a_real_log_becomes_a_job_with_its_steps_times_and_analysis(tmp_path: Path) -> None:
    """nanoGPT's log (issue #215, timestamped lines, a NaN from step 3010): its steps with their losses at the
    times the lines state, the eval line as an eval phase, and the analysis calls the run diverged."""
    log = tmp_path / "train.log"
    log.write_text((CORPUS / "nanogpt_215.txt").read_text())
    result = run_import(tmp_path, str(log))
    assert result.exit_code == 0, result.output
    assert "15 steps, 1 evaluations" in result.output and "times from the times its lines state" in result.output
    assert "Training diverged" in result.output
    run = recorded_run(tmp_path)
    steps = run["steps"]
    assert [s["step"] for s in steps] == [*range(2920, 3000, 10), 3000, *range(3010, 3070, 10)]
    assert steps[0]["loss"] == 3.9883 and all(s["extras"]["nonfinite"] == {"loss": "nan"} for s in steps[-6:])
    assert steps[1]["timestamp"] - steps[0]["timestamp"] == pytest.approx(11.0)
    assert {s["source"] for s in steps} == {"output"}
    assert run["job"]["log_path"] == str(log.resolve()) and run["job"]["status"] == "succeeded"
    assert run["job"]["started_at"] < run["job"]["ended_at"]
    assert {e["event_type"] for e in run["events"]} == {"log_imported", "phase_end"}


def test_a_log_without_times_gets_them_from_its_printed_step_times(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text((CORPUS / "nanogpt_178.txt").read_text())
    os.utime(log, (1_700_000_000, 1_700_000_000))
    result = run_import(tmp_path, str(log), "--no-analyze", "--name", "night")
    assert result.exit_code == 0, result.output
    run = recorded_run(tmp_path)
    assert run["job"]["name"] == "night" and run["job"]["ended_at"] == pytest.approx(1_700_000_000)
    ts = [s["timestamp"] for s in run["steps"]]
    assert ts == sorted(ts) and ts[1] - ts[0] == pytest.approx(10 * 0.89376, rel=1e-3)   # 10 iterations of 893.76 ms


def test_hf_dicts_are_numbered_from_the_configs_logging_steps(tmp_path: Path) -> None:
    log = tmp_path / "hf.log"
    log.write_text((CORPUS / "hf_trainer_35207.txt").read_text())
    (tmp_path / "args.json").write_text('{"logging_steps": 50, "learning_rate": 5e-05}')
    result = run_import(tmp_path, str(log), "--config", str(tmp_path / "args.json"), "--no-analyze")
    assert result.exit_code == 0, result.output
    assert [s["step"] for s in recorded_run(tmp_path)["steps"]] == [50, 100, 150, 200, 250, 300]


def test_a_log_ending_in_a_traceback_is_a_failed_job(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    log.write_text("iter 0: loss 2.0000, time 10.00ms, mfu 1.00%\nTraceback (most recent call last):\n"
                   '  File "train.py", line 3, in <module>\nRuntimeError: CUDA error: device-side assert triggered\n')
    assert run_import(tmp_path, str(log), "--no-analyze").exit_code == 0
    job = recorded_run(tmp_path)["job"]
    assert job["status"] == "failed" and "traceback" in job["status_reason"]


def test_a_pattern_reads_a_format_of_ones_own(tmp_path: Path) -> None:
    log = tmp_path / "own.log"
    log.write_text("[001] objective=0.500\n[002] objective=0.250\n")
    result = run_import(tmp_path, str(log), "--no-analyze", "--progress-pattern",
                        r"\[(?P<step>\d+)\] objective=(?P<loss>\S+)")
    assert result.exit_code == 0, result.output
    assert [(s["step"], s["loss"]) for s in recorded_run(tmp_path)["steps"]] == [(1, 0.5), (2, 0.25)]


@pytest.mark.parametrize("args, message", [
    (["missing.log"], "cannot read log file"),
    (["{log}", "--progress-pattern", "(?P<step>"], "does not compile"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    log = tmp_path / "ok.log"
    log.write_text("iter 1: loss 1.0, time 1.00ms\n")
    result = run_import(tmp_path, *[a.replace("{log}", str(log)) for a in args])
    assert result.exit_code == 2
    assert message in result.output and result.output.strip().count("\n") == 0
