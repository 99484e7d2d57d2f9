"""Shared fixtures: a real SQLite file per test, and an environment free of the caller's RUNLENS_* settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from runlens.store import Store, open_store


@pytest.fixture(autouse=True)
def _no_runlens_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not inherit RUNLENS_JOB_ID / RUNLENS_DB / RUNLENS_DISABLE from a shell or `runlens collect`."""
    for name in list(os.environ):
        if name.startswith("RUNLENS_"):
            monkeypatch.delenv(name)


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
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNLENS_")}
