"""An app run by worker subprocesses in the tests (its namespace comes from the environment)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from amqp_jobs import JobApp, JobContext

app = JobApp(namespace=os.environ.get("AMQP_JOBS_TEST_NAMESPACE", "amqp_jobs_test_fleet"))


@app.job(name="fleet.kill_worker", max_attempts=3, backoff="fixed", backoff_base=0.05)
async def kill_worker() -> None:
    """Takes its whole worker process down, every time."""
    os._exit(17)


@app.job(name="fleet.slow")
async def slow(seconds: float, marker: str) -> None:
    """Writes '<marker>.started', sleeps, then writes '<marker>.done'."""
    Path(f"{marker}.started").write_text("")
    await asyncio.sleep(seconds)
    Path(f"{marker}.done").write_text("")


@app.job(name="fleet.record")
async def record(ctx: JobContext, path: str, n: int) -> None:
    """Appends '<pid> <n> <attempt>' to a file shared by every worker process."""
    with open(path, "a") as out:
        out.write(f"{os.getpid()} {n} {ctx.attempt}\n")
