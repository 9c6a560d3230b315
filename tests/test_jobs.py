"""Defining, publishing and running jobs against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from decimal import Decimal

import pydantic
import pytest

from amqp_jobs import (
    ConfigurationError,
    JobApp,
    JobContext,
    UnknownJobOptionError,
    UnroutableError,
    ValidationError,
)
from tests.helpers import running, wait_until


class Welcome(pydantic.BaseModel):
    user_id: int


class Sent(pydantic.BaseModel):
    status: str


async def test_a_published_job_runs_with_its_typed_input(app: JobApp) -> None:
    # Given a job taking a pydantic model and the context
    seen: list[tuple[Welcome, int]] = []

    @app.job(queue="default")
    async def send_welcome(ctx: JobContext, data: Welcome) -> Sent:
        seen.append((data, ctx.attempt))
        return Sent(status="sent")

    # When it is enqueued and a worker runs
    async with running(app):
        handle = await send_welcome.enqueue(Welcome(user_id=7))
        await wait_until(lambda: seen)

    # Then the job received a validated model, on its first attempt
    assert seen == [(Welcome(user_id=7), 1)]
    assert handle.job == send_welcome.name and handle.queue == "default"


async def test_publishers_enqueue_by_name_without_the_workers_code(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a worker app with a job, and a publisher app that has no jobs at all
    worker_app, publisher = make_app(), make_app(service="billing")
    received: list[dict[str, object]] = []

    @worker_app.job(name="email.send_welcome")
    async def send_welcome(data: Welcome) -> None:
        received.append(data.model_dump())

    # When the publisher enqueues by name, in the plain and the queue-first forms
    async with running(worker_app):
        await publisher.enqueue("email.send_welcome", {"user_id": 1})
        await publisher.queue("default").add("email.send_welcome", {"user_id": 2})
        await wait_until(lambda: len(received) == 2)

    # Then both ran on the worker
    assert sorted(r["user_id"] for r in received) == [1, 2]  # type: ignore[type-var]


async def test_enqueue_many_publishes_every_job(app: JobApp) -> None:
    # Given a job that counts its runs
    done: set[int] = set()

    @app.job
    async def count(n: int) -> None:
        done.add(n)

    # When 1,000 jobs are enqueued in one call
    handles = await app.enqueue_many([(count.name, {"n": i}) for i in range(1000)])
    async with running(app, concurrency=50):
        await wait_until(lambda: len(done) == 1000)

    # Then each ran, each with its own id
    assert done == set(range(1000))
    assert len({h.id for h in handles}) == 1000


async def test_sync_functions_run_in_the_thread_pool(app: JobApp) -> None:
    # Given a plain (sync) function as a job
    threads: list[str] = []

    @app.job
    def blocking(n: int) -> int:
        threads.append(threading.current_thread().name)
        return n * 2

    # When it runs
    async with running(app):
        await blocking.enqueue({"n": 2})
        await wait_until(lambda: threads)

    # Then it ran off the event loop's thread
    assert threads[0].startswith("amqp-jobs-sync")


async def test_service_methods_become_jobs(app: JobApp) -> None:
    # Given a service object with public async methods
    calls: list[str] = []

    class EmailService:
        async def send_welcome(self, data: Welcome) -> Sent:
            calls.append(f"welcome {data.user_id}")
            return Sent(status="ok")

        async def send_receipt(self, user_id: int, amount: Decimal) -> None:
            calls.append(f"receipt {user_id} {amount}")

        async def _private(self) -> None:
            raise AssertionError("private methods are not jobs")

    # When it is registered and its jobs are enqueued by name
    jobs = app.service("email", EmailService())
    async with running(app):
        await app.enqueue("email.send_welcome", {"user_id": 1})
        await app.enqueue("email.send_receipt", {"user_id": 2, "amount": "9.90"})
        await wait_until(lambda: len(calls) == 2)

    # Then each public method is a job "email.<method>", with rich types intact
    assert sorted(j.name for j in jobs) == ["email.send_receipt", "email.send_welcome"]
    assert sorted(calls) == ["receipt 2 9.90", "welcome 1"]


async def test_invalid_input_is_refused_at_publish(app: JobApp) -> None:
    # Given a job whose input model the publisher knows
    @app.job
    async def send_welcome(data: Welcome) -> None: ...

    # When data that does not fit is enqueued, Then it raises before publishing
    with pytest.raises(ValidationError, match="user_id"):
        await send_welcome.enqueue({"user_id": "not a number"})


def test_unknown_job_options_fail_at_definition(app: JobApp) -> None:
    # Given no middleware that understands "rate_limit"
    # When a job is defined with it, Then the error names the option and the likely cause
    with pytest.raises(UnknownJobOptionError, match=r"rate_limit.*middleware"):

        @app.job(rate_limit="10/s")
        async def limited() -> None: ...


def test_priority_out_of_range_fails_at_definition(app: JobApp) -> None:
    with pytest.raises(ConfigurationError, match=r"priority 11 is outside 0\.\.10"):

        @app.job(priority=11)
        async def urgent() -> None: ...


async def test_an_unroutable_job_raises_a_clear_error(app: JobApp) -> None:
    # Given a queue that was declared, then deleted behind the publisher's back
    @app.job(queue="vanishing")
    async def job() -> None: ...

    await job.enqueue()
    await app.transport.delete(app.topology.work_queue("vanishing")[:1])

    # When the job is published again, Then the broker's return becomes an error
    with pytest.raises(UnroutableError, match="unroutable"):
        await job.enqueue()


async def test_priority_is_honoured_under_a_backlog(app: JobApp) -> None:
    # Given 300 low-priority jobs queued before any worker runs, then one urgent job
    order: list[str] = []

    @app.job
    async def work(tag: str) -> None:
        order.append(tag)
        await asyncio.sleep(0)

    await app.enqueue_many([(work.name, {"tag": f"low{i}"}) for i in range(300)])
    await work.enqueue({"tag": "urgent"}, priority=9)

    # When a worker with concurrency 1 drains the queue
    async with running(app, concurrency=1):
        await wait_until(lambda: len(order) == 301)

    # Then the urgent job ran first
    assert order[0] == "urgent"
