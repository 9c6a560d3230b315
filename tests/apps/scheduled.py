"""An app run by scheduler subprocesses in the tests.

Its namespace and store come from the environment (``AMQP_JOBS_TEST_NAMESPACE``,
``AMQP_JOBS_TEST_STORE``); it defines one per-second schedule in code, ``tick``, whose
misfire policy is ``AMQP_JOBS_TEST_MISFIRE`` (default ``all``).
"""

from __future__ import annotations

import os

from amqp_jobs import JobApp

app = JobApp(
    namespace=os.environ.get("AMQP_JOBS_TEST_NAMESPACE", "amqp_jobs_test_scheduled"),
    service="scheduled-test",
    store=os.environ.get("AMQP_JOBS_TEST_STORE", "sqlite+aiosqlite:///./scheduled-test.db"),
)


@app.job(name="scheduled.tick", queue="ticks")
async def tick(n: int = 0) -> None:
    """Does nothing here: the tests' in-process worker registers its own recording job."""


app.schedule(
    "tick",
    "scheduled.tick",
    cron="* * * * * *",
    misfire=os.environ.get("AMQP_JOBS_TEST_MISFIRE", "all"),
    data={"n": 1},
)
