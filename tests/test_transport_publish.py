"""Pipelined publishing (``Transport.publish_many``) against the real broker.

``publish_many`` writes many publishes per socket write and numbers them the way aiormq
does, so these tests mix it with aiormq's own ``basic_publish`` on one channel and check
that every confirm, return and nack lands on the message it belongs to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from amqp_jobs import JobApp, PublishNackedError, UnroutableError
from amqp_jobs.errors import PublishTimeoutError
from amqp_jobs.topology import QueueDecl
from amqp_jobs.transport.base import OutgoingMessage, Publication
from tests.helpers import rabbitmqctl


def _message(n: int, body: bytes | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        body=body if body is not None else b'{"n": %d}' % n,
        message_id=f"m{n}",
        type="test.message",
        content_type="application/json",
        headers={"n": n},
    )


@pytest.fixture
async def queue(app: JobApp, namespace: str) -> AsyncIterator[str]:
    """A plain durable queue of this test, deleted afterwards."""
    await app.connect()
    declaration = QueueDecl(f"{namespace}.plain")
    await app.transport.declare([declaration])
    yield declaration.name
    await app.transport.delete([declaration])


async def _drain_ids(app: JobApp, queue: str) -> list[str]:
    ids: list[str] = []
    async with app.transport.reader(queue) as reader:
        while (delivery := await reader.get()) is not None:
            ids.append(delivery.message_id or "")
            delivery.ack()
    return ids


async def test_batches_and_single_publishes_share_a_channel(app: JobApp, queue: str) -> None:
    # Given 1,500 publications (three windows, fifteen batches) and single publishes
    # sent on the same channel while they are in flight
    publications = [Publication(_message(n), "", queue) for n in range(1500)]

    async def singles() -> None:
        for n in range(1500, 1550):
            await app.transport.publish(_message(n), "", queue, timeout=10)

    # When both run at once
    outcomes, _ = await asyncio.gather(
        app.transport.publish_many(publications, timeout=10), singles()
    )

    # Then every publish is confirmed and every message is in the queue exactly once
    assert outcomes == [None] * 1500
    ids = await _drain_ids(app, queue)
    assert sorted(ids) == sorted(f"m{n}" for n in range(1550))


async def test_an_unroutable_publish_fails_alone(app: JobApp, queue: str) -> None:
    # Given a batch in which every tenth message goes to a queue that does not exist
    publications = [
        Publication(_message(n), "", queue if n % 10 else f"{queue}.missing") for n in range(200)
    ]

    # When the batch is published
    outcomes = await app.transport.publish_many(publications, timeout=10)

    # Then exactly those fail, as unroutable, naming their job; the rest are queued
    for n, outcome in enumerate(outcomes):
        if n % 10:
            assert outcome is None, n
        else:
            assert isinstance(outcome, UnroutableError), (n, outcome)
            assert f"m{n}" in str(outcome)
    assert len(await _drain_ids(app, queue)) == 180
    # And the channel still numbers publishes right afterwards
    await app.transport.publish(_message(999), "", queue, timeout=10)
    assert await _drain_ids(app, queue) == ["m999"]


async def test_a_full_queue_nacks_the_overflow(app: JobApp, namespace: str) -> None:
    # Given a queue that refuses publishes beyond 5 messages
    full = QueueDecl(f"{namespace}.full", {"x-max-length": 5, "x-overflow": "reject-publish"})
    await app.connect()
    await app.transport.declare([full])
    try:
        # When 12 are published in one batch
        outcomes = await app.transport.publish_many(
            [Publication(_message(n), "", full.name) for n in range(12)], timeout=10
        )

        # Then the first 5 are confirmed and the other 7 are refused with a clear error
        assert outcomes[:5] == [None] * 5
        assert all(isinstance(o, PublishNackedError) for o in outcomes[5:]), outcomes
        assert "queue may be full" in str(outcomes[5])
    finally:
        await app.transport.delete([full])


async def test_bodies_larger_than_a_frame_arrive_whole(app: JobApp, queue: str) -> None:
    # Given bodies of 1 B to 400 kB (the broker's frame_max is 128 kB)
    sizes = [1, 1000, 131_064, 131_065, 131_072, 262_200, 400_000]
    bodies = [bytes([65 + n]) * size for n, size in enumerate(sizes)]

    # When they are published in one batch
    outcomes = await app.transport.publish_many(
        [Publication(_message(n, body), "", queue) for n, body in enumerate(bodies)], timeout=10
    )

    # Then each arrives byte for byte, with its properties
    assert outcomes == [None] * len(sizes)
    received: dict[str, bytes] = {}
    async with app.transport.reader(queue) as reader:
        while (delivery := await reader.get()) is not None:
            assert delivery.type == "test.message"
            assert delivery.headers["n"] == int((delivery.message_id or "m-1")[1:])
            received[delivery.message_id or ""] = delivery.body
            delivery.ack()
    assert received == {f"m{n}": body for n, body in enumerate(bodies)}


async def test_publishes_without_confirms_time_out(app: JobApp, queue: str) -> None:
    # Given a broker that blocks publishers (memory alarm)
    assert rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1").returncode == 0
    try:
        # When a batch is published with a 1 s timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await app.transport.publish_many(
            [Publication(_message(n), "", queue) for n in range(700)], timeout=1.0, window=500
        )

        # Then it returns within a few seconds, every publish failed with a timeout
        # (those never sent too), rather than hanging
        assert loop.time() - started < 5
        assert len(outcomes) == 700
        assert all(isinstance(o, PublishTimeoutError) for o in outcomes), {
            type(o).__name__ for o in outcomes
        }
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    await asyncio.sleep(1)  # the broker unblocks the connection


async def test_publishes_caught_by_a_lost_connection_are_sent_again(
    app: JobApp, queue: str
) -> None:
    # Given a long pipelined publish under way
    count = 60_000
    publications = [Publication(_message(n), "", queue) for n in range(count)]
    publishing = asyncio.create_task(app.transport.publish_many(publications, timeout=30))
    await asyncio.sleep(0.5)
    assert not publishing.done()

    # When the broker closes every client connection in the middle of it
    closed = await asyncio.to_thread(
        rabbitmqctl, "close_all_connections", "amqp-jobs test: connection lost mid-batch"
    )
    assert closed.returncode == 0, closed.stderr
    assert not publishing.done(), "the publish ended before the connection was closed"
    outcomes = await publishing

    # Then every publish is confirmed in the end (those in flight sent again after the
    # reconnect), and every message is in the queue at least once (at-least-once)
    assert [o for o in outcomes if o is not None] == []
    ids = set(await _drain_ids(app, queue))
    assert ids == {f"m{n}" for n in range(count)}
