"""Delay precision: how late delayed jobs start, relative to their requested time.

Ours: ``jobs`` jobs with delays drawn log-uniformly from ``min_delay`` to ``max_delay``
seconds (the same seeded draw every round) are published with ``enqueue_many``
through the binary delay levels; a worker in this process records
``time.time() - ctx.envelope.not_before`` when each starts.

Raw (a best case for the broker, not a design one could ship): the same delays as
per-message ``expiration`` on one TTL queue that dead-letters into a consumed queue,
published in ascending order of delay so that no message waits behind a longer one;
the consumer records ``time.time() - not_before`` (carried in the body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from amqp_jobs import JobApp, JobContext
from amqp_jobs.client import EnqueueRequest
from bench.common import (
    Metric,
    RoundResult,
    Target,
    alternate,
    column,
    declare_raw_queue,
    log,
    percentile,
    raw_connection,
    scenario_app,
    unique_namespace,
)

QUEUE = "delay"
JOB = "bench.delay.probe"
SEED = 20240601


def log_uniform_delays(count: int, low: float, high: float, seed: int = SEED) -> list[float]:
    """``count`` delays in seconds, log-uniform between ``low`` and ``high``."""
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(low), math.log(high))) for _ in range(count)]


class Lateness:
    """Collects how late each job started (ms) and signals when all have."""

    def __init__(self) -> None:
        self.expected = 0
        self.late_ms: list[float] = []
        self.done = asyncio.Event()

    def reset(self, expected: int) -> None:
        """Start collecting ``expected`` values afresh."""
        self.expected, self.late_ms, self.done = expected, [], asyncio.Event()

    def record(self, seconds_late: float) -> None:
        """One job started ``seconds_late`` after its requested time."""
        self.late_ms.append(seconds_late * 1000)
        if len(self.late_ms) >= self.expected:
            self.done.set()

    def summary(self) -> RoundResult:
        """p50, p99, max (ms) and the earliest start (negative = early)."""
        if len(self.late_ms) < self.expected:
            raise RuntimeError(f"only {len(self.late_ms)} of {self.expected} delayed jobs arrived")
        return {
            "p50_ms": percentile(self.late_ms, 50),
            "p99_ms": percentile(self.late_ms, 99),
            "max_ms": max(self.late_ms, default=math.nan),
            "min_ms": min(self.late_ms, default=math.nan),
        }


async def delay_ours(
    app: JobApp, lateness: Lateness, delays: list[float], timeout: float
) -> RoundResult:
    """Publish the delayed jobs and wait for a worker in this process to start them all."""
    lateness.reset(len(delays))
    worker = app.worker([QUEUE], concurrency=200)
    await worker.start()
    try:
        await app.enqueue_many(
            [EnqueueRequest(JOB, {"n": n}, {"delay": d}) for n, d in enumerate(delays)]
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lateness.done.wait(), timeout)
    finally:
        await worker.stop(grace_period=5.0)
    return lateness.summary()


async def delay_raw(
    url: str, wait_queue: str, ready_queue: str, delays: list[float], timeout: float
) -> RoundResult:
    """Per-message TTL baseline: publish in ascending delay, consume the dead-lettered ones."""
    lateness = Lateness()
    lateness.reset(len(delays))
    async with raw_connection(url) as connection:
        consumer_channel = await connection.channel(publisher_confirms=False)
        await consumer_channel.set_qos(prefetch_count=200)
        ready = await consumer_channel.get_queue(ready_queue, ensure=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            received = time.time()
            lateness.record(received - json.loads(message.body)["not_before"])
            await message.ack()

        await ready.consume(on_message)
        channel = await connection.channel(publisher_confirms=True)
        in_flight = asyncio.Semaphore(500)

        async def one(n: int, delay: float) -> None:
            now = time.time()
            body = json.dumps({"n": n, "not_before": now + delay}).encode()
            async with in_flight:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        expiration=delay,
                    ),
                    wait_queue,
                    mandatory=True,
                )

        await asyncio.gather(*(one(n, d) for n, d in enumerate(sorted(delays))))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lateness.done.wait(), timeout)
        await consumer_channel.close()
        await channel.close()
    return lateness.summary()


async def run(
    url: str,
    *,
    jobs: int = 300,
    min_delay: float = 0.1,
    max_delay: float = 60.0,
    rounds: int = 3,
) -> list[Metric]:
    """Run the delay scenario; return p50, p99 and max lateness in ms."""
    namespace = unique_namespace("delay")
    wait_queue, ready_queue = f"{namespace}.raw.delay.wait", f"{namespace}.raw.delay.ready"
    delays = log_uniform_delays(jobs, min_delay, max_delay)
    timeout = max_delay + 60.0
    async with scenario_app(url, namespace, raw_queues=[wait_queue, ready_queue]) as app:
        lateness = Lateness()

        @app.job(name=JOB, queue=QUEUE)
        async def probe(ctx: JobContext, n: int) -> None:
            assert ctx.envelope.not_before is not None
            lateness.record(time.time() - ctx.envelope.not_before)

        await app.client.ensure_queue(QUEUE)
        async with raw_connection(url) as connection:
            await declare_raw_queue(connection, ready_queue, app.topology.work_queue_arguments())
            await declare_raw_queue(
                connection,
                wait_queue,
                {
                    "x-queue-type": "classic",
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": ready_queue,
                },
            )
        log(f"delay: {jobs} jobs, delays {min_delay:g}..{max_delay:g} s, ns {namespace}")
        ours, raw = await alternate(
            rounds,
            lambda _: delay_ours(app, lateness, delays, timeout),
            lambda _: delay_raw(url, wait_queue, ready_queue, delays, timeout),
            label="delay",
        )
    name = f"lateness, {jobs} delays {min_delay:g}-{max_delay:g} s"
    note = (
        "raw = per-message TTL queue + DLX, published in ascending delay (broker best case); "
        f"earliest start ours {min(column(ours, 'min_ms')):.1f} ms"
    )
    return [
        Metric(
            "delay",
            f"{name}, p50",
            "ms",
            column(ours, "p50_ms"),
            column(raw, "p50_ms"),
            higher_is_better=False,
            note=note,
        ),
        Metric(
            "delay",
            f"{name}, p99",
            "ms",
            column(ours, "p99_ms"),
            column(raw, "p99_ms"),
            higher_is_better=False,
            target=Target("max_value", 100.0),
        ),
        Metric(
            "delay",
            f"{name}, max",
            "ms",
            column(ours, "max_ms"),
            column(raw, "max_ms"),
            higher_is_better=False,
        ),
    ]
