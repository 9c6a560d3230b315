"""Drain: how fast one worker empties a queue of pre-published no-op jobs.

Ours: ``jobs`` persistent no-op jobs are published with ``enqueue_many`` (not timed),
then one amqp-jobs :class:`~amqp_jobs.worker.Worker` (``concurrency`` jobs in flight,
prefetch sized to it, ack after completion) runs them in this process. The clock
runs from just before ``worker.start()`` until the job has counted its last run.

Raw: the same number of persistent messages of the same body size in a queue of the
same type and arguments (``topology.work_queue_arguments()``), drained by a plain
aio-pika consume-and-ack loop with ``prefetch_count=concurrency``. The clock runs
from opening the consumer channel until the last ``await message.ack()``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from amqp_jobs import JobApp
from bench.common import (
    Metric,
    RoundResult,
    Target,
    alternate,
    column,
    declare_raw_queue,
    envelope_size,
    log,
    pad_body,
    purge_raw_queue,
    raw_connection,
    raw_publish_many,
    scenario_app,
    unique_namespace,
)

QUEUE = "drain"
JOB = "bench.drain.noop"


@dataclass(slots=True)
class Countdown:
    """Counts job runs and sets ``done`` when ``target`` runs have happened."""

    target: int = 0
    count: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self, target: int) -> None:
        """Start a new count towards ``target``."""
        self.target, self.count = target, 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        """One more run."""
        self.count += 1
        if self.count >= self.target:
            self.done.set()


async def drain_ours(
    app: JobApp, countdown: Countdown, *, jobs: int, concurrency: int, timeout: float
) -> RoundResult:
    """Pre-publish ``jobs`` no-op jobs, then time one worker draining them."""
    await app.enqueue_many([(JOB, {"n": n}) for n in range(jobs)])
    countdown.reset(jobs)
    worker = app.worker([QUEUE], concurrency=concurrency)
    started = time.perf_counter()
    await worker.start()
    try:
        await asyncio.wait_for(countdown.done.wait(), timeout)
        elapsed = time.perf_counter() - started
    finally:
        await worker.stop(grace_period=10.0)
    left = await app.queue(QUEUE).size()
    if left:
        log(f"drain: {left} messages left in our queue after the round; purging")
        await app.transport.purge(app.topology.queue_name(QUEUE))
    return {"jobs_per_s": jobs / elapsed, "seconds": elapsed}


async def drain_raw(
    url: str, queue_name: str, *, jobs: int, body_size: int, concurrency: int, timeout: float
) -> RoundResult:
    """Pre-fill the raw queue, then time a plain aio-pika consume-and-ack loop draining it."""
    async with raw_connection(url) as connection:
        await raw_publish_many(
            connection, queue_name, [pad_body(b"%d" % n, body_size) for n in range(jobs)]
        )
        started = time.perf_counter()
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=concurrency)
        queue = await channel.get_queue(queue_name, ensure=True)
        count = 0
        elapsed = 0.0

        async def consume() -> None:
            nonlocal count, elapsed
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    count += 1
                    if count >= jobs:
                        elapsed = time.perf_counter() - started
                        break

        await asyncio.wait_for(consume(), timeout)
        await channel.close()
        await purge_raw_queue(connection, queue_name)
    return {"jobs_per_s": jobs / elapsed, "seconds": elapsed}


async def run(
    url: str, *, jobs: int = 20_000, rounds: int = 3, concurrency: int = 200
) -> list[Metric]:
    """Run the drain scenario; return its metrics (throughput in jobs/s)."""
    namespace = unique_namespace("drain")
    raw_queue = f"{namespace}.raw.drain"
    timeout = max(120.0, jobs / 100)
    async with scenario_app(url, namespace, raw_queues=[raw_queue]) as app:
        countdown = Countdown()

        @app.job(name=JOB, queue=QUEUE)
        async def noop(n: int) -> None:
            countdown.hit()

        await app.client.ensure_queue(QUEUE)
        async with raw_connection(url) as connection:
            await declare_raw_queue(connection, raw_queue, app.topology.work_queue_arguments())
        body_size = envelope_size(app, JOB, {"n": jobs - 1})
        log(f"drain: {jobs} jobs, concurrency {concurrency}, body {body_size} B, ns {namespace}")
        ours, raw = await alternate(
            rounds,
            lambda _: drain_ours(
                app, countdown, jobs=jobs, concurrency=concurrency, timeout=timeout
            ),
            lambda _: drain_raw(
                url,
                raw_queue,
                jobs=jobs,
                body_size=body_size,
                concurrency=concurrency,
                timeout=timeout,
            ),
            label="drain",
        )
    return [
        Metric(
            "drain",
            f"drain {jobs} no-op jobs, concurrency {concurrency}",
            "jobs/s",
            column(ours, "jobs_per_s"),
            column(raw, "jobs_per_s"),
            target=Target("min_ratio", 1.0),
            note=f"body {body_size} B; raw = aio-pika iterator + await message.ack()",
        )
    ]
