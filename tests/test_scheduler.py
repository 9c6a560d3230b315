"""The scheduler against the real RabbitMQ and store (SQLite and PostgreSQL via make_store).

A worker in the test process runs ``scheduled.tick`` and records, for every run, the job
id and the occurrence (the ``fire_at`` label the scheduler puts on each job), so the
tests count what really ran.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from amqp_jobs import JobApp, JobContext
from amqp_jobs.errors import ConfigurationError
from amqp_jobs.scheduling import (
    Schedule,
    ScheduleExistsError,
    Scheduler,
    ScheduleSpec,
    ScheduleStore,
    Timetable,
    UnknownScheduleError,
    leader_queue,
)
from amqp_jobs.scheduling.store import Claim
from amqp_jobs.store import JobStore
from tests.helpers import running, wait_until

ROOT = Path(__file__).resolve().parent.parent
JOB = "scheduled.tick"


@dataclass(frozen=True)
class Run:
    """One run of the tick job, as the worker saw it."""

    job_id: str
    fire_at: float
    started: float
    n: int


class Recorder:
    """Registers ``scheduled.tick`` in an app and records each run."""

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def install(self, app: JobApp) -> None:
        runs = self.runs

        @app.job(name=JOB, queue="ticks")
        async def tick(ctx: JobContext, n: int = 0) -> None:
            fire_at = datetime.fromisoformat(ctx.envelope.labels["fire_at"]).timestamp()
            runs.append(Run(ctx.job_id, fire_at, time.time(), n))

    def fire_times(self, n: int | None = None) -> list[float]:
        return sorted(r.fire_at for r in self.runs if n is None or r.n == n)


def every_second(name: str, n: int, misfire: str = "once") -> Schedule:
    return Schedule(name, JOB, ScheduleSpec.of(cron="* * * * * *", misfire=misfire), data={"n": n})


@pytest.fixture
async def scheduling(amqp_url: str, namespace: str) -> AsyncIterator[None]:
    """Deletes the namespace's leadership queue after the test."""
    yield
    cleaner = JobApp(amqp_url, namespace=namespace)
    await cleaner.connect()
    await cleaner.transport.delete([leader_queue(cleaner.topology)])
    await cleaner.close()


def seconds_between(low: float, high: float) -> list[float]:
    """Whole seconds in (low, high]."""
    return [float(s) for s in range(math.floor(low) + 1, math.floor(high) + 1)]


# --- the store API ------------------------------------------------------------------------


async def test_schedule_store_add_change_pause_resume_delete_and_claims(
    make_store: Callable[[], JobStore],
) -> None:
    store = ScheduleStore(make_store())
    nightly = Schedule(
        "nightly",
        "maintenance.cleanup",
        ScheduleSpec.of(cron="0 0 * * *", timezone="Europe/Berlin"),
        data={"days": 30},
        labels={"team": "ops"},
    )
    # Given a stored schedule
    record = await store.add(nightly)
    assert record.schedule == nightly and not record.paused
    with pytest.raises(ScheduleExistsError, match="'nightly' already exists"):
        await store.add(nightly)
    fingerprint = await store.fingerprint()
    # an unchanged upsert (a scheduler syncing code at start) changes nothing
    assert (await store.upsert(nightly, origin="store")).updated_at == record.updated_at
    assert await store.fingerprint() == fingerprint

    # When paused, it has no next fire time, and a sync of the code keeps it paused
    paused = await store.pause("nightly")
    assert paused.paused and paused.upcoming() is None
    assert await store.fingerprint() != fingerprint
    assert (await store.upsert(nightly)).paused
    resumed = await store.resume("nightly")
    now = time.time()
    assert resumed.upcoming(now) == Timetable(nightly.spec).next_after(now)

    # Changes: cron replaces every and back; bad values fail with the reason
    changed = await store.change("nightly", cron="0 3 * * *", data={"days": 7})
    assert changed.schedule.spec.cron == "0 3 * * *" and changed.schedule.data == {"days": 7}
    assert changed.schedule.spec.timezone == "Europe/Berlin"
    interval = await store.change("nightly", every=60)
    assert interval.schedule.spec.cron is None and interval.schedule.spec.every == 60
    with pytest.raises(ConfigurationError, match="bad cron expression"):
        await store.change("nightly", cron="0 25 * * *")
    with pytest.raises(ConfigurationError, match="unknown schedule setting"):
        await store.change("nightly", crom="0 0 * * *")
    with pytest.raises(UnknownScheduleError, match="no schedule named 'nope'"):
        await store.pause("nope")

    # Claims: the insert decides, once; a stale version or a paused schedule is refused
    current = interval  # the bad changes above were refused before writing
    claim = Claim("nightly", 1_000.0, "job-1", current.updated_at, next_fire_at=1_060.0)
    other = ScheduleStore(make_store())
    first, second = await asyncio.gather(store.claim([claim], by="a"), other.claim([claim], by="b"))
    assert sorted([len(first), len(second)]) == [0, 1]
    assert (await store.get("nightly")).last_fired_at == 1_000.0  # type: ignore[union-attr]
    stale = Claim("nightly", 1_060.0, "job-2", current.updated_at - 1)
    assert await store.claim([stale], by="a") == []
    paused_version = (await store.pause("nightly")).updated_at
    assert await store.claim([Claim("nightly", 1_120.0, "job-3", paused_version)], by="a") == []
    assert [c.job_id for c in await store.unpublished(since=0)] == ["job-1"]
    await store.mark_published([claim])
    assert await store.unpublished(since=0) == []
    assert [(f[0], f[1]) for f in await store.fires("nightly")] == [(1_000.0, "job-1")]

    # Deleting lowers the count (a reload notices) and forgets the claims
    await store.add(Schedule("a-first", JOB, ScheduleSpec.of(every=300)))
    assert [r.name for r in await store.list()] == ["a-first", "nightly"]
    before = await store.fingerprint()
    await store.delete("nightly")
    assert (await store.fingerprint())[0] == before[0] - 1
    assert await store.get("nightly") is None and await store.fires("nightly") == []
    with pytest.raises(UnknownScheduleError):
        await store.delete("nightly")


async def test_repeat_stores_one_schedule_under_a_stable_name(
    make_store: Callable[[], JobStore],
) -> None:
    app = JobApp(namespace="t_repeat", store=make_store())

    @app.job(name="maintenance.cleanup")
    async def cleanup(days: int = 1) -> None: ...

    # Given the same queue-first repeat twice
    first = await app.queue("default").add(
        "maintenance.cleanup", {"days": 3}, repeat={"cron": "0 0 * * *"}
    )
    second = await app.queue("default").add(
        "maintenance.cleanup", {"days": 3}, repeat={"cron": "0 0 * * *"}
    )
    other = await app.queue("default").add(
        "maintenance.cleanup", {"days": 4}, repeat={"cron": "0 0 * * *"}
    )
    named = await app.queue("default").add(
        "maintenance.cleanup", repeat={"every": 300, "name": "tidy"}, priority=2
    )
    # Then one schedule per distinct repeat, and a given name is used as is
    assert first.name == second.name != other.name
    assert first.name.startswith("default:maintenance.cleanup:")
    stored = {r.name: r.schedule for r in await ScheduleStore(app.store).list()}  # type: ignore[arg-type]
    assert sorted(stored) == sorted([first.name, other.name, "tidy"])
    assert stored[first.name].queue == "default" and stored[first.name].data == {"days": 3}
    assert stored["tidy"].spec.every == 300 and stored["tidy"].priority == 2
    assert named.name == "tidy"


# --- two schedulers, one per-second schedule, 60 s -------------------------------------------


@pytest.mark.slow
async def test_two_schedulers_fire_each_second_exactly_once_for_60_seconds(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], scheduling: None
) -> None:
    # Given a worker and two schedulers, each with its own connections and store engine
    recorder = Recorder()
    worker_app = make_app(store=make_store())
    recorder.install(worker_app)
    scheduler_apps = [make_app(store=make_store()) for _ in range(2)]
    for app in scheduler_apps:
        Recorder().install(app)
    await ScheduleStore(scheduler_apps[0].store).add(every_second("pulse", 7))  # type: ignore[arg-type]
    schedulers = [Scheduler(app) for app in scheduler_apps]
    async with running(worker_app, queues=["ticks"], concurrency=8):
        for scheduler in schedulers:
            await scheduler.start()
        # When they run for a counted minute
        start = math.ceil(time.time()) + 2.0
        end = start + 60
        await asyncio.sleep(end - time.time() + 1.0)
        claims = await ScheduleStore(worker_app.store).fires("pulse")  # type: ignore[arg-type]
        for scheduler in sorted(schedulers, key=lambda s: s.is_leader):  # the leader last
            await scheduler.stop()
        await asyncio.sleep(1.5)  # jobs published ahead of the stop still run
    # Then every second of it ran exactly once, each with its own job id
    counted = [run for run in recorder.runs if start <= run.fire_at < end]
    assert sorted(run.fire_at for run in counted) == [start + k for k in range(60)]
    assert len({run.job_id for run in counted}) == 60
    assert len({run.job_id for run in recorder.runs}) == len(recorder.runs)
    # and one scheduler claimed and fired them all (the other never held the token)
    assert len({claim[2] for claim in claims if start <= claim[0] < end}) == 1
    assert sorted(bool(s.stats.fired) for s in schedulers) == [False, True]
    assert all(run.n == 7 for run in counted)


# --- SIGKILL of the leader ------------------------------------------------------------------


def start_scheduler_process(namespace: str, store_url: str, name: str) -> subprocess.Popen[bytes]:
    """``amqp-jobs scheduler tests.apps.scheduled:app --id NAME`` in its own process."""
    env = {
        **os.environ,
        "AMQP_JOBS_TEST_NAMESPACE": namespace,
        "AMQP_JOBS_TEST_STORE": store_url,
        "AMQP_JOBS_TEST_MISFIRE": "all",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amqp_jobs.cli",
            "scheduler",
            "tests.apps.scheduled:app",
            *("--id", name),
        ],
        env=env,
        cwd=ROOT,
    )


@pytest.mark.slow
async def test_killed_leader_is_replaced_within_5s_without_missed_or_doubled_fires(
    make_app: Callable[..., JobApp], namespace: str, tmp_path: Path, scheduling: None
) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path}/scheduled.db"
    recorder = Recorder()
    # The worker shares the store, so a re-published occurrence (same id and key) is
    # recognised and dropped instead of running twice.
    worker_app = make_app(store=store_url)
    recorder.install(worker_app)
    schedules = ScheduleStore(JobStore(store_url))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with running(worker_app, queues=["ticks"], concurrency=8):
            # Given scheduler "a" leading, and "b" waiting
            processes.append(start_scheduler_process(namespace, store_url, "a"))
            await wait_until(lambda: len(recorder.runs) >= 2, timeout=20)
            processes.append(start_scheduler_process(namespace, store_url, "b"))
            await asyncio.sleep(3)
            assert {fire[2] for fire in await schedules.fires("tick")} == {"a"}

            # When "a" is killed
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait()
            killed_at = time.time()

            async def b_fired() -> bool:
                return any(fire[2] == "b" for fire in await schedules.fires("tick"))

            await wait_until(b_fired, timeout=10)
            await asyncio.sleep(4)
            processes[1].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(processes[1].wait, 20) == 0
            await asyncio.sleep(1.5)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        await schedules.store.close()
    # Then "b" took over within 5 s
    claims = await ScheduleStore(JobStore(store_url)).fires("tick")
    b_claimed = [fire[0] for fire in claims if fire[2] == "b"]
    first_b_fire = min(b_claimed)
    assert first_b_fire - killed_at <= 5.0
    # and every second from the first to the last ran exactly once (misfire="all")
    fire_times = recorder.fire_times()
    assert fire_times == [fire_times[0] + k for k in range(len(fire_times))]
    assert max(Counter(run.job_id for run in recorder.runs).values()) == 1
    assert fire_times[-1] - fire_times[0] >= 8
    # and every claim ran (none was lost between claim and publish)
    assert sorted(fire[0] for fire in claims) == fire_times


# --- changes at run time ------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amqp_jobs.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_add_change_pause_resume_delete_at_run_time(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], scheduling: None
) -> None:
    """Through the store API; on SQLite pause, list and delete go through the CLI too
    (the PostgreSQL fixture's schema is an engine option a URL cannot carry)."""
    recorder = Recorder()
    app = make_app(store=make_store())
    recorder.install(app)
    assert app.store is not None
    via_cli = app.store.dialect == "sqlite"
    schedules = ScheduleStore(app.store)
    scheduler = Scheduler(app, lead=0.5)
    settle = scheduler.reload_interval + scheduler.lead + 1.0  # reload, lead, the 1 s grid
    async with running(app, queues=["ticks"], concurrency=8):
        await scheduler.start()
        await wait_until(lambda: scheduler.is_leader, timeout=10)

        # Added at run time: it fires without a restart
        await schedules.add(Schedule("pulse", JOB, ScheduleSpec.of(every=1), data={"n": 1}))
        await wait_until(lambda: len(recorder.fire_times(1)) >= 2, timeout=8)

        # Changed: the new data arrives with the next occurrences
        changed_at = time.time()
        await schedules.change("pulse", data={"n": 2})
        await wait_until(lambda: recorder.fire_times(2), timeout=8)
        assert recorder.fire_times(2)[0] - changed_at <= settle
        assert all(fire <= changed_at + settle for fire in recorder.fire_times(1))

        # Paused: nothing fires after it took effect
        if via_cli:
            code, output = await run_cli("schedules", "pause", "pulse", "--store", app.store.url)
            assert code == 0 and "schedule pulse: paused" in output, output
            code, output = await run_cli("schedules", "list", "--store", app.store.url)
            assert code == 0 and "pulse  paused" in output and "next -" in output, output
        else:
            await schedules.pause("pulse")
        paused_at = time.time()
        await asyncio.sleep(settle + 1.5)
        assert all(fire <= paused_at + settle for fire in recorder.fire_times())
        ran_before_resume = len(recorder.runs)

        # Resumed: it goes on from the next occurrence, the paused stretch is not caught up
        resumed_at = time.time()
        await schedules.resume("pulse")
        await wait_until(lambda: len(recorder.runs) >= ran_before_resume + 2, timeout=8)
        resumed_fires = recorder.fire_times()[ran_before_resume:]
        assert resumed_fires[0] >= resumed_at - scheduler.misfire_grace - 1
        if via_cli:
            code, output = await run_cli("schedules", "list", "--store", app.store.url)
            assert code == 0 and "pulse  active" in output and "1 schedule(s)" in output, output

        # Deleted: it stops
        if via_cli:
            code, output = await run_cli("schedules", "delete", "pulse", "--store", app.store.url)
            assert code == 0 and "deleted" in output, output
            code, output = await run_cli("schedules", "delete", "pulse", "--store", app.store.url)
            assert code != 0 and "no schedule named 'pulse'" in output, output
        else:
            await schedules.delete("pulse")
        deleted_at = time.time()
        await asyncio.sleep(settle + 1.5)
        assert all(fire <= deleted_at + settle for fire in recorder.fire_times())
        await scheduler.stop()
    assert max(Counter(run.job_id for run in recorder.runs).values()) == 1


# --- misfires after a scheduler was down -------------------------------------------------------


async def test_misfire_policies_after_the_scheduler_was_down(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], scheduling: None
) -> None:
    recorder = Recorder()
    app = make_app(store=make_store())
    recorder.install(app)
    schedules = ScheduleStore(app.store)  # type: ignore[arg-type]
    policies = {"once": 1, "all": 2, "skip": 3}
    for policy, n in policies.items():
        await schedules.add(every_second(f"tick-{policy}", n, misfire=policy))
    async with running(app, queues=["ticks"], concurrency=16):
        # Given a scheduler that ran, then stopped for 6 s
        first = Scheduler(app, misfire_grace=0)
        await first.start()
        await wait_until(lambda: all(len(recorder.fire_times(n)) >= 2 for n in (1, 2, 3)), 15)
        await first.stop()
        last_fired = {}
        for policy in policies:
            record = await schedules.get(f"tick-{policy}")
            assert record is not None
            last_fired[policy] = record.last_fired_at
        await asyncio.sleep(6)
        # When another starts
        second = Scheduler(app, misfire_grace=0)
        await second.start()
        await wait_until(lambda: second.stats.took_over_at is not None, timeout=10)
        await asyncio.sleep(3)
        await second.stop()
        await asyncio.sleep(1.5)
    back = second.stats.took_over_at
    assert back is not None
    gaps: dict[str, list[float]] = {}
    for policy, n in policies.items():
        last = last_fired[policy]
        assert last is not None
        fires = recorder.fire_times(n)
        gaps[policy] = [f for f in fires if last < f <= back]
        after = [f for f in fires if f > back]
        # Each goes on every second after the restart, nothing doubled
        assert after and after == [after[0] + k for k in range(len(after))]
        assert after[0] - back <= 1.0
        assert len(fires) == len(set(fires))
    missed = seconds_between(last_fired["all"] or 0.0, back)
    assert len(missed) >= 4
    # Then "all" fired every missed second, "once" only the latest, "skip" none
    assert gaps["all"] == missed
    assert gaps["once"] == seconds_between(last_fired["once"] or 0.0, back)[-1:]
    assert gaps["skip"] == []
    assert second.stats.caught_up == len(gaps["all"]) + len(gaps["once"])
