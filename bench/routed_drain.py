"""Routed drain: one tier worker emptying many tenant queues, against one plain queue.

Ours: ``jobs`` no-op jobs spread over ``tenants`` tenants, each routed by the policy to
its own tenant queue (declared on first publish and announced on the registry stream),
drained by one worker started with ``tiers=["pro"]`` that discovers the tenant queues
from the stream. Reference ("raw" column): the same number of jobs in one plain work
queue drained by one plain worker. Both use ``concurrency`` and the same job; the clock
runs from just before ``worker.start()`` until the last job ran. Target: >= 0.8x.
"""

from __future__ import annotations

import asyncio
import time

from amqp_jobs import JobApp, JobContext
from bench.common import (
    Metric,
    RoundResult,
    Target,
    alternate,
    column,
    log,
    scenario_app,
    unique_namespace,
)
from bench.drain import Countdown
from routing import Policy

JOB = "bench.routed.noop"

POLICY = {
    "attributes": ["isolation"],
    "tiers": {"pro": {"priority": 5}},
    "queues": {"default": {}, "tenant.{tenant}": {"max_length": 1_000_000}},
    "rules": [
        {
            "name": "tenants",
            "match": {"attributes": {"isolation": "dedicated"}},
            "route": {"queue": "tenant.{tenant}"},
        }
    ],
}


async def _drain(
    app: JobApp, countdown: Countdown, jobs: int, concurrency: int, **worker: object
) -> RoundResult:
    countdown.reset(jobs)
    runner = app.worker(concurrency=concurrency, **worker)  # type: ignore[arg-type]
    started = time.perf_counter()
    await runner.start()
    try:
        await asyncio.wait_for(countdown.done.wait(), max(120.0, jobs / 100))
        elapsed = time.perf_counter() - started
    finally:
        await runner.stop(grace_period=10.0)
    return {"jobs_per_s": jobs / elapsed, "seconds": elapsed}


async def run(
    url: str, *, jobs: int = 20_000, tenants: int = 20, rounds: int = 3, concurrency: int = 200
) -> list[Metric]:
    """Run the routed-drain scenario; return its metric (jobs/s, routed vs single queue)."""
    routed_ns, plain_ns = unique_namespace("routed"), unique_namespace("plain")
    policy = Policy.from_dict(POLICY)
    async with (
        scenario_app(url, routed_ns, routing=policy) as routed,
        scenario_app(url, plain_ns) as plain,
    ):
        countdown = Countdown()
        for app in (routed, plain):

            @app.job(name=JOB)
            async def noop(ctx: JobContext, n: int) -> None:
                countdown.hit()

        users = [
            {"tier": "pro", "tenant": f"t{t}", "isolation": "dedicated"} for t in range(tenants)
        ]
        log(f"routed drain: {jobs} jobs over {tenants} tenant queues vs one queue")

        async def routed_round(_: int) -> RoundResult:
            await routed.enqueue_many(
                {"job": JOB, "data": {"n": n}, "user": users[n % tenants]} for n in range(jobs)
            )
            return await _drain(routed, countdown, jobs, concurrency, tiers=["pro"])

        async def plain_round(_: int) -> RoundResult:
            await plain.enqueue_many((JOB, {"n": n}) for n in range(jobs))
            return await _drain(plain, countdown, jobs, concurrency)

        ours, single = await alternate(rounds, routed_round, plain_round, label="routed drain")
    return [
        Metric(
            "routed",
            f"drain {jobs} jobs over {tenants} tenant queues vs 1 queue",
            "jobs/s",
            column(ours, "jobs_per_s"),
            column(single, "jobs_per_s"),
            target=Target("min_ratio", 0.8),
            note="raw column = the same drain through one plain queue (amqp-jobs, no routing)",
        )
    ]
