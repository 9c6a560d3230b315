"""The group commit's writes: a batch's rows, statements compiled once, SQLite's writer.

A group commit writes a few kinds of rows (job records, attempts, tags, progress). The
statements are built with SQLAlchemy Core and compiled once per dialect, column set and
row count; the rows then go to the database driver as plain tuples. That skips
SQLAlchemy's per-row parameter processing, which was the largest part of what recording
cost a drain (about 14 us of ~90 us per job).

On SQLite the transaction runs in one call on a thread of its own, on a ``sqlite3``
connection of its own (:class:`SQLiteWriter`). Through aiosqlite the same transaction
took eight thread hops (cursor, execute and close per statement, commit, the pool's
rollback), each waiting for a turn of the busy event loop, and about 0.4 ms of
SQLAlchemy work per transaction in the loop's thread. Rows go as multi-row ``VALUES``
(one statement per 128 rows): the sqlite3 module releases and retakes the GIL around
every statement step, so ``executemany`` of 100 rows made the writer and the event
loop swap the GIL 100 times per commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import operator
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from amqp_jobs.errors import StoreError
from amqp_jobs.store.schema import attempts, job_tags, jobs

# Columns that describe the job itself: written by whoever records it first, never changed.
IDENTITY_COLUMNS = (
    "job",
    "queue",
    "user_id",
    "tenant",
    "publisher",
    "correlation_id",
    "parent_id",
    "created_at",
    "not_before",
    "labels",
)
SQLITE_CHUNK = 128  # rows per multi-row statement (18 columns: 2,304 parameters)
_BOUND = "b_"  # prefix of explicitly bound parameters


@dataclass(frozen=True, slots=True)
class BatchRows:
    """The rows of one group commit, built on the event loop and written in one go."""

    jobs: list[list[dict[str, Any]]]  # grouped by column set
    attempts: list[list[dict[str, Any]]]
    tags: list[dict[str, Any]]
    reports: list[dict[str, Any]]  # progress: job_id, percent, message, data, at


class Driver(Protocol):
    """Runs driver-level SQL (the dialect's paramstyle, positional parameters)."""

    def execute(self, sql: str, parameters: tuple[Any, ...]) -> None: ...

    def executemany(self, sql: str, parameters: list[tuple[Any, ...]]) -> None: ...


class SQLAlchemyDriver:
    """A :class:`Driver` over a (sync facade of a) SQLAlchemy connection."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: tuple[Any, ...]) -> None:
        self._connection.exec_driver_sql(sql, parameters)

    def executemany(self, sql: str, parameters: list[tuple[Any, ...]]) -> None:
        self._connection.exec_driver_sql(sql, parameters)


def insert_for(dialect: str) -> Any:
    """The dialect's ``insert`` construct (with ``on_conflict_do_*``)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


class Statements:
    """The group commit's statements for one dialect, compiled on first use."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self._insert = insert_for(dialect.name)
        self._compiled: dict[tuple[str, tuple[str, ...], int], DriverStatement] = {}

    def write(self, driver: Driver, rows: BatchRows) -> None:
        """Write a batch's rows through ``driver`` (inside the caller's transaction)."""
        for group in rows.jobs:
            self._upsert(driver, self._upsert_job, group)
        for group in rows.attempts:
            self._upsert(driver, self._upsert_attempt, group)
        if rows.tags:
            self._upsert(driver, self._insert_tags, rows.tags)
        for report in rows.reports:
            statement = self._prepared(self._progress_update, tuple(report), 1)
            driver.execute(statement.sql, statement.parameters([report])[0])

    def _upsert(
        self,
        driver: Driver,
        build: Callable[[tuple[str, ...], int], Any],
        rows: list[dict[str, Any]],
    ) -> None:
        columns = tuple(rows[0])
        if self.dialect.name != "sqlite":
            # asyncpg pipelines executemany: one round trip for all the rows.
            prepared = self._prepared(build, columns, 1)
            driver.executemany(prepared.sql, prepared.parameters(rows))
            return
        for start in range(0, len(rows), SQLITE_CHUNK):
            chunk = rows[start : start + SQLITE_CHUNK]
            prepared = self._prepared(build, columns, _padded_size(len(chunk)))
            driver.execute(prepared.sql, prepared.flat_parameters(chunk))

    def _prepared(
        self, build: Callable[[tuple[str, ...], int], Any], columns: tuple[str, ...], count: int
    ) -> DriverStatement:
        key = (build.__name__, columns, count)
        prepared = self._compiled.get(key)
        if prepared is None:
            prepared = DriverStatement.compile(build(columns, count), columns, count, self.dialect)
            self._compiled[key] = prepared
        return prepared

    def _rows_insert(self, table: sa.Table, columns: tuple[str, ...], count: int) -> Any:
        insert = self._insert(table)
        if count > 1:
            insert = insert.values([dict.fromkeys(columns)] * count)
        return insert

    def _upsert_job(self, columns: tuple[str, ...], count: int) -> Any:
        insert = self._rows_insert(jobs, columns, count)
        return insert.on_conflict_do_update(
            index_elements=[jobs.c.id],
            set_={c: insert.excluded[c] for c in columns if c not in ("id", *IDENTITY_COLUMNS)},
            # A row only moves forward: changes may arrive out of order.
            where=jobs.c.progress_order <= insert.excluded.progress_order,
        )

    def _upsert_attempt(self, columns: tuple[str, ...], count: int) -> Any:
        insert = self._rows_insert(attempts, columns, count)
        return insert.on_conflict_do_update(
            index_elements=[attempts.c.job_id, attempts.c.number],
            set_={c: insert.excluded[c] for c in columns if c not in ("job_id", "number")},
        )

    def _insert_tags(self, columns: tuple[str, ...], count: int) -> Any:
        return self._rows_insert(job_tags, columns, count).on_conflict_do_nothing()

    def _progress_update(self, columns: tuple[str, ...], count: int) -> Any:
        # Parameters named b_<the column they fill> (the WHERE one too; SQLAlchemy
        # reserves the bare column names), which maps a report's keys to them.
        return (
            jobs.update()
            .where(jobs.c.id == sa.bindparam(f"{_BOUND}id"))
            .values({c: sa.bindparam(f"{_BOUND}{c}") for c in columns if c != "id"})
        )


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement compiled for the driver, for ``rows`` rows of one column set: its SQL
    and the order in which a row's values go into its positional parameters."""

    sql: str
    rows: int
    order: tuple[str, ...]  # one row's columns, in parameter order
    json_columns: frozenset[str]

    @classmethod
    def compile(
        cls, statement: Any, columns: tuple[str, ...], rows: int, dialect: sa.Dialect
    ) -> DriverStatement:
        if isinstance(statement, sa.Insert):
            compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        else:
            compiled = statement.compile(dialect=dialect)
        names = tuple(compiled.positiontup or ())
        if rows == 1:
            order = tuple(name.removeprefix(_BOUND) for name in names)
        else:  # multi-row VALUES: parameters are named <column>_m<row>, row by row
            order = tuple(name.rsplit("_m", 1)[0] for name in names[: len(columns)])
            expected = tuple(f"{c}_m{i}" for i in range(rows) for c in order)
            if names != expected:
                raise StoreError(f"unexpected parameters in {statement}: {names[:5]}...")
        if sorted(order) != sorted(columns):
            raise StoreError(f"cannot compile {statement} for the driver: {order} != {columns}")
        table = statement.table
        json_columns = frozenset(c for c in columns if isinstance(table.c[c].type, sa.JSON))
        return cls(str(compiled), rows, order, json_columns)

    def parameters(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """One tuple per row (JSON columns serialised in place, as SQLAlchemy's JSON
        type does: ``json.dumps``, so None is stored as JSON ``null``)."""
        for column in self.json_columns:
            for row in rows:
                row[column] = json.dumps(row[column])
        values = operator.itemgetter(*self.order)
        if len(self.order) == 1:
            return [(values(row),) for row in rows]
        return [values(row) for row in rows]

    def flat_parameters(self, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
        """The parameters of one multi-row execution, row after row, padded to the
        statement's size with copies of the last row (upserting a row again with the
        same values changes nothing, and a few statement sizes cover every batch)."""
        values = self.parameters(rows)
        values += [values[-1]] * (self.rows - len(values))
        return tuple(itertools.chain.from_iterable(values))


def _padded_size(rows: int) -> int:
    """The statement size that takes ``rows`` rows: 1, 8, 16, 32, 64 or 128."""
    if rows == 1:
        return 1
    size = 8
    while size < rows:
        size *= 2
    return size


class _SQLite3Driver:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: tuple[Any, ...]) -> None:
        self._connection.execute(sql, parameters)

    def executemany(self, sql: str, parameters: list[tuple[Any, ...]]) -> None:
        self._connection.executemany(sql, parameters)


class SQLiteWriter:
    """The group commit's own ``sqlite3`` connection to the store's file, used from one
    thread: each batch is one call to that thread, in one ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(
        self,
        path: str,
        statements: Statements,
        configure: Callable[[sqlite3.Connection], None],
    ) -> None:
        self._path = path
        self._statements = statements
        self._configure = configure
        self._connection: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "amqp-jobs-sqlite-writer")

    async def write(self, rows: BatchRows) -> None:
        """Write and commit ``rows``; returns once committed."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, rows)

    def _write(self, rows: BatchRows) -> None:
        connection = self._connection
        if connection is None:
            # Autocommit mode: the transaction is ours to begin and end.
            connection = sqlite3.connect(self._path, isolation_level=None)
            self._configure(connection)
            self._connection = connection
        connection.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write
        try:
            self._statements.write(_SQLite3Driver(connection), rows)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    async def close(self) -> None:
        """Close the connection (in its thread) and stop the thread."""

        def close_connection() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close_connection)
        self._thread.shutdown(wait=True)
