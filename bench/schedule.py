"""Scheduler: how late cron occurrences start, and the memory of 10,000 schedules.

Accuracy: ``schedules`` per-second cron schedules (``* * * * * *``) fired for
``seconds`` by a :class:`~amqp_jobs.scheduling.Scheduler` (its own app and connections,
SQLite store); a worker in this process records ``time.time() - fire_at`` when each
job starts (``fire_at`` = the intended occurrence, from the job's label). The first
two seconds are warm-up and not counted. No raw baseline: nothing in plain aio-pika
schedules.

Memory: a scheduler in a child process (``python -m bench.schedule --hold``) leads a
store holding ``count`` schedules (cron and interval, none due during the measure);
once it has planned them all, its VmRSS is read from /proc. The same child with no
schedules gives the process's own baseline (interpreter, aio-pika, SQLAlchemy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from amqp_jobs import JobApp, JobContext
from amqp_jobs.scheduling import Schedule, Scheduler, ScheduleSpec, ScheduleStore, leader_queue
from amqp_jobs.store import JobStore
from amqp_jobs.store.schema_scheduling import schedules as schedules_table
from bench.common import (
    Metric,
    RoundResult,
    Target,
    alternate,
    column,
    log,
    percentile,
    scenario_app,
    unique_namespace,
)

QUEUE = "scheduled"
JOB = "bench.schedule.probe"
WARMUP = 2.0


async def accuracy_round(url: str, *, schedules: int, seconds: float) -> RoundResult:
    """One round of per-second schedules; lateness percentiles in ms."""
    namespace = unique_namespace("schedule")
    late_ms: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        store_url = f"sqlite+aiosqlite:///{directory}/schedules.db"
        async with scenario_app(url, namespace) as worker_app:

            @worker_app.job(name=JOB, queue=QUEUE)
            async def probe(ctx: JobContext, n: int = 0) -> None:
                fire_at = datetime.fromisoformat(ctx.envelope.labels["fire_at"]).timestamp()
                late_ms.append((time.time() - fire_at) * 1000)

            scheduler_app = JobApp(url, namespace=namespace, service=namespace, store=store_url)
            scheduler_app.job(name=JOB, queue=QUEUE)(_noop)
            store = ScheduleStore(JobStore(store_url))
            for n in range(schedules):
                spec = ScheduleSpec.of(cron="* * * * * *")
                await store.add(Schedule(f"probe-{n}", JOB, spec, data={"n": n}))
            await store.store.close()
            worker = worker_app.worker([QUEUE], concurrency=64)
            await worker.start()
            scheduler = Scheduler(scheduler_app)
            try:
                await scheduler.start()
                started = time.time()
                await asyncio.sleep(WARMUP + seconds)
                await scheduler.stop()
                await asyncio.sleep(2.0)  # occurrences published ahead still run
            finally:
                await worker.stop(grace_period=5.0)
                with contextlib.suppress(Exception):
                    await scheduler_app.transport.delete([leader_queue(scheduler_app.topology)])
                await scheduler_app.close()
    expected = schedules * int(seconds)
    counted = late_ms[schedules * int(WARMUP) :] if len(late_ms) > expected else late_ms
    log(f"schedule: {len(late_ms)} occurrences ran in {time.time() - started:.0f} s")
    return {
        "p50_ms": percentile(counted, 50),
        "p99_ms": percentile(counted, 99),
        "max_ms": max(counted),
        "runs": float(len(late_ms)),
    }


async def _fill(store_url: str, count: int) -> None:
    """``count`` schedules, written in one transaction (the store API adds one by one)."""
    job_store = JobStore(store_url)
    engine = await job_store.engine()
    now = time.time()
    rows = []
    for n in range(count):
        # Every schedule different (no sharing flatters the figure): minute, hour and
        # day of month spell n; a quarter are intervals.
        cron = None if n % 4 == 0 else f"{n % 60} {(n // 60) % 24} {(n // 1440) % 28 + 1} * *"
        rows.append(
            {
                "name": f"nightly-{n:05d}",
                "job": JOB,
                "queue": None,
                "cron": cron,
                "every": 86_400.0 + n if cron is None else None,
                "timezone": ("Europe/Berlin", "America/New_York", "UTC")[n % 3],
                "misfire": "once",
                "jitter": 0.0,
                "data": {"tenant": f"t{n % 97}", "n": n},
                "priority": None,
                "user_context": None,
                "labels": {"kind": "bench"},
                "origin": "store",
                "paused": False,
                "created_at": now,
                "updated_at": now,
            }
        )
    if rows:
        async with engine.begin() as connection:
            await connection.execute(schedules_table.insert(), rows)
    await job_store.close()


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def memory_round(url: str, count: int) -> RoundResult:
    """RSS of a scheduler child that has loaded and planned ``count`` schedules."""
    namespace = unique_namespace("schedmem")
    with tempfile.TemporaryDirectory() as directory:
        store_url = f"sqlite+aiosqlite:///{directory}/schedules.db"
        await _fill(store_url, count)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.schedule",
            "--hold",
            store_url,
            "--namespace",
            namespace,
            "--url",
            url,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 120)
            if not line.startswith(b"planned"):
                raise RuntimeError(f"the scheduler child said {line!r}")
            planned = int(line.split()[1])
            await asyncio.sleep(3.0)  # a few reload checks and ticks
            rss, peak = _rss_mb(child.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            await child.wait()
        cleaner = JobApp(url, namespace=namespace)
        await cleaner.connect()
        await cleaner.transport.delete([leader_queue(cleaner.topology)])
        await cleaner.close()
    if planned != count:
        raise RuntimeError(f"the scheduler planned {planned} of {count} schedules")
    return {"rss_mb": rss, "peak_mb": peak}


async def _hold(store_url: str, namespace: str, url: str) -> None:
    """Child side: lead, plan every schedule, say so, then keep running until killed."""
    app = JobApp(url, namespace=namespace, service=namespace, store=store_url)
    app.job(name=JOB)(_noop)
    scheduler = Scheduler(app)
    await scheduler.start()
    while scheduler.stats.took_over_at is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    print(f"planned {len(scheduler._states)}", flush=True)
    await asyncio.Event().wait()


async def _noop(n: int = 0, tenant: str = "") -> None:
    """The benchmark's scheduled job (never due while measuring)."""


async def run(
    url: str, *, rounds: int = 3, schedules: int = 20, seconds: float = 30.0, count: int = 10_000
) -> list[Metric]:
    """Run the schedule scenario: lateness p50/p99/max, and RSS with ``count`` schedules."""
    log(f"schedule: {schedules} per-second schedules for {seconds:g} s; RSS with {count:,}")
    ours, _ = await alternate(
        rounds,
        lambda _: accuracy_round(url, schedules=schedules, seconds=seconds),
        None,
        label="schedule",
    )
    memory, _ = await alternate(rounds, lambda _: memory_round(url, count), None, label="memory")
    baseline, _ = await alternate(1, lambda _: memory_round(url, 0), None, label="memory, empty")
    name = f"cron lateness, {schedules} per-second schedules x {seconds:g} s"
    return [
        Metric("schedule", f"{name}, p50", "ms", column(ours, "p50_ms"), higher_is_better=False),
        Metric(
            "schedule",
            f"{name}, p99",
            "ms",
            column(ours, "p99_ms"),
            higher_is_better=False,
            target=Target("max_value", 250.0),
        ),
        Metric("schedule", f"{name}, max", "ms", column(ours, "max_ms"), higher_is_better=False),
        Metric(
            "schedule",
            f"scheduler RSS, {count:,} schedules",
            "MB",
            column(memory, "rss_mb"),
            higher_is_better=False,
            target=Target("max_value", 100.0),
            note=(
                f"same process with no schedules: {baseline[0]['rss_mb']:.1f} MB; "
                f"peak (VmHWM) with {count:,}: {max(column(memory, 'peak_mb')):.1f} MB"
            ),
        ),
    ]


def main() -> None:
    """``python -m bench.schedule --hold STORE_URL``: the memory scenario's child."""
    parser = argparse.ArgumentParser(prog="python -m bench.schedule")
    parser.add_argument("--hold", required=True, metavar="STORE_URL")
    parser.add_argument("--namespace", required=True)
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    )
    args = parser.parse_args()
    asyncio.run(_hold(args.hold, args.namespace, args.url))


if __name__ == "__main__":
    main()
