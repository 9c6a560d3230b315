"""Retries through the delay levels, and the dead-letter queue with its reasons."""

from __future__ import annotations

import asyncio
import time

import pytest

from amqp_jobs import Abort, JobApp, JobContext, Retry
from amqp_jobs.dlq import DeadLetters
from amqp_jobs.envelope import CONTENT_TYPE, Envelope, encode
from amqp_jobs.transport.base import OutgoingMessage
from tests.helpers import running, wait_until


async def test_a_job_that_fails_twice_then_succeeds_is_retried(app: JobApp) -> None:
    # Given a job that fails on its first two attempts
    attempts: list[int] = []

    @app.job(max_attempts=5, backoff="fixed", backoff_base=0.05)
    async def flaky(ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("upstream down")
        return "ok"

    # When it runs
    async with running(app) as worker:
        await flaky.enqueue()
        await wait_until(lambda: attempts == [1, 2, 3])

    # Then it ran three times and nothing is dead
    assert worker.stats.retried == 2 and worker.stats.succeeded == 1
    assert await DeadLetters(app).list() == []


async def test_an_exhausted_job_lands_in_the_dead_letter_queue_with_its_reason(
    app: JobApp,
) -> None:
    # Given a job that always fails
    @app.job(max_attempts=3, backoff="exponential", backoff_base=0.02)
    async def doomed() -> None:
        raise ValueError("the invoice has no lines")

    # When it is run to exhaustion
    async with running(app) as worker:
        handle = await doomed.enqueue()
        await wait_until(lambda: worker.stats.dead == 1)

    # Then the DLQ holds it, saying which attempt failed and why
    (dead,) = await DeadLetters(app).list()
    assert dead.id == handle.id and dead.job == doomed.name and dead.attempts == 3
    assert dead.reason == "failed on attempt 3 of 3: ValueError: the invoice has no lines"
    assert dead.error_type == "ValueError"
    assert dead.queue == app.topology.queue_name("default")


async def test_retry_with_a_delay_waits_in_the_broker_not_the_worker(app: JobApp) -> None:
    # Given a job that asks to be retried in 0.6 s
    runs: list[float] = []

    @app.job(max_attempts=2)
    async def later(ctx: JobContext) -> None:
        runs.append(time.monotonic())
        if ctx.attempt == 1:
            raise Retry(delay=0.6)

    async with running(app):
        await later.enqueue()
        await wait_until(lambda: len(runs) == 1)
        # While it waits, the job is a message in the delay level for 512 ms
        level_9 = app.topology.delay_queue(9)
        await wait_until(lambda: app.transport.message_count(level_9), timeout=0.5)
        await wait_until(lambda: len(runs) == 2)

    # Then the second run started after the requested delay
    assert 0.6 <= runs[1] - runs[0] < 0.6 + 0.3


async def test_errors_outside_retry_on_and_abort_are_not_retried(app: JobApp) -> None:
    # Given jobs that only retry on ConnectionError, or abort
    @app.job(max_attempts=5, retry_on=(ConnectionError,))
    async def picky() -> None:
        raise KeyError("missing")

    @app.job(max_attempts=5)
    async def aborting() -> None:
        raise Abort("customer deleted")

    async with running(app) as worker:
        await picky.enqueue()
        await aborting.enqueue()
        await wait_until(lambda: worker.stats.dead == 2)

    # Then both went to the DLQ on their first attempt, not retried
    reasons = sorted(d.reason for d in await DeadLetters(app).list())
    assert reasons == [
        "failed with an error that is not retried (attempt 1): Abort: customer deleted",
        "failed with an error that is not retried (attempt 1): KeyError: 'missing'",
    ]
    assert worker.stats.retried == 0


async def test_a_job_over_its_time_limit_is_cancelled_and_counts_as_failed(
    app: JobApp,
) -> None:
    # Given a job with a 0.2 s limit that takes far longer
    cancelled = asyncio.Event()

    @app.job(timeout=0.2, max_attempts=1)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # When it runs
    async with running(app) as worker:
        await slow.enqueue()
        await wait_until(lambda: worker.stats.dead == 1)

    # Then it was cancelled and dead-lettered with a timeout reason
    assert cancelled.is_set()
    (dead,) = await DeadLetters(app).list()
    assert dead.error_type == "JobTimeoutError"
    assert "time limit of 0.2s" in dead.reason


@pytest.mark.parametrize(
    ("body", "content_type", "expected_reason"),
    [
        (b"\x80\x81 not json", CONTENT_TYPE, "body is not a valid job envelope"),
        (b'{"job": "x"}', "application/json", "wrong content type 'application/json'"),
        (b'{"job": 5, "queue": "default"}', CONTENT_TYPE, "job: Input should be a valid string"),
        (
            encode(Envelope(job="no.such.job", queue="default")),
            CONTENT_TYPE,
            "unknown job 'no.such.job'",
        ),
        (
            encode(Envelope(job="tests.add", queue="default", data={"a": "x", "b": 1})),
            CONTENT_TYPE,
            "input of job 'tests.add' is invalid: a: Input should be a valid integer",
        ),
        (
            encode(Envelope(job="tests.add", queue="default", data={"a": 1, "b": "9" * 2000})),
            CONTENT_TYPE,
            "exceeds the limit of 1024 bytes",
        ),
    ],
    ids=["undecodable", "content-type", "bad-envelope", "unknown-job", "bad-input", "oversized"],
)
async def test_a_poison_message_is_dead_lettered_and_the_worker_keeps_going(
    app: JobApp, body: bytes, content_type: str, expected_reason: str
) -> None:
    # Given a worker for a job "tests.add"
    results: list[int] = []

    @app.job(name="tests.add")
    async def add(a: int, b: int) -> int:
        results.append(a + b)
        return a + b

    async with running(app, max_body_bytes=1024) as worker:
        # When a poison message arrives, followed by a good job
        await app.transport.publish(
            OutgoingMessage(body=body, message_id="poison-1", type="x", content_type=content_type),
            "",
            app.topology.queue_name("default"),
            timeout=5,
        )
        await add.enqueue({"a": 2, "b": 3})
        await wait_until(lambda: results == [5])

    # Then the poison message is in the DLQ with the reason, and the good job ran
    (dead,) = await DeadLetters(app).list()
    assert dead.id == "poison-1"
    assert expected_reason in dead.reason
    assert worker.stats.dead == 1 and worker.stats.succeeded == 1


async def test_dead_jobs_can_be_requeued_and_purged(app: JobApp) -> None:
    # Given two jobs dead after their one attempt; a switch makes the job succeed later
    healthy = False
    succeeded: list[int] = []

    @app.job(max_attempts=1)
    async def fragile(n: int) -> None:
        if not healthy:
            raise RuntimeError("not yet")
        succeeded.append(n)

    dead_letters = DeadLetters(app)
    async with running(app) as worker:
        first = await fragile.enqueue({"n": 1})
        await fragile.enqueue({"n": 2})
        await wait_until(lambda: worker.stats.dead == 2)

        # When one is requeued by id after the cause is fixed
        healthy = True
        assert await dead_letters.requeue(first.id) == 1
        await wait_until(lambda: succeeded == [1])

    # Then it ran with fresh attempts, the other is still dead, and purge removes it
    remaining = await dead_letters.list()
    assert [d.attempts for d in remaining] == [1] and remaining[0].id != first.id
    assert await dead_letters.purge() == 1
    assert await dead_letters.list() == []
