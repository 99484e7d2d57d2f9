"""Fixtures of the ui tests: ``ui_jobs``, a store of real jobs per test module, and ``start_ui``, which starts
``python -m runlens ui`` as a real server process on a free port and waits until it listens (helpers in
``ui_helpers``)."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any, Callable, Iterator

import pytest

from ui_helpers import Server, StartUi, UiJobs, clean_env, free_port, make_ui_jobs  # type: ignore[import-not-found]


@pytest.fixture(scope="module")
def ui_jobs(tmp_path_factory: pytest.TempPathFactory) -> UiJobs:
    folder = tmp_path_factory.mktemp("ui-jobs")
    return make_ui_jobs(folder, f"sqlite:///{folder / 'runlens.db'}")


@pytest.fixture
def start_ui(wait_until: Callable[..., Any]) -> Iterator[StartUi]:
    """``start_ui(db, *extra_args, host="127.0.0.1", connect="127.0.0.1")``: a running ``runlens ui``."""
    procs: list[subprocess.Popen[str]] = []

    def start(db: str, *extra: str, host: str = "127.0.0.1", connect: str = "127.0.0.1") -> Server:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "runlens", "ui", "--db", db, "--host", host,
                                 "--port", str(port), *extra], env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        server = Server(f"http://{connect}:{port}/", proc)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"runlens ui exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with socket.create_connection((connect, port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(answers, timeout=60, interval=0.05, message="runlens ui to listen")
        return server

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


