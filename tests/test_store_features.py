"""Progress, cancellation, idempotency and retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest

from amqp_jobs import ConfigurationError, JobApp, JobContext
from amqp_jobs.client import EnqueueRequest
from amqp_jobs.store import JobStore
from amqp_jobs.transport.base import Publication
from tests.helpers import running, wait_until


async def test_progress_is_visible_live_and_throttled(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a job that reports progress 1,000 times in a tight loop, pausing mid-way
    app = make_app(store=make_store())
    halfway = asyncio.Event()
    carry_on = asyncio.Event()

    @app.job
    async def render(ctx: JobContext) -> None:
        for page in range(1, 1001):
            await ctx.progress(page / 10, f"page {page} of 1000", pages_done=page)
            if page == 500:
                halfway.set()
                await carry_on.wait()

    async with running(app):
        handle = await render.enqueue()
        await halfway.wait()
        # When it is watched from outside while it runs
        await wait_until(lambda: _percent_is(handle, 50.0), timeout=5)
        seen = await handle.progress()
        carry_on.set()
        updates = [update async for update in handle.watch(interval=0.05)]

    # Then the reports were visible live, the last one was kept, and the job finished
    assert seen is not None and seen.state == "running" and seen.data == {"pages_done": 500}
    assert updates[-1].finished and updates[-1].percent == 100.0
    assert updates[-1].message == "page 1000 of 1000"


async def _percent_is(handle: object, percent: float) -> bool:
    progress = await handle.progress()  # type: ignore[attr-defined]
    return progress is not None and progress.percent == percent


async def test_a_cancelled_queued_job_never_starts(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a job queued while no worker runs, then cancelled
    app = make_app(store=make_store())
    ran: list[int] = []

    @app.job
    async def work(n: int) -> None:
        ran.append(n)

    doomed = await work.enqueue({"n": 1})
    assert await doomed.cancel() == "cancelled"
    kept = await work.enqueue({"n": 2})

    # When a worker starts and drains the queue
    async with running(app) as worker:
        await kept.result(timeout=10)
        await wait_until(lambda: worker.stats.cancelled == 1, timeout=10)

    # Then the cancelled job never ran, and its record stays cancelled
    assert ran == [2]
    record = await app.jobs.get(doomed.id)
    assert record is not None and record.state == "cancelled"


async def test_a_running_job_is_cancelled_on_whichever_worker_runs_it(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a long job running on one worker app, and a separate publisher app
    store = make_store()
    worker_app, publisher = make_app(store=store), make_app(store=make_store())
    started = asyncio.Event()
    stopped = asyncio.Event()

    @worker_app.job(name="long.job")
    async def long_job(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    async with running(worker_app) as worker:
        handle = await worker_app.enqueue("long.job")
        await started.wait()
        # When the publisher (another connection to the store) cancels it
        await publisher.jobs.cancel(handle.id)
        await asyncio.wait_for(stopped.wait(), timeout=5)
        await wait_until(lambda: worker.stats.cancelled == 1, timeout=5)

    # Then the task was cancelled, the message acked (not requeued), the record cancelled
    assert worker.stats.handed_back == 0
    assert await worker_app.queue("default").size() == 0
    await wait_until(lambda: _state_is(publisher, handle.id, "cancelled"), timeout=5)


async def _state_is(app: JobApp, job_id: str, state: str) -> bool:
    record = await app.jobs.get(job_id)
    return record is not None and record.state == state


async def test_a_second_enqueue_with_the_same_key_returns_the_first_job(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a job keyed on (customer_id, invoice_month)
    app = make_app(store=make_store())

    @app.job(idempotency_key=("customer_id", "invoice_month"))
    async def invoice(customer_id: int, invoice_month: str, note: str = "") -> str:
        return f"{customer_id}/{invoice_month}"

    # When it is enqueued twice for the same key and once for another
    first = await invoice.enqueue({"customer_id": 7, "invoice_month": "2026-11"})
    again = await invoice.enqueue({"customer_id": 7, "invoice_month": "2026-11", "note": "x"})
    other = await invoice.enqueue({"customer_id": 7, "invoice_month": "2026-12"})

    # Then the second returns the first job's handle, and only two messages were queued
    assert again.id == first.id and other.id != first.id
    assert await app.queue("default").size() == 2
    with pytest.raises(ConfigurationError, match="idempotency_key names"):

        @app.job(idempotency_key=("nope",))
        async def broken(x: int) -> None: ...


async def test_duplicate_deliveries_run_each_idempotent_job_exactly_once(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given 100 idempotent jobs, each of whose message reaches the queue 10 times
    app = make_app(store=make_store())
    runs: Counter[int] = Counter()

    @app.job(idempotency_key=True)
    async def charge(order: int) -> None:
        runs[order] += 1
        await asyncio.sleep(0.001)

    await app.connect()
    prepared = [await app.client.build(charge.name, {"order": n}) for n in range(100)]
    await app.client.ensure_queue("default")
    duplicates = [app.client.publication(job.envelope) for job in prepared for _ in range(10)]
    await app.transport.publish_many(
        [Publication(p.message, p.exchange, p.routing_key) for p in duplicates], timeout=30
    )

    # When two workers drain the 1,000 messages at once
    other = make_app(store=make_store())
    other.registry.update(app.registry)
    async with running(app, concurrency=20) as one, running(other, concurrency=20) as two:
        await wait_until(
            lambda: (
                one.stats.succeeded
                + two.stats.succeeded
                + one.stats.duplicates
                + two.stats.duplicates
                == 1000
            ),
            timeout=60,
        )

    # Then every job ran exactly once; the other 900 deliveries were dropped as duplicates
    assert runs == Counter({n: 1 for n in range(100)})
    assert one.stats.duplicates + two.stats.duplicates == 900


async def test_prune_deletes_finished_jobs_older_than_the_cutoff(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    store = make_store()
    app = make_app(store=store)

    @app.job
    async def quick(n: int) -> int:
        return n

    async with running(app):
        handles = await app.enqueue_many([EnqueueRequest(quick.name, {"n": n}) for n in range(5)])
        await asyncio.gather(*(h.result(timeout=10) for h in handles))
    pending = await quick.enqueue({"n": 99})  # queued, not finished: never pruned

    assert await store.prune(older_than=time.time() - 3600) == 0
    assert await store.prune(older_than=time.time() + 1) == 5
    assert await app.jobs.get(handles[0].id) is None
    assert await app.jobs.get(pending.id) is not None
