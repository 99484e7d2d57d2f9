"""Engine creation from a SQLAlchemy URL: the only place that knows which database is behind the store.

SQLite gets the pragmas a write-heavy log needs (WAL, synchronous=NORMAL, a busy timeout so a second writer
waits instead of failing with "database is locked"); everything else gets a plain engine.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from runlens.core.errors import StoreUnavailable
from runlens.core.redact import redact_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def absolute_db_url(url: str) -> str:
    """A relative SQLite URL made absolute, so a child that changes directory still finds the same file."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    rest = url[len(prefix):]
    path, sep, query = rest.partition("?")
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return url
    return prefix + str(Path(path).resolve()) + sep + query


def _check_sqlite_file(path: Path, url: str, create: bool) -> None:
    shown = redact_url(url)
    if path.is_dir():
        raise StoreUnavailable(shown, f"{path} is a directory, not a database file")
    if not path.exists():
        if not create:
            raise StoreUnavailable(shown, f"no database file at {path} (run a job first, or pass --db)")
        if not path.parent.exists():
            raise StoreUnavailable(shown, f"the folder {path.parent} does not exist")
        return
    try:
        with path.open("rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise StoreUnavailable(shown, exc.strerror or str(exc)) from None
    if header and header != b"SQLite format 3\x00":
        raise StoreUnavailable(shown, f"{path} is not a SQLite database (corrupt or another kind of file)")


def create_store_engine(url: str, *, create: bool = True, read_only: bool = False) -> Engine:
    """An Engine for ``url``; for a SQLite file, checks the file first so errors name the real problem.

    ``read_only``: the database refuses writes from this engine (a SQLite file opened with ``mode=ro``, a
    PostgreSQL session whose transactions are read-only), for readers that promise never to write.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreUnavailable(redact_url(url), "not a valid database URL (expected e.g. sqlite:///runs.db)") from None
    path = sqlite_path(url)
    if path is not None:
        _check_sqlite_file(path, url, create)
    kwargs: dict[str, Any] = {}
    if parsed.drivername.startswith("sqlite"):
        # One connection per checkout: threads and processes each open their own, and a writer that dies
        # leaves no pooled connection holding a lock.
        kwargs["poolclass"] = NullPool
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        if read_only and path is not None:
            kwargs["url"] = f"{parsed.drivername}:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"
    elif parsed.drivername.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True
        if parsed.drivername == "postgresql":
            kwargs["url"] = parsed.set(drivername="postgresql+psycopg")
        if read_only:
            kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    try:
        engine = create_engine(kwargs.pop("url", parsed), **kwargs)
    except Exception as exc:  # a missing driver, a bad option
        raise StoreUnavailable(redact_url(url), str(exc).splitlines()[0]) from None
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_reader_pragmas if read_only else _sqlite_pragmas)
    return engine


def _sqlite_reader_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    """A read-only connection keeps the busy timeout; the journal mode is the writers' to set (setting it
    is a write, refused on a read-only file)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cur.close()


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()
