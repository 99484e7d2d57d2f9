"""Shared fixtures: a real SQLite file per test, and an environment free of the caller's RUNLENS_* settings."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from runlens.store import Store, open_store


@pytest.fixture(autouse=True)
def _no_runlens_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not inherit RUNLENS_JOB_ID / RUNLENS_DB / RUNLENS_DISABLE from a shell or `runlens collect`
    (RUNLENS_TEST_* variables configure the test run itself and stay)."""
    for name in list(os.environ):
        if _is_runtime_setting(name):
            monkeypatch.delenv(name)


def _is_runtime_setting(name: str) -> bool:
    return name.startswith("RUNLENS_") and not name.startswith("RUNLENS_TEST_")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL for a fresh SQLite file (never in-memory: every thread would see its own database)."""
    return f"sqlite:///{tmp_path / 'runlens.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """An open, migrated store on ``db_url``."""
    s = open_store(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def child_env() -> dict[str, str]:
    """os.environ without RUNLENS_* variables, for real subprocesses (add to it as needed)."""
    return {k: v for k, v in os.environ.items() if not _is_runtime_setting(k)}


StartTogether = Callable[[list[list[str]], Path, dict[str, str]], list["subprocess.Popen[str]"]]


@pytest.fixture
def start_together() -> StartTogether:
    """Start processes that each touch ``barrier/ready-<name>`` and then poll for ``barrier/go``; release them
    at once when all are ready, so a race under test happens for real even on a loaded machine."""

    def start(argvs: list[list[str]], barrier: Path, env: dict[str, str]) -> list["subprocess.Popen[str]"]:
        barrier.mkdir()
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for argv in argvs]
        deadline = time.monotonic() + 90
        while len(list(barrier.glob("ready-*"))) < len(argvs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                for p in procs:
                    p.kill()
                raise AssertionError(f"children did not get ready: {[p.communicate() for p in procs]}")
            time.sleep(0.01)
        (barrier / "go").touch()
        return procs

    return start
