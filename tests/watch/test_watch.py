"""`runlens watch` against a real local HTTP server standing in for the webhook, over a real SQLite store."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from runlens.watch.alerts import (
    Alert,
    Deduper,
    SlackNotifier,
    WebhookNotifier,
    clean_log_line,
    remedy_for,
    slack_payload,
)
from runlens.cli import cli
from runlens.watch.status import FAILED, RUNNING, TIMED_OUT, WARNING
from runlens.store import Store, open_store
from runlens.watch.watcher import Watcher

pytestmark = pytest.mark.timeout(60)

SECRET = "XXsup3rs3cr3tXX"


class HookServer:
    """A webhook receiver on 127.0.0.1: records each POST and answers with the next queued status code."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.codes: list[int] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": json.loads(body),
                                           "content_type": self.headers.get("Content-Type")})
                    code = outer.codes.pop(0) if outer.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="hook-server", daemon=True)
        self.thread.start()

    def url(self, path: str = f"/services/T000/B000/{SECRET}") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = open_store(str(tmp_path / "runlens.db"))
    yield st
    st.close()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def beat(store: Store, job_id: str, at: float) -> None:
    store.update_job(job_id, heartbeat_at=at)


def step(store: Store, job_id: str, n: int, at: float, batch_size: int = 32) -> None:
    with store.begin() as conn:
        store.insert_steps(conn, job_id, [{"step": n, "timestamp": at, "loss": 2.0 / n, "batch_size": batch_size}])
        store.update_job(job_id, conn=conn, progress_at=at, heartbeat_at=at, last_step=n)


def event(store: Store, job_id: str, at: float, event_type: str, **details: Any) -> None:
    with store.begin() as conn:
        store.insert_many(conn, "training_events", [{"job_id": job_id, "timestamp": at, "event_type": event_type,
                                                     "details": details}])


def test_one_alert_per_transition_recovery_and_dedupe(store: Store, hook: HookServer, tmp_path: Path) -> None:
    """A job driven through RUNNING, WARNING, recovery, WARNING, TIMED_OUT and FAILED: one alert each."""
    t0 = time.time()
    log_file = tmp_path / "log.txt"
    log_file.write_text("epoch 1\n\x1b[32mstep 10/100\x1b[0m\r step 11/100 loss 0.5\n")
    job_id = store.create_job(name="train", pid=os.getpid(), started_at=t0, log_path=str(log_file))
    step(store, job_id, 1, t0 + 1)
    clock, lines = Clock(t0 + 2), []
    w = Watcher(store, [job_id], interval=1, notifiers=[WebhookNotifier(hook.url("/hook"), backoff=0.01)],
                clock=clock, sleep=lambda s: None, out=lines.append)

    def poll(at: float) -> list[Alert]:
        clock.t = t0 + at
        return w.poll_once()

    assert poll(2) == []                                       # first look at a healthy run: nothing to say
    assert poll(5) == []
    got = poll(40)                                             # no heartbeat for 39 s
    assert [(a.previous_state, a.state) for a in got] == [(RUNNING, WARNING)]
    assert "no heartbeat" in (got[0].reason or "")
    assert poll(41) == []                                      # same condition: no repeat
    step(store, job_id, 2, t0 + 42)
    got = poll(43)
    assert [(a.previous_state, a.state) for a in got] == [(WARNING, RUNNING)]   # recovery is alerted
    assert got[0].recovered and got[0].remedy is None
    beat(store, job_id, t0 + 400)                              # alive, but no step since 42 s
    got = poll(401)
    assert [(a.previous_state, a.state) for a in got] == [(RUNNING, WARNING)]  # re-armed by the recovery
    assert "no progress" in (got[0].reason or "")
    assert poll(402) == []
    got = poll(440)                                            # and now silent too
    assert [(a.previous_state, a.state) for a in got] == [(WARNING, TIMED_OUT)]
    beat(store, job_id, t0 + 445)
    assert poll(446) == []                                     # back to WARNING: still the same stall
    assert "(already alerted)" in lines[-1]
    step(store, job_id, 3, t0 + 450)
    got = poll(451)
    assert [(a.previous_state, a.state) for a in got] == [(TIMED_OUT, RUNNING)]
    event(store, job_id, t0 + 460, "exception", type="OutOfMemoryError", message="CUDA out of memory. Tried 2 GiB")
    event(store, job_id, t0 + 460, "cuda_oom", message="CUDA out of memory. Tried 2 GiB")
    store.update_job(job_id, status="failed", ended_at=t0 + 461, exit_code=1)
    got = poll(462)
    assert [(a.previous_state, a.state) for a in got] == [(RUNNING, FAILED)]
    assert poll(463) == [] and poll(600) == []

    bodies = hook.bodies()
    assert [(b["previous_state"], b["state"]) for b in bodies] == [
        (RUNNING, WARNING), (WARNING, RUNNING), (RUNNING, WARNING), (WARNING, TIMED_OUT), (TIMED_OUT, RUNNING),
        (RUNNING, FAILED)]
    failed = bodies[-1]
    assert failed["reason"].startswith("CUDA out of memory")
    assert "reduce batch size to 16" in failed["remedy"]
    assert failed["last_step"] == 3 and failed["last_loss"] == pytest.approx(2.0 / 3)
    assert failed["last_log_line"] == "step 11/100 loss 0.5"
    assert failed["host"] == socket.gethostname() and failed["pid"] == os.getpid()
    assert failed["duration_seconds"] == pytest.approx(461, abs=1)
    assert all(r["content_type"] == "application/json" for r in hook.requests)
    # Every transition was printed as one line, deduplicated ones marked.
    assert sum(1 for ln in lines if " -> " in ln) == 7


def test_one_late_heartbeat_is_printed_not_sent(store: Store, hook: HookServer) -> None:
    """One missed beat (a busy store) shows as WARNING but sends nothing; stale (30 s) sends; so does recovery.
    A late beat that comes back sends no recovery either: nothing was said."""
    t0 = time.time()
    job_id = store.create_job(name="train", pid=os.getpid(), started_at=t0)
    step(store, job_id, 1, t0)
    clock, lines = Clock(t0 + 1), []
    w = Watcher(store, [job_id], notifiers=[WebhookNotifier(hook.url("/hook"), backoff=0.01)], clock=clock,
                out=lines.append)
    assert w.poll_once() == []
    clock.t = t0 + 13
    assert w.poll_once() == []
    assert "WARNING" in lines[-1] and "heartbeat late" in lines[-1] and "not sent" in lines[-1]
    step(store, job_id, 2, t0 + 14)
    clock.t = t0 + 15
    assert w.poll_once() == []                                   # back to RUNNING, nothing to take back
    clock.t = t0 + 27
    assert w.poll_once() == []                                   # late again
    clock.t = t0 + 50
    assert [(a.previous_state, a.state, a.reason) for a in w.poll_once()] == [
        (RUNNING, WARNING, "no heartbeat for 36s (stale after 30s)")]
    step(store, job_id, 3, t0 + 51)
    clock.t = t0 + 52
    assert [(a.previous_state, a.state) for a in w.poll_once()] == [(WARNING, RUNNING)]
    assert len(hook.requests) == 2


def test_first_look_alerts_runs_already_in_trouble(store: Store, hook: HookServer) -> None:
    """Starting watch on a stalled run alerts it; finished history and healthy runs stay quiet."""
    t0 = time.time()
    stalled = store.create_job(name="stalled", pid=os.getpid(), started_at=t0 - 1000)
    step(store, stalled, 5, t0 - 900)
    beat(store, stalled, t0 - 1)
    old = store.create_job(name="old", pid=None, started_at=t0 - 5000)
    store.update_job(old, status="failed", ended_at=t0 - 4000, status_reason="KeyError: 'x'")
    healthy = store.create_job(name="healthy", pid=os.getpid(), started_at=t0 - 10)
    step(store, healthy, 1, t0 - 1)
    w = Watcher(store, None, notifiers=[WebhookNotifier(hook.url(), backoff=0.01)], clock=lambda: t0,
                out=lambda line: None)
    got = w.poll_once()
    assert [(a.job_id, a.previous_state, a.state) for a in got] == [(stalled, None, WARNING)]
    assert len(hook.bodies()) == 1
    # A job that finishes after the watcher started is news, even on the first look.
    late = store.create_job(name="late", pid=None, started_at=t0 + 1)
    store.update_job(late, status="succeeded", ended_at=t0 + 5)
    w.clock = lambda: t0 + 6
    assert [(a.job_id, a.state) for a in w.poll_once()] == [(late, "SUCCEEDED")]


def test_failing_webhook_is_retried_and_the_watcher_lives(store: Store, hook: HookServer, closed_port: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """500, 500, then 200: delivered on the third try; a closed port fails quietly; polling goes on."""
    t0 = time.time()
    job_id = store.create_job(name="train", pid=os.getpid(), started_at=t0)
    step(store, job_id, 1, t0)
    hook.codes = [500, 500, 200]
    sleeps: list[float] = []
    flaky = WebhookNotifier(hook.url("/flaky"), backoff=0.01, sleep=sleeps.append)
    down = WebhookNotifier(f"http://127.0.0.1:{closed_port}/hooks/{SECRET}", backoff=0.01, timeout=2)
    clock = Clock(t0 + 1)
    w = Watcher(store, [job_id], notifiers=[down, flaky], clock=clock, out=lambda line: None)
    assert w.poll_once() == []
    clock.t = t0 + 60
    with caplog.at_level(logging.WARNING, logger="runlens"):
        got = w.poll_once()
    assert [a.state for a in got] == [WARNING]
    assert len(hook.requests) == 3                              # two 500s, then the 200
    assert sleeps == [0.01, 0.02]                               # exponential backoff
    assert "could not deliver alert" in caplog.text and "after 3 tries" in caplog.text
    assert SECRET not in caplog.text
    step(store, job_id, 2, t0 + 61)
    clock.t = t0 + 62
    assert [a.state for a in w.poll_once()] == [RUNNING]        # still watching after the failures
    assert len(hook.requests) == 4
    # The notifier reports failure to its caller instead of raising.
    assert down.send(got[0]) is False
    hook.codes = [404]
    assert WebhookNotifier(hook.url("/gone"), backoff=0.01).send(got[0]) is False
    assert len(hook.requests) == 5                              # a 4xx is not retried


def test_a_broken_notifier_or_poll_never_stops_the_loop(store: Store) -> None:
    class Broken:
        shown_url = "broken://"

        def send(self, alert: Alert) -> bool:
            raise RuntimeError("bug")

    t0 = time.time()
    job_id = store.create_job(name="x", pid=None, host="elsewhere", started_at=t0 - 100)
    polls: list[float] = []

    class Flaky(Watcher):
        def poll_once(self) -> list[Alert]:
            polls.append(self.clock())
            if len(polls) == 1:
                raise RuntimeError("database went away")
            return super().poll_once()

    w = Flaky(store, [job_id], notifiers=[Broken()], clock=lambda: t0, sleep=lambda s: None, out=lambda line: None)
    w.run(max_polls=3)
    assert len(polls) == 3


def test_slack_payload_shape(store: Store, hook: HookServer) -> None:
    """Slack incoming-webhook JSON: a text fallback and Block Kit blocks within Slack's limits."""
    alert = Alert(job_id="lora-20260101-000000-abc123", name="lora", state=FAILED, previous_state=RUNNING,
                  reason="CUDA out of memory: Tried to allocate 2.00 GiB <GPU 0>", host="gpu-1", pid=4242,
                  phase="train", duration_seconds=3725.0, last_step=1200, last_loss=0.4321,
                  last_log_line="x" * 500, remedy="reduce batch size to 16", timestamp=time.time())
    assert SlackNotifier(hook.url()).send(alert) is True
    body = hook.bodies()[0]
    assert set(body) == {"text", "blocks"}
    assert "FAILED" in body["text"] and "lora-20260101-000000-abc123" in body["text"]
    types = [b["type"] for b in body["blocks"]]
    assert types[0] == "header" and "section" in types and types[-1] == "context"
    assert len(body["blocks"][0]["text"]["text"]) <= 150
    fields = next(b["fields"] for b in body["blocks"] if "fields" in b)
    assert len(fields) <= 10 and all(f["type"] == "mrkdwn" for f in fields)
    texts = json.dumps(body["blocks"])
    assert "&lt;GPU 0&gt;" in texts and "reduce batch size to 16" in texts and "1h02m" in texts
    assert slack_payload(alert) == body


def test_webhook_secret_never_shown_or_stored(tmp_path: Path, hook: HookServer, closed_port: int,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The secret in a webhook's path or query appears nowhere: stdout, stderr, logs, the store's files."""
    db = tmp_path / "runlens.db"
    store = open_store(str(db))
    t0 = time.time()
    job_id = store.create_job(name="train", pid=os.getpid(), started_at=t0 - 1000)
    step(store, job_id, 1, t0 - 900)
    beat(store, job_id, t0)
    store.close()
    good = hook.url()
    bad_slack = f"http://127.0.0.1:{closed_port}/services/T1/B1/{SECRET}"
    bad_query = f"http://127.0.0.1:{closed_port}/alert?token={SECRET}"
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(cli, ["watch", job_id, "--db", str(db), "--once", "--webhook", good,
                                          "--slack-webhook", bad_slack, "--webhook", bad_query])
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.output and "no progress" in result.output
    assert len(hook.requests) == 1 and hook.requests[0]["path"].endswith(SECRET)   # it did reach the server
    assert "***REDACTED***" in caplog.text
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for text in (result.output, caplog.text, stored.decode(errors="replace")):
        assert SECRET not in text
    # Bad input is refused with the URL redacted.
    result = CliRunner().invoke(cli, ["watch", "--db", str(db), "--once", "--webhook", f"file:///{SECRET}"])
    assert result.exit_code == 2


def test_deduper_rearms_on_recovery_and_new_pid() -> None:
    d = Deduper()
    assert d.should_send("j", WARNING, pid=1)
    assert not d.should_send("j", WARNING, pid=1)
    assert d.should_send("j", TIMED_OUT, pid=1)
    assert not d.should_send("j", WARNING, pid=1)      # still the same stall
    d.clear("j")                                        # recovered
    assert d.should_send("j", WARNING, pid=1)
    assert d.should_send("j", WARNING, pid=2)           # restarted under a new pid


def test_remedies() -> None:
    assert remedy_for("cuda_oom CUDA out of memory", {"last_batch_size": 32}).startswith("reduce batch size to 16")
    assert "halve the batch size" in (remedy_for("cuda_oom", {}) or "")
    assert "num_workers to 4" in (remedy_for("host_oom killed", {"last_worker_count": 8}) or "")
    assert "rank" in (remedy_for("nccl_timeout", {}) or "")
    assert "DataLoader" in (remedy_for("hang_suspected stall suspected dataloader", {}) or "")
    assert "py-spy dump --pid 7" in (remedy_for("no_progress no progress for 6m", {"pid": 7, "job_id": "j"}) or "")
    assert remedy_for("ok training", {}) is None
    assert remedy_for(None, {}) is None
    assert "py-spy" in (remedy_for("killed_by_runlens killed by runlens with SIGKILL (stall)", {}) or "")


def test_log_line_cleanup() -> None:
    assert clean_log_line("\x1b[1;31mERROR\x1b[0m boom\r\n") == "ERROR boom"
    assert clean_log_line(" 10%|#  | 1/10\r 20%|## | 2/10") == "20%|## | 2/10"
    assert SECRET not in clean_log_line(f"posting to https://hooks.slack.com/services/T/B/{SECRET} now")
    assert len(clean_log_line("y" * 5000)) == 300
