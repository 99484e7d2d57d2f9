"""Multi-row INSERTs: many rows per statement, so the writer thread lets go of the GIL a few times a flush.

Why: a driver's ``executemany`` runs one statement per row, and sqlite3 releases the GIL around each. Taking
it back waits up to ``sys.getswitchinterval()`` (5 ms) while a training loop holds it, so a busy loop held the
writer to a few hundred rows a second and the backlog grew without bound (CPython's GIL: "forced switching"
in Python/ceval_gil.c). One statement per chunk of up to ``MAX_ROWS_PER_STATEMENT`` rows releases it a few
times per flush, and the database's own work on a chunk (done without the GIL) covers most of the wait.
Values are still bound as parameters, so they are stored exactly as ``executemany`` stored them.

On SQLite a None is bound as NaN. Python's sqlite3 binds None through its adapter lookup (a key tuple, a dict
lookup, attribute lookups: ``need_adapt`` in CPython's Modules/_sqlite/cursor.c), about ten times the cost of
a float, with the GIL held, and most columns of a step row are None. SQLite stores a bound NaN as NULL
(``sqlite3VdbeMemSetDouble`` leaves the value NULL), so the stored row is the same.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

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
    nan_for_none: bool = False   # SQLite: bind NaN, stored as NULL, instead of the costlier None
    _sql: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.max_rows = 1 << (max(1, self.max_rows).bit_length() - 1)

    def sql(self, count: int) -> str:
        text = self._sql.get(count)
        if text is None:
            text = self._sql[count] = self.head + ", ".join([self.group] * count)
        return text


def insert_values(conn: Connection, plan: ValuesPlan, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (tuples in the plan's column order) with as few statements as the plan allows."""
    flat = itertools.chain.from_iterable
    nan = math.nan
    for start, count in chunks(len(rows), plan.max_rows):
        values = flat(rows[start:start + count])
        if plan.nan_for_none:
            conn.exec_driver_sql(plan.sql(count), tuple([nan if v is None else v for v in values]))
        else:
            conn.exec_driver_sql(plan.sql(count), tuple(values))


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
