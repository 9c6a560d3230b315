"""``amqp-jobs scheduler module:app`` and ``amqp-jobs schedules list|pause|resume|delete``."""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from typing import Any


def add_commands(commands: Any) -> None:
    """Add the ``scheduler`` and ``schedules`` subcommands to the ``amqp-jobs`` parser."""
    scheduler = commands.add_parser(
        "scheduler", help="fire the app's schedules until SIGTERM/SIGINT (run several for HA)"
    )
    scheduler.add_argument("app", help="the app, as package.module:attribute (needs a store)")
    scheduler.add_argument(
        "--lead", type=float, default=1.0, help="publish each occurrence this many s ahead (1)"
    )
    scheduler.add_argument(
        "--reload-interval", type=float, default=1.0, help="check the store for changes, s (1)"
    )
    scheduler.add_argument(
        "--misfire-grace",
        type=float,
        default=2.0,
        help="occurrences at most this late (s) fire normally; older ones follow misfire= (2)",
    )
    scheduler.add_argument("--id", default=None, help="this scheduler's name in the store")
    scheduler.set_defaults(run=_scheduler)

    schedules = commands.add_parser("schedules", help="list, pause, resume or delete schedules")
    schedules.add_argument("action", choices=["list", "pause", "resume", "delete"])
    schedules.add_argument("name", nargs="?", help="with pause, resume or delete: the schedule")
    schedules.add_argument(
        "--store",
        default=os.environ.get("AMQP_JOBS_STORE"),
        help="the store URL (default AMQP_JOBS_STORE), e.g. sqlite+aiosqlite:///./amqp_jobs.db",
    )
    schedules.add_argument("--app", default=os.environ.get("AMQP_JOBS_APP"), help="module:app")
    schedules.add_argument("--json", action="store_true", help="with list: print JSON")
    schedules.set_defaults(run=_schedules)


async def _scheduler(args: argparse.Namespace) -> None:
    from amqp_jobs.cli import load_app
    from amqp_jobs.scheduling.scheduler import Scheduler

    app = load_app(args.app)
    scheduler = Scheduler(
        app,
        lead=args.lead,
        reload_interval=args.reload_interval,
        misfire_grace=args.misfire_grace,
        scheduler_id=args.id,
    )
    await scheduler.run()


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


async def _schedules(args: argparse.Namespace) -> None:
    from amqp_jobs.cli import _store_of
    from amqp_jobs.scheduling.store import ScheduleStore

    job_store = _store_of(args)
    store = ScheduleStore(job_store)
    try:
        if args.action == "list":
            records = await store.list()
            now = time.time()
            if args.json:
                print(json.dumps([_as_json(record, now) for record in records], indent=2))
                return
            for record in records:
                state = "paused" if record.paused else "active"
                print(
                    f"{record.name}  {state:<6}  {record.schedule.spec.describe()}  "
                    f"{record.schedule.job}  next {_when(record.upcoming(now))}  "
                    f"last {_when(record.last_fired_at)}"
                )
            print(f"{len(records)} schedule(s)")
            return
        if not args.name:
            raise SystemExit(f"error: schedules {args.action} needs a schedule NAME")
        if args.action == "delete":
            await store.delete(args.name)
            print(f"schedule {args.name}: deleted")
            return
        record = await (store.pause if args.action == "pause" else store.resume)(args.name)
        state = "paused" if record.paused else f"active, next {_when(record.upcoming())}"
        print(f"schedule {args.name}: {state}")
    finally:
        await job_store.close()


def _as_json(record: Any, now: float) -> dict[str, Any]:
    schedule = record.schedule
    return {
        "name": record.name,
        "job": schedule.job,
        "queue": schedule.queue,
        **schedule.spec.as_dict(),
        "data": schedule.data,
        "paused": record.paused,
        "origin": record.origin,
        "next_fire_at": _when(record.upcoming(now)),
        "last_fired_at": _when(record.last_fired_at),
    }
