"""Step rows in bulk: the columns a batch of steps is buffered as, and multi-row INSERTs that write them with few
statements and little Python work per row.

Few statements: a driver's ``executemany`` runs one statement per row, and sqlite3 releases the GIL around each.
Taking it back waits up to ``sys.getswitchinterval()`` (5 ms) while a training loop holds it, so a busy loop held
the writer to a few hundred rows a second and the backlog grew without bound (CPython's GIL: "forced switching"
in Python/ceval_gil.c). One statement per chunk of up to ``MAX_ROWS_PER_STATEMENT`` rows releases it a few
times per flush, and the database's own work on a chunk (done without the GIL) covers most of the wait. Values
are still bound as parameters, so they are stored exactly as ``executemany`` stored them.

Little Python work per row: the batch is held as one tuple per column (``StepColumns``), so the flat parameter
list of a statement is built by slice assignment, in C; only the columns some row has are bound (a column no row
of the batch has is left to its default, NULL), and on SQLite the job id is bound once per statement (``?1`` in
every row) rather than once per row.

On SQLite a None is bound as NaN. Python's sqlite3 binds None through its adapter lookup (a key tuple, a dict
lookup, attribute lookups: ``need_adapt`` in CPython's Modules/_sqlite/cursor.c), about ten times the cost of
a float, with the GIL held. SQLite stores a bound NaN as NULL (``sqlite3VdbeMemSetDouble`` leaves the value
NULL), so the stored row is the same.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Connection

# Rows per statement (a power of two, lowered to fit the driver's bound-parameter limit). Big enough that the
# database's work on a statement outlasts a GIL switch interval, small enough that binding one (on the writer
# thread, with the GIL held) stays well under it.
MAX_ROWS_PER_STATEMENT = 4096

# The step_metrics columns a writer fills, in the table's order; ``job_id`` comes from the writer, not the row.
STEP_COLUMNS = ("job_id", "step", "timestamp", "loss", "batch_size", "gradient_norm", "learning_rate",
                "step_time_seconds", "data_time_seconds", "rank", "tokens", "extras", "thread_cpu_seconds", "source")
ROW_COLUMNS = STEP_COLUMNS[1:]

_EMPTY: frozenset[str] = frozenset()


@dataclass
class StepColumns:
    """``n`` step rows as columns: what the batch writer buffers and ``Store.insert_steps`` writes.

    ``columns`` maps a ``ROW_COLUMNS`` name to a tuple of ``n`` values as they are bound (floats, ints, None,
    the extras as JSON text); a column left out is NULL in every row. Tuples, not lists: the cyclic garbage
    collector untracks a tuple of such values the first time it sees it, so a buffered backlog adds nothing to
    a full collection, while a list is walked element by element at every full pass. ``nullable`` names the
    columns that may hold a None (the others are known to have a value in every row).
    """

    n: int
    columns: dict[str, tuple[Any, ...]]
    nullable: frozenset[str] = _EMPTY

    def __len__(self) -> int:
        return self.n

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> StepColumns:
        """Columns of row dicts keyed by ``ROW_COLUMNS`` names (missing keys are None; other keys are ignored);
        ``extras`` (a dict or None) becomes JSON text, an empty dict None."""
        n = len(rows)
        columns: dict[str, tuple[Any, ...]] = {}
        nullable = []
        dumps = json.dumps
        for name in ROW_COLUMNS:
            values = tuple([r.get(name) for r in rows])
            if name == "extras":
                values = tuple([dumps(v) if v else None for v in values])
            missing = values.count(None)
            if missing == n:
                continue
            columns[name] = values
            if missing:
                nullable.append(name)
        return cls(n, columns, frozenset(nullable))

    def slice(self, start: int, stop: int) -> StepColumns:
        stop = min(stop, self.n)
        if start <= 0 and stop >= self.n:
            return self
        return StepColumns(max(0, stop - max(0, start)),
                           {k: v[start:stop] for k, v in self.columns.items()}, self.nullable)

    @classmethod
    def concat(cls, batches: Sequence[StepColumns]) -> StepColumns:
        """One batch of ``batches`` in order (a column some of them lack is None in their rows)."""
        if len(batches) == 1:
            return batches[0]
        names = [c for c in ROW_COLUMNS if any(c in b.columns for b in batches)]
        nullable = set().union(*(b.nullable for b in batches))
        columns = {}
        for name in names:
            parts: list[tuple[Any, ...]] = []
            for b in batches:
                values = b.columns.get(name)
                if values is None:
                    values = (None,) * b.n
                    nullable.add(name)
                parts.append(values)
            columns[name] = tuple(itertools.chain.from_iterable(parts))
        return cls(sum(b.n for b in batches), columns, frozenset(nullable))

    def last(self, name: str) -> Any:
        """The last row's value of ``name`` (None for an empty batch or a column left out)."""
        values = self.columns.get(name)
        return values[-1] if values else None


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


@dataclass
class _StepPlan:
    names: tuple[str, ...]          # the batch's columns, after job_id
    values: ValuesPlan | None       # None: the driver's own executemany (placeholders we do not write by hand)
    job_once: bool = False          # SQLite: the job id is ?1 in every row, bound once per statement
    sql: str = ""                   # the one-row statement, for the executemany fallback
    positional: bool = True


class StepInserter:
    """Writes ``StepColumns`` into ``step_metrics`` on an open transaction, one plan per set of columns.

    Built once per Store; the plans (and the driver's prepared statements) live as long as it does.
    """

    def __init__(self, table: Table) -> None:
        self._table = table
        self._plans: dict[tuple[str, ...], _StepPlan] = {}

    def insert(self, conn: Connection, job_id: str, batch: StepColumns) -> None:
        if not batch.n:
            return
        names = tuple(c for c in ROW_COLUMNS if c in batch.columns)
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plans[names] = self._plan(conn, names)
        columns = [batch.columns[c] for c in names]
        if plan.values is None:
            rows = list(zip(itertools.repeat(job_id, batch.n), *columns))
            if not plan.positional:
                keys = ("job_id",) + names
                rows = [dict(zip(keys, r)) for r in rows]   # type: ignore[misc]
            conn.exec_driver_sql(plan.sql, rows)
            return
        values = plan.values
        nan = math.nan
        nan_for = batch.nullable if values.nan_for_none else _EMPTY
        width = len(names) if plan.job_once else len(names) + 1
        first = 0 if plan.job_once else 1
        for start, count in chunks(batch.n, values.max_rows):
            stop = start + count
            params: list[Any] = [job_id] * (count * width)   # job_id stays only where no column lands
            for j, (name, column) in enumerate(zip(names, columns)):
                part: Sequence[Any] = column[start:stop]
                if name in nan_for:
                    part = [nan if v is None else v for v in part]
                params[first + j::width] = part
            conn.exec_driver_sql(values.sql(count), (job_id, *params) if plan.job_once else tuple(params))

    def _plan(self, conn: Connection, names: tuple[str, ...]) -> _StepPlan:
        keys = ("job_id",) + names
        compiled = insert(self._table).values({c: bindparam(c) for c in keys}).compile(dialect=conn.dialect)
        sql = str(compiled)
        positional = bool(compiled.positional)
        if positional:
            assert list(compiled.positiontup or []) == list(keys)
        head, _, group = sql.partition(" VALUES ")
        dialect = conn.dialect.name
        limit = bind_limit(conn)
        if dialect == "sqlite" and positional and group.startswith("(?"):
            group = "(?1" + ", ?" * len(names) + ")"
            per_statement = (limit - 1) // len(names)
            return _StepPlan(names, ValuesPlan(head + " VALUES ", group, min(MAX_ROWS_PER_STATEMENT, per_statement),
                                               nan_for_none=True), job_once=True)
        if not positional and dialect == "postgresql":
            # Named placeholders (psycopg's pyformat); its drivers also take %s with a sequence.
            group = "(" + ", ".join(["%s"] * len(keys)) + ")"
        if not (positional or dialect == "postgresql") or not group.startswith("("):
            return _StepPlan(names, None, sql=sql, positional=positional)
        per_statement = max(1, limit // len(keys))
        return _StepPlan(names, ValuesPlan(head + " VALUES ", group, min(MAX_ROWS_PER_STATEMENT, per_statement)))


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
