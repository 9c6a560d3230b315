"""Delays, redelivery after a crash, graceful shutdown and fleets of worker processes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amqp_jobs import ConfigurationError, JobApp
from amqp_jobs.dlq import DeadLetters
from amqp_jobs.topology import Topology
from tests.apps import fleet
from tests.helpers import running, start_worker_process, wait_until


def test_delay_routing_keys_spell_the_delay_bits() -> None:
    topology = Topology(namespace="ns", delay_levels=4)
    exchange, key = topology.delay_route(0b0101, "ns.q.default")
    assert exchange == "ns.delay.02"  # enters at its highest set bit
    assert key == "0.1.0.1.ns.q.default"
    with pytest.raises(ConfigurationError, match="exceeds the longest possible delay"):
        topology.delay_route(16, "ns.q.default")


async def test_a_short_delay_is_not_held_up_by_a_longer_one(app: JobApp) -> None:
    # Given a job recording when it started
    started: dict[str, float] = {}

    @app.job
    async def stamp(tag: str) -> None:
        started[tag] = time.monotonic()

    async with running(app):
        t0 = time.monotonic()
        # When a 2 s delay is published before a 0.3 s delay
        await stamp.enqueue({"tag": "long"}, delay=2.0)
        await stamp.enqueue({"tag": "short"}, delay=timedelta(milliseconds=300))
        await wait_until(lambda: len(started) == 2, timeout=5)

    # Then each started at its own time: no head-of-line blocking
    assert 0.3 <= started["short"] - t0 < 0.3 + 0.25
    assert 2.0 <= started["long"] - t0 < 2.0 + 0.25


async def test_at_schedules_for_an_absolute_time(app: JobApp) -> None:
    started: list[float] = []

    @app.job
    async def stamp() -> None:
        started.append(time.time())

    target = datetime.now(UTC) + timedelta(milliseconds=700)
    async with running(app):
        await stamp.enqueue(at=target)
        await wait_until(lambda: started, timeout=5)
    assert 0 <= started[0] - target.timestamp() < 0.25


async def test_a_delay_of_weeks_waits_in_a_high_delay_level(app: JobApp) -> None:
    # Given a job delayed by 40 days
    @app.job
    async def much_later() -> None: ...

    await much_later.enqueue(delay=timedelta(days=40))

    # Then it waits in level 31 (2**31 ms, about 24.9 days), in the broker
    assert await app.transport.message_count(app.topology.delay_queue(31)) == 1
    with pytest.raises(ConfigurationError, match="longest possible delay"):
        await much_later.enqueue(delay=timedelta(days=3 * 365))


async def test_a_job_that_kills_its_worker_every_time_ends_in_the_dlq(
    make_app: Callable[..., JobApp], namespace: str
) -> None:
    # Given a job that exits its worker process each time it runs (max_attempts=3)
    app = make_app()
    app.registry.update(fleet.app.registry)
    handle = await app.enqueue("fleet.kill_worker")
    dead_letters = DeadLetters(app)

    # When worker processes are started again and again, as a supervisor would
    crashes = 0
    for _ in range(6):
        process = start_worker_process(namespace, "--concurrency", "1")
        try:
            for _ in range(300):
                if process.poll() is not None or await dead_letters.list():
                    break
                await asyncio.sleep(0.05)
        finally:
            if process.poll() is None:
                process.terminate()
            exit_code = process.wait(timeout=20)
        if exit_code == 17:
            crashes += 1
        if await dead_letters.list():
            break

    # Then each redelivery counted as an attempt: 3 crashes, then the DLQ, no loop
    (dead,) = await dead_letters.list()
    assert crashes == 3
    assert dead.id == handle.id and dead.error_type == "WorkerLost"
    assert "redelivered after attempt 3 of 3" in dead.reason


async def test_sigterm_lets_running_jobs_finish(
    make_app: Callable[..., JobApp], namespace: str, tmp_path: Path
) -> None:
    # Given a worker process running a 1 s job
    app = make_app()
    app.registry.update(fleet.app.registry)
    marker = tmp_path / "job"
    process = start_worker_process(namespace)
    try:
        await app.enqueue("fleet.slow", {"seconds": 1.0, "marker": str(marker)})
        await wait_until(lambda: Path(f"{marker}.started").exists())

        # When it receives SIGTERM mid-job
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()

    # Then the job finished before the process exited cleanly, and its message is gone
    assert exit_code == 0
    assert Path(f"{marker}.done").exists()
    assert await app.queue("default").size() == 0


async def test_jobs_running_past_the_grace_period_are_handed_back(
    app: JobApp, tmp_path: Path
) -> None:
    # Given a job that runs far longer than the shutdown grace period
    started = asyncio.Event()

    @app.job
    async def endless() -> None:
        started.set()
        await asyncio.sleep(60)

    worker = app.worker(concurrency=4)
    await worker.start()
    await endless.enqueue()
    await started.wait()

    # When the worker stops with a 0.2 s grace period
    await worker.stop(grace_period=0.2)

    # Then the job was not acknowledged: its message is back in the queue
    await wait_until(lambda: app.queue("default").size())
    assert worker.stats.handed_back == 1 and worker.stats.succeeded == 0


async def test_worker_processes_share_the_queues(
    make_app: Callable[..., JobApp], namespace: str, tmp_path: Path
) -> None:
    # Given two worker processes on the same queue
    app = make_app()
    app.registry.update(fleet.app.registry)
    log = tmp_path / "runs.txt"
    log.write_text("")
    processes = [start_worker_process(namespace, "--concurrency", "4") for _ in range(2)]
    try:
        await app.queue("default").size()  # declares the queue before the workers look
        await asyncio.sleep(1.5)  # both consuming
        # When 400 jobs are published
        await app.enqueue_many([("fleet.record", {"path": str(log), "n": n}) for n in range(400)])
        await wait_until(lambda: len(log.read_text().splitlines()) >= 400, timeout=30)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)

    # Then every job ran exactly once, and both processes took a share
    runs = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(n) for _, n, _ in runs) == list(range(400))
    assert len({pid for pid, _, _ in runs}) == 2
