"""Hang detection: the calibration math, the evidence parsers and cause labels, the hang rule and goodput on
hand-built jobs, and (marked slow) real processes that really hang: a lock deadlock, a native call holding the
GIL, a DataLoader worker that never returns, a child that prints and then goes silent; plus runs that must NOT
be called hung (a long eval phase, slow but steady steps) and the on-demand SIGUSR2 stack dump."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from runlens.analyze.health import goodput
from runlens.analyze.jobdata import JobData
from runlens.analyze.rules import hangs as hang_rules
from runlens.collect import stacks as capture
from runlens.core import stacks as st
from runlens.collect.hangguard import HANG_EXIT_CODE, GuardConfig
from runlens.collect.watchdog import HangSettings, Progress, StallBudget, Watchdog, phase_budget
from runlens.core.settings import Settings
from runlens.store import open_store

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
T0 = 1_700_000_000.0


# -- calibration ----------------------------------------------------------------------------------------

def test_timeout_before_the_first_step_is_the_startup_grace() -> None:
    b = StallBudget(HangSettings())
    assert b.timeout(steps=0) == (1200.0, "startup")


def test_timeout_is_uncalibrated_until_enough_steps_after_warmup() -> None:
    """300 s until calibration_steps (20) intervals were seen after warmup_steps (5)."""
    b = StallBudget(HangSettings())
    for _ in range(5 + 19):
        b.observe(1.0)
    assert b.timeout(steps=25) == (300.0, "uncalibrated")
    b.observe(1.0)
    assert b.timeout(steps=26) == (120.0, "calibrated")   # 5 x 1 s, floored at 120 s


def test_calibrated_timeout_is_five_times_the_slowest_recent_step_clamped() -> None:
    b = StallBudget(HangSettings(warmup_steps=0, calibration_steps=3))
    for x in (30.0, 40.0, 35.0):
        b.observe(x)
    assert b.timeout(steps=3) == (200.0, "calibrated")    # 5 x 40 s
    b.observe(500.0)
    assert b.timeout(steps=4) == (900.0, "calibrated")    # capped at 15 min


def test_calibration_forgets_steps_older_than_the_window() -> None:
    b = StallBudget(HangSettings(warmup_steps=0, calibration_steps=1, calibration_window=100))
    b.observe(100.0)
    for _ in range(100):
        b.observe(30.0)
    assert b.timeout(steps=101) == (150.0, "calibrated")


def test_warmup_steps_are_left_out_of_the_calibration() -> None:
    """A slow first step (torch.compile) must not inflate the timeout for the rest of the run."""
    b = StallBudget(HangSettings(warmup_steps=5, calibration_steps=2))
    for x in (600.0, 500.0, 400.0, 300.0, 200.0, 30.0, 30.0):
        b.observe(x)
    assert b.timeout(steps=7) == (150.0, "calibrated")


def test_fixed_hang_timeout_replaces_the_step_timeout_but_not_phase_budgets_or_startup() -> None:
    b = StallBudget(HangSettings(hang_timeout=42.0))
    assert b.timeout(steps=3) == (42.0, "fixed")
    assert b.timeout(steps=0) == (1200.0, "startup")
    assert b.timeout(steps=3, phase="eval") == (1800.0, "phase")


def test_phase_budgets_match_aliases_and_prefixes_and_grow_with_the_last_duration() -> None:
    budgets = HangSettings().phase_budgets
    assert phase_budget("Evaluation", budgets) == 1800.0
    assert phase_budget("checkpoint_save", budgets) == 1800.0
    assert phase_budget("eval_loop", budgets) == 1800.0
    assert phase_budget("train", budgets) is None
    b = StallBudget(HangSettings())
    assert b.timeout(steps=10, phase="eval", last_phase_duration=600.0) == (3000.0, "phase")
    assert b.timeout(steps=10, phase="init") == (300.0, "uncalibrated")   # a phase without a budget


def test_hang_settings_come_from_settings_and_env() -> None:
    from runlens.core.settings import settings_from_env

    s = settings_from_env(Settings(), {"RUNLENS_HANG_TIMEOUT": "90", "RUNLENS_STARTUP_GRACE": "60"})
    hs = HangSettings.from_settings(s)
    assert (hs.hang_timeout, hs.startup_grace) == (90.0, 60.0)


def test_hard_timeout_defaults_to_soft_plus_max_soft_or_five_minutes() -> None:
    """hard = soft + max(soft, 300 s); an explicit hard timeout never fires before the soft one."""
    cfg = GuardConfig(hang=HangSettings(hang_timeout=120.0))
    assert cfg.kill_armed and cfg.hard_after(120.0) == 420.0
    assert cfg.hard_after(600.0) == 1200.0
    explicit = GuardConfig(hang=HangSettings(), hard_timeout=60.0)
    assert explicit.kill_armed and explicit.hard_after(1800.0) == 1800.0 and explicit.hard_after(10.0) == 60.0
    assert not GuardConfig(hang=HangSettings()).kill_armed


def test_step_intervals_across_a_phase_are_not_calibration_input() -> None:
    wd = Watchdog(lambda: Progress(0.0, None, None, None, 0), HangSettings(warmup_steps=0, calibration_steps=1),
                  lambda *a: None)
    wd.observe_step(10.0, 1.0)
    wd.phase_marks.extend([10.5, 70.0])       # an eval from 10.5 to 70
    wd.observe_step(71.0, 61.0)               # the step after the eval: not a step time
    wd.observe_step(72.0, 1.0)
    assert list(wd.budget.intervals) == [1.0, 1.0]


# -- the in-process watchdog on a fake loop ---------------------------------------------------------------

def test_watchdog_reports_a_stall_then_its_recovery(tmp_path: Path) -> None:
    """A loop whose progress stops: hang_suspected within the timeout plus a poll, with this thread's stacks;
    progress again: recovered with the stall's length."""
    events: list[tuple[str, dict[str, Any], float | None]] = []
    state = {"last": time.perf_counter(), "steps": 3}

    def progress() -> Progress:
        return Progress(state["last"], state["steps"] - 1, None, None, state["steps"])

    wd = Watchdog(progress, HangSettings(hang_timeout=0.5), lambda t, d, at: events.append((t, d, at)),
                  stacks_path=tmp_path / "stacks.txt", py_spy=False).start()
    try:
        t0 = time.perf_counter()
        state["last"] = t0
        while not any(e[0] == "hang_suspected" for e in events) and time.perf_counter() - t0 < 10:
            time.sleep(0.02)
        found = time.perf_counter() - t0
        state["last"], state["steps"] = time.perf_counter(), 4
        while not any(e[0] == "recovered" for e in events) and time.perf_counter() - t0 < 10:
            time.sleep(0.02)
    finally:
        wd.stop()
    hang = next(d for t, d, _ in events if t == "hang_suspected")
    assert 0.5 <= found < 0.5 + 2.0, found
    assert hang["timeout_kind"] == "fixed" and hang["last_step"] == 2 and hang["phase"] == "train"
    assert hang["stack_source"] == "sys._current_frames"
    assert "test_watchdog_reports_a_stall_then_its_recovery" in hang["stacks"]
    rec = next(d for t, d, _ in events if t == "recovered")
    assert rec["stall_seconds"] >= 0.5
    text = (tmp_path / "stacks.txt").read_text()
    assert text.startswith("# runlens stacks file") and "# runlens watchdog: stall suspected" in text


# -- evidence parsing and cause labels -----------------------------------------------------------------

FAULTHANDLER_DUMP = """# runlens stacks file: pid 4242, on-demand signal SIGUSR2, opened 2026-11-22 11:56:06
Timeout (0:00:02)!
Thread 0x00007fad025f96c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait
  File "/work/runlens/collect/watchdog.py", line 364 in _run

Thread 0x00007fad069bab80 (most recent call first):
  File "/work/train.py", line 15 in hold_the_gil_forever
  File "/work/train.py", line 40 in main
  File "/work/train.py", line 65 in <module>
Thread 0x00007fad025f96c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait

Current thread 0x00007fad069bab80 (most recent call first):
  File "/work/train.py", line 15 in hold_the_gil_forever
  File "/work/train.py", line 65 in <module>
"""


def test_faulthandler_text_splits_into_timer_and_signal_dumps() -> None:
    dumps = st.parse_faulthandler(FAULTHANDLER_DUMP, pid=4242)
    assert [d.kind for d in dumps] == ["timeout", "signal"]
    main = st.main_thread(dumps[0].threads)
    assert main is not None and main.frames[0].function == "hold_the_gil_forever" and main.frames[0].line == 15
    assert dumps[1].threads[-1].current
    assert all(t.pid == 4242 for t in dumps[0].threads)


PY_SPY_JSON = [
    {"pid": 7751, "thread_id": 1, "thread_name": "bgthread", "os_thread_id": 7753, "active": False,
     "owns_gil": False, "frames": [{"name": "bg", "filename": "/tmp/gil.py", "line": 3}]},
    {"pid": 7751, "thread_id": 2, "thread_name": "MainThread", "os_thread_id": 7751, "active": False,
     "owns_gil": True, "frames": [{"name": "hold_the_gil", "filename": "/tmp/gil.py", "line": 6},
                                  {"name": "<module>", "filename": "/tmp/gil.py", "line": 8}]},
]


def test_py_spy_json_parses_and_idle_with_the_gil_is_a_native_call() -> None:
    """py-spy 0.4.3's output as measured on a stalled loop: MainThread idle + owns_gil."""
    threads = st.parse_py_spy(PY_SPY_JSON)
    assert threads[0].main and threads[0].name == "MainThread" and threads[0].owns_gil
    assert st.label_cause(threads) == "native_gil"
    culprit = st.culprit(threads, "native_gil")
    assert culprit is not None and culprit.function == "hold_the_gil"


def _t(*frames: tuple[str, str, str | None], pid: int = 1, main: bool = True, **kw: Any) -> st.ThreadStack:
    return st.ThreadStack(name="MainThread" if main else "worker", pid=pid, main=main,
                          frames=[st.Frame(f, 10, fn, code) for f, fn, code in frames], **kw)


TORCH = "/venv/lib/python3.11/site-packages/torch"


@pytest.mark.parametrize("threads, processes, cause", [
    ([_t(("/usr/lib/python3.11/multiprocessing/queues.py", "get", None),
         (f"{TORCH}/utils/data/dataloader.py", "_try_get_data", None),
         (f"{TORCH}/utils/data/dataloader.py", "_get_data", None), ("/w/train.py", "main", None))], [], "dataloader"),
    ([_t((f"{TORCH}/distributed/distributed_c10d.py", "all_reduce", None), ("/w/train.py", "step", None))], [],
     "collective"),
    ([_t((f"{TORCH}/distributed/distributed_c10d.py", "barrier", None))], [], "collective"),
    ([_t(("/w/train.py", "main", "x = 1"))], [st.ProcessState(1, status="D", wchan="nfs_wait")], "io"),
    ([_t((f"{TORCH}/serialization.py", "_save", None), (f"{TORCH}/serialization.py", "save", None),
         ("/w/train.py", "checkpoint", "torch.save(model.state_dict(), path)"))], [], "io"),
    ([_t(("/w/train.py", "deadlock_on_lock", "lock.acquire()"))], [], "lock"),
    ([_t(("/usr/lib/python3.11/threading.py", "wait", None), ("/usr/lib/python3.11/threading.py", "join", None),
         ("/w/train.py", "main", "t.join()"))], [], "lock"),
    ([_t(("/w/train.py", "retry", "time.sleep(backoff)"))], [], "sleep"),
    ([_t(("/w/train.py", "loop", "x += 1"), owns_gil=True, active=True)], [], "busy"),
    ([_t(("/w/train.py", "main", "y = f(x)"))], [], "unknown"),
])
def test_label_cause_on_recorded_evidence(threads: list[st.ThreadStack], processes: list[st.ProcessState],
                                          cause: str) -> None:
    assert st.label_cause(threads, processes) == cause


def test_a_starved_watchdog_means_a_native_call_held_the_gil() -> None:
    threads = [_t(("/w/train.py", "call_into_c", "lib.run(x)"))]
    assert st.label_cause(threads, watchdog_starved=True) == "native_gil"


def test_process_state_reads_proc() -> None:
    me = capture.process_state(os.getpid(), "main")
    assert me.status in ("R", "S") and me.name


def test_py_spy_failure_says_why() -> None:
    r = capture.py_spy_dump(os.getpid(), exe="/nonexistent/py-spy")
    assert r.threads is None and "py-spy could not run" in (r.error or "")


def test_without_py_spy_the_evidence_says_which_source_was_used_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """No py-spy: this process's stacks come from sys._current_frames, the child has none, and both say why."""
    monkeypatch.setattr(capture, "py_spy_path", lambda: None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ev = capture.gather(os.getpid(), own_threads=capture.current_threads())
    finally:
        child.kill()
        child.wait()
    assert ev.stack_source == "sys._current_frames"
    (kid,) = [p for p in ev.processes if p.pid == child.pid]
    assert kid.stack_error is not None and "py-spy is not installed" in kid.stack_error
    assert any("py-spy is not installed" in n for n in ev.notes)
    assert "test_without_py_spy_the_evidence_says_which_source_was_used_and_why" in ev.stacks_text


def test_py_spy_permission_error_names_the_fix() -> None:
    msg = capture._py_spy_error("Error: Permission Denied: Try running again with elevated permissions by going 'sudo'")
    assert "cannot attach" in msg and "SYS_PTRACE" in msg and "ptrace_scope" in msg


# -- the hang rule and goodput on a hand-built job -------------------------------------------------------

def _job(events: list[dict[str, Any]], *, status: str = "timed_out", n: int = 20, dt: float = 1.0,
         config: dict[str, Any] | None = None, dialect: str = "generic", end: float | None = None) -> JobData:
    ts = T0 + 5 + dt * np.arange(1, n + 1)
    steps = pd.DataFrame({"step": np.arange(n), "timestamp": ts, "loss": np.linspace(2, 1, n),
                          "step_time_seconds": np.full(n, dt), "data_time_seconds": np.zeros(n)})
    ev = pd.DataFrame([{"id": i + 1, "memory_snapshot_id": None, "host": "h", "rank": None, "step": None,
                        "details": {}, **e} for i, e in enumerate(events)],
                      columns=["id", "timestamp", "event_type", "details", "memory_snapshot_id", "host", "rank",
                               "step"])
    row = {"job_id": "j1", "name": "j", "status": status, "started_at": T0,
           "ended_at": end if end is not None else float(ts[-1]) + 100.0, "environment": {"cpu_count": 8}}
    return JobData(job=row, steps=steps, samples=pd.DataFrame(), events=ev, config=config, dialect=dialect,
                   settings=Settings(hang_timeout=60.0))


def _dataloader_hang(t: float) -> dict[str, Any]:
    threads = [
        {"name": "MainThread", "pid": 100, "main": True, "frames": [
            {"file": f"{TORCH}/utils/data/dataloader.py", "line": 1291, "function": "_try_get_data"},
            {"file": "/w/train.py", "line": 51, "function": "main"}]},
        {"name": "MainThread", "pid": 101, "main": True, "frames": [
            {"file": "/w/train.py", "line": 25, "function": "wait_forever_for_item"},
            {"file": "/w/train.py", "line": 40, "function": "StuckDataset.__getitem__"},
            {"file": f"{TORCH}/utils/data/_utils/worker.py", "line": 349, "function": "_worker_loop"}]}]
    processes = [{"pid": 100, "status": "S", "role": "main"}, {"pid": 101, "status": "S", "role": "worker"},
                 {"pid": 102, "status": "S", "role": "worker"}]
    return {"timestamp": t, "event_type": "hang_suspected",
            "details": {"phase": "train", "last_step": 19, "seconds_since_progress": 60.0, "timeout": 60.0,
                        "timeout_kind": "fixed", "pid": 100, "threads": threads, "processes": processes,
                        "stacks": "...", "stack_source": "sys._current_frames", "detected_by": "monitor"}}


def test_hang_rule_names_the_stuck_worker_frame_and_points_at_num_workers() -> None:
    """A DataLoader stall killed by runlens: critical, the worker's frame named, the dialect's num_workers path,
    the timeout settings behind the verdict in the evidence; the lost time runs from last progress to the end."""
    last_step = T0 + 25
    data = _job([_dataloader_hang(last_step + 60),
                 {"timestamp": last_step + 120, "event_type": "killed_by_runlens", "details": {"reason": "x"}}],
                config={"dataloader_num_workers": 2, "per_device_train_batch_size": 8}, dialect="huggingface",
                end=last_step + 125)
    (f,) = hang_rules.stall_findings(data)
    assert f.severity == "critical" and f.category == "hangs"
    assert "DataLoader" in f.title and "killed" in f.title
    assert f.evidence["cause"] == "dataloader"
    assert f.evidence["culprit"] == "wait_forever_for_item (train.py:25)"
    assert "timeout=" in f.action and "/dev/shm" in f.action and "2 workers" in f.action
    assert f.config_path.endswith("dataloader_num_workers") and f.current_value == 2
    assert f.evidence["stall_seconds"] == pytest.approx(125.0)
    assert f.evidence["settings"]["hang_timeout"] == 60.0


def test_hang_rule_labels_old_evidence_and_merges_duplicate_reports() -> None:
    """No cause stored: the rule labels it from the threads; the Monitor's and runlens collect's events of one
    stall give one finding, warning level when the run recovered."""
    last = T0 + 25
    lock_threads = [{"name": "MainThread", "pid": 1, "main": True,
                     "frames": [{"file": "/w/t.py", "line": 9, "function": "deadlock", "code": "lock.acquire()"}]}]
    data = _job([
        {"timestamp": last + 30, "event_type": "hang_suspected",
         "details": {"seconds_since_progress": 30.0, "threads": lock_threads, "pid": 1, "last_step": 19}},
        {"timestamp": last + 31, "event_type": "hang_suspected",
         "details": {"seconds_since_progress": 31.0, "threads": lock_threads, "pid": 1, "last_step": 19,
                     "detected_by": "runlens collect"}},
        {"timestamp": last + 50, "event_type": "recovered", "details": {"stall_seconds": 50.0}},
    ], status="succeeded")
    (f,) = hang_rules.stall_findings(data)
    assert f.severity == "warning" and f.evidence["cause"] == "lock" and f.evidence["recovered"]
    assert f.evidence["culprit"] == "deadlock (t.py:9)"
    assert f.evidence["stall_seconds"] == pytest.approx(50.0)


def test_goodput_counts_a_hang_inside_an_eval_phase_as_hang_time() -> None:
    """An eval that hangs and is killed: the time after the last progress is stalls_and_hangs, not eval."""
    last = T0 + 25
    data = _job([
        {"timestamp": last + 1, "event_type": "phase_start", "details": {"name": "eval"}},
        {"timestamp": last + 101, "event_type": "hang_suspected",
         "details": {"phase": "eval", "seconds_since_progress": 100.0}},
    ], end=last + 201)
    g = goodput(data)
    assert g["lost_seconds"]["stalls_and_hangs"] == pytest.approx(200.0)
    assert g["lost_seconds"]["eval_and_checkpoints"] == pytest.approx(0.0, abs=1e-6)


def test_no_hang_events_no_findings() -> None:
    assert hang_rules.stall_findings(_job([], status="succeeded")) == []


# -- real processes that really hang -------------------------------------------------------------------

@pytest.fixture
def env(child_env: dict[str, str]) -> dict[str, str]:
    """The wrapper's environment: fast flushes and samples, a start-up grace that a loaded machine cannot trip."""
    return {**child_env, "RUNLENS_FLUSH_INTERVAL": "0.2", "RUNLENS_SAMPLE_INTERVAL": "0.5",
            "RUNLENS_STARTUP_GRACE": "120"}


def collect(tmp_path: Path, env: dict[str, str], flags: list[str], script: str, *args: str,
            timeout: float = 150) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    db = tmp_path / "runlens.db"
    argv = [sys.executable, "-m", "runlens", "collect", "--db", str(db), *flags, "--",
            sys.executable, str(SCRIPTS / script), *args]
    t0 = time.monotonic()
    proc = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - t0
    return proc, {**read_job(db), "elapsed": elapsed}


def read_job(db: Path) -> dict[str, Any]:
    s = open_store(str(db))
    try:
        (job,) = s.list_jobs()
        jid = job["job_id"]
        return {"job": s.get_job(jid), "steps": s.rows("step_metrics", jid, order_by="step"),
                "events": s.rows("training_events", jid, order_by="timestamp")}
    finally:
        s.close()


def events_of(run: dict[str, Any], etype: str) -> list[dict[str, Any]]:
    return [e for e in run["events"] if e["event_type"] == etype]


def latency(run: dict[str, Any], hang: dict[str, Any]) -> float:
    """Seconds from the last stored step to the stall's detection."""
    return float(hang["timestamp"]) - max(float(s["timestamp"]) for s in run["steps"])


def assert_killed_timed_out(proc: subprocess.CompletedProcess[str], run: dict[str, Any]) -> None:
    assert proc.returncode == HANG_EXIT_CODE, (proc.returncode, proc.stderr[-3000:])
    job = run["job"]
    assert job["status"] == "timed_out", job
    assert job["status_reason"].startswith("killed by runlens"), job["status_reason"]
    assert events_of(run, "killed_by_runlens"), [e["event_type"] for e in run["events"]]
    assert job["pid"] is not None and not _alive(job["pid"])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


TIMINGS: dict[str, float] = {}


@pytest.mark.slow
def test_lock_deadlock_is_detected_evidenced_and_killed(tmp_path: Path, env: dict[str, str]) -> None:
    """(a) A loop that deadlocks on a threading.Lock at step 8: the Monitor's watchdog reports it within the
    timeout plus a margin, its stacks name the function, runlens collect kills it at the hard timeout, the job
    ends TIMED_OUT with exit 124, and steps 0-7 are all stored."""
    proc, run = collect(tmp_path, env, ["--hang-timeout", "2", "--hard-timeout", "5", "--kill-grace", "2"],
                        "hang_lock.py", "--hang-at", "8")
    assert_killed_timed_out(proc, run)
    assert [s["step"] for s in run["steps"]] == list(range(8))
    (hang,) = events_of(run, "hang_suspected")
    d = hang["details"]
    assert d["detected_by"] == "monitor" and d["cause"] == "lock" and d["timeout_kind"] == "fixed"
    assert "deadlock_on_lock" in d["stacks"] and d["stack_source"] == "sys._current_frames"
    assert d["last_step"] == 7 and d["phase"] == "train"
    TIMINGS["lock"] = lag = latency(run, hang)
    assert 2.0 <= lag <= 2.0 + 2.5, lag
    assert "phase train" in run["job"]["status_reason"]
    assert hang["memory_snapshot_id"] is not None      # a fresh system sample with the evidence
    # The analysis and the report carry the stall, its cause and the stacks.
    db = tmp_path / "runlens.db"
    out = tmp_path / "report.html"
    res = subprocess.run([sys.executable, "-m", "runlens", "analyze", run["job"]["job_id"], "--db", str(db),
                          "--json", "--html", str(out)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode in (0, 3), res.stderr[-2000:]
    doc = json.loads(res.stdout)
    rec = next(r for r in doc["recommendations"] if r["id"] == "hangs.stall")
    assert rec["severity"] == "critical" and rec["evidence"]["culprit"].startswith("deadlock_on_lock")
    assert doc["summary"]["goodput"]["lost_seconds"]["stalls_and_hangs"] >= 4.0
    html = out.read_text()
    assert "deadlock_on_lock" in html and "Stacks" in html


@pytest.mark.slow
def test_native_call_holding_the_gil_is_caught_from_outside(tmp_path: Path, env: dict[str, str]) -> None:
    """(b) A native deadlock with the GIL held at step 6: the Monitor's Python watchdog is starved (it records
    nothing), faulthandler's C timer still dumps the stacks, runlens collect turns that into hang_suspected with
    py-spy's view (the GIL held), kills the child (SIGTERM cannot run a Python handler, so SIGKILL after the
    grace), and steps 0-5 are stored."""
    proc, run = collect(tmp_path, env, ["--hang-timeout", "2", "--hard-timeout", "6", "--kill-grace", "2"],
                        "hang_gil.py", "--hang-at", "6")
    assert_killed_timed_out(proc, run)
    assert [s["step"] for s in run["steps"]] == list(range(6))
    hangs = events_of(run, "hang_suspected")
    assert [h["details"]["detected_by"] for h in hangs] == ["runlens collect"], "the Python watchdog was not starved"
    d = hangs[0]["details"]
    assert d["watchdog_starved"] and d["cause"] == "native_gil"
    assert "hold_the_gil_forever" in d["stacks"]
    assert d["stack_source"] in ("py-spy", "faulthandler")
    if capture.py_spy_path() is not None:
        main = st.main_thread(hang_rules.threads_of(d), d["pid"])
        assert main is not None and main.owns_gil
    TIMINGS["gil"] = lag = latency(run, hangs[0])
    assert 1.5 <= lag <= 2.0 + 3.0, lag
    assert run["job"]["exit_signal"] == signal.SIGKILL
    # faulthandler's timer dump is in the stacks file, naming the function.
    stacks_file = Path(d["stacks_file"])
    text = stacks_file.read_text()
    assert "Timeout (" in text and "hold_the_gil_forever" in text


@pytest.mark.slow
def test_dataloader_worker_that_never_returns(tmp_path: Path, env: dict[str, str]) -> None:
    """(c) A DataLoader worker stuck in __getitem__ (num_workers=2, timeout=0): the main thread waits in the
    loader; the evidence holds the worker's stack from py-spy, the cause is dataloader, the whole process group
    (workers included) is killed."""
    proc, run = collect(tmp_path, env, ["--hang-timeout", "3", "--hard-timeout", "7", "--kill-grace", "3"],
                        "hang_dataloader.py", "--stuck-at", "6", timeout=240)
    assert_killed_timed_out(proc, run)
    assert [s["step"] for s in run["steps"]] == list(range(6))
    (hang,) = events_of(run, "hang_suspected")
    d = hang["details"]
    assert d["cause"] == "dataloader" and d.get("in_loader")
    assert "_try_get_data" in d["stacks"]
    workers = [p for p in d["processes"] if p["role"] == "worker"]
    assert len(workers) == 2
    if capture.py_spy_path() is not None:
        assert "wait_forever_for_item" in d["stacks"]
    TIMINGS["dataloader"] = lag = latency(run, hang)
    assert 3.0 <= lag <= 3.0 + 3.0, lag
    assert not any(_alive(p["pid"]) for p in d["processes"])


@pytest.mark.slow
@pytest.mark.parametrize("flags, kind", [
    (["--no-output-timeout", "2", "--kill-grace", "2"], "no_output"),
    (["--hang-timeout", "2", "--hard-timeout", "4", "--kill-grace", "2"], "fixed"),
])
def test_child_that_prints_then_goes_silent(tmp_path: Path, env: dict[str, str], flags: list[str],
                                            kind: str) -> None:
    """(d) A child that never calls runlens: its output is the only progress there is, so silence past the
    timeout is a stall; py-spy names the function, the child is killed, every printed line is in the log."""
    proc, run = collect(tmp_path, env, flags, "print_then_stall.py", "--lines", "10")
    assert_killed_timed_out(proc, run)
    (hang,) = events_of(run, "hang_suspected")
    d = hang["details"]
    assert d["progress_source"] == "output" and d["timeout_kind"] == kind and d["detected_by"] == "runlens collect"
    if capture.py_spy_path() is not None:
        assert "stall_without_output" in d["stacks"] and d["stack_source"] == "py-spy"
    TIMINGS[f"silent-{kind}"] = d["seconds_since_progress"]
    assert 2.0 - 0.5 <= d["seconds_since_progress"] <= 2.0 + 1.5
    log = Path(run["job"]["log_path"]).read_text().splitlines()
    assert [ln for ln in log if ln.startswith("step ")] == [f"step {i} loss {1.0 / (i + 1):.4f}" for i in range(10)]
    assert "no output" in run["job"]["status_reason"] or kind == "fixed"


@pytest.mark.slow
def test_long_eval_phase_is_not_a_hang(tmp_path: Path, env: dict[str, str]) -> None:
    """An eval phase longer than the step timeout (5 s vs 1.5 s), inside its budget: no hang_suspected, no kill."""
    monitor = json.dumps({"phase_budgets": {"eval": 30}})
    proc, run = collect(tmp_path, env, ["--hang-timeout", "1.5", "--hard-timeout", "3"], "steady_loop.py",
                        "--steps", "6", "--step-time", "0.2", "--eval-at", "2", "--eval-seconds", "5",
                        "--monitor", monitor)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run["job"]["status"] == "succeeded"
    assert not events_of(run, "hang_suspected") and not events_of(run, "killed_by_runlens")
    (end,) = events_of(run, "phase_end")
    assert end["details"]["duration_seconds"] >= 5.0
    assert [s["step"] for s in run["steps"]] == list(range(6))


@pytest.mark.slow
def test_slow_but_steady_steps_are_not_a_hang(tmp_path: Path, env: dict[str, str]) -> None:
    """1 s steps under a 3 s fixed timeout, and 0.6 s steps under a self-calibrated one (5 x 0.6 s): no alarm."""
    proc, run = collect(tmp_path, env, ["--hang-timeout", "3", "--hard-timeout", "6"], "steady_loop.py",
                        "--steps", "8", "--step-time", "1.0")
    assert proc.returncode == 0 and run["job"]["status"] == "succeeded", proc.stderr[-3000:]
    assert not events_of(run, "hang_suspected")
    calibrating = json.dumps({"warmup_steps": 2, "calibration_steps": 4, "calibrated_min": 2.0,
                              "uncalibrated_timeout": 5.0})
    sub = tmp_path / "calibrated"
    sub.mkdir()
    proc, run = collect(sub, env, [], "steady_loop.py", "--steps", "12", "--step-time", "0.6",
                        "--monitor", calibrating)
    assert proc.returncode == 0 and run["job"]["status"] == "succeeded", proc.stderr[-3000:]
    assert not events_of(run, "hang_suspected")
    (detached,) = events_of(run, "monitor_detached")
    wd = detached["details"]["watchdog"]
    assert wd["step_timeout_kind"] == "calibrated" and 2.5 <= wd["step_timeout"] <= 6.0, wd


@pytest.mark.slow
def test_sigusr2_dumps_stacks_without_killing(tmp_path: Path, child_env: dict[str, str]) -> None:
    """SIGUSR2 on demand: a stacks_dumped event naming the loop's function; the run goes on to succeed."""
    pidfile = tmp_path / "pid"
    env = {**child_env, "RUNLENS_DB": str(tmp_path / "runlens.db"), "RUNLENS_FLUSH_INTERVAL": "0.2"}
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "steady_loop.py"), "--steps", "10", "--step-time", "0.4",
                             "--pidfile", str(pidfile)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGUSR2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    run = read_job(tmp_path / "runlens.db")
    assert run["job"]["status"] == "succeeded"
    (dumped,) = events_of(run, "stacks_dumped")
    assert dumped["details"]["signal"] == "SIGUSR2" and "steady_loop.py" in dumped["details"]["stacks"]
    main = st.main_thread(hang_rules.threads_of(dumped["details"]))
    assert main is not None and main.name == "MainThread" and main.frames[-1].function == "<module>"
    assert [s["step"] for s in run["steps"]] == list(range(10))


@pytest.mark.slow
def test_gil_held_for_a_while_is_reported_late_from_the_timer_dump(tmp_path: Path,
                                                                   child_env: dict[str, str]) -> None:
    """No wrapper: a native call holds the GIL for ~4 s past a 2 s timeout, then returns. The starved watchdog
    reports the stall when it gets the GIL back, from faulthandler's dump and at the dump's time, then its
    recovery; the run succeeds."""
    env = {**child_env, "RUNLENS_DB": str(tmp_path / "runlens.db"), "RUNLENS_FLUSH_INTERVAL": "0.2"}
    monitor = json.dumps({"hang_timeout": 2, "startup_grace": 120})
    proc = subprocess.run([sys.executable, str(SCRIPTS / "hang_gil.py"), "--hang-at", "6", "--release-after", "4",
                           "--monitor", monitor], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_job(tmp_path / "runlens.db")
    (hang,) = events_of(run, "hang_suspected")
    d = hang["details"]
    assert d["detected_late"] and d["cause"] == "native_gil" and d["stack_source"] == "faulthandler"
    assert "hold_the_gil_for" in d["stacks"]
    steps = [s for s in run["steps"] if s["step"] <= 5]
    TIMINGS["gil-late"] = lag = float(hang["timestamp"]) - max(float(s["timestamp"]) for s in steps)
    assert 1.5 <= lag <= 2.0 + 1.5, lag
    (rec,) = events_of(run, "recovered")
    assert rec["details"]["stall_seconds"] >= 3.0
    assert run["job"]["status"] == "succeeded"


def teardown_module() -> None:
    if TIMINGS:
        print("\ndetection latencies (s):", {k: round(v, 2) for k, v in TIMINGS.items()}, file=sys.stderr)
