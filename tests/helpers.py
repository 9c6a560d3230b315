"""Helpers shared by the broker tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from amqp_jobs import JobApp, Worker


@contextlib.asynccontextmanager
async def running(app: JobApp, **settings: Any) -> AsyncIterator[Worker]:
    """A started worker of ``app``, stopped when the block ends."""
    worker = app.worker(settings.pop("queues", None), **settings)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace_period=settings.get("grace_period", 5.0))


async def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``condition`` (sync or async) until it is true, failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run rabbitmqctl on the local broker (tests that need it require a local broker)."""
    if shutil.which("rabbitmqctl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmqctl is needed for this test")
        pytest.skip("rabbitmqctl is not available (the broker is not local)")
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)


def start_worker_process(namespace: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``amqp-jobs worker tests.apps.fleet:app`` in its own process."""
    env = {**os.environ, "AMQP_JOBS_TEST_NAMESPACE": namespace}
    return subprocess.Popen(
        [sys.executable, "-m", "amqp_jobs.cli", "worker", "tests.apps.fleet:app", *args],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
