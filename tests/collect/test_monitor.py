"""The Monitor on real SQLite files and in real subprocesses: what a training loop records, and that nothing
recorded is lost on exit, exception, SIGTERM or SIGKILL."""

from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import runlens
from runlens.collect.config import load_config
from runlens.collect.cost import CostLedger
from runlens.core.errors import ConfigError
from runlens.core.redact import REDACTED
from runlens.store import Store, open_store


def _events(store: Store, job_id: str) -> list[dict[str, Any]]:
    return store.rows("training_events", job_id)


def _event_types(store: Store, job_id: str) -> list[str]:
    return [e["event_type"] for e in _events(store, job_id)]


def _run_script(tmp_path: Path, env: dict[str, str], body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


# -- in-process: what a loop records ------------------------------------------------------------------


def test_loop_records_steps_phases_events_samples_and_costs(db_url: str, store: Store) -> None:
    """A plain loop stores every step with step/data time, linked events, samples, costs and a final status."""
    data = list(range(50))
    with runlens.Monitor(name="loop", db=db_url, flush_interval=0.1) as mon:
        for step, _batch in enumerate(mon.loader(data)):
            mon.step(step, loss=1.0 / (step + 1), lr=1e-3, grad_norm=0.5, batch_size=8, tokens=512, acc=0.9)
        with mon.phase("eval"):
            time.sleep(0.01)
        mon.event("checkpoint_saved", path=Path("/tmp/ckpt.pt"))
    job = store.get_job(mon.job_id)
    assert job["status"] == "succeeded" and job["ended_at"] >= job["started_at"]
    assert job["environment"]["python"] and job["settings"]["flush_interval"] == 0.1

    steps = store.rows("step_metrics", mon.job_id, order_by="step")
    assert [s["step"] for s in steps] == list(range(50))
    assert steps[0]["step_time_seconds"] is None
    assert all(s["step_time_seconds"] > 0 and s["data_time_seconds"] >= 0 for s in steps[1:])
    assert steps[3]["loss"] == 0.25 and steps[3]["extras"] == {"acc": 0.9} and steps[3]["tokens"] == 512
    assert abs(steps[-1]["timestamp"] - time.time()) < 30

    events = {e["event_type"]: e for e in _events(store, mon.job_id)}
    assert {"start", "phase_start", "phase_end", "checkpoint_saved", "end"} <= set(events)
    assert events["phase_end"]["details"]["name"] == "eval"
    assert events["phase_end"]["details"]["duration_seconds"] >= 0.01
    assert events["checkpoint_saved"]["details"] == {"path": "/tmp/ckpt.pt"}
    assert events["end"]["details"]["status"] == "succeeded" and events["end"]["details"]["steps_logged"] == 50
    sample_ids = {s["id"] for s in store.rows("metrics_samples", mon.job_id)}
    assert sample_ids, "the sampler takes its first sample at once"
    for event in events.values():  # every event took a fresh system sample
        assert event["memory_snapshot_id"] in sample_ids, event

    costs = {c["operation"]: c for c in store.rows("monitoring_costs", mon.job_id)}
    assert costs["step"]["calls"] == 50 and costs["step"]["on_training_thread"]
    assert costs["loader"]["calls"] == 50
    assert {"start", "close", "phase", "event"} <= set(costs)
    assert any(op.startswith("thread:runlens-") and not c["on_training_thread"] for op, c in costs.items())


@pytest.mark.needs_torch
def test_tensor_loss_is_resolved_on_the_writer_thread(db_url: str, store: Store) -> None:
    """A tensor's .item() / __float__ is never called on the training thread (no device sync there)."""
    import torch

    calls: list[str] = []

    class SpyTensor(torch.Tensor):
        def item(self) -> Any:  # type: ignore[override]
            calls.append(threading.current_thread().name)
            return super().item()

    class SpyNumber:
        def __float__(self) -> float:
            calls.append(threading.current_thread().name)
            return 7.0

    with runlens.Monitor(name="tensors", db=db_url) as mon:
        for step in range(3):
            mon.step(step, loss=torch.tensor(2.5 + step).as_subclass(SpyTensor), grad_norm=SpyNumber(),
                     lr=torch.tensor(1e-4), my_scalar=torch.tensor(3.0))
    assert len(calls) == 6 and set(calls) == {"runlens-writer"}
    steps = store.rows("step_metrics", mon.job_id, order_by="step")
    assert [s["loss"] for s in steps] == [2.5, 3.5, 4.5]
    assert steps[0]["gradient_norm"] == 7.0 and steps[0]["extras"] == {"my_scalar": 3.0}
    assert math.isclose(steps[0]["learning_rate"], 1e-4, rel_tol=1e-6)


@pytest.mark.needs_torch
def test_nonfinite_values_are_flagged_in_extras(db_url: str, store: Store) -> None:
    """SQLite turns NaN into NULL, so a diverged loss is also recorded as text in extras["nonfinite"]."""
    import torch

    with runlens.Monitor(name="nan", db=db_url) as mon:
        mon.step(0, loss=1.0)
        mon.step(1, loss=float("nan"), grad_norm=float("inf"), ratio=float("-inf"))
        mon.step(2, loss=torch.tensor(float("nan")))
    steps = store.rows("step_metrics", mon.job_id, order_by="step")
    assert steps[0]["extras"] is None
    assert steps[1]["loss"] is None and steps[1]["gradient_norm"] == math.inf
    assert steps[1]["extras"] == {"ratio": None, "nonfinite": {"loss": "nan", "gradient_norm": "inf",
                                                                "ratio": "-inf"}}
    assert steps[2]["extras"] == {"nonfinite": {"loss": "nan"}}


def test_batch_size_change_is_an_event(db_url: str, store: Store) -> None:
    with runlens.Monitor(name="bs", db=db_url) as mon:
        for step in range(6):
            mon.step(step, loss=1.0, batch_size=32 if step < 4 else 16)
    changed = [e for e in _events(store, mon.job_id) if e["event_type"] == "batch_size_changed"]
    assert len(changed) == 1
    assert changed[0]["details"] == {"from": 32, "to": 16} and changed[0]["step"] == 4


@pytest.mark.needs_torch
def test_loader_passes_len_and_attributes_through_a_torch_dataloader(db_url: str, store: Store) -> None:
    import torch

    dataset = torch.utils.data.TensorDataset(torch.arange(40.0).reshape(20, 2))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    with runlens.Monitor(name="dl", db=db_url) as mon:
        wrapped = mon.loader(loader)
        assert len(wrapped) == 5 and wrapped.dataset is dataset and wrapped.batch_size == 4
        for epoch in range(2):
            for step, (batch,) in enumerate(wrapped):
                mon.step(epoch * 5 + step, loss=batch.sum(), batch_size=len(batch))
    steps = store.rows("step_metrics", mon.job_id, order_by="step")
    assert len(steps) == 10 and steps[0]["loss"] == float(torch.arange(8.0).sum())
    assert all(s["data_time_seconds"] is not None for s in steps)


@pytest.mark.needs_torch
def test_cuda_oom_is_recorded_and_reraised(db_url: str, store: Store) -> None:
    import torch

    message = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)"
    with pytest.raises(torch.OutOfMemoryError):
        with runlens.Monitor(name="oom", db=db_url) as mon:
            mon.step(0, loss=1.0)
            raise torch.OutOfMemoryError(message)
    job = store.get_job(mon.job_id)
    assert job["status"] == "failed" and job["status_reason"] == "cuda_oom"
    events = {e["event_type"]: e for e in _events(store, mon.job_id)}
    assert events["cuda_oom"]["details"]["message"] == message
    assert events["cuda_oom"]["details"]["tried_to_allocate_gb"] == 2.0
    assert "OutOfMemoryError" in events["exception"]["details"]["type"]
    assert events["end"]["details"]["status"] == "failed"


def test_user_cost_timers_and_budget_warning(db_url: str, store: Store,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """mon.cost() totals are stored per operation; passing the budget warns once on stderr and as an event."""
    with runlens.Monitor(name="budget", db=db_url, monitoring_budget=0.05) as mon:
        mon._ledger.min_wall_seconds = 0.0  # the default waits 30 s before judging
        for _ in range(3):
            with mon.cost("eval_samples"):
                time.sleep(0.05)
        time.sleep(0.05)
    costs = {c["operation"]: c for c in store.rows("monitoring_costs", mon.job_id)}
    assert costs["user:eval_samples"]["calls"] == 3 and costs["user:eval_samples"]["total_seconds"] >= 0.15
    exceeded = [e for e in _events(store, mon.job_id) if e["event_type"] == "monitoring_budget_exceeded"]
    assert len(exceeded) == 1 and exceeded[0]["details"]["fraction"] > 0.05
    assert "user:eval_samples" in exceeded[0]["details"]["top_operations"]
    err = capsys.readouterr().err
    assert err.count("runlens: monitoring is taking") == 1


def test_cost_ledger_budget_waits_for_min_wall_then_fires_once() -> None:
    now = [0.0]
    ledger = CostLedger(0.05, min_wall_seconds=30.0, clock=lambda: now[0])
    ledger.add("start", 5.0)            # one-off: never counts
    ledger.add("user:eval", 1.0)
    now[0] = 10.0
    assert ledger.check_budget() is None          # 10% but too early to judge
    now[0] = 40.0
    assert ledger.check_budget() is None          # 2.5%
    ledger.add("step", 2.0, calls=1000)
    breach = ledger.check_budget()
    assert breach is not None and breach["fraction"] == pytest.approx(3.0 / 40.0)
    assert ledger.check_budget() is None          # once
    rows = ledger.changed_rows(123.0)
    assert {r["operation"] for r in rows} == {"start", "user:eval", "step"}
    assert ledger.changed_rows(124.0) == []       # nothing changed since


def test_settings_overrides_and_unknown_setting(db_url: str) -> None:
    with pytest.raises(TypeError, match="samle_interval"):
        runlens.Monitor(name="typo", db=db_url, samle_interval=1.0)


def test_store_that_cannot_be_opened_turns_monitoring_off(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A broken store never stops the run: one warning, then every call is a no-op."""
    with runlens.Monitor(name="nodb", db=str(tmp_path)) as mon:  # a directory, not a database
        for step in mon.loader(range(3)):
            mon.step(step, loss=1.0)
        mon.event("x")
    assert mon.job_id is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "monitoring is off for this run" in err[0] and "is a directory" in err[0]


# -- config snapshot ------------------------------------------------------------------------------------


def test_config_file_is_snapshotted_with_secrets_redacted(tmp_path: Path, db_url: str, store: Store) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(textwrap.dedent("""\
        model: gpt2
        per_device_train_batch_size: 8
        dataloader_num_workers: 2
        hf_token: hf_abcdefSECRET
        report_to:
          wandb:
            api_key: SECRET-KEY
        max_tokens: 512
        monitoring:
          sample_interval: 2
    """))
    with runlens.Monitor(name="cfg", config=cfg, db=db_url) as mon:
        assert mon.settings.sample_interval == 2.0
    job = store.get_job(mon.job_id)
    assert job["config"]["hf_token"] == REDACTED and job["config"]["report_to"]["wandb"]["api_key"] == REDACTED
    assert job["config"]["max_tokens"] == 512 and job["config"]["model"] == "gpt2"
    assert job["config_path"] == str(cfg.resolve()) and job["config_dialect"] == "huggingface"
    raw = Path(db_url.removeprefix("sqlite:///")).read_bytes()
    assert b"SECRET" not in raw


@pytest.mark.needs_torch
def test_dict_config_is_deep_copied_and_stringified(tmp_path: Path) -> None:
    import torch

    source = {"out": tmp_path, "dtype": torch.bfloat16, "layers": (1, 2), "nested": {"password": "pw"}}
    snapshot, path = load_config(source)
    assert path is None
    assert snapshot == {"out": str(tmp_path), "dtype": "torch.bfloat16", "layers": [1, 2],
                        "nested": {"password": REDACTED}}
    assert source["nested"]["password"] == "pw"


def test_malformed_yaml_config_is_one_line_config_error(tmp_path: Path, db_url: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: gpt2\nlr: [1, 2\nbatch: 3\n")
    with pytest.raises(ConfigError) as info:
        runlens.Monitor(name="bad", config=bad, db=db_url)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "invalid YAML at line" in message
    assert not Path(db_url.removeprefix("sqlite:///")).exists()  # nothing started


@pytest.mark.parametrize("content, name, expected", [
    (None, "missing.yaml", "no such file"),
    ('{"lr": 1e-3,}', "bad.json", "invalid JSON at line 1"),
    ("- a\n- b\n", "list.yaml", "expected a mapping"),
])
def test_config_errors_name_the_problem(tmp_path: Path, content: str | None, name: str, expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert "\n" not in str(info.value)


# -- disabled and attach modes ----------------------------------------------------------------------------


@pytest.mark.needs_torch
def test_runlens_disable_makes_every_method_a_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("RUNLENS_DISABLE", "1")
    db = tmp_path / "never.db"
    data = [1, 2, 3]
    with runlens.Monitor(name="off", config=tmp_path / "missing.yaml", db=str(db)) as mon:
        assert mon.loader(data) is data
        for step in mon.loader(data):
            mon.step(step, loss=torch.tensor(1.0))
        with mon.phase("eval"), mon.cost("x"):
            mon.event("anything", a=1)
    mon.close()
    assert mon.job_id is None and not db.exists()


def test_attach_mode_writes_into_the_wrappers_job(db_url: str, store: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside `runlens collect` the Monitor adds to the wrapper's job and leaves its lifecycle alone."""
    job_id = store.create_job(name="wrapped", job_id="wrapped-1", started_at=time.time())
    monkeypatch.setenv("RUNLENS_JOB_ID", job_id)
    monkeypatch.setenv("RUNLENS_DB", db_url)
    config = {"lr": 0.1, "api_key": "k"}
    with runlens.Monitor(name="inner", config=config, db="sqlite:////nonexistent/x.db") as mon:
        assert mon.job_id == job_id and mon.attached
        for step in range(20):
            mon.step(step, loss=1.0)
        mon.event("checkpoint_saved")
    job = store.get_job(job_id)
    assert job["status"] == "running" and job["ended_at"] is None  # the wrapper owns the end
    assert job["config"] == {"lr": 0.1, "api_key": REDACTED} and job["environment"] is not None
    assert store.count("step_metrics", job_id) == 20
    assert store.count("metrics_samples", job_id) >= 1  # event samples only, no periodic sampler
    types = _event_types(store, job_id)
    assert types[0] == "monitor_attached" and types[-1] == "monitor_detached"
    assert "start" not in types and "end" not in types
    assert all(e["memory_snapshot_id"] is not None for e in _events(store, job_id))
    assert store.count("jobs") == 1


def test_attach_mode_creates_a_missing_job_with_that_id(db_url: str, store: Store,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLENS_JOB_ID", "given-id-7")
    monkeypatch.setenv("RUNLENS_DB", db_url)
    with runlens.Monitor(name="solo") as mon:
        mon.step(0, loss=1.0)
    job = store.get_job("given-id-7")
    assert mon.job_id == "given-id-7" and not mon.attached
    assert job["status"] == "succeeded" and job["name"] == "solo"


# -- store trouble --------------------------------------------------------------------------------------


def _hold_exclusive_lock(path: str, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    conn.rollback()
    conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("busy_timeout_ms", [30_000, 200], ids=["waits", "fails-and-retries"])
def test_a_locked_store_never_reaches_the_loop(db_url: str, store: Store, busy_timeout_ms: int,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Another connection holds an EXCLUSIVE lock for 3 s: steps stay fast, nothing is lost, no exception.

    With the default busy timeout the writer just waits; with a 0.2 s one its writes fail, it warns once and
    retries with backoff until the lock is gone.
    """
    monkeypatch.setattr("runlens.store.engine.SQLITE_BUSY_TIMEOUT_MS", busy_timeout_ms)
    path = db_url.removeprefix("sqlite:///")
    locked = threading.Event()
    slowest = 0.0
    with runlens.Monitor(name="locked", db=db_url, flush_interval=0.1) as mon:
        holder = threading.Thread(target=_hold_exclusive_lock, args=(path, 3.0, locked))
        holder.start()
        locked.wait(5)
        deadline = time.monotonic() + 3.5
        step = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            mon.step(step, loss=float(step))
            slowest = max(slowest, time.perf_counter() - t0)
            step += 1
            time.sleep(0.0005)
        holder.join()
    assert store.count("step_metrics", mon.job_id) == step
    assert store.get_job(mon.job_id)["status"] == "succeeded"
    # The lock lasts 3 s; a step() that waited for the store would take that long. 0.25 s leaves room for a
    # loaded CI machine descheduling the thread.
    assert slowest < 0.25, f"a step() call took {slowest * 1e3:.1f} ms while the store was locked"
    err = capsys.readouterr().err
    if busy_timeout_ms < 1000:
        assert err.count("cannot write to the store") == 1 and "database is locked" in err
    else:
        assert "cannot write" not in err


def test_overflow_while_locked_is_recorded_and_writing_resumes(db_url: str, store: Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Past buffer_max_rows the oldest rows go, never silently: a buffer_overflow event says how many, and the
    Monitor's own events (with more columns than that one) are written in the same batch."""
    monkeypatch.setattr("runlens.store.engine.SQLITE_BUSY_TIMEOUT_MS", 100)
    locked = threading.Event()
    with runlens.Monitor(name="overflow", db=db_url, flush_interval=0.05, buffer_max_rows=100) as mon:
        holder = threading.Thread(target=_hold_exclusive_lock, args=(db_url.removeprefix("sqlite:///"), 1.5, locked))
        holder.start()
        locked.wait(5)
        for step in range(300):
            mon.step(step, loss=1.0)
            time.sleep(0.002)
        mon.event("during_lock")
        holder.join()
        for step in range(300, 310):
            mon.step(step, loss=1.0)
    events = {e["event_type"]: e for e in _events(store, mon.job_id)}
    dropped = events["buffer_overflow"]["details"]["steps_dropped"]
    assert dropped > 0 and {"during_lock", "end"} <= set(events)
    assert store.count("step_metrics", mon.job_id) == 310 - dropped
    assert store.get_job(mon.job_id)["status"] == "succeeded"


# -- real processes: exit, exception, signals, SIGKILL, concurrency ------------------------------------------

def test_exception_is_recorded_and_reraised_like_without_runlens(tmp_path: Path, db_url: str,
                                                                 child_env: dict[str, str]) -> None:
    body = f"""
        import runlens
        with runlens.Monitor(name="boom", db={db_url!r}) as mon:
            for step in range(5):
                mon.step(step, loss=1.0)
            raise ValueError("bad batch 5")
    """
    with_runlens = _run_script(tmp_path, child_env, body)
    without = _run_script(tmp_path, {**child_env, "RUNLENS_DISABLE": "1"}, body)
    assert with_runlens.returncode == without.returncode == 1
    assert "Traceback" in with_runlens.stderr and "ValueError: bad batch 5" in with_runlens.stderr
    store = open_store(db_url, create=False)
    (job,) = store.list_jobs()
    assert job["status"] == "failed" and job["status_reason"] == "exception: ValueError"
    events = {e["event_type"]: e for e in _events(store, job["job_id"])}
    assert events["exception"]["details"]["type"] == "ValueError"
    assert events["exception"]["details"]["message"] == "bad batch 5"
    assert 'raise ValueError("bad batch 5")' in events["exception"]["details"]["traceback"]
    assert events["end"]["details"]["status"] == "failed"
    assert store.count("step_metrics", job["job_id"]) == 5


@pytest.mark.parametrize("signame, expected_rc", [("SIGTERM", -signal.SIGTERM), ("SIGINT", -signal.SIGINT)])
def test_signal_is_recorded_and_the_process_dies_as_without_runlens(tmp_path: Path, db_url: str,
                                                                    child_env: dict[str, str], signame: str,
                                                                    expected_rc: int, spawn: Any) -> None:
    body = f"""
        import sys, time, runlens
        with runlens.Monitor(name="sig", db={db_url!r}, flush_interval=30) as mon:
            for step in range(100000):
                mon.step(step, loss=1.0)
                if step == 200:
                    print("ready", flush=True)
                time.sleep(0.001)
    """
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    codes = []
    for env in ({**child_env, "RUNLENS_DISABLE": "1"}, child_env):
        proc = spawn([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(getattr(signal, signame))
        proc.communicate(timeout=30)
        codes.append(proc.returncode)
    assert codes == [expected_rc, expected_rc]
    store = open_store(db_url, create=False)
    (job,) = store.list_jobs()
    assert job["status"] == "failed" and job["status_reason"] == signame
    events = {e["event_type"]: e for e in _events(store, job["job_id"])}
    assert events["signal"]["details"]["signal"] == signame
    assert events["end"]["details"]["status"] == "failed"
    if signame == "SIGTERM":
        assert job["exit_signal"] == signal.SIGTERM
    # flush_interval=30: every step got to the store only because the handler flushed it
    assert store.count("step_metrics", job["job_id"]) >= 201


def test_sigterm_chains_to_the_programs_own_handler(tmp_path: Path, db_url: str, child_env: dict[str, str],
                                                    spawn: Any) -> None:
    """A program's own SIGTERM handler (checkpoint and exit 3) still runs, after runlens flushed."""
    body = f"""
        import signal, sys, time, runlens
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        with runlens.Monitor(name="chained", db={db_url!r}, flush_interval=30) as mon:
            for step in range(100000):
                mon.step(step, loss=1.0)
                if step == 50:
                    print("ready", flush=True)
                time.sleep(0.001)
    """
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    codes = []
    for env in ({**child_env, "RUNLENS_DISABLE": "1"}, child_env):
        proc = spawn([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        codes.append(proc.returncode)
    assert codes == [3, 3]
    store = open_store(db_url, create=False)
    (job,) = store.list_jobs()
    assert job["status"] == "failed" and job["status_reason"] == "SIGTERM" and job["exit_code"] == 3
    events = {e["event_type"]: e for e in _events(store, job["job_id"])}
    assert events["signal"]["details"]["action"] == "handler"
    assert store.count("step_metrics", job["job_id"]) >= 51


def test_monitor_off_the_main_thread_records_without_signal_handlers(db_url: str, store: Store) -> None:
    before = signal.getsignal(signal.SIGTERM)
    result: dict[str, Any] = {}

    def run() -> None:
        with runlens.Monitor(name="threaded", db=db_url) as mon:
            result["handler"] = signal.getsignal(signal.SIGTERM)
            for step in range(5):
                mon.step(step, loss=1.0)
        result["job_id"] = mon.job_id

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert result["handler"] is before
    assert store.count("step_metrics", result["job_id"]) == 5
    assert store.get_job(result["job_id"])["status"] == "succeeded"


def test_monitor_left_open_is_closed_at_exit(tmp_path: Path, db_url: str, child_env: dict[str, str]) -> None:
    body = f"""
        import runlens
        mon = runlens.Monitor(name="open", db={db_url!r}, flush_interval=30).start()
        for step in range(10):
            mon.step(step, loss=1.0)
        if __import__("sys").argv[-1] == "crash":
            raise RuntimeError("top-level crash")
    """
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    ok = subprocess.run([sys.executable, str(script)], env=child_env, capture_output=True, text=True, timeout=60)
    crash = subprocess.run([sys.executable, str(script), "crash"], env=child_env, capture_output=True, text=True,
                           timeout=60)
    assert ok.returncode == 0 and crash.returncode == 1, crash.stderr
    store = open_store(db_url, create=False)
    jobs = {j["status"]: j for j in store.list_jobs()}
    assert set(jobs) == {"succeeded", "failed"}
    assert jobs["failed"]["status_reason"] == "exception: RuntimeError"
    for job in jobs.values():
        assert store.count("step_metrics", job["job_id"]) == 10


@pytest.mark.slow
def test_sigkill_leaves_a_readable_store_with_everything_older_than_a_flush(tmp_path: Path, db_url: str,
                                                                            child_env: dict[str, str]) -> None:
    flush_interval = 0.25
    body = f"""
        import time, runlens
        with runlens.Monitor(name="killed", db={db_url!r}, flush_interval={flush_interval}) as mon:
            step = 0
            while True:
                mon.step(step, loss=1.0)
                if step % 50 == 0:
                    print(step, time.time(), flush=True)
                step += 1
                time.sleep(0.0005)
    """
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.Popen([sys.executable, str(script)], env=child_env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    markers = []
    started = None
    for line in proc.stdout:
        step, at = line.split()
        markers.append((int(step), float(at)))
        started = started or time.monotonic()
        if time.monotonic() - started > 3.5:
            break
    kill_time = time.time()
    proc.kill()
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    path = db_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    steps = {row[0] for row in conn.execute("SELECT step FROM step_metrics")}
    conn.close()
    margin = 1.5  # scheduling slack on a loaded 2-core machine
    old_enough = [s for s, at in markers if at < kill_time - flush_interval - margin]
    assert old_enough, "the child logged for long enough"
    assert set(range(max(old_enough) + 1)) <= steps
    store = open_store(db_url, create=False)
    (job,) = store.list_jobs()
    assert job["status"] == "running"  # nobody could mark it: the status reader's job (heartbeats) later


_CONCURRENT_WRITER = """
import sys, time
import runlens
import runlens.collect.monitor, runlens.collect.sampler, runlens.store.writer  # import before the race
from pathlib import Path
db, name, barrier = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(barrier / f"ready-{name}").touch()
while not (barrier / "go").exists():
    time.sleep(0.001)
with runlens.Monitor(name=name, db=db, sample_interval=60) as mon:
    for step in range(10_000):
        mon.step(step, loss=1.0 / (step + 1), lr=1e-4, grad_norm=1.0, batch_size=8)
stats = mon._writer.stats
print(mon.job_id, stats.failures, stats.steps_written, stats.steps_dropped)
"""


@pytest.mark.slow
def test_eight_processes_write_ten_thousand_steps_each_into_one_file(tmp_path: Path, db_url: str,
                                                                     child_env: dict[str, str],
                                                                     start_together: Any) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_CONCURRENT_WRITER)
    barrier = tmp_path / "barrier"  # all 8 import first, then open and write at the same moment
    procs = start_together([[sys.executable, str(script), db_url, f"proc{i}", str(barrier)] for i in range(8)],
                           barrier, child_env)
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "locked" not in err.lower() and "cannot write" not in err, err
        _job_id, failures, written, dropped = out.split()
        assert (failures, written, dropped) == ("0", "10000", "0")
    store = open_store(db_url, create=False)
    jobs = store.list_jobs()
    assert len(jobs) == 8 and all(j["status"] == "succeeded" for j in jobs)
    assert all(j["steps"] == 10_000 and j["max_step"] == 9_999 for j in jobs)
    assert store.count("step_metrics") == 80_000
