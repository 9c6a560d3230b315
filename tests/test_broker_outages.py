"""The broker going away: publishes time out instead of hanging, workers resume after it.

These tests stop and block the local RabbitMQ with rabbitmqctl, so they need the
broker on this machine.
"""

from __future__ import annotations

import asyncio

import pytest

from amqp_jobs import JobApp, PublishTimeoutError
from tests.helpers import rabbitmqctl, running, wait_until


async def test_a_publish_without_a_confirm_raises_after_its_timeout(
    make_app: type[JobApp] | object,
) -> None:
    # Given an app with a short publish timeout, and a broker that blocks publishers
    app = make_app(publish_timeout=1.0)  # type: ignore[operator]

    @app.job
    async def job() -> None: ...

    await job.enqueue()  # connection and queues ready
    assert rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1").returncode == 0
    try:
        # When a job is published, Then it raises instead of hanging
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PublishTimeoutError, match="no confirm from the broker in time"):
            await job.enqueue()
        assert loop.time() - started < 5
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    await asyncio.sleep(1)  # the broker unblocks the connection


async def test_a_worker_resumes_after_the_broker_restarts_and_loses_nothing(
    app: JobApp,
) -> None:
    # Given a worker busy with a backlog of 200 confirmed jobs
    done: set[int] = set()

    @app.job(max_attempts=5, backoff="fixed", backoff_base=0.05)
    async def record(n: int) -> None:
        await asyncio.sleep(0.01)
        done.add(n)

    async with running(app, concurrency=5):
        await app.enqueue_many([(record.name, {"n": n}) for n in range(200)])

        # When the broker application stops and starts again mid-backlog
        assert rabbitmqctl("stop_app").returncode == 0
        assert rabbitmqctl("start_app").returncode == 0
        rabbitmqctl("await_startup")

        # Then publishing works again once reconnected, and every job runs
        await app.enqueue_many([(record.name, {"n": n}) for n in range(200, 250)])
        await wait_until(lambda: len(done) == 250, timeout=60)
    assert done == set(range(250))
