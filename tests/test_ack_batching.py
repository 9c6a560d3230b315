"""Batched acks reach the broker in an order it accepts ("unknown delivery tag" bug).

aiormq hands frames to a bounded write queue, and ``asyncio.Queue.put`` lets a new
put take a freed slot before a waiter that was woken for it. Two ack batches sent
by concurrent tasks could thus reach the broker out of order: a later
``basic.ack(multiple=True)`` first, then an earlier batch's ack of a tag it had
already covered, on which RabbitMQ closes the channel with PRECONDITION_FAILED and
redelivers every unacked job of the channel.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable

import aiormq
import pytest

from amqp_jobs import JobApp
from amqp_jobs.transport.amqp import _AckBatcher
from tests.helpers import running, wait_until


class FakeConsumerChannel:
    """A consumer channel with aiormq's bounded write queue and RabbitMQ's ack rules.

    Frames wait in ``write_queue`` until :meth:`write_one` passes the oldest to the
    "broker", which, like RabbitMQ, refuses an ack of a tag that is not outstanding
    (never delivered, or already acked, single or by a ``multiple`` ack) and then
    closes the channel.
    """

    def __init__(self, capacity: int) -> None:
        self.write_queue: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue(capacity)
        self.outstanding: set[int] = set()
        self.errors: list[str] = []
        self.is_closed = False

    def deliver(self, tag: int) -> None:
        self.outstanding.add(tag)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        await self.write_queue.put(("ack", tag, multiple))

    async def publish(self) -> None:
        """Another channel's frame (a publish) taking a slot of the connection's queue."""
        await self.write_queue.put(("publish", 0, False))

    def write_one(self) -> None:
        kind, tag, multiple = self.write_queue.get_nowait()
        if kind != "ack" or self.is_closed:
            return
        if tag not in self.outstanding:
            self.errors.append(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
            self.is_closed = True
            return
        covered = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        self.outstanding -= covered

    async def write_all(self) -> None:
        """Write frames until nothing is left to write (the connection is idle)."""
        idle = 0
        while idle < 20:
            await asyncio.sleep(0)
            if self.write_queue.empty():
                idle += 1
            else:
                idle = 0
                self.write_one()


async def _let_run(steps: int = 10) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


async def test_a_later_batch_never_overtakes_an_ack_that_waits_for_room() -> None:
    # Given a channel whose write queue is full (a publish holds its only slot)
    channel = FakeConsumerChannel(capacity=1)
    await channel.publish()
    batcher = _AckBatcher(channel)  # type: ignore[arg-type]
    for tag in (1, 2):
        channel.deliver(tag)
        batcher.delivered(tag)
    # and the ack of tag 1, flushed, waiting for room in the write queue
    batcher.ack(1)
    await _let_run()
    assert channel.outstanding == {1, 2}

    # When tag 2 is acked, and the connection frees the slot just as that ack is due
    batcher.ack(2)
    asyncio.get_running_loop().call_soon(channel.write_one)
    await channel.write_all()

    # Then the broker accepted every ack: nothing was acked twice or after a multiple
    assert channel.errors == []
    assert channel.outstanding == set()
    assert not channel.is_closed


async def test_acks_in_any_order_under_write_backpressure_are_all_accepted() -> None:
    # Given 3000 deliveries settled in random order, some rejected, while publishes
    # compete for a small write queue that the connection drains irregularly
    rng = random.Random(20241204)
    channel = FakeConsumerChannel(capacity=4)
    batcher = _AckBatcher(channel)  # type: ignore[arg-type]
    tags = list(range(1, 3001))
    for tag in tags:
        channel.deliver(tag)
        batcher.delivered(tag)
    rejected = set(rng.sample(tags, 20))

    async def settle(tag: int) -> None:
        for _ in range(rng.randrange(30)):
            await asyncio.sleep(0)
        if tag in rejected:  # as AmqpDelivery.reject does: the frame first, then forget
            await channel.publish()  # (a reject frame: the broker drops the tag)
            channel.outstanding.discard(tag)
            batcher.forget(tag)
        else:
            batcher.ack(tag)

    async def publisher() -> None:
        for _ in range(1500):
            await channel.publish()
            await asyncio.sleep(0)

    async def connection() -> None:
        while True:
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            if not channel.write_queue.empty():
                channel.write_one()

    # When they all settle
    writer = asyncio.create_task(connection())
    try:
        await asyncio.gather(publisher(), *(settle(tag) for tag in tags))
        await batcher.drain(timeout=5.0)
        await channel.write_all()
    finally:
        writer.cancel()

    # Then every ack was accepted, and every acked delivery is acked at the broker
    assert channel.errors == []
    assert channel.outstanding == set()


async def test_a_worker_draining_while_jobs_are_published_settles_each_job_once(
    make_app: Callable[..., JobApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connection whose write queue holds 2 frames instead of aiormq's 10: the
    # same race, made frequent (at 10 it hit a few times per 20-40k jobs)
    monkeypatch.setattr(aiormq.Connection, "FRAME_BUFFER_SIZE", 2)
    # and short jobs of random length, published while a worker at concurrency 200
    # drains them (publishes and acks share that write queue)
    app = make_app()
    jobs = 3000
    runs: collections.Counter[int] = collections.Counter()
    rng = random.Random(7)

    @app.job(name="ack_batching.probe", queue="acks")
    async def probe(n: int) -> None:
        runs[n] += 1
        await asyncio.sleep(rng.random() * 0.005)

    await app.connect()
    await app.client.ensure_queue("acks")

    # When the jobs are published in batches during the drain
    async with running(app, queues=["acks"], concurrency=200) as worker:
        for first in range(0, jobs, 250):
            await app.enqueue_many(
                [("ack_batching.probe", {"n": n}) for n in range(first, first + 250)]
            )
        await wait_until(lambda: worker.stats.succeeded >= jobs, timeout=90)
        await asyncio.sleep(0.5)  # a redelivery after a channel error would show here

    # Then every job ran exactly once, none came back from the broker, none is left
    assert len(runs) == jobs
    assert [n for n, count in runs.items() if count != 1] == []
    assert worker.stats.retried == 0
    assert worker.stats.succeeded == jobs
    assert await app.queue("acks").size() == 0
