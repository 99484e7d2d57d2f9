"""Helpers of the ui tests: real jobs written by real processes, and ``runlens ui`` as a real server process.

``ui_jobs`` (one store per test module) holds three jobs: ``alpha`` run under ``runlens collect`` and analysed
(its analysis stored), ``beta`` under ``runlens collect`` with another config and a traceback in its log that
holds a ``<script>`` tag, never analysed, and ``gamma`` recorded by a bare Monitor. ``Server`` talks to a
``python -m runlens ui`` that the ``start_ui`` fixture (conftest.py) started on a free port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
RUN_JOB = HERE / "run_job.py"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without RUNLENS_* settings (analysis on completion off), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("RUNLENS_") and not k.startswith("RUNLENS_TEST_"))}
    return {**env, "RUNLENS_ANALYZE_ON_COMPLETE": "0", **extra}


def runlens_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    out = subprocess.run([sys.executable, "-m", "runlens", *args], cwd=cwd, env=env or clean_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UiJobs:
    """A store with the three jobs described in the module docstring."""

    db: str
    folder: Path
    ids: dict[str, str] = field(default_factory=dict)


def make_ui_jobs(folder: Path, db: str) -> UiJobs:
    jobs = UiJobs(db, folder)
    (folder / "alpha.yaml").write_text("optimizer:\n  lr: 0.001\n  name: adamw\nbatch_size: 8\nnum_workers: 2\n")
    (folder / "beta.yaml").write_text("optimizer:\n  lr: 0.0003\n  name: adamw\nbatch_size: 16\nnum_workers: 2\n")
    for name, extra in (("alpha", []), ("beta", ["--xss"])):
        runlens_cli("collect", "--db", db, "--name", name, "--config", f"{name}.yaml", "--",
                    sys.executable, str(RUN_JOB), "--name", name, "--steps", "80", "--config", f"{name}.yaml",
                    *extra, cwd=folder)
    out = subprocess.run([sys.executable, str(RUN_JOB), "--name", "gamma", "--steps", "40", "--db", db],
                         cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = json.loads(runlens_cli("jobs", "--db", db, "--json", cwd=folder))
    jobs.ids = {str(j["name"]): str(j["job_id"]) for j in listed}
    assert set(jobs.ids) == {"alpha", "beta", "gamma"}, jobs.ids
    runlens_cli("analyze", jobs.ids["alpha"], "--db", db, "--no-html", cwd=folder)
    return jobs


@dataclass
class Server:
    url: str
    proc: "subprocess.Popen[str]"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a GET; HTTP errors are answers, not exceptions."""
        req = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, status: int = 200, headers: dict[str, str] | None = None) -> Any:
        code, _, body = self.get(path, headers)
        assert code == status, (path, code, body[:500])
        return json.loads(body)


def file_state(path: Path) -> tuple[bytes, int]:
    """A file's bytes and modification time, to show it was not written."""
    return path.read_bytes(), path.stat().st_mtime_ns



StartUi = Callable[..., Server]


def poll_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str | None = None) -> Any:
    """``wait_until`` for fixtures wider than a test (the conftest's fixture is per test)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message or predicate}")
        time.sleep(interval)
    return value


class UiServers:
    """``start(db, *extra_args, host="127.0.0.1", connect="127.0.0.1")`` starts ``python -m runlens ui`` on a
    free port and returns once it listens; ``close()`` stops every server it started."""

    def __init__(self, wait_until: Callable[..., Any]) -> None:
        self.wait_until = wait_until
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, db: str, *extra: str, host: str = "127.0.0.1", connect: str = "127.0.0.1") -> Server:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "runlens", "ui", "--db", db, "--host", host,
                                 "--port", str(port), *extra], env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)

        def listens() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"runlens ui exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with socket.create_connection((connect, port), timeout=1):
                    return True
            except OSError:
                return False

        self.wait_until(listens, timeout=60, interval=0.05, message="runlens ui to listen")
        return Server(f"http://{connect}:{port}/", proc)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
