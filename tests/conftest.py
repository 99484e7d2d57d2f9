"""Shared fixtures: a real SQLite file per test, a real PostgreSQL database per test, an environment free of the
caller's RUNLENS_* settings, children that start with default signal dispositions, and ``wait_until`` for tests
that wait for something to happen.

Markers (registered in pyproject.toml): ``slow`` tests are left out of a plain ``pytest`` run and run by
``scripts/test.sh``; ``needs_torch`` tests skip when torch is not installed; ``postgres`` is put on every test
that uses ``pg_url``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import time
from glob import glob
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from runlens.analyze import registry
from runlens.store import Store, open_store

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# -- environment ------------------------------------------------------------------------------------------

# A job that ends is analysed (by runlens collect, or in a detached process for a Monitor's own job); tests turn
# that off unless they check it, so that no analysis outlives its test or slows the suite.
NO_ANALYSIS = {"RUNLENS_ANALYZE_ON_COMPLETE": "0"}


@pytest.fixture(autouse=True)
def _no_runlens_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not inherit RUNLENS_JOB_ID / RUNLENS_DB / RUNLENS_DISABLE from a shell or `runlens collect`
    (RUNLENS_TEST_* variables configure the test run itself and stay); analysis on completion is off."""
    for name in list(os.environ):
        if _is_runtime_setting(name):
            monkeypatch.delenv(name)
    for name, value in NO_ANALYSIS.items():
        monkeypatch.setenv(name, value)


def _is_runtime_setting(name: str) -> bool:
    return name.startswith("RUNLENS_") and not name.startswith("RUNLENS_TEST_")


@pytest.fixture
def child_env() -> dict[str, str]:
    """os.environ without RUNLENS_* variables (analysis on completion off), for real subprocesses (add to it as
    needed)."""
    return {**{k: v for k, v in os.environ.items() if not _is_runtime_setting(k)}, **NO_ANALYSIS}


# -- markers ----------------------------------------------------------------------------------------------

def _has_torch() -> bool:
    # find_spec, not import: importing torch here would cost every run a second and put torch in sys.modules
    # for tests that check runlens never imports it.
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``needs_torch`` skips without torch; a test that uses ``pg_url`` is a ``postgres`` test."""
    skip_torch = None if _has_torch() else pytest.mark.skip(reason="needs torch (pip install 'runlens[torch]')")
    for item in items:
        if skip_torch is not None and item.get_closest_marker("needs_torch"):
            item.add_marker(skip_torch)
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


# -- waiting ----------------------------------------------------------------------------------------------

def _wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
                message: str | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout`` seconds.

    Waiting for the condition itself, not for a guessed number of seconds, keeps a test fast on an idle machine
    and correct on a loaded one.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message or predicate}")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(predicate, timeout=10, interval=0.01, message=None)``: see ``_wait_until``."""
    return _wait_until


# -- child processes --------------------------------------------------------------------------------------

_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _default_signals() -> None:
    """preexec_fn: SIGINT, SIGTERM and SIGHUP at SIG_DFL in the child.

    An ignored signal stays ignored across exec, and ``cmd &`` in a shell without job control ignores SIGINT
    (``nohup`` ignores SIGHUP): a Python child would then never raise KeyboardInterrupt, and the signal tests
    would hang in a background job. Reset, the child behaves as it would from a terminal.
    """
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


Spawn = Callable[..., "subprocess.Popen[Any]"]


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(argv, preexec_fn=_default_signals, **kwargs)


@pytest.fixture
def spawn() -> Spawn:
    """``subprocess.Popen`` for children that receive signals from the test: they start with default
    dispositions whatever the test run's own (terminal, CI, background job)."""
    return _spawn


StartTogether = Callable[[list[list[str]], Path, dict[str, str]], list["subprocess.Popen[str]"]]


@pytest.fixture
def start_together(wait_until: Callable[..., Any]) -> StartTogether:
    """Start processes that each touch ``barrier/ready-<name>`` and then poll for ``barrier/go``; release them
    at once when all are ready, so a race under test happens for real even on a loaded machine."""

    def start(argvs: list[list[str]], barrier: Path, env: dict[str, str]) -> list["subprocess.Popen[str]"]:
        barrier.mkdir()
        procs = [_spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for argv in argvs]

        def ready() -> bool:
            ended = [p for p in procs if p.poll() is not None]
            if ended:
                out, err = ended[0].communicate()
                raise AssertionError(f"{len(ended)} children ended before the start; the first: {(out + err)[-3000:]}")
            return len(list(barrier.glob("ready-*"))) == len(argvs)

        try:
            wait_until(ready, timeout=90, message="the children to get ready")
        except AssertionError:
            for p in procs:
                p.kill()
            raise
        (barrier / "go").touch()
        return procs

    return start


# -- analysis ---------------------------------------------------------------------------------------------

@pytest.fixture
def only_test_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, registry.Rule]]:
    """Run only the rules a test registers: the machinery is under test there, not the real rules."""
    rules: dict[str, registry.Rule] = {}
    monkeypatch.setattr(registry, "_RULES", rules)
    monkeypatch.setattr(registry, "_load_builtin_rules", lambda: None)
    yield rules


# -- SQLite -----------------------------------------------------------------------------------------------

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


# -- PostgreSQL -------------------------------------------------------------------------------------------

def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _no_server(reason: str) -> None:
    """Skip where a developer has no PostgreSQL; under CI, which starts one in .ci/run, fail instead."""
    if _in_ci():
        pytest.fail(f"PostgreSQL tests need a server under CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The SQLAlchemy URL of a PostgreSQL server: ``RUNLENS_TEST_PG_URL``, else a throwaway one that
    ``.ci/start-postgres.sh`` starts from Debian's packages (kept running for later sessions)."""
    url = os.environ.get("RUNLENS_TEST_PG_URL")
    if url:
        return url
    if not glob("/usr/lib/postgresql/*/bin/initdb"):
        _no_server("RUNLENS_TEST_PG_URL is not set and PostgreSQL is not installed (apt-get install postgresql)")
    out = subprocess.run(["bash", str(ROOT / ".ci" / "start-postgres.sh")], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        pytest.fail(f"PostgreSQL is installed but .ci/start-postgres.sh failed: {out.stderr.strip()}",
                    pytrace=False)
    return out.stdout.strip()


def _admin_url(server_url: str) -> Any:
    return make_url(server_url).set(drivername="postgresql+psycopg")


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the server for this test only (tests never see each other's jobs), dropped
    afterwards even while a connection is left open."""
    name = f"runlens_test_{secrets.token_hex(4)}"
    admin = create_engine(_admin_url(pg_server), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    """An open, migrated store on ``pg_url``."""
    s = open_store(pg_url)
    try:
        yield s
    finally:
        s.close()
