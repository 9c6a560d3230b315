"""The job store on a real SQLite file and the real PostgreSQL: lifecycle, results, queries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from amqp_jobs import JobApp, JobContext, JobFailed
from amqp_jobs.store import JobStore, StateChange
from amqp_jobs.store.database import ProgressChange
from tests.helpers import running, wait_until


class Invoice(pydantic.BaseModel):
    total: int


async def test_a_jobs_life_is_recorded_and_its_typed_result_returned(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given an app with a store and a job returning a model
    app = make_app(store=make_store())

    @app.job
    async def bill(ctx: JobContext, amount: int) -> Invoice:
        return Invoice(total=amount * 2)

    # When it is enqueued for a user and run
    async with running(app) as worker:
        handle = await bill.enqueue({"amount": 21}, user={"user_id": "u1", "tenant": "acme"})
        result = await handle.result(timeout=10)

    # Then the result is the typed output, and the record and its attempt are complete
    assert result == Invoice(total=42)
    record = await app.jobs.get(handle.id)
    assert record is not None
    assert (record.state, record.attempts, record.user_id, record.tenant) == (
        "succeeded",
        1,
        "u1",
        "acme",
    )
    (attempt,) = await app.jobs.attempts(handle.id)
    assert attempt.outcome == "succeeded" and attempt.worker == worker.worker_id
    assert attempt.started_at is not None and attempt.finished_at is not None
    assert attempt.started_at <= attempt.finished_at


async def test_each_failed_attempt_is_recorded_with_its_error(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a job that fails twice, then succeeds
    app = make_app(store=make_store())

    @app.job(max_attempts=3, backoff="fixed", backoff_base=0.05)
    async def flaky(ctx: JobContext) -> int:
        if ctx.attempt < 3:
            raise ConnectionError(f"upstream down ({ctx.attempt})")
        return ctx.attempt

    async with running(app):
        handle = await flaky.enqueue()
        assert await handle.result(timeout=10) == 3

    # Then three attempts are recorded, the failures with their error and traceback
    tries = await app.jobs.attempts(handle.id)
    assert [(a.number, a.outcome, a.error_type) for a in tries] == [
        (1, "failed", "ConnectionError"),
        (2, "failed", "ConnectionError"),
        (3, "succeeded", None),
    ]
    assert tries[1].error_message == "upstream down (2)"


async def test_a_dead_jobs_result_raises_job_failed_with_the_remote_error(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    app = make_app(store=make_store())

    @app.job(max_attempts=1)
    async def doomed() -> None:
        raise ValueError("no such customer")

    async with running(app):
        handle = await doomed.enqueue()
        with pytest.raises(JobFailed) as failure:
            await handle.result(timeout=10)

    assert failure.value.state == "dead" and failure.value.error_type == "ValueError"
    assert "no such customer" in (failure.value.message or "")


async def test_queries_filter_and_paginate_on_keys(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given 30 queued jobs of two users and two tenants, some tagged
    app = make_app(store=make_store())

    @app.job
    async def report(n: int) -> None: ...

    since = time.time()
    await app.enqueue_many(
        {
            "job": report.name,
            "data": {"n": n},
            "user": {"user_id": f"u{n % 2}", "tenant": "acme" if n < 20 else "globex"},
            "labels": {"kind": "monthly" if n % 3 == 0 else "daily"},
        }
        for n in range(30)
    )

    # When they are queried by user, tenant, tag and state, and paged 4 at a time
    mine = await app.jobs.query(user="u0", limit=100)
    tagged = await app.jobs.query(tenant="acme", tags={"kind": "monthly"}, limit=100)
    queued = await app.jobs.query(state="queued", job=report.name, since=since, limit=100)
    pages, cursor = [], None
    while True:
        page = await app.jobs.query(user="u1", limit=4, cursor=cursor)
        pages.append([job.id for job in page.jobs])
        if (cursor := page.cursor) is None:
            break

    # Then each filter holds, newest first, and the pages cover u1's jobs once each
    assert len(mine.jobs) == 15 and {j.user_id for j in mine.jobs} == {"u0"}
    assert len(tagged.jobs) == 7  # n = 0, 3, ..., 18
    assert len(queued.jobs) == 30
    created = [j.created_at for j in mine.jobs]
    assert created == sorted(created, reverse=True)
    flat = [job_id for page_ids in pages for job_id in page_ids]
    assert len(flat) == 15 == len(set(flat)) and len(pages) == 4


async def test_state_changes_arriving_out_of_order_never_move_a_job_back(
    make_store: Callable[[], JobStore],
) -> None:
    store = make_store()
    common: dict[str, Any] = {"job_id": "j1", "job": "x", "queue": "q", "created_at": 1.0}
    await store.record(StateChange(state="succeeded", attempt=1, result={"ok": True}, **common))
    await store.record(StateChange(state="running", attempt=1, **common))
    await store.record(StateChange(state="queued", attempt=1, **common))
    record = await store.get("j1")
    assert record is not None and record.state == "succeeded" and record.result == {"ok": True}


async def test_a_job_whose_outcome_cannot_be_recorded_is_not_acked_and_not_lost(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a store that fails the first time an outcome is written (the database is down)
    store = make_store()
    app = make_app(store=store)
    real_write = store._write
    failures = {"left": 1}

    async def flaky_write(changes: list[StateChange]) -> None:
        if failures["left"] and any(c.state == "succeeded" for c in changes):
            failures["left"] -= 1
            raise ConnectionError("database unavailable")
        await real_write(changes)

    store._writer._flush = flaky_write  # type: ignore[method-assign]
    runs: list[int] = []

    @app.job(max_attempts=3, backoff="fixed", backoff_base=0.05)
    async def work(ctx: JobContext) -> int:
        runs.append(ctx.attempt)
        return len(runs)

    # When the job runs and its outcome cannot be recorded the first time
    async with running(app):
        handle = await work.enqueue()
        result = await handle.result(timeout=15)

    # Then the message came back, ran again, and the outcome is recorded once the store is up
    assert len(runs) == 2 and result == 2
    record = await app.jobs.get(handle.id)
    assert record is not None and record.state == "succeeded"
    assert await app.queue("default").size() == 0


async def test_a_stopping_worker_acks_jobs_whose_outcome_is_still_being_written(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a store whose writes take 0.5 s, and a worker that has just run a job
    # (a finished job's ack waits for its outcome's commit without holding a slot)
    store = make_store()
    app = make_app(store=store)
    real_write = store._write

    async def slow_write(changes: list[StateChange]) -> None:
        await asyncio.sleep(0.5)
        await real_write(changes)

    store._writer._flush = slow_write  # type: ignore[method-assign]
    runs: list[str] = []

    @app.job
    async def work(ctx: JobContext) -> None:
        runs.append(ctx.job_id)

    handle = await work.enqueue()
    worker = app.worker(concurrency=4)
    await worker.start()
    await wait_until(lambda: runs, timeout=10)

    # When the worker stops while that outcome is being written
    await worker.stop(grace_period=5)

    # Then the stop waited for the commit and acked: recorded once, not redelivered
    record = await app.jobs.get(handle.id)
    assert record is not None and record.state == "succeeded"
    assert await app.queue("default").size() == 0
    async with running(app):
        await asyncio.sleep(0.5)
    assert runs == [handle.id]


async def test_several_workers_share_one_sqlite_file_without_lock_errors(
    make_app: Callable[..., JobApp], tmp_path: Any
) -> None:
    # Given two worker apps, each with its own store (connection pool) on the same file
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    apps = [make_app(store=JobStore(url)) for _ in range(2)]
    for app in apps:

        @app.job(name="shared.work")
        async def work(n: int) -> int:
            await asyncio.sleep(0.001)
            return n

    # When 400 jobs are run by both at once
    async with running(apps[0], concurrency=20), running(apps[1], concurrency=20):
        handles = await apps[0].enqueue_many(("shared.work", {"n": n}) for n in range(400))
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))

    # Then every job's outcome is recorded (no "database is locked")
    assert sorted(results) == list(range(400))
    page = await apps[1].jobs.query(state="succeeded", limit=1000)
    assert len(page.jobs) == 400


async def test_stores_opening_a_fresh_database_at_once_migrate_it_once(
    make_store: Callable[[], JobStore],
) -> None:
    # Given four processes' stores on one empty database, when they all open at once
    stores = [make_store() for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))

    # Then none failed, and the schema is complete for each
    for store in stores:
        assert await store.get("missing") is None


async def test_large_mixed_batches_are_written_row_for_row(
    make_store: Callable[[], JobStore],
) -> None:
    # Given 300 jobs (more than one multi-row statement, sizes that need padding), queued
    # with labels, then in one batch: 290 succeed with nested JSON results, 10 fail,
    # and every one reports progress
    store = make_store()
    await store.open()
    now = time.time()
    ids = [f"job-{n:04d}" for n in range(300)]

    def change(n: int, state: str, **details: Any) -> StateChange:
        return StateChange(
            job_id=ids[n],
            state=state,
            attempt=1,
            job="batch.work",
            queue="default",
            created_at=now + n / 1000,
            user_id=f"u{n % 3}",
            labels={"kind": "batch", "n": str(n)},
            **details,
        )

    await asyncio.gather(*(store.record(change(n, "queued")) for n in range(300)))
    outcomes = []
    for n in range(300):
        if n % 30 == 29:
            outcomes.append(change(n, "failed", error_type="ValueError", error_message=f"bad {n}"))
        else:
            result = {"n": n, "items": [n, None, {"deep": "é"}], "none": None}
            outcomes.append(change(n, "succeeded", result=result, worker="w1", started_at=now))
    reports = [ProgressChange(ids[n], n / 3, f"step {n}", {"n": n}) for n in range(300)]
    # Submitted together: they go in one or a few group commits of hundreds of rows
    await asyncio.gather(
        *(store.record(c) for c in outcomes), *(store.report_progress(r) for r in reports)
    )

    # Then every job has exactly its own row, result, attempt, progress and tags
    for n in range(300):
        record = await store.get(ids[n])
        assert record is not None
        assert record.labels == {"kind": "batch", "n": str(n)}
        assert record.user_id == f"u{n % 3}"
        tries = await store.attempts_of(ids[n])
        assert len(tries) == 1
        if n % 30 == 29:
            assert (record.state, record.error_message) == ("failed", f"bad {n}")
            assert (tries[0].outcome, tries[0].error_type) == ("failed", "ValueError")
        else:
            assert record.state == "succeeded"
            assert record.result == {"n": n, "items": [n, None, {"deep": "é"}], "none": None}
            assert (tries[0].outcome, tries[0].worker, tries[0].started_at) == (
                "succeeded",
                "w1",
                now,
            )
        progress = await store.progress(ids[n])
        assert progress is not None
        assert (progress.percent, progress.message, dict(progress.data)) == (
            n / 3,
            f"step {n}",
            {"n": n},
        )
    page = await store.query(tags={"n": "137"})
    assert [r.id for r in page.jobs] == [ids[137]]
    assert len((await store.query(user="u1", limit=500)).jobs) == 100
