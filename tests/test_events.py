"""Conditional dispatch against the real RabbitMQ: events, rules, outcome triggers and
conditional chain steps."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aio_pika
import pydantic
import pytest

from amqp_jobs import ConfigurationError, JobApp, JobContext
from amqp_jobs.dlq import DeadLetters
from amqp_jobs.pipelines import chain
from amqp_jobs.store import JobStore
from amqp_jobs.triggers import JobFailure, check_all
from tests.helpers import running, wait_until


class Signup(pydantic.BaseModel):
    user_id: str
    plan: str


class Welcome(pydantic.BaseModel):
    user_id: str


def welcome_jobs(app: JobApp, seen: list[dict[str, Any]]) -> None:
    @app.on("user.signed_up", when=lambda e: e.plan == "pro")
    @app.job(name="mail.pro_welcome")
    async def pro_welcome(ctx: JobContext, data: Signup) -> None:
        seen.append({"job": "pro", "user_id": data.user_id, "user": ctx.user})

    @app.job(name="crm.sync")
    async def crm_sync(ctx: JobContext, data: Welcome) -> None:
        seen.append({"job": "crm", "user_id": data.user_id, "event": ctx.envelope.labels})

    app.on(
        "user.*",
        jobs=["crm.sync"],
        when={"plan": {"in": ["pro", "team"]}},
        map={"user_id": "user_id"},
        name="crm-for-paid",
    )


async def test_a_rule_dispatches_only_when_its_condition_holds(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a lambda rule for pro sign-ups and a declarative rule for paid plans
    app = make_app()
    seen: list[dict[str, Any]] = []
    welcome_jobs(app, seen)

    # When three users sign up on different plans
    async with running(app):
        for user_id, plan in (("ann", "pro"), ("bob", "free"), ("cat", "team")):
            await app.emit(
                "user.signed_up",
                {"user_id": user_id, "plan": plan},
                user={"user_id": user_id, "tenant": "acme"},
            )
        await wait_until(lambda: len(seen) >= 3, timeout=10)
        await app.emit("user.signed_up", {"user_id": "dan", "plan": "free"})
        await app.emit("user.signed_up", {"user_id": "eve", "plan": "pro"})
        await wait_until(lambda: len(seen) >= 5, timeout=10)

    # Then only pro got the welcome, pro and team got the CRM sync, and the free users
    # dispatched nothing; the jobs run for the event's user and say which event made them
    pro = sorted(s["user_id"] for s in seen if s["job"] == "pro")
    crm = sorted(s["user_id"] for s in seen if s["job"] == "crm")
    assert pro == ["ann", "eve"]
    assert crm == ["ann", "cat", "eve"]
    ann = next(s for s in seen if s["job"] == "pro" and s["user_id"] == "ann")
    assert ann["user"].user_id == "ann" and ann["user"].tenant == "acme"
    assert next(s["event"] for s in seen if s["job"] == "crm") == {
        "event": "user.signed_up",
        "rule": "crm-for-paid",
    }


async def test_events_wait_in_the_rule_queue_while_no_worker_runs(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a rule whose queue exists (a worker ran once) but no worker running now
    app = make_app()
    seen: list[dict[str, Any]] = []
    welcome_jobs(app, seen)
    async with running(app):
        pass

    # When an event is emitted, then a worker starts
    assert await app.emit("user.signed_up", {"user_id": "late", "plan": "pro"}) is True
    async with running(app):
        await wait_until(lambda: len(seen) >= 2, timeout=10)

    # Then the event was kept and dispatched once per rule
    assert sorted(s["job"] for s in seen) == ["crm", "pro"]


async def test_an_event_no_rule_listens_to_is_reported(make_app: Callable[..., JobApp]) -> None:
    app = make_app()
    assert await app.emit("nobody.listens", {"x": 1}) is False
    with pytest.raises(ConfigurationError, match="wildcards"):
        await app.emit("user.*", {})


async def test_a_failing_condition_is_recorded_for_that_event_and_the_listener_goes_on(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a rule whose condition divides by a field that may be zero
    app = make_app()
    ran: list[int] = []

    @app.on("stock.changed", when=lambda e: 10 / e.count > 1)
    @app.job(name="stock.reorder")
    async def reorder(count: int) -> None:
        ran.append(count)

    # When one event breaks the condition and others do not
    async with running(app) as worker:
        for count in (2, 0, 5):
            await app.emit("stock.changed", {"count": count})
        await wait_until(lambda: len(ran) >= 2, timeout=10)
        await wait_until(lambda: worker.rule_listener and worker.rule_listener.errors == 1)

    # Then the good events dispatched, and the bad one is in the dead-letter queue with why
    assert sorted(ran) == [2, 5]
    dead = await DeadLetters(app).list()
    assert len(dead) == 1
    assert "ZeroDivisionError" in dead[0].reason and "stock.changed" in dead[0].reason

    # And once the rule is fixed, requeueing the event dispatches it
    app.rules[0].condition = lambda e: True
    assert await DeadLetters(app).requeue() == 1
    async with running(app):
        await wait_until(lambda: 0 in ran, timeout=10)


async def test_an_event_whose_data_does_not_fit_the_job_is_dead_lettered(
    make_app: Callable[..., JobApp],
) -> None:
    app = make_app()

    @app.on("user.signed_up")
    @app.job(name="mail.strict")
    async def strict(data: Signup) -> None:
        pass

    async with running(app) as worker:
        await app.emit("user.signed_up", {"user_id": "x"})  # no plan
        await wait_until(lambda: worker.rule_listener and worker.rule_listener.errors == 1)
    dead = await DeadLetters(app).list()
    assert "plan" in dead[0].reason and "cannot dispatch" in dead[0].reason


async def test_a_rule_listens_to_an_existing_topic_exchange(
    make_app: Callable[..., JobApp], amqp_url: str, namespace: str
) -> None:
    # Given the shop's own topic exchange and a rule on it
    app = make_app()
    received: list[dict[str, Any]] = []
    exchange_name = f"{namespace}.shop"
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(exchange_name, "topic", durable=True)

    @app.job(name="orders.invoice")
    async def invoice(order_id: int, total: float) -> None:
        received.append({"order_id": order_id, "total": total})

    app.on(
        "order.created",
        exchange=exchange_name,
        jobs="orders.invoice",
        when={"total": {"gt": 0}},
        map=lambda e: {"order_id": e.id_, "total": e.total},
    )
    try:
        # When the shop publishes plain JSON messages there
        async with running(app):
            for order_id, total in ((1, 9.5), (2, 0.0), (3, 20.0)):
                body = json.dumps({"id_": order_id, "total": total}).encode()
                await exchange.publish(aio_pika.Message(body), routing_key="order.created")
            await wait_until(lambda: len(received) >= 2, timeout=10)
    finally:
        await exchange.delete()
        await connection.close()

    # Then orders with a positive total were invoiced
    assert sorted(r["order_id"] for r in received) == [1, 3]


def test_a_rule_naming_an_unknown_job_or_a_bad_condition_fails_when_defined(
    make_app: Callable[..., JobApp],
) -> None:
    app = make_app()

    @app.job(name="known")
    async def known() -> None:
        pass

    with pytest.raises(ConfigurationError, match="unknown job"):
        app.on("a.b", jobs=["known", "nope"])
    with pytest.raises(ConfigurationError, match="unknown operator"):
        app.on("a.b", jobs="known", when={"plan": {"equals": "pro"}})
    with pytest.raises(ConfigurationError, match="needs a list"):
        app.on("a.b", jobs="known", when={"plan": {"in": "pro"}})
    app.on("a.b", jobs="known", name="r1")
    with pytest.raises(ConfigurationError, match="already defined"):
        app.on("a.c", jobs="known", name="r1")


class Report(pydantic.BaseModel):
    rows: int


async def test_on_success_and_on_failure_dispatch_follow_up_jobs(
    make_app: Callable[..., JobApp],
) -> None:
    # Given a job with an on_success follow-up defined after it, and one with on_failure
    app = make_app()
    notes: list[Any] = []

    @app.job(name="report.build", on_success="report.publish")
    async def build(rows: int) -> Report:
        return Report(rows=rows)

    @app.job(name="report.publish")
    async def publish(data: Report) -> None:
        notes.append(("published", data.rows))

    @app.job(
        name="report.flaky",
        max_attempts=2,
        backoff="fixed",
        backoff_base=0.05,
        on_failure="ops.page",
    )
    async def flaky(rows: int) -> None:
        raise RuntimeError(f"disk full at row {rows}")

    @app.job(name="ops.page")
    async def page(failure: JobFailure) -> None:
        notes.append(("paged", failure))

    # When both run
    async with running(app):
        good = await build.enqueue({"rows": 7})
        bad = await flaky.enqueue({"rows": 3})
        await wait_until(lambda: len(notes) >= 2, timeout=15)

    # Then the success's output fed its follow-up, and the dead job's failure paged once
    assert ("published", 7) in notes
    paged = [n[1] for n in notes if n[0] == "paged"]
    assert len(paged) == 1
    failure = paged[0]
    assert failure.job_id == bad.id and failure.job == "report.flaky"
    assert failure.error_type == "RuntimeError" and "disk full at row 3" in failure.reason
    assert failure.attempts == 2
    assert good.id != bad.id


def test_follow_ups_that_do_not_fit_fail_at_definition_or_worker_start(
    make_app: Callable[..., JobApp],
) -> None:
    app = make_app()

    @app.job(name="needs.report")
    async def needs_report(data: Report) -> None:
        pass

    # A follow-up defined already is checked at once
    with pytest.raises(ConfigurationError, match="not a model"):

        @app.job(name="count.rows", on_success="needs.report")
        async def count_rows() -> int:
            return 1

    # One named before it exists is checked when it is defined
    @app.job(name="early", on_success="later")
    async def early() -> int:
        return 1

    with pytest.raises(ConfigurationError, match="not a model"):

        @app.job(name="later")
        async def later(data: Report) -> None:
            pass

    assert "later" not in app.registry

    # And one never defined stops the worker from starting
    app.registry.pop("early")

    @app.job(name="lonely", on_success="never.defined")
    async def lonely() -> int:
        return 1

    with pytest.raises(ConfigurationError, match=r"unknown job 'never\.defined'"):
        check_all(app)


class Batch(pydantic.BaseModel):
    rows: int


async def test_a_chain_step_whose_condition_fails_is_skipped_and_recorded(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given extract -> load(when rows > 0) -> notify
    app = make_app(store=make_store())
    loaded: list[int] = []

    @app.job(name="b.extract")
    async def extract(rows: int) -> Batch:
        return Batch(rows=rows)

    @app.job(name="b.load")
    async def load(data: Batch) -> Batch:
        loaded.append(data.rows)
        return data

    @app.job(name="b.notify")
    async def notify(data: Batch) -> int:
        return data.rows * 10

    @app.condition
    def big(batch: Batch) -> bool:
        return batch.rows > 100

    async with running(app):
        # When one chain has rows and one has none
        full = await chain(
            extract.s({"rows": 5}), load.s(when={"rows": {"gt": 0}}), notify.s()
        ).enqueue()
        empty = await chain(
            extract.s({"rows": 0}), load.s(when={"rows": {"gt": 0}}), notify.s()
        ).enqueue()
        small = await chain(extract.s({"rows": 5}), load.s(when=big), notify.s()).enqueue()
        assert await full.result(timeout=15) == 50
        assert await empty.result(timeout=15) is None
        assert await small.result(timeout=15) is None

    # Then the empty chain's later steps never ran and are recorded as skipped
    assert loaded == [5]
    steps = await empty.steps()
    assert [s.state if s else None for s in steps] == ["succeeded", "skipped", "skipped"]
    assert "did not hold" in (steps[1].error_message or "")  # type: ignore[union-attr]
    skipped = await app.jobs.query(pipeline=empty.id, state="skipped")
    assert len(skipped.jobs) == 2


def test_a_chain_condition_must_travel_by_name(make_app: Callable[..., JobApp]) -> None:
    app = make_app()

    @app.job(name="c.a")
    async def a(rows: int) -> Batch:
        return Batch(rows=rows)

    @app.job(name="c.b")
    async def b(data: Batch) -> int:
        return 1

    with pytest.raises(ConfigurationError, match=r"registered with @app\.condition"):
        chain(a.s({"rows": 1}), b.s(when=lambda out: True))
    with pytest.raises(ConfigurationError, match="first"):
        chain(a.s({"rows": 1}, when={"rows": 1}), b.s())
    with pytest.raises(ConfigurationError, match="unknown operator"):
        chain(a.s({"rows": 1}), b.s(when={"rows": {"bigger": 1}}))
