"""Store: what recording every job costs the drain, and how fast a user's jobs are queried.

drain: ``jobs`` no-op jobs drained by one worker (concurrency as elsewhere) with a job
store recording queued/running/succeeded for each, against the same drain with no
store ("raw" column), on a SQLite file and on PostgreSQL. Target: >= 0.6x.

query: ``rows`` job records for 1,000 users inserted straight into the table, then the
latest 50 jobs of one user queried 200 times (random users); median and p99 in ms.
Target: < 20 ms.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from amqp_jobs import JobApp
from amqp_jobs.store import JobStore
from amqp_jobs.store.schema import jobs as jobs_table
from bench.common import (
    Metric,
    RoundResult,
    Target,
    alternate,
    column,
    delete_everything,
    log,
    percentile,
    unique_namespace,
)
from bench.drain import Countdown

JOB = "bench.store.noop"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def fresh_store(backend: str) -> AsyncIterator[JobStore]:
    """A store in a new SQLite file or a new PostgreSQL schema, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            store = JobStore(f"sqlite+aiosqlite:///{folder}/bench.db")
            try:
                yield store
            finally:
                await store.close()
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(DATABASE_URL)
    async with admin.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    store = JobStore(
        DATABASE_URL, engine_options={"connect_args": {"server_settings": {"search_path": schema}}}
    )
    try:
        yield store
    finally:
        await store.close()
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


async def _drain(app: JobApp, countdown: Countdown, jobs: int, concurrency: int) -> RoundResult:
    await app.enqueue_many((JOB, {"n": n}) for n in range(jobs))
    countdown.reset(jobs)
    worker = app.worker(concurrency=concurrency)
    started = time.perf_counter()
    await worker.start()
    try:
        await asyncio.wait_for(countdown.done.wait(), max(120.0, jobs / 50))
        elapsed = time.perf_counter() - started
    finally:
        await worker.stop(grace_period=10.0)
    return {"jobs_per_s": jobs / elapsed}


async def drain_metric(
    url: str, backend: str, *, jobs: int, rounds: int, concurrency: int
) -> Metric:
    """Drain rate with the store on (ours) and off (raw column)."""
    async with fresh_store(backend) as store:
        with_store = JobApp(url, namespace=unique_namespace("store_on"), store=store)
        without = JobApp(url, namespace=unique_namespace("store_off"))
        countdown = Countdown()
        for app in (with_store, without):

            @app.job(name=JOB)
            async def noop(n: int) -> None:
                countdown.hit()

        try:
            ours, raw = await alternate(
                rounds,
                lambda _: _drain(with_store, countdown, jobs, concurrency),
                lambda _: _drain(without, countdown, jobs, concurrency),
                label=f"store drain {backend}",
            )
        finally:
            for app in (with_store, without):
                await delete_everything(app)
                await app.close()
    return Metric(
        "store",
        f"drain {jobs} jobs, store on vs off ({backend})",
        "jobs/s",
        column(ours, "jobs_per_s"),
        column(raw, "jobs_per_s"),
        target=Target("min_ratio", 0.6),
        note="raw column = the same drain with no store",
    )


async def query_metric(backend: str, *, rows: int, users: int = 1000) -> Metric:
    """Latency of one user's latest 50 jobs among ``rows`` records."""
    users = max(1, min(users, rows // 100))  # every user has well over 50 jobs
    async with fresh_store(backend) as store:
        await store.open()
        engine = store._require()
        now = time.time()
        rng = random.Random(7)
        started = time.perf_counter()
        batch: list[dict[str, Any]] = []
        async with engine.begin() as connection:
            for n in range(rows):
                created = now - rows + n
                batch.append(
                    {
                        "id": f"{n:036d}",
                        "job": "bench.job",
                        "queue": "default",
                        "state": "succeeded",
                        "progress_order": 13,
                        "attempts": 1,
                        "user_id": f"user{rng.randrange(users)}",
                        "tenant": "t",
                        "created_at": created,
                        "updated_at": created,
                        "labels": {},
                    }
                )
                if len(batch) == 10_000:
                    await connection.execute(jobs_table.insert(), batch)
                    batch = []
            if batch:
                await connection.execute(jobs_table.insert(), batch)
        if backend == "postgresql":
            async with engine.begin() as connection:
                await connection.execute(text("ANALYZE amqp_jobs_jobs"))
        log(f"store query {backend}: {rows} rows inserted in {time.perf_counter() - started:.0f}s")
        timings = []
        for _ in range(200):
            user = f"user{rng.randrange(users)}"
            t0 = time.perf_counter()
            page = await store.query(user=user, limit=50)
            timings.append((time.perf_counter() - t0) * 1000)
            assert len(page.jobs) == 50
    log(f"store query {backend}: p50 {statistics.median(timings):.2f} ms")
    return Metric(
        "store",
        f"query a user's latest 50 of {rows:,} jobs ({backend}), p50",
        "ms",
        [statistics.median(timings)],
        higher_is_better=False,
        target=Target("max_value", 20.0),
        note=f"p99 {percentile(timings, 99):.2f} ms over 200 queries, {users} users",
    )


async def run(
    url: str, *, jobs: int = 20_000, rounds: int = 3, concurrency: int = 200, rows: int = 1_000_000
) -> list[Metric]:
    """Run the store scenarios on SQLite and PostgreSQL."""
    metrics = []
    for backend in ("sqlite", "postgresql"):
        metrics.append(
            await drain_metric(url, backend, jobs=jobs, rounds=rounds, concurrency=concurrency)
        )
        metrics.append(await query_metric(backend, rows=rows))
    return metrics
