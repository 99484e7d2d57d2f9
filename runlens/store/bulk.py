"""Multi-row INSERTs: many rows per statement, so the writer thread lets go of the GIL a few times a flush.

Why: a driver's ``executemany`` runs one statement per row, and sqlite3 releases the GIL around each. Taking
it back waits up to ``sys.getswitchinterval()`` (5 ms) while a training loop holds it, so a busy loop held the
writer to a few hundred rows a second and the backlog grew without bound (CPython's GIL: "forced switching"
in Python/ceval_gil.c). One statement per chunk of up to ``MAX_ROWS_PER_STATEMENT`` rows releases it a few
times per flush, and the database's own work on a chunk (done without the GIL) covers most of the wait.
Values are still bound as parameters, so they are stored exactly as ``executemany`` stored them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Iterator

from sqlalchemy.engine import Connection

# Rows per statement (a power of two, lowered to fit the driver's bound-parameter limit). Big enough that the
# database's work on a statement outlasts a GIL switch interval, small enough that binding one (on the writer
# thread, with the GIL held) stays well under it.
MAX_ROWS_PER_STATEMENT = 2048


@dataclass
class ValuesPlan:
    """Multi-row INSERTs of one table: ``head`` + ``count`` copies of the one-row ``group``; the SQL of each
    count is built once (counts are powers of two, so a run uses a dozen statements at most and the driver's
    statement cache keeps them prepared)."""

    head: str
    group: str
    max_rows: int
    _sql: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.max_rows = 1 << (max(1, self.max_rows).bit_length() - 1)

    def sql(self, count: int) -> str:
        text = self._sql.get(count)
        if text is None:
            text = self._sql[count] = self.head + ", ".join([self.group] * count)
        return text


def chunks(n: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """(start, count) covering ``n`` rows: full chunks of ``max_rows`` (a power of two), then the rest as
    descending powers of two, so the number of distinct statements stays small."""
    start = 0
    while n - start >= max_rows:
        yield start, max_rows
        start += max_rows
    bit = max_rows
    while start < n:
        while bit > n - start:
            bit >>= 1
        yield start, bit
        start += bit


def bind_limit(conn: Connection) -> int:
    """How many bound parameters one statement may have on this connection."""
    name = conn.dialect.name
    if name == "postgresql":
        return 65535   # the wire protocol counts parameters in 16 bits
    if name == "sqlite":
        raw = conn.connection.driver_connection
        getlimit = getattr(raw, "getlimit", None)   # Python 3.11+
        if getlimit is not None:
            return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        # SQLITE_MAX_VARIABLE_NUMBER's default: 999 before SQLite 3.32, 32766 since.
        return 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return 999
