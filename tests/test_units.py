"""Pure tests: retry policies, job signatures, envelopes, middleware order."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from amqp_jobs import (
    Abort,
    ConfigurationError,
    EnvelopeError,
    JobApp,
    JobContext,
    Middleware,
    Retry,
    RetryPolicy,
)
from amqp_jobs.envelope import Envelope, decode, encode
from amqp_jobs.ids import new_job_id
from tests.helpers import running, wait_until


def test_exponential_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1, max_delay=5, jitter=0)
    assert [policy.delay_after(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_only_shortens_the_delay_within_its_fraction() -> None:
    policy = RetryPolicy(backoff="fixed", base_delay=10, jitter=0.2)
    delays = {policy.delay_after(1) for _ in range(200)}
    assert all(8 <= d <= 10 for d in delays) and len(delays) > 1


def test_custom_backoff_and_retry_delay_override() -> None:
    policy = RetryPolicy(backoff=lambda attempt: attempt * 3.0, jitter=0)
    assert policy.delay_after(2) == 6.0
    assert policy.delay_after(2, Retry(delay=0.5)) == 0.5


def test_which_errors_retry() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(ConnectionError,))
    assert policy.should_retry(ConnectionError(), 1)
    assert not policy.should_retry(ConnectionError(), 3)  # attempts used up
    assert not policy.should_retry(KeyError(), 1)
    assert policy.should_retry(Retry(), 1)
    assert not policy.should_retry(Abort("no"), 1)
    with pytest.raises(ConfigurationError, match="backoff must be"):
        RetryPolicy(backoff="linear")  # type: ignore[arg-type]


def test_job_ids_are_time_sortable_uuid7() -> None:
    ids = [new_job_id() for _ in range(5)]
    assert all(i[14] == "7" for i in ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_envelopes_round_trip_and_bad_ones_say_what_is_wrong() -> None:
    envelope = Envelope(job="a.b", queue="default", data={"x": [1, "2"]}, labels={"k": "v"})
    assert decode(encode(envelope)) == envelope
    with pytest.raises(EnvelopeError, match="queue: Field required"):
        decode(b'{"job": "a"}')
    with pytest.raises(EnvelopeError, match="exceeds the limit"):
        decode(b"x" * 20, max_bytes=10)


class Out(pydantic.BaseModel):
    total: int


def test_schemas_come_from_annotations(app: JobApp) -> None:
    @app.job(name="calc.add")
    async def add(ctx: JobContext, a: int, b: int = 2) -> Out:
        return Out(total=a + b)

    definition = app.get_job("calc.add")
    assert definition.takes_context and definition.unpack_input
    assert definition.input_schema()["required"] == ["a"]
    assert definition.output_schema() == Out.model_json_schema()
    with pytest.raises(ConfigurationError, match="needs a type annotation"):

        @app.job
        async def untyped(x) -> None:  # type: ignore[no-untyped-def]
            ...


async def test_middleware_hooks_run_in_order_and_in_reverse_after(app: JobApp) -> None:
    # Given two middlewares recording every hook call
    calls: list[str] = []

    class Recorder(Middleware):
        job_options = frozenset({"tracked"})

        def __init__(self, name: str) -> None:
            self.name = name

        async def before_publish(self, envelope: Envelope) -> Envelope:
            calls.append(f"{self.name}.before_publish")
            return envelope.model_copy(update={"labels": {**envelope.labels, self.name: "1"}})

        async def after_publish(self, envelope: Envelope) -> None:
            calls.append(f"{self.name}.after_publish")

        async def before_process(self, ctx: JobContext) -> None:
            calls.append(f"{self.name}.before_process")

        async def after_process(self, ctx: JobContext, result: Any, error: Any) -> None:
            calls.append(f"{self.name}.after_process:{result}:{ctx.options['tracked']}")

    app.add_middleware(Recorder("a"))
    app.add_middleware(Recorder("b"))
    seen_labels: list[dict[str, str]] = []

    @app.job(tracked=True)
    async def job(ctx: JobContext) -> int:
        seen_labels.append(ctx.envelope.labels)
        return 42

    # When a job is published and processed
    async with running(app):
        await job.enqueue()
        await wait_until(lambda: len(calls) == 8)

    # Then before-hooks ran in order, after-hooks in reverse, and changes travelled
    publish_hooks = [c for c in calls if "publish" in c]
    process_hooks = [c for c in calls if "process" in c]
    assert publish_hooks == [
        "a.before_publish",
        "b.before_publish",
        "b.after_publish",
        "a.after_publish",
    ]
    assert process_hooks == [
        "a.before_process",
        "b.before_process",
        "b.after_process:42:True",
        "a.after_process:42:True",
    ]
    assert seen_labels == [{"a": "1", "b": "1"}]


async def test_reconnects_back_off_exponentially_and_reset_once_connected() -> None:
    from yarl import URL

    from amqp_jobs.transport.amqp import BackoffRobustConnection

    # Given a robust connection that is not connected, with a 0.5 s base interval
    connection = BackoffRobustConnection(
        URL("amqp://guest:guest@127.0.0.1/"), reconnect_interval=0.5
    )

    # When aio-pika asks for the wait after each failed attempt
    waits = [connection.reconnect_interval for _ in range(10)]

    # Then each wait doubles (with up to 20% jitter below), capped at 30 s
    expected = [min(0.5 * 2**n, 30.0) for n in range(10)]
    assert all(0.8 * e <= w <= e for w, e in zip(waits, expected, strict=True))

    # And once connected, the base interval is used again
    connection.connected.set()
    assert connection.reconnect_interval == 0.5
    connection.connected.clear()
    assert 0.4 <= connection.reconnect_interval <= 0.5
