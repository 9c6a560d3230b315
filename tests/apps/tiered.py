"""An app with a routing policy, for worker subprocesses started with --tier."""

from __future__ import annotations

import os

from amqp_jobs import JobApp, JobContext
from routing import Policy

policy = Policy.from_dict(
    {
        "tiers": {
            "free": {"priority": 1, "queue": "free"},
            "enterprise": {"priority": 9, "queue": "enterprise", "weight": 5},
        },
        "queues": {"free": {}, "enterprise": {}},
    }
)
app = JobApp(
    namespace=os.environ.get("AMQP_JOBS_TEST_NAMESPACE", "amqp_jobs_test_tiered"), routing=policy
)


@app.job(name="tiered.record")
async def record(ctx: JobContext, path: str) -> None:
    """Appends the user's tier to a file."""
    with open(path, "a") as out:
        out.write(f"{ctx.user.tier if ctx.user else None}\n")
