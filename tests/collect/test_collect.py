"""``runlens collect -- CMD`` with real subprocesses: the job it records, the output it tees, the signals it
forwards, and a real CPU torch training loop (Monitor inside, DataLoader workers) recorded from outside."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from recorded_jobs import only_job, script
from click.testing import CliRunner

from runlens.cli import cli
from runlens.collect.child import ChildSupervisor, child_environment, end_status, redact_argv
from runlens.collect.tee import LogTee, _LineAssembler
from runlens.core.oom import OOM_KILL_REASON
from runlens.core.redact import REDACTED
from runlens.store import Store, absolute_db_url, open_store

TINY = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny.py"

from runlens.core.arrival import ArrivalIndex, sidecar_path


@pytest.fixture
def env(child_env: dict[str, str]) -> dict[str, str]:
    """The wrapper's environment: no caller RUNLENS_* settings, a fast sampler."""
    return {**child_env, "RUNLENS_SAMPLE_INTERVAL": "0.5", "RUNLENS_FLUSH_INTERVAL": "0.2"}


def collect_argv(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runlens", "collect", "--db", str(db), *args]


def run_collect_cli(tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 120
                    ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(collect_argv(tmp_path / "runlens.db", *args), cwd=tmp_path, env=env,
                          capture_output=True, timeout=timeout)


def events(store: Store, job_id: str) -> dict[str, dict[str, Any]]:
    return {e["event_type"]: e for e in store.rows("training_events", job_id)}


def wait_for_file(path: Path, timeout: float = 60) -> str:
    """The file's content once it has some (a child may be between creating and writing it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text().strip()):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


# -- exit status ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_exit_code_passes_through_and_job_records_start_and_end(tmp_path: Path, env: dict[str, str]) -> None:
    """exit 3 -> the wrapper exits 3; the job is failed "exited with code 3" with start and end events."""
    child = script(tmp_path, "import sys, time\ntime.sleep(0.8)\nprint('bye')\nsys.exit(3)\n")
    result = run_collect_cli(tmp_path, env, "--name", "three", "--", sys.executable, child)
    assert result.returncode == 3, result.stderr
    store, job = only_job(tmp_path)
    assert job["name"] == "three" and job["status"] == "failed"
    assert job["status_reason"] == "exited with code 3"
    assert job["exit_code"] == 3 and job["exit_signal"] is None
    assert job["started_at"] <= job["ended_at"]
    assert job["pid"] != os.getpid() and job["argv"] == [sys.executable, child]
    ev = events(store, job["job_id"])
    assert ev["start"]["details"]["pid"] == job["pid"]
    assert ev["start"]["details"]["log_path"] == job["log_path"]
    assert ev["start"]["memory_snapshot_id"] is not None
    assert ev["end"]["details"]["exit_code"] == 3 and ev["end"]["details"]["signal"] is None
    assert 0.7 < ev["end"]["details"]["duration"] < 30
    assert ev["end"]["memory_snapshot_id"] is not None
    assert store.count("metrics_samples", job["job_id"]) >= 2
    costs = {c["operation"] for c in store.rows("monitoring_costs", job["job_id"])}
    assert "thread:runlens-collect-sampler" in costs


def test_success_marks_the_job_succeeded_with_default_name_and_log(tmp_path: Path, env: dict[str, str]) -> None:
    child = script(tmp_path, "print('ok')\n", name="hello.py")
    result = run_collect_cli(tmp_path, env, "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    _, job = only_job(tmp_path)
    assert job["status"] == "succeeded" and job["status_reason"] is None and job["exit_code"] == 0
    assert job["name"] == Path(sys.executable).name       # the command's basename
    log_path = Path(job["log_path"])
    assert log_path == (tmp_path / "runlens-runs" / job["job_id"] / "log.txt").resolve()
    assert log_path.read_text() == "ok\n"


def test_sigkill_of_the_child_is_a_suspected_host_oom_kill(tmp_path: Path, env: dict[str, str],
                                                           wait_until: Any) -> None:
    """SIGKILL from outside (what the OOM killer sends): failed with the OOM reason, exit 137, an event."""
    pidfile = tmp_path / "pid"
    child = script(tmp_path, f"""
        import os, time
        open({str(pidfile)!r}, 'w').write(str(os.getpid()))
        time.sleep(60)
    """)
    wrapper = subprocess.Popen(collect_argv(tmp_path / "runlens.db", "--", sys.executable, child), cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = int(wait_for_file(pidfile))
    watching, live = only_job(tmp_path)
    wait_until(lambda: any(s["main_process_memory_gb"] for s in watching.rows("metrics_samples", live["job_id"])),
               timeout=60, interval=0.05, message="a stored sample of the living child")
    watching.close()
    os.kill(pid, signal.SIGKILL)
    _, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 137, err
    store, job = only_job(tmp_path)
    assert job["status"] == "failed" and job["status_reason"] == OOM_KILL_REASON
    assert job["exit_code"] == 137 and job["exit_signal"] == signal.SIGKILL
    ev = events(store, job["job_id"])
    assert ev["end"]["details"]["signal"] == "SIGKILL"
    assert ev["host_oom_suspected"]["memory_snapshot_id"] is not None
    snapshot = store.rows("metrics_samples", job["job_id"], where={"id": ev["end"]["memory_snapshot_id"]})[0]
    assert snapshot["main_process_memory_gb"] > 0      # the last sample of the living child, not after death


def test_exit_137_is_also_a_suspected_oom_kill(tmp_path: Path, env: dict[str, str]) -> None:
    """A shell or launcher reports its child's SIGKILL as exit code 137."""
    result = run_collect_cli(tmp_path, env, "--", "sh", "-c", "exit 137")
    assert result.returncode == 137
    store, job = only_job(tmp_path)
    assert job["status_reason"] == OOM_KILL_REASON and job["exit_signal"] is None
    assert "host_oom_suspected" in events(store, job["job_id"])


def test_sigterm_to_the_wrapper_is_forwarded_to_the_child(tmp_path: Path, env: dict[str, str], spawn: Any) -> None:
    """SIGTERM to `runlens collect` reaches the child's process group; the wrapper waits, records, exits 143."""
    pidfile = tmp_path / "pid"
    child = script(tmp_path, f"""
        import os, time
        open({str(pidfile)!r}, 'w').write(str(os.getpid()))
        time.sleep(60)
    """)
    wrapper = spawn(collect_argv(tmp_path / "runlens.db", "--", sys.executable, child), cwd=tmp_path, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = int(wait_for_file(pidfile))
    assert os.getpgid(pid) == pid != os.getpgid(wrapper.pid)   # the child leads its own process group
    wrapper.send_signal(signal.SIGTERM)
    _, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 128 + signal.SIGTERM, err
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    store, job = only_job(tmp_path)
    assert job["status"] == "failed" and "SIGTERM" in job["status_reason"]
    assert job["exit_signal"] == signal.SIGTERM
    assert events(store, job["job_id"])["end"]["details"]["forwarded_signals"] == ["SIGTERM"]


def test_sigint_is_forwarded_once_and_python_child_can_clean_up(tmp_path: Path, env: dict[str, str],
                                                                spawn: Any) -> None:
    """Ctrl-C: the child gets one SIGINT (KeyboardInterrupt), may clean up and exit with its own code."""
    pidfile = tmp_path / "pid"
    child = script(tmp_path, f"""
        import os, sys, time
        try:
            open({str(pidfile)!r}, 'w').write(str(os.getpid()))   # inside: a SIGINT right after is still caught
            time.sleep(60)
        except KeyboardInterrupt:
            print('cleaning up', flush=True)
            sys.exit(5)
    """)
    wrapper = spawn(collect_argv(tmp_path / "runlens.db", "--", sys.executable, child), cwd=tmp_path, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_file(pidfile)
    wrapper.send_signal(signal.SIGINT)
    out, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 5, err
    assert b"cleaning up" in out


def test_command_not_found_is_one_line_exit_127_and_never_started(tmp_path: Path, env: dict[str, str]) -> None:
    result = run_collect_cli(tmp_path, env, "--", "no-such-command-runlens")
    assert result.returncode == 127
    assert result.stderr.decode() == "runlens: cannot run 'no-such-command-runlens': command not found\n"
    _, job = only_job(tmp_path)
    assert job["status"] == "never_started" and job["exit_code"] == 127
    assert "command not found" in job["status_reason"]


def test_command_not_executable_is_exit_126(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "not-exec.sh"
    path.write_text("echo hi\n")
    result = run_collect_cli(tmp_path, env, "--", str(path))
    assert result.returncode == 126
    assert len(result.stderr.decode().splitlines()) == 1
    assert only_job(tmp_path)[1]["status"] == "never_started"


# -- output --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stdout_and_stderr_are_teed_to_terminal_and_one_log(tmp_path: Path, env: dict[str, str]) -> None:
    """Both streams reach the wrapper's own stdout/stderr and log.txt (lines whole, in arrival order).

    Two pipes carry no order between them: lines from both streams read in one 50 ms tee round are ordered
    by stream, so the child spaces its lines well beyond that window (and beyond scheduling delays under load).
    """
    child = script(tmp_path, """
        import sys, time
        print('out 1'); time.sleep(0.4)
        print('err 1', file=sys.stderr); time.sleep(0.4)
        print('out 2'); time.sleep(0.4)
        sys.stdout.buffer.write(b'bytes \\xff\\xfe not utf-8\\n'); sys.stdout.flush()
        print('no newline at the end', end='')
    """)
    log = tmp_path / "my.log"
    result = run_collect_cli(tmp_path, env, "--log", str(log), "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"out 1\nout 2\nbytes \xff\xfe not utf-8\nno newline at the end"
    assert result.stderr == b"err 1\n"
    assert log.read_bytes() == b"out 1\nerr 1\nout 2\nbytes \xff\xfe not utf-8\nno newline at the end\n"
    _, job = only_job(tmp_path)
    assert job["log_path"] == str(log.resolve())
    arrivals = ArrivalIndex.load(sidecar_path(log))
    assert arrivals is not None and len(arrivals) >= 2      # lines ~50 ms apart: most get their own entry
    t1, t5 = arrivals.time_of(1), arrivals.time_of(5)
    assert t1 is not None and t5 is not None
    assert job["started_at"] - 1 < t1 <= t5 <= job["ended_at"] + 1


def test_an_existing_log_is_continued_and_arrival_line_numbers_follow(tmp_path: Path, env: dict[str, str]) -> None:
    """--log to a file that has lines: appended after them, and the sidecar numbers the new lines from there."""
    log = tmp_path / "train.log"
    log.write_bytes(b"old 1\nold 2\nold 3 without newline")
    child = script(tmp_path, "import time\nprint('new 1'); time.sleep(0.2); print('new 2')\n")
    result = run_collect_cli(tmp_path, env, "--log", str(log), "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    assert log.read_bytes() == b"old 1\nold 2\nold 3 without newline\nnew 1\nnew 2\n"
    arrivals = ArrivalIndex.load(sidecar_path(log))
    assert arrivals is not None
    assert arrivals.time_of(3) is None and arrivals.time_of(4) is not None    # the new lines are 4 and 5


@pytest.mark.slow
def test_partial_lines_and_progress_bars_reach_the_terminal_promptly(tmp_path: Path, env: dict[str, str]) -> None:
    """A prompt without a newline and a \\r progress bar are on the terminal before the child finishes."""
    child = script(tmp_path, """
        import sys, time
        sys.stdout.write('loading...'); sys.stdout.flush()
        time.sleep(1.5)
        for i in range(3):
            sys.stdout.write(f'\\r{i * 50}%'); sys.stdout.flush()
        time.sleep(1.5)
        print(' done')
    """)
    wrapper = subprocess.Popen(collect_argv(tmp_path / "runlens.db", "--", sys.executable, child), cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wrapper.stdout is not None
    fd = wrapper.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 30
    while b"loading..." not in seen and time.monotonic() < deadline:
        seen += os.read(fd, 1024)
    assert wrapper.poll() is None, "the partial line arrived only when the child ended"
    while b"\r100%" not in seen and time.monotonic() < deadline:
        seen += os.read(fd, 1024)
    assert wrapper.poll() is None
    wrapper.communicate(timeout=30)
    _, job = only_job(tmp_path)
    logged = Path(job["log_path"]).read_bytes()
    # \r overwrites the line on a terminal: the log keeps the first complete state (at once) and the last.
    assert logged.endswith(b"\n100% done\n") and len(logged.splitlines()) == 2, logged


def test_child_environment_hands_over_the_job_and_unbuffers_python(tmp_path: Path, env: dict[str, str]) -> None:
    """RUNLENS_JOB_ID/RUNLENS_DB reach the child; PYTHONUNBUFFERED/FAULTHANDLER are set unless the user set them."""
    child = script(tmp_path, """
        import os
        for k in ('RUNLENS_JOB_ID', 'RUNLENS_DB', 'PYTHONUNBUFFERED', 'PYTHONFAULTHANDLER'):
            print(k, repr(os.environ.get(k)))
    """)
    result = run_collect_cli(tmp_path, {**env, "PYTHONFAULTHANDLER": ""}, "--", sys.executable, child)
    assert result.returncode == 0, result.stderr
    _, job = only_job(tmp_path)
    lines = result.stdout.decode().splitlines()
    assert f"RUNLENS_JOB_ID '{job['job_id']}'" in lines
    assert f"RUNLENS_DB 'sqlite:///{tmp_path / 'runlens.db'}'" in lines
    assert "PYTHONUNBUFFERED '1'" in lines
    assert "PYTHONFAULTHANDLER ''" in lines    # the user's choice stands
    env_for_child = child_environment("j", "sqlite:///x.db", {"PYTHONUNBUFFERED": "0"})
    assert env_for_child["PYTHONUNBUFFERED"] == "0" and env_for_child["PYTHONFAULTHANDLER"] == "1"


# -- config and CLI ------------------------------------------------------------------------------------


def test_config_is_stored_with_secrets_redacted(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("hf_token: abc\nlearning_rate: 0.001\nmonitoring:\n  sample_interval: 0.25\n")
    result = run_collect_cli(tmp_path, env, "--config", str(config), "--", sys.executable, "-c",
                             "print('hi')", "--api-key", "sk-123", "--hf_token=xyz")
    assert result.returncode == 0, result.stderr
    _, job = only_job(tmp_path)
    assert job["config"] == {"hf_token": REDACTED, "learning_rate": 0.001, "monitoring": {"sample_interval": 0.25}}
    assert job["config_path"] == str(config.resolve())
    assert job["argv"][-3:] == ["--api-key", REDACTED, f"--hf_token={REDACTED}"]
    assert b"abc" not in (tmp_path / "runlens.db").read_bytes()
    assert job["settings"]["sample_interval"] == 0.5   # RUNLENS_SAMPLE_INTERVAL beats the config's section


def test_unreadable_config_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    result = run_collect_cli(tmp_path, env, "--config", str(bad), "--", "true")
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runlens: cannot read config") and "line" in lines[0]
    missing = run_collect_cli(tmp_path, env, "--config", str(tmp_path / "nope.yaml"), "--", "true")
    assert missing.returncode == 2 and len(missing.stderr.decode().splitlines()) == 1


def test_missing_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["collect"])
    assert result.exit_code == 2
    assert "missing the command to run" in result.output


def test_options_after_the_command_belong_to_the_command(tmp_path: Path, env: dict[str, str]) -> None:
    """`runlens collect python x.py --name y`: --name goes to the child, not to runlens."""
    child = script(tmp_path, "import sys; print(sys.argv[1:])\n")
    result = run_collect_cli(tmp_path, env, sys.executable, child, "--name", "y", "--db", "z")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"['--name', 'y', '--db', 'z']\n"
    assert only_job(tmp_path)[1]["name"] == Path(sys.executable).name


def test_collect_has_help() -> None:
    result = CliRunner().invoke(cli, ["collect", "--help"])
    assert result.exit_code == 0, result.output
    assert "--config" in result.output and "--log" in result.output and "--db" in result.output


# -- a real training loop --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.needs_torch
def test_real_training_loop_with_monitor_and_dataloader_workers(tmp_path: Path, env: dict[str, str]) -> None:
    """torch CPU loop, Monitor attached inside, 2 DataLoader workers: steps, worker samples, one job, end event."""
    result = run_collect_cli(tmp_path, env, "--name", "tiny", "--", sys.executable, str(TINY),
                             "--steps", "80", "--workers", "2", "--sleep", "0.04", "--monitor", timeout=240)
    assert result.returncode == 0, result.stderr
    store, job = only_job(tmp_path)                      # the Monitor attached, no second job
    job_id = job["job_id"]
    assert job["status"] == "succeeded"
    steps = store.rows("step_metrics", job_id, order_by="step")
    assert [s["step"] for s in steps] == list(range(80))
    assert all(s["loss"] is not None and s["step_time_seconds"] is not None for s in steps[1:])
    samples = store.rows("metrics_samples", job_id)
    with_workers = [s for s in samples if s["worker_count"] == 2]
    assert with_workers, [(s["worker_count"], s["worker_memory_gb"]) for s in samples]
    assert all(s["worker_memory_gb"] > 0 for s in with_workers)
    assert max(s["worker_count"] or 0 for s in samples) == 2
    assert all(s["main_process_memory_gb"] for s in with_workers)
    types = [e["event_type"] for e in store.rows("training_events", job_id)]
    assert types.count("start") == 1 and types.count("end") == 1
    assert "monitor_attached" in types
    log_text = Path(job["log_path"]).read_text()
    assert "step 79 loss" in log_text and "stderr at step 75" in log_text


@pytest.mark.slow
@pytest.mark.needs_torch
def test_sigterm_during_training_with_workers_stops_the_whole_group(tmp_path: Path, env: dict[str, str],
                                                                     spawn: Any, wait_until: Any) -> None:
    """SIGTERM to the wrapper mid-training: the child and its DataLoader workers go, the job says SIGTERM."""
    pidfile = tmp_path / "pid"
    wrapper = spawn(
        collect_argv(tmp_path / "runlens.db", "--", sys.executable, str(TINY), "--steps", "100000", "--workers",
                     "2", "--sleep", "0.02", "--monitor", "--pidfile", str(pidfile)),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pid = int(wait_for_file(pidfile, timeout=120))
    workers = psutil.Process(pid).children(recursive=True)
    assert len(workers) == 2
    watching, live = only_job(tmp_path)
    wait_until(lambda: watching.count("step_metrics", live["job_id"]) > 10, timeout=60, interval=0.05,
               message="more than 10 stored steps")
    watching.close()
    wrapper.send_signal(signal.SIGTERM)
    _, err = wrapper.communicate(timeout=60)
    assert wrapper.returncode == 143, err
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
    store, job = only_job(tmp_path)
    assert job["status"] == "failed" and "SIGTERM" in job["status_reason"]
    assert store.count("step_metrics", job["job_id"]) > 10


# -- pieces, in-process ----------------------------------------------------------------------------------


class StandInArrivals:
    """Records what the wrapper hands the arrival sidecar (stands in for runlens.core.arrival.ArrivalWriter)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, float]] = []
        self.closed = False

    def line(self, line_number: int, t: float) -> None:
        self.lines.append((line_number, t))

    def close(self) -> None:
        self.closed = True


def test_log_tee_records_each_lines_arrival_time(tmp_path: Path, wait_until: Any) -> None:
    """Lines are numbered from 1 in log order; each carries the time its newline arrived."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    clock = itertools.count(100.0)
    arrivals = StandInArrivals()
    with open(tmp_path / "log.txt", "ab") as log_file:
        tee = LogTee([(out_r, None), (err_r, None)], log_file, arrivals, clock=lambda: next(clock)).start()
        # Each write is read in a round of its own (one clock reading each): wait for its line before the next.
        os.write(out_w, b"first\nsec")
        wait_until(lambda: len(arrivals.lines) == 1)
        os.write(err_w, b"an error\n")
        wait_until(lambda: len(arrivals.lines) == 2)
        os.write(out_w, b"ond\n")
        wait_until(lambda: len(arrivals.lines) == 3)
        os.close(out_w)
        os.close(err_w)
        tee.finish()
    assert (tmp_path / "log.txt").read_bytes() == b"first\nan error\nsecond\n"
    assert arrivals.lines == [(1, 100.0), (2, 101.0), (3, 102.0)]


def test_line_assembler_collapses_progress_bars() -> None:
    """\\r updates: the terminal's last state is logged, at most every 10 s while the bar runs."""
    lines: list[tuple[bytes, float]] = []
    asm = _LineAssembler(lambda line, t: lines.append((line, t)), progress_every=10.0, max_line=64)
    asm.feed(b"\r  0%|", 0.0)
    asm.feed(b"\r 10%|\r 20%|", 1.0)     # first complete state: logged at once
    asm.feed(b"\r 30%|\r 40%|", 5.0)     # within 10 s: held back
    asm.feed(b"\r 50%|", 12.0)           # 10 s later: the latest state is logged
    asm.feed(b"\r100%|\n", 20.0)         # the newline: the final state
    asm.feed(b"windows line\r\n", 21.0)
    asm.feed(b"x" * 100, 22.0)           # an endless line is cut
    asm.close(23.0)
    assert lines == [(b" 10%|", 1.0), (b" 40%|", 12.0), (b"100%|", 20.0), (b"windows line", 21.0),
                     (b"x" * 64, 22.0), (b"x" * 36, 23.0)]


def test_redact_argv_hides_secret_option_values() -> None:
    assert redact_argv(["train.py", "--hf-token", "abc", "--lr", "1e-3", "--api_key=xyz", "wandb_key=k",
                        "--db", "postgresql://u:pw@h/db"]) == [
        "train.py", "--hf-token", REDACTED, "--lr", "1e-3", f"--api_key={REDACTED}", f"wandb_key={REDACTED}",
        "--db", f"postgresql://u:{REDACTED}@h/db"]


def test_end_status_table() -> None:
    """Exit codes and signals to job status, reason and the shell-style code the wrapper exits with."""
    assert end_status(0)["status"] == "succeeded"
    assert end_status(2) | {} == {"status": "failed", "status_reason": "exited with code 2", "exit_code": 2,
                                  "exit_signal": None, "signal": None, "oom_suspected": False,
                                  "oom_confirmed": False}
    killed = end_status(-signal.SIGKILL)
    assert killed["status_reason"] == OOM_KILL_REASON and killed["exit_code"] == 137 and killed["oom_suspected"]
    assert end_status(-signal.SIGSEGV)["status_reason"] == "killed by SIGSEGV"
    assert end_status(-signal.SIGSEGV)["exit_code"] == 128 + signal.SIGSEGV
    sup = ChildSupervisor(["x"], {})
    sup.kill_group(signal.SIGKILL, "hang: no progress for 600 s")   # no child: records the intent only
    by_us = end_status(-signal.SIGKILL, sup)
    assert by_us["status_reason"] == "killed by runlens with SIGKILL (hang: no progress for 600 s)"
    assert not by_us["oom_suspected"]


def test_tick_hooks_run_on_every_sample_and_can_kill_the_group(tmp_path: Path, db_url: str) -> None:
    """The hang watchdog's entry point: a tick hook sees every sample and may stop the child's process group."""
    from runlens.collect.wrapper import run_collect

    seen: list[Any] = []

    def hook(sample: Any, supervisor: ChildSupervisor) -> None:
        seen.append(sample)
        if len(seen) == 3:
            supervisor.kill_group(signal.SIGKILL, "test hook")

    from runlens.core.settings import Settings

    code = run_collect([sys.executable, "-c", "import time; time.sleep(60)"], db=db_url,
                       log=str(tmp_path / "log.txt"), settings=Settings(sample_interval=0.1, flush_interval=0.1),
                       tick_hooks=[hook])
    assert code == 137 and len(seen) >= 3
    store = open_store(db_url)
    job = store.list_jobs()[0]
    assert job["status_reason"] == "killed by runlens with SIGKILL (test hook)"
    assert "host_oom_suspected" not in events(store, job["job_id"])


def test_relative_sqlite_url_is_made_absolute_for_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that changes directory (``cd sub && python train.py``) must still reach the wrapper's database."""
    monkeypatch.chdir(tmp_path)
    assert absolute_db_url("sqlite:///runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    assert absolute_db_url("sqlite:///runs.db?timeout=5") == f"sqlite:///{tmp_path / 'runs.db'}?timeout=5"
    assert absolute_db_url("sqlite:////abs/runs.db") == "sqlite:////abs/runs.db"
    assert absolute_db_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    assert absolute_db_url("sqlite:///:memory:") == "sqlite:///:memory:"


def test_tee_stops_when_a_grandchild_keeps_the_pipe_open(tmp_path: Path) -> None:
    """The child is gone but something still holds (and writes to) its stdout: finish() returns anyway."""
    r, w = os.pipe()
    with open(tmp_path / "log.txt", "ab") as log_file:
        tee = LogTee([(r, None)], log_file, None).start()
        stop = False

        def chatter() -> None:
            while not stop:
                try:
                    os.write(w, b"still here\n")
                except OSError:
                    return
                time.sleep(0.01)

        import threading

        t = threading.Thread(target=chatter, daemon=True)
        t.start()
        t0 = time.monotonic()
        tee.finish(grace=0.3)
        assert time.monotonic() - t0 < 3.0
        stop = True
        t.join(2)
        os.close(w)
    assert (tmp_path / "log.txt").read_bytes().startswith(b"still here\n")
