"""The amqp-jobs command line, run as a user would, against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from amqp_jobs import JobApp
from amqp_jobs.dlq import DeadLetters
from tests.apps import fleet
from tests.helpers import running, wait_until

ROOT = Path(__file__).resolve().parent.parent


def amqp_jobs_cli(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env_namespace = {"AMQP_JOBS_TEST_NAMESPACE": namespace}
    return subprocess.run(
        [sys.executable, "-m", "amqp_jobs.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, **env_namespace},
        timeout=60,
    )


async def test_dlq_list_requeue_and_purge_from_the_command_line(
    make_app: Callable[..., JobApp], namespace: str, tmp_path: Path
) -> None:
    # Given two dead jobs: one whose input never fits, one for a job no worker knows
    app, worker_app = make_app(), make_app()  # the publisher knows no job schemas
    worker_app.registry.update(fleet.app.registry)
    async with running(worker_app) as worker:
        bad = await app.enqueue("fleet.slow", {"seconds": "never", "marker": "x"})
        await app.queue("default").add("nobody.knows", {})
        await wait_until(lambda: worker.stats.dead == 2)

    app_ref = "--app=tests.apps.fleet:app"
    # When the DLQ is listed, Then each dead job shows with its reason
    listing = await asyncio.to_thread(amqp_jobs_cli, namespace, "dlq", "list", app_ref)
    assert listing.returncode == 0, listing.stderr
    assert bad.id in listing.stdout and "input of job 'fleet.slow' is invalid" in listing.stdout
    assert "unknown job 'nobody.knows'" in listing.stdout
    assert "2 dead job(s) shown" in listing.stdout

    # When one is requeued by id, Then it leaves the DLQ (and comes back: still bad input)
    requeued = await asyncio.to_thread(amqp_jobs_cli, namespace, "dlq", "requeue", bad.id, app_ref)
    assert requeued.returncode == 0 and "requeued 1 job(s)" in requeued.stdout
    assert await app.queue("default").size() == 1
    missing = await asyncio.to_thread(
        amqp_jobs_cli, namespace, "dlq", "requeue", "no-such-id", app_ref
    )
    assert missing.returncode != 0 and "no dead job with id no-such-id" in missing.stderr

    # When the DLQ is purged, Then it is empty
    purged = await asyncio.to_thread(amqp_jobs_cli, namespace, "dlq", "purge", app_ref)
    assert "purged 1 dead job(s)" in purged.stdout
    assert await DeadLetters(app).list() == []


def test_topology_prints_every_exchange_queue_and_binding(namespace: str) -> None:
    result = amqp_jobs_cli(namespace, "topology", "tests.apps.fleet:app")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        f"queue    {namespace}.q.default x-queue-type=classic x-queue-version=2 x-max-priority=10 "
        f"x-dead-letter-exchange={namespace}.dead" in lines
    )
    assert f"exchange {namespace}.delay.35 (topic)" in lines
    assert sum(line.startswith("queue    ") for line in lines) == 36 + 2  # levels, DLQ, work


def test_a_bad_app_reference_is_a_clear_error(namespace: str) -> None:
    result = amqp_jobs_cli(namespace, "worker", "tests.apps.fleet")
    assert result.returncode != 0
    assert "must look like 'package.module:app'" in result.stderr


async def test_output_that_does_not_fit_the_return_annotation_is_dead_lettered(
    app: JobApp,
) -> None:
    # Given a job that returns something other than it declares
    @app.job(max_attempts=3)
    async def broken() -> int:
        return "not a number"  # type: ignore[return-value]

    async with running(app) as worker:
        await broken.enqueue()
        await wait_until(lambda: worker.stats.dead == 1)

    # Then it is not retried (the code, not the world, is wrong) and the reason says so
    (dead,) = await DeadLetters(app).list()
    assert "returned a value that does not fit its return annotation" in dead.reason
    assert worker.stats.retried == 0


async def test_a_tier_worker_process_consumes_only_its_tier(
    make_app: Callable[..., JobApp], namespace: str, tmp_path: Path
) -> None:
    # Given `amqp-jobs worker --tier enterprise` running in its own process
    from tests.apps import tiered

    publisher = make_app(routing=tiered.policy)
    log = tmp_path / "tiers.txt"
    log.write_text("")
    await publisher.queue("enterprise").size()
    env = {**__import__("os").environ, "AMQP_JOBS_TEST_NAMESPACE": namespace}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amqp_jobs.cli",
            "worker",
            "tests.apps.tiered:app",
            "--tier",
            "enterprise",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        # When jobs of both tiers are published
        for tier in ("free", "enterprise", "free", "enterprise"):
            await publisher.enqueue("tiered.record", {"path": str(log)}, user={"tier": tier})
        await wait_until(lambda: len(log.read_text().splitlines()) == 2, timeout=20)
        await asyncio.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=20)

    # Then it ran the enterprise jobs only; the free ones wait in their queue
    assert log.read_text().splitlines() == ["enterprise", "enterprise"]
    assert await publisher.queue("free").size() == 2


def test_routes_explain_names_the_rule_and_the_amqp_route(namespace: str) -> None:
    result = amqp_jobs_cli(
        namespace,
        "routes",
        "explain",
        "--policy",
        "routing/examples/routes.toml",
        "--namespace",
        "demo",
        "--job",
        "email.send",
        "--user",
        '{"tier": "pro", "tenant": "acme", "isolation": "dedicated"}',
    )
    assert result.returncode == 0, result.stderr
    assert "rule 'dedicated-tenants' matched" in result.stdout
    assert "queue demo.q.tenant.acme, priority 5" in result.stdout
    bad = amqp_jobs_cli(namespace, "routes", "explain", "--policy", "nope.toml", "--job", "x")
    assert bad.returncode != 0 and "nope.toml" in bad.stderr


def test_topology_of_a_policy_lists_its_exchanges_queues_and_tenant_templates(
    namespace: str,
) -> None:
    result = amqp_jobs_cli(
        namespace, "topology", "--policy", "routing/examples/routes.toml", "--namespace", "demo"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "exchange demo.x.beta (direct)" in lines
    assert "binding  demo.x.beta -> queue demo.q.beta [beta]" in lines
    assert any(line.startswith("tenant   tenant.{tenant}") for line in lines)
    assert len(lines) == len(set(lines))


async def test_topology_apply_declares_what_the_policy_needs(
    make_app: Callable[..., JobApp], namespace: str
) -> None:
    # Given the example policy, When `topology --policy ... --apply` runs in our namespace
    result = await asyncio.to_thread(
        amqp_jobs_cli,
        namespace,
        "topology",
        "--policy",
        "routing/examples/routes.toml",
        "--namespace",
        namespace,
        "--apply",
    )
    assert result.returncode == 0, result.stderr
    assert "declared" in result.stdout.splitlines()[-1]

    # Then its queues exist on the broker (a passive check would fail otherwise)
    from routing import Policy

    app = make_app(routing=Policy.from_file(ROOT / "routing/examples/routes.toml"))
    await app.connect()
    for queue in ("enterprise", "beta"):
        assert await app.transport.message_count(app.topology.queue_name(queue)) == 0
    for queue in ("enterprise", "beta", "default"):  # registered for the fixture's clean-up
        await app.client.ensure_queue(queue)


async def test_jobs_list_show_cancel_and_store_prune_from_the_command_line(
    make_app: Callable[..., JobApp], namespace: str, tmp_path: Path
) -> None:
    # Given a store with one finished and one queued job
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    app = make_app(store=url)

    @app.job(name="cli.echo")
    async def echo(text: str) -> str:
        return text

    async with running(app):
        done = await echo.enqueue({"text": "hi"}, user={"user_id": "ann"})
        assert await done.result(timeout=10) == "hi"
    waiting = await echo.enqueue({"text": "later"}, user={"user_id": "bob"})
    await app.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return amqp_jobs_cli(namespace, *args, "--store", url)

    # When jobs are listed, shown, cancelled, and the store pruned
    listing = await asyncio.to_thread(cli, "jobs", "list", "--user", "ann")
    shown = await asyncio.to_thread(cli, "jobs", "show", done.id)
    cancelled = await asyncio.to_thread(cli, "jobs", "cancel", waiting.id)
    kept = await asyncio.to_thread(cli, "store", "prune", "--older-than", "30d")
    pruned = await asyncio.to_thread(cli, "store", "prune", "--older-than", "0s")
    bad = await asyncio.to_thread(cli, "store", "prune", "--older-than", "soon")

    # Then each says what happened
    assert done.id in listing.stdout and "succeeded" in listing.stdout, listing.stderr
    assert waiting.id not in listing.stdout and "1 job(s)" in listing.stdout
    assert '"result": "hi"' in shown.stdout and "attempt 1: succeeded" in shown.stdout
    assert f"job {waiting.id}: cancelled" in cancelled.stdout
    assert "pruned 0 finished job(s)" in kept.stdout
    assert "pruned 2 finished job(s)" in pruned.stdout
    assert bad.returncode != 0 and "not a duration like 30d" in bad.stderr
