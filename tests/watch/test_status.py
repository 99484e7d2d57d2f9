"""The run-status state machine over constructed job rows, and settling a really dead process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from runlens.cli import cli
from runlens.watch.status import (
    FAILED,
    NEVER_STARTED,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    WARNING,
    classify_failure,
    compute_status,
    pid_alive,
    relevant_event,
    settle_dead_jobs,
)
from runlens.store import open_store

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
HERE = "trainbox"


def job(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"job_id": "j", "name": "j", "status": "running", "created_at": T0, "started_at": T0,
                           "host": HERE, "pid": 4242, "heartbeat_at": None, "progress_at": None,
                           "last_step": None, "settings": None}
    row.update(kw)
    return row


def alive(pid: int) -> bool:
    return True


def dead(pid: int) -> bool:
    return False


def phase_start(name: str, at: float) -> dict[str, Any]:
    return {"event_type": "phase_start", "timestamp": at, "details": {"name": name}}   # as Monitor.phase writes


# (id, job row, now offset, pid probe, last event, expected state, expected cause)
CASES = [
    ("succeeded", job(status="succeeded", ended_at=T0 + 50), 60, alive, None, SUCCEEDED, "ok"),
    ("failed-stored-reason", job(status="failed", status_reason="ValueError: bad"), 60, alive, None, FAILED,
     "unknown"),
    ("timed-out-stored", job(status="timed_out", status_reason="killed after a stall in phase eval"), 60, alive,
     None, TIMED_OUT, "stall"),
    ("never-started-stored", job(status="never_started"), 60, alive, None, NEVER_STARTED, "never_started"),
    ("starting-no-beat-yet", job(), 10, alive, None, RUNNING, "ok"),
    ("starting-local-pid-vouches", job(), 25 * 60 - 10 - 5 * 60, alive, None, RUNNING, "ok"),
    ("remote-no-beat-after-30s", job(host="elsewhere"), 45, dead, None, WARNING, "heartbeat_stale"),
    ("training", job(heartbeat_at=T0 + 100, progress_at=T0 + 99, last_step=10), 103, alive, None, RUNNING, "ok"),
    ("one-beat-late", job(heartbeat_at=T0 + 100, progress_at=T0 + 99, last_step=10), 113, alive, None, WARNING,
     "heartbeat_late"),
    ("beat-stale-progress-in-budget", job(heartbeat_at=T0 + 100, progress_at=T0 + 99, last_step=10), 140, alive,
     None, WARNING, "heartbeat_stale"),
    ("alive-but-no-progress", job(heartbeat_at=T0 + 500, progress_at=T0 + 100, last_step=10), 502, alive, None,
     WARNING, "no_progress"),
    ("both-stale", job(heartbeat_at=T0 + 450, progress_at=T0 + 100, last_step=10), 500, alive, None, TIMED_OUT,
     "stall"),
    ("fixed-hang-timeout-from-settings", job(heartbeat_at=T0 + 160, progress_at=T0 + 100, last_step=10,
                                             settings={"hang_timeout": 50}), 162, alive, None, WARNING,
     "no_progress"),
    ("no-first-step-in-grace", job(heartbeat_at=T0 + 600), 602, alive, None, RUNNING, "ok"),
    ("no-first-step-after-grace", job(heartbeat_at=T0 + 1300), 1302, alive, None, WARNING, "no_progress"),
    ("startup-grace-from-settings", job(heartbeat_at=T0 + 100, settings={"startup_grace": 60}), 102, alive, None,
     WARNING, "no_progress"),
    ("never-started-after-grace", job(host="elsewhere"), 1300, dead, None, NEVER_STARTED, "never_started"),
    ("long-eval-phase-is-not-a-stall", job(heartbeat_at=T0 + 1000, progress_at=T0 + 100, last_step=10), 1002,
     alive, phase_start("eval", T0 + 110), RUNNING, "ok"),
    ("eval-phase-over-its-budget", job(heartbeat_at=T0 + 2000, progress_at=T0 + 100, last_step=10), 2002, alive,
     phase_start("eval", T0 + 110), WARNING, "no_progress"),
    ("hang-suspected-event", job(heartbeat_at=T0 + 200, progress_at=T0 + 100, last_step=10), 202, alive,
     {"event_type": "hang_suspected", "timestamp": T0 + 190, "details": {"phase": "train", "last_step": 10}},
     WARNING, "hang_suspected"),
    ("recovered-after-hang", job(heartbeat_at=T0 + 300, progress_at=T0 + 299, last_step=11), 301, alive,
     {"event_type": "hang_suspected", "timestamp": T0 + 190, "details": {"phase": "train"}}, RUNNING, "ok"),
    ("local-pid-gone-no-beats", job(), 5, dead, None, FAILED, "no_end_event"),
    ("local-pid-gone-beats-stopped", job(heartbeat_at=T0 + 100, progress_at=T0 + 100, last_step=3), 120, dead,
     None, FAILED, "no_end_event"),
    ("local-pid-gone-but-fresh-beats", job(heartbeat_at=T0 + 100, progress_at=T0 + 100, last_step=3), 102, dead,
     None, RUNNING, "ok"),
    ("remote-pid-never-probed", job(host="elsewhere", heartbeat_at=T0 + 100, progress_at=T0 + 100, last_step=3),
     102, dead, None, RUNNING, "ok"),
    ("sampler-off-local-pid-is-liveness", job(progress_at=T0 + 100, last_step=3, settings={"sample_interval": 0}),
     160, alive, None, RUNNING, "ok"),
]


@pytest.mark.parametrize("row, offset, probe, event, state, cause", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_compute_status_table(row: dict[str, Any], offset: float, probe: Any, event: Any, state: str,
                              cause: str) -> None:
    """Each row of the state machine, with an injected clock and pid probe."""
    st = compute_status(row, now=T0 + offset, stale_after=30.0, host=HERE, pid_alive=probe, last_event=event)
    assert (st.state, st.cause) == (state, cause), st
    assert st.reason


def test_remote_pid_is_never_probed() -> None:
    """A job on another host: its pid means nothing here."""
    calls: list[int] = []

    def probe(pid: int) -> bool:
        calls.append(pid)
        return False

    compute_status(job(host="elsewhere", heartbeat_at=T0), now=T0 + 1, host=HERE, pid_alive=probe)
    assert calls == []


def test_stale_after_is_the_liveness_limit() -> None:
    """--stale-minutes moves the point where a silent run stops being merely late."""
    row = job(heartbeat_at=T0 + 100, progress_at=T0 + 100, last_step=3)
    assert compute_status(row, now=T0 + 200, stale_after=30, host=HERE, pid_alive=alive).cause == "heartbeat_stale"
    assert compute_status(row, now=T0 + 200, stale_after=600, host=HERE, pid_alive=alive).cause == "heartbeat_late"


def test_warning_reason_names_the_ages_and_budget() -> None:
    st = compute_status(job(heartbeat_at=T0 + 500, progress_at=T0 + 100, last_step=10), now=T0 + 502,
                        host=HERE, pid_alive=alive)
    assert st.reason == "no progress for 6m42s (budget 5m00s)"
    assert st.since == T0 + 100 + 300
    assert st.details["progress_budget"] == 300


@pytest.mark.parametrize("row, event, cause, words", [
    (job(status="failed"), {"event_type": "cuda_oom", "details": {"message": "CUDA out of memory. Tried 2 GiB"}},
     "cuda_oom", "CUDA out of memory"),
    (job(status="failed"), {"event_type": "exception",
                            "details": {"type": "OutOfMemoryError", "message": "CUDA out of memory."}},
     "cuda_oom", "CUDA out of memory"),
    (job(status="failed", exit_signal=9), None, "oom_or_external_kill", "SIGKILL"),
    (job(status="failed"), {"event_type": "host_oom_suspected", "details": {}}, "host_oom", "OOM killer"),
    (job(status="failed"), {"event_type": "exception", "details": {
        "type": "DistBackendError",
        "message": "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=808)"}},
     "nccl_timeout", "NCCL"),
    (job(status="failed", exit_signal=6, world_size=8), None, "nccl_timeout", "SIGABRT"),
    (job(status="failed", exit_signal=6), None, "signal", "SIGABRT"),
    (job(status="failed"), {"event_type": "exception", "details": {"type": "KeyError", "message": "'label'"}},
     "exception", "KeyError: 'label'"),
    (job(status="failed", exit_code=3), None, "exit_code", "code 3"),
    (job(status="failed", status_reason="exception: KeyError"),    # the Monitor's terse reason
     {"event_type": "exception", "details": {"type": "KeyError", "message": "'label'"}}, "exception",
     "KeyError: 'label'"),
    (job(status="failed", status_reason="cuda_oom"), {"event_type": "cuda_oom", "details": {
        "message": "CUDA out of memory. Tried to allocate 2.00 GiB"}}, "cuda_oom", "Tried to allocate 2.00 GiB"),
    (job(status="failed", status_reason="SIGTERM", exit_signal=15),
     {"event_type": "signal", "details": {"signal": "SIGTERM", "signum": 15}}, "signal", "killed by SIGTERM"),
    (job(status="failed", status_reason="killed by SIGKILL (likely the host OOM killer)", exit_signal=9),
     {"event_type": "host_oom_suspected", "details": {}}, "host_oom", "OOM killer"),
    (job(status="failed", status_reason="killed by runlens with SIGKILL (stalled)", exit_signal=9), None,
     "killed_by_runlens", "killed by runlens"),
    (job(status="failed", status_reason="process 12 exited without an end event"), None, "no_end_event",
     "exited without an end event"),
])
def test_failure_reasons(row: dict[str, Any], event: Any, cause: str, words: str) -> None:
    """FAILED carries why: exception, CUDA/host OOM, signal, NCCL timeout."""
    got_cause, reason = classify_failure(row, event)
    assert got_cause == cause
    assert words in reason
    st = compute_status(row, now=T0 + 10, host=HERE, pid_alive=alive, last_event=event)
    assert st.state == FAILED and st.cause == cause


def test_relevant_event_prefers_the_specific_failure() -> None:
    events = [
        {"event_type": "end", "timestamp": T0 + 3, "details": {}},
        {"event_type": "exception", "timestamp": T0 + 2, "details": {"type": "OutOfMemoryError"}},
        {"event_type": "cuda_oom", "timestamp": T0 + 2, "details": {}},
        {"event_type": "phase_start", "timestamp": T0 + 1, "details": {"phase": "eval"}},
    ]
    assert relevant_event(job(status="failed"), events)["event_type"] == "cuda_oom"
    assert relevant_event(job(), events)["event_type"] == "phase_start"
    assert relevant_event(job(), []) is None


def test_leaving_a_nested_phase_returns_to_the_outer_budget() -> None:
    """eval > sample: after sample ends the run is back in eval, with eval's budget from that moment."""
    events = [phase_start("eval", T0 + 10), phase_start("sample", T0 + 20),
              {"event_type": "phase_end", "timestamp": T0 + 30, "details": {"name": "sample"}}]
    ev = relevant_event(job(), events)
    assert ev is not None and ev["details"]["name"] == "eval" and ev["timestamp"] == T0 + 30
    row = job(heartbeat_at=T0 + 1000, progress_at=T0 + 5, last_step=1)
    st = compute_status(row, now=T0 + 1001, host=HERE, pid_alive=alive, last_event=ev)
    assert st.state == RUNNING and st.details["phase"] == "eval"
    events.append({"event_type": "phase_end", "timestamp": T0 + 40, "details": {"name": "eval"}})
    assert relevant_event(job(), events)["event_type"] == "phase_end"


def test_zombie_is_dead() -> None:
    """A killed child nobody reaped is a zombie: psutil.pid_exists says yes, the job is still dead."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.pid_exists(proc.pid)
        assert not pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def sleeper() -> Any:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_status_settles_a_killed_process(tmp_path: Any, sleeper: subprocess.Popen[bytes]) -> None:
    """A running job whose real process was SIGKILLed (no end event) becomes FAILED at the next `status`."""
    db = str(tmp_path / "runlens.db")
    store = open_store(db)
    job_id = store.create_job(name="doomed", pid=sleeper.pid, started_at=time.time())
    other = store.create_job(name="fine", pid=os.getpid(), started_at=time.time())
    result = CliRunner().invoke(cli, ["status", job_id, "--db", db])
    assert result.exit_code == 0, result.output
    assert "RUNNING" in result.output

    sleeper.kill()
    sleeper.wait()
    result = CliRunner().invoke(cli, ["status", "--db", db])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith(job_id))
    assert "FAILED" in line and f"process {sleeper.pid} exited without an end event" in line
    row = store.get_job(job_id)
    assert row["status"] == "failed"
    assert row["status_reason"] == f"process {sleeper.pid} exited without an end event"
    assert row["ended_at"] is not None
    assert store.get_job(other)["status"] == "running"   # this test process is alive

    result = CliRunner().invoke(cli, ["status", job_id, "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    assert '"state": "FAILED"' in result.output
    store.close()


def test_settle_leaves_a_job_that_ended_properly(tmp_path: Any, sleeper: subprocess.Popen[bytes]) -> None:
    """The row is re-read after the pid is seen dead: an end status written meanwhile wins."""
    store = open_store(str(tmp_path / "runlens.db"))
    job_id = store.create_job(name="ok", pid=sleeper.pid, started_at=time.time())
    stale_view = store.list_jobs()
    store.update_job(job_id, status="succeeded", ended_at=time.time(), exit_code=0)
    sleeper.kill()
    sleeper.wait()
    assert settle_dead_jobs(store, jobs=stale_view) == []
    assert store.get_job(job_id)["status"] == "succeeded"
    store.close()


def test_status_of_unknown_job_is_bad_input(tmp_path: Any) -> None:
    db = str(tmp_path / "runlens.db")
    open_store(db).close()
    result = CliRunner().invoke(cli, ["status", "nope", "--db", db])
    assert result.exit_code == 2
    assert "no job with id 'nope'" in result.output
