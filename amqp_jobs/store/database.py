"""JobStore: job records, attempts and results in SQLite or PostgreSQL (SQLAlchemy 2, async).

Writes go through a group commit: changes submitted within a few milliseconds of each
other are written in one transaction, and each submitter waits only for the commit of
its own batch. State changes may arrive out of order from several processes (a worker
can report "running" before the publisher's "queued" is written), so every change
carries an order (``attempt * 10 + rank of the state``) and a row only moves forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from amqp_jobs.errors import ConfigurationError, StoreError
from amqp_jobs.store.schema import (
    attempts,
    group_results,
    groups,
    idempotency,
    job_tags,
    jobs,
    migrate,
)
from amqp_jobs.store.writes import (
    BatchRows,
    SQLAlchemyDriver,
    SQLiteWriter,
    Statements,
    insert_for,
)

DEFAULT_URL = "sqlite+aiosqlite:///./amqp_jobs.db"

STATE_RANK = {
    "queued": 0,
    "scheduled": 0,
    "running": 1,
    "failed": 2,  # this attempt failed; another follows
    "succeeded": 3,
    "dead": 3,
    "cancelled": 3,
    "skipped": 3,  # a chain step whose condition did not hold: never ran
}
FINAL_STATES = frozenset({"succeeded", "dead", "cancelled", "skipped"})
_CANCELLED_ORDER = 1_000_000_000  # above any attempt's order: a cancelled job stays cancelled


@dataclass(frozen=True, slots=True)
class StateChange:
    """One thing that happened to a job, as the store records it."""

    job_id: str
    state: str
    attempt: int
    job: str
    queue: str
    created_at: float
    at: float = field(default_factory=time.time)
    user_id: str | None = None
    tenant: str | None = None
    publisher: str | None = None
    correlation_id: str | None = None
    parent_id: str | None = None
    not_before: float | None = None
    labels: Mapping[str, str] | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    worker: str | None = None
    started_at: float | None = None  # on an outcome: when its attempt started

    def __post_init__(self) -> None:
        if self.state not in STATE_RANK:
            raise ValueError(f"unknown job state {self.state!r}")

    @property
    def order(self) -> int:
        """Where this change stands in the job's life; later changes have higher orders."""
        return self.attempt * 10 + STATE_RANK[self.state]


@dataclass(frozen=True, slots=True)
class ProgressChange:
    """A progress report of a running job (written in order with its state changes)."""

    job_id: str
    percent: float | None
    message: str | None
    data: Mapping[str, Any] | None
    at: float = field(default_factory=time.time)
    # The job's "running" change, written first, so a report reaches a job whose record
    # is not there yet (the worker got it before its publisher's "queued" landed).
    identity: StateChange | None = None


Change = StateChange | ProgressChange


@dataclass(frozen=True, slots=True)
class Progress:
    """What a job last reported about its progress, and its state."""

    state: str
    percent: float | None
    message: str | None
    data: Mapping[str, Any]
    at: float | None

    @property
    def finished(self) -> bool:
        """True once the job succeeded, died or was cancelled."""
        return self.state in FINAL_STATES


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the store knows it."""

    id: str
    job: str
    queue: str
    state: str
    attempts: int
    user_id: str | None
    tenant: str | None
    created_at: float
    updated_at: float
    result: Any
    error_type: str | None
    error_message: str | None
    labels: Mapping[str, str]

    @property
    def finished(self) -> bool:
        """True once the job succeeded, died or was cancelled."""
        return self.state in FINAL_STATES


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One run of a job."""

    number: int
    worker: str | None
    started_at: float | None
    finished_at: float | None
    outcome: str | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query; pass ``cursor`` to the next query for the following page."""

    jobs: list[JobRecord]
    cursor: str | None


class GroupCommit:
    """Writes submissions in batches, one transaction in flight at a time.

    While a transaction is being written, new submissions wait and then all go in the
    next one, so batches grow with the load instead of transactions piling up (which on
    SQLite would only queue behind its single writer). An idle store waits at most
    ``max_delay`` to gather a batch; ``max_batch`` caps a transaction's size.
    """

    def __init__(
        self,
        flush: Callable[[list[Change]], Awaitable[None]],
        *,
        max_batch: int = 1000,
        max_delay: float = 0.001,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._pending: list[tuple[Change, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, change: Change) -> None:
        """Queue ``change`` and wait until the transaction holding it has committed."""
        await self.submit_soon(change)

    def submit_soon(self, change: Change) -> asyncio.Future[None]:
        """Queue ``change``; the future is done when the transaction holding it commits."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((change, done))
        if self._flushing is None and self._timer is None:
            self._timer = loop.call_later(self._max_delay, self._start_flush)
        return done

    def _start_flush(self) -> None:
        self._timer = None
        if self._flushing is not None or not self._pending:
            return  # the flush in flight starts the next one when it ends
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._flushing = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Change, asyncio.Future[None]]]) -> None:
        try:
            await self._flush([change for change, _ in batch])
        except Exception as exc:
            error = StoreError(f"could not record {len(batch)} job state change(s): {exc}")
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._flushing = None
            if self._pending:
                self._start_flush()

    async def drain(self) -> None:
        """Write everything pending, and wait until it is written."""
        while self._pending or self._flushing is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._start_flush()
            if self._flushing is not None:
                await asyncio.gather(self._flushing, return_exceptions=True)


class GroupRead:
    """Reads by key in batches, one query in flight at a time (the read-side twin of
    :class:`GroupCommit`): a worker checking every job it starts asks one
    ``WHERE id IN (...)`` per batch instead of one query per job."""

    def __init__(
        self,
        fetch: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
        *,
        max_batch: int = 500,
    ) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []
        self._reading: asyncio.Task[None] | None = None

    async def get(self, key: str) -> Any:
        """The fetched value of ``key`` (None if absent)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((key, done))
        if self._reading is None:
            self._start()
        return await done

    def _start(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._reading = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        try:
            found = await self._fetch(list({key for key, _ in batch}))
        except Exception as exc:
            error = StoreError(f"could not read {len(batch)} job record(s): {exc}")
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
        else:
            for key, done in batch:
                if not done.done():
                    done.set_result(found.get(key))
        finally:
            self._reading = None
            if self._pending:
                self._start()


class JobStore:
    """The job store. ``url`` is a SQLAlchemy async URL: SQLite (default) or PostgreSQL.

    SQLite runs in WAL mode with a busy timeout, so several worker processes on one
    machine can share a file; use PostgreSQL when workers run on several machines.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        busy_timeout_ms: int = 30_000,
        engine_options: Mapping[str, Any] | None = None,
        max_batch: int = 1000,
        max_delay: float = 0.001,
    ) -> None:
        self.url = url
        self._dialect = sa.make_url(url).get_backend_name()
        self._busy_timeout_ms = busy_timeout_ms
        self._engine_options = dict(engine_options or {})
        self._engine: AsyncEngine | None = None
        self._sqlite_writer: SQLiteWriter | None = None
        self._writer = GroupCommit(self._write, max_batch=max_batch, max_delay=max_delay)
        self._statements: Statements | None = None  # the group commit's, once open
        self._open_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._outcomes = GroupRead(self._read_outcomes)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect

    async def open(self) -> None:
        """Connect and bring the schema up to date (idempotent)."""
        if self._engine is not None:
            return  # the usual case, on every record: no lock round
        async with self._open_lock:
            if self._engine is not None:
                return
            if self.dialect not in ("sqlite", "postgresql"):
                raise ConfigurationError(
                    f"store URL {self.url!r}: only sqlite+aiosqlite and postgresql+asyncpg "
                    "are supported"
                )
            engine = create_async_engine(self.url, **self._engine_options)
            if self.dialect == "sqlite":
                self._configure_sqlite(engine)
            for attempt in range(5):
                try:
                    async with engine.begin() as connection:
                        await connection.run_sync(migrate)
                    break
                except Exception as exc:
                    # SQLite has no advisory lock: a process that lost the race to create
                    # the schema finds it made by the winner when it tries again.
                    if attempt < 4 and self.dialect == "sqlite":
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    await engine.dispose()
                    raise StoreError(
                        f"cannot open the job store at {self._safe_url()}: {exc}"
                    ) from exc
            self._statements = Statements(engine.dialect)
            database = engine.url.database
            if self.dialect == "sqlite" and database not in (None, "", ":memory:"):
                self._sqlite_writer = SQLiteWriter(database, self._statements, self._pragmas)
            self._engine = engine

    def _configure_sqlite(self, engine: AsyncEngine) -> None:
        @sa.event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            self._pragmas(dbapi_connection)

    def _pragmas(self, dbapi_connection: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    def _safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    async def engine(self) -> AsyncEngine:
        """The open engine (opening the store first): for the store's companions
        (schedules, keys, grants, audit, preferences) that keep their own tables."""
        await self.open()
        return self._require()

    def writing(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold while a write transaction runs: on SQLite, writers of this process (job
        records, the audit log) take turns here instead of in SQLite's busy handler,
        which polls with sleeps of up to 100 ms. PostgreSQL needs no turns."""
        if self.dialect == "sqlite":
            return self._write_lock
        return contextlib.nullcontext()

    def insert(self) -> Any:
        """The dialect's ``insert`` construct (with ``on_conflict_do_*``)."""
        return self._insert()

    def _require(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the job store is not open; call open() first")
        return self._engine

    async def close(self) -> None:
        """Write what is pending, then close the connections."""
        await self._writer.drain()
        engine, self._engine = self._engine, None
        writer, self._sqlite_writer = self._sqlite_writer, None
        if writer is not None:
            await writer.close()
        if engine is not None:
            await engine.dispose()

    # --- writing -----------------------------------------------------------------------

    async def record(self, change: StateChange) -> None:
        """Record a state change; returns once it is committed (group commit)."""
        await self.open()
        await self._writer.submit(change)

    def record_soon(self, change: StateChange) -> asyncio.Future[None]:
        """Queue a state change of an open store; the future is done once it is committed
        (or fails with :class:`StoreError`)."""
        self._require()
        return self._writer.submit_soon(change)

    async def report_progress(self, change: ProgressChange) -> None:
        """Record a progress report (group commit, ordered after the job's earlier changes)."""
        await self.open()
        await self._writer.submit(change)

    def _insert(self) -> Any:
        return insert_for(self.dialect)

    async def _write(self, batch: list[Change]) -> None:
        reports = [c for c in batch if isinstance(c, ProgressChange)]
        changes = [c for c in batch if isinstance(c, StateChange)]
        changes += [r.identity for r in reports if r.identity is not None]
        # One row per job and per attempt in a batch: PostgreSQL refuses an upsert that
        # touches the same row twice, and only the latest change of a job matters.
        latest: dict[str, StateChange] = {}
        for change in changes:
            known = latest.get(change.job_id)
            if known is None or change.order >= known.order:
                latest[change.job_id] = change
        job_rows = [_job_row(c) for c in latest.values()]
        merged: dict[tuple[str, int], dict[str, Any]] = {}
        for change in changes:
            if STATE_RANK[change.state] > 0 and change.state != "skipped":
                merged.setdefault((change.job_id, change.attempt), {}).update(_attempt_row(change))
        attempt_rows = list(merged.values())
        tag_rows = [
            {"job_id": c.job_id, "key": k, "value": v}
            for c in changes
            if c.state in ("queued", "scheduled") and c.labels
            for k, v in c.labels.items()
        ]
        progress = [
            {
                "id": r.job_id,
                "progress_percent": r.percent,
                "progress_message": r.message,
                "progress_data": dict(r.data or {}),
                "progress_at": r.at,
            }
            for r in reports
        ]
        rows = BatchRows(_same_keys(job_rows), _same_keys(attempt_rows), tag_rows, progress)
        async with self.writing():
            if self._sqlite_writer is not None:
                await self._sqlite_writer.write(rows)  # see amqp_jobs.store.writes
                return
            statements = self._statements
            assert statements is not None
            async with self._require().begin() as connection:
                await connection.run_sync(
                    lambda sync: statements.write(SQLAlchemyDriver(sync), rows)
                )

    # --- cancellation ------------------------------------------------------------------

    async def request_cancel(self, job_id: str, at: float | None = None) -> str | None:
        """Ask for a job to be cancelled; return its state afterwards (None: unknown job).

        A job that has not started is marked cancelled at once (its message is dropped
        when a worker receives it); a running one is cancelled by its worker, which
        polls for requests. A finished job stays as it is.
        """
        await self.open()
        at = time.time() if at is None else at
        async with self._require().begin() as connection:
            await connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state.not_in(FINAL_STATES))
                .values(cancel_requested_at=at)
            )
            await connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state.in_(("queued", "scheduled")))
                # Nothing recorded later (a worker's "running") may bring it back.
                .values(state="cancelled", progress_order=_CANCELLED_ORDER, updated_at=at)
            )
            state = (
                await connection.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id))
            ).scalar()
        return None if state is None else str(state)

    async def cancel_requests_since(self, since: float, limit: int = 100_000) -> list[str]:
        """Ids of jobs whose cancellation was requested at or after ``since``."""
        await self.open()
        query = (
            sa.select(jobs.c.id)
            .where(jobs.c.cancel_requested_at >= since)
            .order_by(jobs.c.cancel_requested_at)
            .limit(limit)
        )
        async with self._require().connect() as connection:
            return [row.id for row in await connection.execute(query)]

    # --- groups (fan-out / fan-in) ------------------------------------------------------

    async def create_group(self, group_id: str, size: int) -> None:
        """Record a group of ``size`` members whose outputs will be collected."""
        await self.open()
        async with self._require().begin() as connection:
            await connection.execute(
                groups.insert().values(id=group_id, size=size, created_at=time.time())
            )

    async def complete_member(self, group_id: str, position: int, output: Any) -> list[Any] | None:
        """Record a member's output; return all outputs (in member order) to the one call
        that completes the group, None to every other (and to a repeated member).

        The output's primary key makes a redelivered member count once; the ``fired``
        flag, set by a conditional update, lets exactly one caller fire the callback.
        """
        await self.open()
        async with self._require().begin() as connection:
            added = await connection.execute(
                self._insert()(group_results)
                .values(group_id=group_id, position=position, output=output)
                .on_conflict_do_nothing()
            )
            if added.rowcount == 1:
                await connection.execute(
                    groups.update().where(groups.c.id == group_id).values(done=groups.c.done + 1)
                )
            fired = await connection.execute(
                groups.update()
                .where(groups.c.id == group_id, groups.c.done >= groups.c.size, ~groups.c.fired)
                .values(fired=True)
            )
            if fired.rowcount != 1:
                return None
            rows = await connection.execute(
                sa.select(group_results.c.output)
                .where(group_results.c.group_id == group_id)
                .order_by(group_results.c.position)
            )
            return [row.output for row in rows]

    # --- idempotency -------------------------------------------------------------------

    async def claim_key(self, key: str, job_id: str, expires_at: float) -> str:
        """Claim ``key`` for ``job_id`` unless an unexpired claim exists; return the owner.

        One INSERT ... ON CONFLICT on the key's primary key decides: two publishers
        can never both win, whatever the timing.
        """
        await self.open()
        insert = self._insert()
        statement = insert(idempotency).values(
            key=key, job_id=job_id, run_attempt=0, expires_at=expires_at
        )
        statement = statement.on_conflict_do_update(
            index_elements=[idempotency.c.key],
            set_={"job_id": job_id, "run_attempt": 0, "expires_at": expires_at},
            where=idempotency.c.expires_at < time.time(),
        )
        async with self._require().begin() as connection:
            await connection.execute(statement)
            owner = (
                await connection.execute(
                    sa.select(idempotency.c.job_id).where(idempotency.c.key == key)
                )
            ).scalar()
        return str(owner)

    async def claim_run(self, key: str, job_id: str, attempt: int, expires_at: float) -> bool:
        """Whether this delivery (job, attempt) may run the job of ``key``.

        True for the first delivery of each attempt of the owning job; False for a
        duplicate delivery, or for another job holding the key. Decided by a conditional
        write (insert-if-absent, else update-if-older), never by a read then a write.
        """
        await self.open()
        insert = self._insert()
        async with self._require().begin() as connection:
            created = await connection.execute(
                insert(idempotency)
                .values(key=key, job_id=job_id, run_attempt=attempt, expires_at=expires_at)
                .on_conflict_do_nothing()
            )
            if created.rowcount == 1:
                return True
            advanced = await connection.execute(
                idempotency.update()
                .where(
                    idempotency.c.key == key,
                    idempotency.c.job_id == job_id,
                    idempotency.c.run_attempt < attempt,
                )
                .values(run_attempt=attempt)
            )
            return bool(advanced.rowcount == 1)

    # --- reading -----------------------------------------------------------------------

    async def outcome(self, job_id: str) -> tuple[str, float] | None:
        """``(state, updated_at)`` of a job, or None; concurrent calls share one query."""
        await self.open()
        result: tuple[str, float] | None = await self._outcomes.get(job_id)
        return result

    async def _read_outcomes(self, job_ids: list[str]) -> dict[str, tuple[str, float]]:
        query = sa.select(jobs.c.id, jobs.c.state, jobs.c.updated_at).where(jobs.c.id.in_(job_ids))
        async with self._require().connect() as connection:
            rows = (await connection.execute(query)).all()
        return {row.id: (row.state, row.updated_at) for row in rows}

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of one job, or None."""
        await self.open()
        async with self._require().connect() as connection:
            row = (await connection.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _record(row)

    async def progress(self, job_id: str) -> Progress | None:
        """The last progress report and the state of a job, or None."""
        await self.open()
        query = sa.select(
            jobs.c.state,
            jobs.c.progress_percent,
            jobs.c.progress_message,
            jobs.c.progress_data,
            jobs.c.progress_at,
        ).where(jobs.c.id == job_id)
        async with self._require().connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return Progress(
            row.state,
            row.progress_percent,
            row.progress_message,
            row.progress_data or {},
            row.progress_at,
        )

    async def prune(self, older_than: float) -> int:
        """Delete finished jobs last changed before ``older_than`` (Unix time); return how many."""
        await self.open()
        old = sa.select(jobs.c.id).where(
            jobs.c.state.in_(FINAL_STATES), jobs.c.updated_at < older_than
        )
        async with self._require().begin() as connection:
            await connection.execute(attempts.delete().where(attempts.c.job_id.in_(old)))
            await connection.execute(job_tags.delete().where(job_tags.c.job_id.in_(old)))
            result = await connection.execute(
                jobs.delete().where(jobs.c.state.in_(FINAL_STATES), jobs.c.updated_at < older_than)
            )
            await connection.execute(
                idempotency.delete().where(idempotency.c.expires_at < time.time())
            )
        return int(result.rowcount or 0)

    async def attempts_of(self, job_id: str) -> list[AttemptRecord]:
        """Every attempt of a job, first first."""
        await self.open()
        query = sa.select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
        async with self._require().connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            AttemptRecord(
                r.number,
                r.worker,
                r.started_at,
                r.finished_at,
                r.outcome,
                r.error_type,
                r.error_message,
            )
            for r in rows
        ]

    async def query(
        self,
        *,
        user: str | None = None,
        tenant: str | None = None,
        state: str | Sequence[str] | None = None,
        job: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tags: Mapping[str, str] | None = None,
        pipeline: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Jobs matching every given filter, newest first, ``limit`` per page.

        Keyset pagination on (created_at, id), which the indexes serve: a page costs the
        same however deep it is.
        """
        await self.open()
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be 1..1000, not {limit}")
        query = sa.select(jobs)
        if user is not None:
            query = query.where(jobs.c.user_id == user)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            query = query.where(jobs.c.state.in_(states))
        if job is not None:
            query = query.where(jobs.c.job == job)
        if pipeline is not None:  # every job of a chain carries its first job's id
            query = query.where(sa.or_(jobs.c.correlation_id == pipeline, jobs.c.id == pipeline))
        if since is not None:
            query = query.where(jobs.c.created_at >= since)
        if until is not None:
            query = query.where(jobs.c.created_at < until)
        for key, value in (tags or {}).items():
            tagged = sa.select(job_tags.c.job_id).where(
                job_tags.c.key == key, job_tags.c.value == value
            )
            query = query.where(jobs.c.id.in_(tagged))
        if cursor is not None:
            created_at, last_id = _parse_cursor(cursor)
            query = query.where(
                sa.or_(
                    jobs.c.created_at < created_at,
                    sa.and_(jobs.c.created_at == created_at, jobs.c.id < last_id),
                )
            )
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)
        async with self._require().connect() as connection:
            rows = (await connection.execute(query)).all()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        next_cursor = f"{records[-1].created_at!r}/{records[-1].id}" if more and records else None
        return Page(records, next_cursor)


def _parse_cursor(cursor: str) -> tuple[float, str]:
    created, _, job_id = cursor.partition("/")
    try:
        return float(created), job_id
    except ValueError:
        raise ValueError(f"cursor {cursor!r} is not one a query returned") from None


def _same_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by their set of columns (one multi-row statement per group)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return list(groups.values())


def _job_row(change: StateChange) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": change.job_id,
        "job": change.job,
        "queue": change.queue,
        "state": change.state,
        "progress_order": change.order,
        # Runs begun so far: a queued job's envelope already names its coming attempt.
        "attempts": change.attempt if STATE_RANK[change.state] else change.attempt - 1,
        "user_id": change.user_id,
        "tenant": change.tenant,
        "publisher": change.publisher,
        "correlation_id": change.correlation_id,
        "parent_id": change.parent_id,
        "created_at": change.created_at,
        "updated_at": change.at,
        "not_before": change.not_before,
        "labels": dict(change.labels or {}),
    }
    if change.state in FINAL_STATES or change.state == "failed":
        row.update(
            result=change.result, error_type=change.error_type, error_message=change.error_message
        )
    return row


def _attempt_row(change: StateChange) -> dict[str, Any]:
    row: dict[str, Any] = {"job_id": change.job_id, "number": change.attempt}
    if change.state == "running":
        row.update(worker=change.worker, started_at=change.at)
    else:
        if change.started_at is not None:
            row.update(worker=change.worker, started_at=change.started_at)
        row.update(
            finished_at=change.at,
            outcome=change.state,
            error_type=change.error_type,
            error_message=change.error_message,
            traceback=change.traceback,
        )
    return row


def _record(row: sa.Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        job=row.job,
        queue=row.queue,
        state=row.state,
        attempts=row.attempts,
        user_id=row.user_id,
        tenant=row.tenant,
        created_at=row.created_at,
        updated_at=row.updated_at,
        result=row.result,
        error_type=row.error_type,
        error_message=row.error_message,
        labels=row.labels or {},
    )
