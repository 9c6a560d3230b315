"""The ``amqp-jobs`` command: run workers, show the topology, manage the dead-letter queue."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from amqp_jobs.app import JobApp
from amqp_jobs.dlq import DeadLetters
from amqp_jobs.errors import AmqpJobsError
from amqp_jobs.routes import Router
from amqp_jobs.store import JobStore
from amqp_jobs.topology import BindingDecl, Declaration, ExchangeDecl


def load_app(reference: str) -> JobApp:
    """Import ``module:attribute`` and return the :class:`JobApp` it names."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"error: app reference {reference!r} must look like 'package.module:app'")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, JobApp):
        raise SystemExit(f"error: {reference!r} is not a JobApp (found {type(app).__name__})")
    return app


def _app_from(args: argparse.Namespace) -> JobApp:
    if args.app:
        return load_app(args.app)
    return JobApp(args.url, namespace=args.namespace)


async def _worker(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    queues = [q for item in args.queues for q in item.split(",") if q] if args.queues else None
    if args.tier and queues:
        raise SystemExit("error: give --queues or --tier, not both")
    worker = app.worker(
        queues,
        tiers=args.tier or (),
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        grace_period=args.grace,
    )
    try:
        await worker.run()
    finally:
        await app.close()


def _format_declaration(declaration: Declaration) -> str:
    if isinstance(declaration, ExchangeDecl):
        return f"exchange {declaration.name} ({declaration.type})"
    if isinstance(declaration, BindingDecl):
        kind = "exchange" if declaration.to_exchange else "queue"
        return (
            f"binding  {declaration.source} -> {kind} {declaration.destination} "
            f"[{declaration.routing_key}]"
        )
    args = " ".join(f"{k}={v}" for k, v in declaration.arguments.items())
    return f"queue    {declaration.name} {args}"


def _load_policy(path: str) -> Any:
    # The routing package is the policy's own loader; the core only sees its shape.
    from routing import Policy, RoutingError

    try:
        return Policy.from_file(path)
    except (RoutingError, OSError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from None


async def _topology(args: argparse.Namespace) -> None:
    if not args.app and not args.policy:
        raise SystemExit("error: give an app (package.module:app) or --policy FILE")
    app = load_app(args.app) if args.app else JobApp(args.url, namespace=args.namespace)
    router = app.router
    if args.policy:
        router = Router(_load_policy(args.policy), app.topology)
    queues = sorted({d.queue for d in app.registry.values()} | {app.default_queue})
    declarations = app.topology.infrastructure()
    if router is not None:
        declarations += router.static_declarations()
        declarations += [d for q in queues for d in router.declarations_for(q)]
    else:
        declarations += [d for q in queues for d in app.topology.work_queue(q)]
    for line in dict.fromkeys(_format_declaration(d) for d in declarations):
        print(line)
    templates = getattr(router.policy, "tenant_queue_templates", None) if router else None
    for template in templates() if templates else ():
        print(
            f"tenant   {template.name} (declared with each tenant's first job) {template.arguments}"
        )
    if args.apply:
        await app.connect()
        await app.transport.declare(declarations)
        await app.close()
        print(f"declared {len(declarations)} exchanges, queues and bindings")


async def _routes(args: argparse.Namespace) -> None:
    app = load_app(args.app) if args.app else JobApp(args.url, namespace=args.namespace)
    if args.policy:
        policy = _load_policy(args.policy)
    elif app.router is not None:
        policy = app.router.policy
    else:
        raise SystemExit("error: give --policy FILE, or an --app that has a routing policy")
    try:
        user = json.loads(args.user) if args.user else None
        labels = json.loads(args.labels) if args.labels else None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: --user and --labels take JSON objects: {exc}") from None
    queue = args.queue or (
        app.registry[args.job].queue if args.job in app.registry else app.default_queue
    )
    print(policy.explain(args.job, queue, user, labels))
    resolved = Router(policy, app.topology).resolve(args.job, queue, user, labels)
    print(
        f"AMQP: exchange {resolved.exchange or '(default)'!s}, routing key "
        f"{resolved.routing_key}, queue {app.topology.queue_name(resolved.queue)}, "
        f"priority {resolved.priority}"
    )


async def _dlq(args: argparse.Namespace) -> None:
    app = _app_from(args)
    dead = DeadLetters(app)
    try:
        if args.action == "list":
            jobs = await dead.list(limit=args.limit)
            if args.json:
                print(json.dumps([job.__dict__ for job in jobs], indent=2))
            for job in [] if args.json else jobs:
                when = (
                    datetime.fromtimestamp(job.dead_at, UTC).isoformat(timespec="seconds")
                    if job.dead_at
                    else "-"
                )
                print(f"{job.id}  {job.job or '?'}  {job.queue}  {when}  {job.reason}")
            if not args.json:
                print(f"{len(jobs)} dead job(s) shown")
        elif args.action == "requeue":
            if not args.job_id and not args.all:
                raise SystemExit("error: give a job ID to requeue, or --all")
            count = await dead.requeue(None if args.all else args.job_id)
            if args.job_id and count == 0:
                raise SystemExit(f"error: no dead job with id {args.job_id}")
            print(f"requeued {count} job(s)")
        else:
            print(f"purged {await dead.purge()} dead job(s)")
    finally:
        await app.close()


def _store_of(args: argparse.Namespace) -> JobStore:
    if args.store:
        return JobStore(args.store)
    if args.app:
        store = load_app(args.app).store
        if store is not None:
            return store
        raise SystemExit(f"error: the app {args.app} has no job store (JobApp(store=...))")
    raise SystemExit("error: give --store URL or --app module:app (or set AMQP_JOBS_APP)")


def _duration(text: str) -> float:
    """``30d``, ``12h``, ``15m`` or ``90s`` in seconds."""
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    try:
        return float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 30d, 12h, 15m or 90s"
        ) from None


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds") if stamp else "-"


async def _jobs(args: argparse.Namespace) -> None:
    store = _store_of(args)
    try:
        if args.action == "list":
            filters = {
                "user": args.user,
                "tenant": args.tenant,
                "state": args.state,
                "job": args.job,
                "limit": args.limit,
                "cursor": args.cursor,
            }
            page = await store.query(**{k: v for k, v in filters.items() if v is not None})
            for job in page.jobs:
                who = job.user_id or "-"
                print(f"{job.id}  {job.state:<9}  {job.job}  {who}  {_when(job.created_at)}")
            print(
                f"{len(page.jobs)} job(s)"
                + (f"; next page: --cursor {page.cursor}" if page.cursor else "")
            )
            return
        if not args.job_id:
            raise SystemExit(f"error: jobs {args.action} needs a job ID")
        if args.action == "cancel":
            state = await store.request_cancel(args.job_id)
            if state is None:
                raise SystemExit(f"error: no job with id {args.job_id}")
            print(f"job {args.job_id}: {state}")
            return
        record = await store.get(args.job_id)
        if record is None:
            raise SystemExit(f"error: no job with id {args.job_id}")
        print(
            json.dumps(
                {
                    "id": record.id,
                    "job": record.job,
                    "queue": record.queue,
                    "state": record.state,
                    "attempts": record.attempts,
                    "user": record.user_id,
                    "tenant": record.tenant,
                    "created_at": _when(record.created_at),
                    "updated_at": _when(record.updated_at),
                    "labels": dict(record.labels),
                    "result": record.result,
                    "error_type": record.error_type,
                    "error": record.error_message,
                },
                indent=2,
            )
        )
        for attempt in await store.attempts_of(args.job_id):
            print(
                f"attempt {attempt.number}: {attempt.outcome or 'running'} on "
                f"{attempt.worker or '?'} {_when(attempt.started_at)} -> "
                f"{_when(attempt.finished_at)} {attempt.error_type or ''} "
                f"{attempt.error_message or ''}".rstrip()
            )
    finally:
        await store.close()


async def _store(args: argparse.Namespace) -> None:
    store = _store_of(args)
    try:
        removed = await store.prune(older_than=time.time() - args.older_than)
        print(f"pruned {removed} finished job(s)")
    finally:
        await store.close()


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="broker URL when no app (default AMQP_URL)")
    parser.add_argument("--namespace", default="amqp_jobs", help="namespace when no app")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``amqp-jobs`` command."""
    parser = argparse.ArgumentParser(prog="amqp-jobs", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("AMQP_JOBS_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a worker until SIGTERM/SIGINT")
    worker.add_argument("app", help="the app to run, as package.module:attribute")
    worker.add_argument(
        "--queues", "-Q", action="append", help="queues to consume, comma-separated (default: all)"
    )
    worker.add_argument("--concurrency", "-c", type=int, default=64, help="jobs at once")
    worker.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="unacked messages per queue (default: the concurrency)",
    )
    worker.add_argument("--grace", type=float, default=30.0, help="shutdown grace period, s")
    worker.add_argument(
        "--tier", action="append", help="consume what the routing policy gives this tier"
    )
    worker.set_defaults(run=_worker)

    topology = commands.add_parser("topology", help="print the exchanges, queues and bindings")
    topology.add_argument("app", nargs="?", help="package.module:app")
    topology.add_argument("--policy", help="a routing policy file (.toml or .json)")
    topology.add_argument("--apply", action="store_true", help="declare them on the broker")
    _broker_options(topology)
    topology.set_defaults(run=_topology)

    routes = commands.add_parser("routes", help="explain the routing policy")
    routes.add_argument("action", choices=["explain"])
    routes.add_argument("--job", required=True, help="the job name")
    routes.add_argument("--user", help='the user, as JSON: \'{"tier": "pro", "tenant": "acme"}\'')
    routes.add_argument("--labels", help="the job's labels, as JSON")
    routes.add_argument("--queue", help="the job's own queue (default: its registered queue)")
    routes.add_argument("--policy", help="a routing policy file (.toml or .json)")
    routes.add_argument("--app", default=os.environ.get("AMQP_JOBS_APP"), help="module:app")
    _broker_options(routes)
    routes.set_defaults(run=_routes)

    dlq = commands.add_parser("dlq", help="list, requeue or purge the dead-letter queue")
    dlq.add_argument("action", choices=["list", "requeue", "purge"])
    dlq.add_argument("job_id", nargs="?", help="with requeue: the dead job to send back")
    dlq.add_argument("--all", action="store_true", help="with requeue: every dead job")
    dlq.add_argument("--app", default=os.environ.get("AMQP_JOBS_APP"), help="module:app")
    _broker_options(dlq)
    dlq.add_argument("--limit", type=int, default=100)
    dlq.add_argument("--json", action="store_true")
    dlq.set_defaults(run=_dlq)

    jobs = commands.add_parser("jobs", help="list, show or cancel jobs (needs a job store)")
    jobs.add_argument("action", choices=["list", "show", "cancel"])
    jobs.add_argument("job_id", nargs="?", help="with show or cancel: the job")
    jobs.add_argument("--user")
    jobs.add_argument("--tenant")
    jobs.add_argument("--state")
    jobs.add_argument("--job", help="the job name")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--cursor", help="the cursor a previous page printed")
    _store_options(jobs)
    jobs.set_defaults(run=_jobs)

    store = commands.add_parser("store", help="maintain the job store")
    store.add_argument("action", choices=["prune"])
    store.add_argument(
        "--older-than", type=_duration, required=True, help="e.g. 30d: finished jobs older"
    )
    _store_options(store)
    store.set_defaults(run=_store)

    from amqp_jobs.security.cli import add_commands as add_security_commands

    add_security_commands(commands)  # keys, grants, audit

    from amqp_jobs.scheduling.cli import add_commands as add_scheduling_commands

    add_scheduling_commands(commands)  # scheduler, schedules
    return parser


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="the store URL, e.g. sqlite+aiosqlite:///./amqp_jobs.db")
    parser.add_argument("--app", default=os.environ.get("AMQP_JOBS_APP"), help="module:app")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``amqp-jobs`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runner: Any = args.run
    try:
        asyncio.run(runner(args))
    except AmqpJobsError as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
