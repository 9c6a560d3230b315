"""The routing policy applied on the real RabbitMQ: tiers, tier workers, tenant queues."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from amqp_jobs import JobApp, JobContext, PublishNackedError
from routing import Policy
from tests.helpers import running, wait_until

TIERS = {
    "free": {"priority": 1},
    "pro": {"priority": 5},
    "enterprise": {"priority": 9},
}


def shared_queue_policy() -> Policy:
    """Every tier in the priority queue "default"; tiers differ by priority."""
    return Policy.from_dict({"tiers": TIERS, "queues": {"default": {}}})


def dedicated_queue_policy(**tenant_queue: Any) -> Policy:
    """One queue per tier, weights 5:2:1; tenants marked dedicated get their own queue."""
    return Policy.from_dict(
        {
            "attributes": ["isolation"],
            "tiers": {
                "free": {"priority": 1, "queue": "free", "weight": 1},
                "pro": {"priority": 5, "queue": "pro", "weight": 2},
                "enterprise": {"priority": 9, "queue": "enterprise", "weight": 5},
            },
            "queues": {
                "free": {},
                "pro": {},
                "enterprise": {},
                "tenant.{tenant}": {"max_length": 100_000, "overflow": "reject-publish"}
                | tenant_queue,
            },
            "rules": [
                {
                    "name": "dedicated-tenants",
                    "match": {"attributes": {"isolation": "dedicated"}},
                    "route": {"queue": "tenant.{tenant}"},
                }
            ],
        }
    )


def register_recorder(app: JobApp, seen: list[dict[str, Any]]) -> Any:
    @app.job(name="work.record")
    async def record(ctx: JobContext, n: int, sleep: float = 0.0) -> None:
        latency = time.time() - ctx.envelope.enqueued_at
        seen.append({"n": n, **(ctx.envelope.user or {}), "latency": latency})
        if sleep:
            await asyncio.sleep(sleep)

    return record


async def test_an_enterprise_job_overtakes_a_free_tier_backlog(
    make_app: Callable[..., JobApp],
) -> None:
    # Given 5,000 free-tier jobs queued in the shared priority queue
    app = make_app(routing=shared_queue_policy())
    started: list[dict[str, Any]] = []
    register_recorder(app, started)
    free = {"user_id": "f", "tier": "free"}
    await app.enqueue_many(
        {"job": "work.record", "data": {"n": n}, "user": free} for n in range(5000)
    )

    # When an enterprise user's job is published last and a worker (concurrency 10) starts
    await app.enqueue("work.record", {"n": -1}, user={"user_id": "e", "tier": "enterprise"})
    async with running(app, concurrency=10):
        await wait_until(lambda: any(s["n"] == -1 for s in started), timeout=30)

    # Then it was among the first 50 jobs started
    position = next(i for i, s in enumerate(started) if s["n"] == -1)
    print("enterprise job started as number", position + 1)
    assert position < 50


async def test_tier_workers_only_receive_their_tiers_jobs(
    make_app: Callable[..., JobApp],
) -> None:
    # Given an enterprise-only worker and a free-tier-only worker, each its own process-like app
    policy = dedicated_queue_policy()
    enterprise_app, free_app, publisher = (make_app(routing=policy) for _ in range(3))
    enterprise_seen: list[dict[str, Any]] = []
    free_seen: list[dict[str, Any]] = []
    register_recorder(enterprise_app, enterprise_seen)
    register_recorder(free_app, free_seen)

    async with (
        running(enterprise_app, tiers=["enterprise"]),
        running(free_app, tiers=["free"]),
    ):
        # When 100 jobs of each tier are published
        await publisher.enqueue_many(
            {"job": "work.record", "data": {"n": n}, "user": {"tier": tier}}
            for n in range(100)
            for tier in ("enterprise", "free")
        )
        await wait_until(lambda: len(enterprise_seen) + len(free_seen) == 200)

    # Then each worker got exactly its own tier's jobs
    assert {s["tier"] for s in enterprise_seen} == {"enterprise"} and len(enterprise_seen) == 100
    assert {s["tier"] for s in free_seen} == {"free"} and len(free_seen) == 100


async def test_a_worker_serving_several_tiers_consumes_by_their_weights(
    make_app: Callable[..., JobApp],
) -> None:
    # Given 2,000 jobs queued in each tier queue (weights enterprise 5 : pro 2 : free 1)
    app = make_app(routing=dedicated_queue_policy())
    seen: list[dict[str, Any]] = []
    register_recorder(app, seen)
    await app.enqueue_many(
        {"job": "work.record", "data": {"n": n, "sleep": 0.003}, "user": {"tier": tier}}
        for n in range(2000)
        for tier in ("enterprise", "pro", "free")
    )

    # When one worker serving all three tiers runs 3,000 of them
    async with running(app, tiers=["enterprise", "pro", "free"], concurrency=8):
        await wait_until(lambda: len(seen) >= 3000, timeout=60)

    # Then each tier's share is within 10% of its weight's share, and none starved
    shares = Counter(s["tier"] for s in seen[:3000])
    print("weighted shares of the first 3,000:", dict(shares))
    for tier, weight in (("enterprise", 5), ("pro", 2), ("free", 1)):
        expected = 3000 * weight / 8
        assert abs(shares[tier] - expected) <= 0.1 * expected, shares


async def test_a_tenants_flood_does_not_delay_other_tenants(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a worker and tenants with dedicated queues
    app = make_app(routing=dedicated_queue_policy())
    seen: list[dict[str, Any]] = []
    register_recorder(app, seen)
    tenant_a = {"tier": "pro", "tenant": "a", "isolation": "dedicated"}
    tenant_b = {"tier": "pro", "tenant": "b", "isolation": "dedicated"}

    async with running(app, tiers=["pro"], concurrency=16):
        # When tenant A floods 20,000 jobs and tenant B publishes 50 jobs during the flood
        flood = asyncio.create_task(
            app.enqueue_many(
                {"job": "work.record", "data": {"n": n}, "user": tenant_a} for n in range(20_000)
            )
        )
        await wait_until(lambda: sum(1 for s in seen if s["tenant"] == "a") > 500, timeout=30)
        for n in range(50):
            await app.enqueue("work.record", {"n": n}, user=tenant_b)
            await asyncio.sleep(0.02)
        await wait_until(lambda: sum(1 for s in seen if s["tenant"] == "b") == 50, timeout=30)
        a_done_when_b_finished = sum(1 for s in seen if s["tenant"] == "a")
        await flood

    # Then B's jobs started within 1 s (p99) while A's backlog was still being worked off
    latencies = sorted(s["latency"] for s in seen if s["tenant"] == "b")
    print(
        f"tenant B start latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; A done meanwhile: {a_done_when_b_finished}"
    )
    assert statistics.quantiles(latencies, n=100)[98] < 1.0, latencies[-5:]
    assert a_done_when_b_finished < 20_000


async def test_a_new_tenants_queue_is_consumed_without_a_restart(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a running worker that has never seen tenant "newco"
    app = make_app(routing=dedicated_queue_policy())
    seen: list[dict[str, Any]] = []
    register_recorder(app, seen)
    async with running(app, tiers=["free"]) as worker:
        # When newco's first job is published
        started = time.monotonic()
        await app.enqueue(
            "work.record",
            {"n": 1},
            user={"tier": "free", "tenant": "newco", "isolation": "dedicated"},
        )
        await wait_until(lambda: seen, timeout=5)

    # Then its new queue was consumed within 5 s
    assert time.monotonic() - started < 5
    assert "tenant.newco" in worker._consumed


async def test_a_full_tenant_queue_refuses_only_that_tenants_publisher(
    make_app: Callable[..., JobApp],
) -> None:
    # Given tenant queues limited to 5 jobs (overflow reject-publish), and no worker
    app = make_app(routing=dedicated_queue_policy(max_length=5))
    register_recorder(app, [])
    full = {"tier": "free", "tenant": "full", "isolation": "dedicated"}
    for n in range(5):
        await app.enqueue("work.record", {"n": n}, user=full)

    # When the tenant publishes a sixth job, Then only that publish is refused, clearly
    with pytest.raises(PublishNackedError, match="refused"):
        await app.enqueue("work.record", {"n": 6}, user=full)
    other = {"tier": "free", "tenant": "other", "isolation": "dedicated"}
    await app.enqueue("work.record", {"n": 1}, user=other)
    await app.enqueue("work.record", {"n": 1}, user={"tier": "free"})


async def test_jobs_enqueued_by_a_job_inherit_its_user_and_its_route(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a job that enqueues a follow-up without naming a user
    app = make_app(routing=dedicated_queue_policy())
    seen: list[dict[str, Any]] = []
    register_recorder(app, seen)

    @app.job(name="work.parent")
    async def parent(ctx: JobContext) -> None:
        await app.enqueue("work.record", {"n": 7})

    # When an enterprise user's parent job runs (published inside acting_as)
    async with running(app, tiers=["enterprise"]):
        async with app.acting_as({"user_id": "u1", "tier": "enterprise"}):
            handle = await parent.enqueue()
        await wait_until(lambda: seen, timeout=10)

    # Then the follow-up carried the same user and was routed to the enterprise queue
    assert handle.queue == "enterprise"
    assert seen[0]["user_id"] == "u1" and seen[0]["tier"] == "enterprise"


async def test_a_tenant_routed_to_its_own_vhost_is_isolated_there(
    make_app: Callable[..., JobApp], amqp_url: str, namespace: str
) -> None:
    # Given a virtual host for tenant "bigcorp" and a policy routing bigcorp there
    from amqp_jobs.app import url_for_vhost
    from tests.helpers import rabbitmqctl

    vhost = f"{namespace}_bigcorp"
    assert rabbitmqctl("add_vhost", vhost).returncode == 0
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        policy = Policy.from_dict(
            {
                "queues": {"default": {}},
                "rules": [
                    {
                        "name": "bigcorp-vhost",
                        "match": {"tenant": "bigcorp"},
                        "route": {"vhost": vhost},
                    }
                ],
            }
        )
        publisher = make_app(routing=policy)
        tenant_worker_app = JobApp(url_for_vhost(amqp_url, vhost), namespace=namespace)
        seen: list[dict[str, Any]] = []
        register_recorder(tenant_worker_app, seen)

        # When bigcorp and another tenant publish
        await publisher.enqueue("work.record", {"n": 1}, user={"tenant": "bigcorp"})
        await publisher.enqueue("work.record", {"n": 2}, user={"tenant": "small"})

        # Then bigcorp's job is only in its vhost, where its own worker runs it
        assert await publisher.queue("default").size() == 1  # only "small" in the shared vhost
        async with running(tenant_worker_app):
            await wait_until(lambda: seen, timeout=10)
        assert [(s["n"], s["tenant"]) for s in seen] == [(1, "bigcorp")]
        await tenant_worker_app.close()
    finally:
        await publisher.close()
        rabbitmqctl("delete_vhost", vhost)


async def test_a_group_routes_through_its_own_exchange_to_its_own_queue(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a policy sending the "beta" group through exchange "beta" to queue "beta"
    policy = Policy.from_dict(
        {
            "queues": {"default": {}, "beta": {}},
            "exchanges": {"beta": {"type": "direct", "bindings": [{"queue": "beta"}]}},
            "rules": [
                {
                    "name": "beta",
                    "match": {"group": "beta"},
                    "route": {"exchange": "beta", "queue": "beta"},
                }
            ],
        }
    )
    app = make_app(routing=policy)
    seen: list[dict[str, Any]] = []
    register_recorder(app, seen)

    # When a beta tester's job and a regular user's job are published
    beta = await app.enqueue("work.record", {"n": 1}, user={"group": "beta"})
    regular = await app.enqueue("work.record", {"n": 2}, user={"group": "staff"})

    # Then the beta job went through the beta exchange into the beta queue only
    assert (beta.queue, regular.queue) == ("beta", "default")
    assert await app.queue("beta").size() == 1 and await app.queue("default").size() == 1
    async with running(app, queues=["beta"]):
        await wait_until(lambda: seen, timeout=10)
    assert [s["group"] for s in seen] == ["beta"]
