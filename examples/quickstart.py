"""Quickstart: a worker, a job that fails twice then succeeds, and a delayed job.

Run it with ``python -m examples.quickstart`` (RabbitMQ at AMQP_URL, default the
local one). The same app runs as a standalone worker with::

    amqp-jobs worker examples.quickstart:app --queues default --concurrency 64
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from amqp_jobs import JobApp, JobContext

app = JobApp(service="signup", namespace="quickstart")


class Welcome(BaseModel):
    user_id: int


class Sent(BaseModel):
    status: str


class EmailService:
    """A service object: its public async methods become jobs ``email.<method>``."""

    async def send_welcome(self, ctx: JobContext, data: Welcome) -> Sent:
        print(f"  [worker] email.send_welcome for user {data.user_id} (attempt {ctx.attempt})")
        return Sent(status="sent")


app.service("email", EmailService())


@app.job(name="signup.flaky_sync", max_attempts=5, backoff="exponential", backoff_base=0.2)
async def flaky_sync(ctx: JobContext, user_id: int) -> str:
    """Fails on its first two attempts, as a flaky upstream would."""
    if ctx.attempt < 3:
        print(f"  [worker] signup.flaky_sync attempt {ctx.attempt}: upstream down, will retry")
        raise ConnectionError("CRM not reachable")
    print(f"  [worker] signup.flaky_sync attempt {ctx.attempt}: synced user {user_id}")
    return "synced"


@app.job(name="signup.reminder")
async def reminder(ctx: JobContext, user_id: int) -> None:
    """A delayed job: reports how late it started compared to when it was due."""
    late_ms = (time.time() - (ctx.envelope.not_before or ctx.envelope.enqueued_at)) * 1000
    print(f"  [worker] signup.reminder for user {user_id}, {late_ms:.1f} ms after it was due")
    finished.set()


finished = asyncio.Event()


async def main() -> None:
    """Start a worker, publish the jobs, print what happened, stop."""
    worker = app.worker(["default"], concurrency=16)
    await worker.start()
    try:
        print("publishing: email.send_welcome (by name), signup.flaky_sync, signup.reminder +1.5s")
        await app.enqueue("email.send_welcome", {"user_id": 1})
        await flaky_sync.enqueue({"user_id": 1})
        await reminder.enqueue({"user_id": 1}, delay=1.5)
        await asyncio.wait_for(finished.wait(), timeout=30)
        await asyncio.sleep(0.2)
    finally:
        await worker.stop()
        await app.close()
    stats = worker.stats
    print(
        f"done: {stats.succeeded} jobs succeeded, {stats.retried} retries through the delay "
        f"queues, {stats.dead} dead"
    )


if __name__ == "__main__":
    asyncio.run(main())
