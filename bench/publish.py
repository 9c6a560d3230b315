"""Publish: confirmed publishing throughput, one job at a time and in bulk.

(a) ``await job.enqueue(...)`` awaited in a loop (each waits for its confirm), against
    a raw aio-pika loop awaiting each confirmed ``exchange.publish`` (a reference; the
    target is absolute).
(b) ``app.enqueue_many(...)`` of many jobs (its default window of 500 confirms in
    flight), against raw aio-pika with publisher confirms: ``asyncio.Semaphore(500)``
    around ``exchange.publish(Message(body, delivery_mode=PERSISTENT), key,
    mandatory=True)``, gathered. Raw bodies have the size of our envelopes.

Times cover publishing only: connections are open and queues declared beforehand;
queues are purged between rounds.
"""

from __future__ import annotations

import time

import aio_pika

from amqp_jobs.envelope import CONTENT_TYPE
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

QUEUE = "publish"
JOB = "bench.publish.noop"


async def run(
    url: str, *, single_jobs: int = 5_000, many_jobs: int = 20_000, rounds: int = 3
) -> list[Metric]:
    """Run both publish scenarios; return their metrics (jobs/s)."""
    namespace = unique_namespace("publish")
    raw_queue = f"{namespace}.raw.publish"
    async with (
        scenario_app(url, namespace, raw_queues=[raw_queue]) as app,
        raw_connection(url) as connection,
    ):

        @app.job(name=JOB, queue=QUEUE)
        async def noop(n: int) -> None:
            """Never runs: nothing consumes this queue."""

        await app.client.ensure_queue(QUEUE)
        await declare_raw_queue(connection, raw_queue, app.topology.work_queue_arguments())
        body_size = envelope_size(app, JOB, {"n": many_jobs - 1})
        our_queue = app.topology.queue_name(QUEUE)
        log(f"publish: {single_jobs} awaited, {many_jobs} bulk, body {body_size} B")

        async def single_ours(_: int) -> RoundResult:
            started = time.perf_counter()
            for n in range(single_jobs):
                await noop.enqueue({"n": n})
            elapsed = time.perf_counter() - started
            await app.transport.purge(our_queue)
            return {"jobs_per_s": single_jobs / elapsed}

        async def single_raw(_: int) -> RoundResult:
            bodies = [pad_body(b"%d" % n, body_size) for n in range(single_jobs)]
            channel = await connection.channel(publisher_confirms=True)
            exchange = channel.default_exchange
            started = time.perf_counter()
            for body in bodies:
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    raw_queue,
                    mandatory=True,
                )
            elapsed = time.perf_counter() - started
            await channel.close()
            await purge_raw_queue(connection, raw_queue)
            return {"jobs_per_s": single_jobs / elapsed}

        async def many_ours(_: int) -> RoundResult:
            requests = [(JOB, {"n": n}) for n in range(many_jobs)]
            started = time.perf_counter()
            await app.enqueue_many(requests)
            elapsed = time.perf_counter() - started
            await app.transport.purge(our_queue)
            return {"jobs_per_s": many_jobs / elapsed}

        async def many_raw(_: int) -> RoundResult:
            bodies = [pad_body(b"%d" % n, body_size) for n in range(many_jobs)]
            started = time.perf_counter()
            await raw_publish_many(connection, raw_queue, bodies, window=500)
            elapsed = time.perf_counter() - started
            await purge_raw_queue(connection, raw_queue)
            return {"jobs_per_s": many_jobs / elapsed}

        async def many_raw_same_message(_: int) -> RoundResult:
            # The same AMQP properties amqp-jobs sets: job id, job name, content type, service.
            bodies = [pad_body(b"%d" % n, body_size) for n in range(many_jobs)]
            started = time.perf_counter()
            await raw_publish_many(
                connection,
                raw_queue,
                bodies,
                window=500,
                unique_ids=True,
                content_type=CONTENT_TYPE,
                type=JOB,
                app_id=app.service_name,
            )
            elapsed = time.perf_counter() - started
            await purge_raw_queue(connection, raw_queue)
            return {"jobs_per_s": many_jobs / elapsed}

        single = await alternate(rounds, single_ours, single_raw, label="publish awaited")
        many = await alternate(rounds, many_ours, many_raw, label="publish enqueue_many")
        same = await alternate(
            rounds, many_ours, many_raw_same_message, label="publish enqueue_many same-message"
        )
    return [
        Metric(
            "publish",
            f"await job.enqueue() x {single_jobs}",
            "jobs/s",
            column(single[0], "jobs_per_s"),
            column(single[1], "jobs_per_s"),
            target=Target("min_value", 2000),
            note="raw = awaited confirmed exchange.publish in a loop (reference)",
        ),
        Metric(
            "publish",
            f"app.enqueue_many() x {many_jobs}",
            "jobs/s",
            column(many[0], "jobs_per_s"),
            column(many[1], "jobs_per_s"),
            target=Target("min_ratio", 1.0),
            note="raw = Semaphore(500) + gather of confirmed exchange.publish",
        ),
        Metric(
            "publish",
            f"app.enqueue_many() x {many_jobs}, raw with the same AMQP properties",
            "jobs/s",
            column(same[0], "jobs_per_s"),
            column(same[1], "jobs_per_s"),
            note="raw as above, plus message_id, type, content_type, app_id like ours",
        ),
    ]
