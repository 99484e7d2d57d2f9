"""Migrate-on-open: a new database is created at head, an older one upgraded, a newer one refused.

Opening the same fresh database from many processes at once must not race (MLflow needed a file lock for
this, mlflow#1761): the upgrade runs under an exclusive lock, a file lock beside a SQLite file or a
PostgreSQL advisory lock, and the version is checked again once the lock is held.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from runlens.core.errors import SchemaTooNew, StoreUnavailable
from runlens.core.redact import redact_url
from runlens.core.resources import resource_dir
from runlens.store.engine import sqlite_path

log = logging.getLogger(__name__)

# The newest revision in migrations/versions; a test keeps the two in step. Knowing it without loading
# Alembic keeps the common case (an up-to-date store) to one query.
HEAD_REVISION = "0007"
KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
_PG_LOCK_KEY = 0x72756E6C656E73  # "runlens"


def current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def _alembic_config(conn: Connection):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("migrations")))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Run Alembic's upgrade on ``conn`` (committed by the caller's transaction)."""
    from alembic import command

    command.upgrade(_alembic_config(conn), revision)


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    path = sqlite_path(str(engine.url))
    if path is not None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(path) + ".lock", timeout=120)
        try:
            with lock:
                yield
        except Timeout:
            raise StoreUnavailable(
                str(path), f"timed out waiting for {lock.lock_file} (another runlens migrating?)"
            ) from None
        return
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
        return
    yield


def _check_known(found: str | None, url: str) -> None:
    if found is not None and found not in KNOWN_REVISIONS:
        raise SchemaTooNew(found, HEAD_REVISION, redact_url(url))


def verify_schema(engine: Engine, url: str) -> None:
    """Check, without writing, that the store at ``url`` is at HEAD_REVISION: for readers that never migrate.

    Raises:
        SchemaTooNew: written by a newer runlens.
        StoreUnavailable: not a runlens store, or one that needs ``runlens db upgrade`` first.
    """
    with engine.connect() as conn:
        found = current_revision(conn)
    _check_known(found, url)
    if found is None:
        raise StoreUnavailable(redact_url(url), "not a runlens store (no runlens tables; run a job first)")
    if found != HEAD_REVISION:
        raise StoreUnavailable(redact_url(url), f"its schema {found} is older than this runlens's "
                               f"{HEAD_REVISION}; run 'runlens db upgrade' first")


def ensure_schema(engine: Engine, *, retry_for: float = 30.0) -> None:
    """Bring the store to HEAD_REVISION, or raise SchemaTooNew without writing anything.

    A SQLite file that does not exist yet is created entirely under the lock: the first connection switches
    it to WAL, and processes racing through that switch can be told "database is locked" at once, without
    SQLite's busy handler. A lock error that still gets through is retried for ``retry_for`` seconds.
    """
    deadline = time.monotonic() + retry_for
    delay = 0.05
    fresh_retries = 2
    while True:
        try:
            _ensure_schema_once(engine)
            return
        except _FreshFileFailed as failed:   # the half-made file is gone: start it again, twice at most
            fresh_retries -= 1
            if fresh_retries < 0 or time.monotonic() > deadline:
                raise failed.cause from None
            time.sleep(delay)
        except OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)


def _ensure_schema_once(engine: Engine) -> None:
    url = str(engine.url)
    path = sqlite_path(url)
    fresh = path is not None and (not path.exists() or path.stat().st_size == 0)
    if not fresh:
        with engine.connect() as conn:
            found = current_revision(conn)
        _check_known(found, url)
        if found == HEAD_REVISION:
            return
    failure: Exception | None = None
    with _exclusive(engine):
        try:
            with engine.begin() as conn:
                found = current_revision(conn)
                _check_known(found, url)
                if found == HEAD_REVISION:
                    return
                log.info("migrating runlens store %s from %s to %s", redact_url(url), found or "empty",
                         HEAD_REVISION)
                upgrade(conn)
        except Exception as exc:
            if not fresh or path is None:
                raise
            failure = exc
        if failure is not None and path is not None:
            # SQLite runs the migrations' DDL outside a transaction (pysqlite's autocommit for DDL), so a
            # creation that failed half-way (seen once: "disk I/O error" under heavy load) leaves tables
            # behind that the next open cannot migrate over ("table jobs already exists"). A file that was
            # missing or empty when this call began holds nothing else: remove it, under the lock, and let the
            # caller start again.
            engine.dispose()
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                leftover.unlink(missing_ok=True)
            log.warning("creating the runlens store %s failed (%s); starting it again", redact_url(url), failure)
            raise _FreshFileFailed(failure)


class _FreshFileFailed(Exception):
    """Creating a brand-new SQLite store failed part-way; the file was removed and may be created again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause
