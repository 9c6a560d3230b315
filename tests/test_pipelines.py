"""Chains against the real RabbitMQ and store: outputs feed inputs, failures stop them."""

from __future__ import annotations

from collections.abc import Callable

import pydantic
import pytest

from amqp_jobs import ConfigurationError, JobApp, JobFailed
from amqp_jobs.pipelines import chain, group
from amqp_jobs.store import JobStore
from tests.helpers import running


class Raw(pydantic.BaseModel):
    rows: list[int]


class Clean(pydantic.BaseModel):
    rows: list[int]
    dropped: int


def define(app: JobApp, fail_load: bool = False) -> tuple[object, object, object]:
    @app.job(name="etl.extract")
    async def extract(source: str) -> Raw:
        return Raw(rows=[int(x) for x in source.split(",")])

    @app.job(name="etl.transform")
    async def transform(data: Raw) -> Clean:
        kept = [r for r in data.rows if r >= 0]
        return Clean(rows=kept, dropped=len(data.rows) - len(kept))

    @app.job(name="etl.load", max_attempts=1)
    async def load(data: Clean) -> int:
        if fail_load:
            raise RuntimeError("warehouse is read-only")
        return sum(data.rows)

    return extract, transform, load


async def test_a_chain_passes_each_output_to_the_next_step(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given extract -> transform -> load
    app = make_app(store=make_store())
    extract, transform, load = define(app)

    # When the chain runs
    async with running(app):
        handle = await chain(
            extract.s({"source": "1,-2,3,4"}),  # type: ignore[attr-defined]
            transform.s(),  # type: ignore[attr-defined]
            load.s(),  # type: ignore[attr-defined]
        ).enqueue()
        total = await handle.result(timeout=15)

    # Then the last output is computed from the first input, and the pipeline is queryable
    assert total == 8
    pipeline = await app.jobs.query(pipeline=handle.id, limit=10)
    assert sorted(j.job for j in pipeline.jobs) == ["etl.extract", "etl.load", "etl.transform"]
    assert {j.state for j in pipeline.jobs} == {"succeeded"}


async def test_a_failing_step_stops_the_chain_and_says_where(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    app = make_app(store=make_store())
    extract, transform, load = define(app, fail_load=True)

    @app.job(name="etl.report")
    async def report(total: int) -> None: ...

    async with running(app):
        handle = await chain(
            extract.s({"source": "5"}),  # type: ignore[attr-defined]
            transform.s(),  # type: ignore[attr-defined]
            load.s(),  # type: ignore[attr-defined]
            report.s(),
        ).enqueue()
        with pytest.raises(JobFailed, match=r"chain stopped at 'etl\.load'"):
            await handle.result(timeout=15)

    steps = await handle.steps()
    assert [s.state if s else None for s in steps] == ["succeeded", "succeeded", "dead", None]


def test_a_chain_whose_types_do_not_fit_fails_when_it_is_built(app: JobApp) -> None:
    extract, transform, load = define(app)
    with pytest.raises(ConfigurationError, match=r"'etl.extract' returns Raw, which lacks"):
        chain(extract.s({"source": "1"}), load.s())  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="give data to the first step only"):
        chain(extract.s({"source": "1"}), transform.s({"rows": []}))  # type: ignore[attr-defined]


async def test_a_group_fans_out_and_its_callback_gets_every_output_once(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a job run for 20 inputs in parallel, and a callback summing their outputs
    app = make_app(store=make_store())
    calls: list[list[int]] = []

    @app.job(name="math.square")
    async def square(n: int) -> int:
        return n * n

    @app.job(name="math.total")
    async def total(squares: list[int]) -> int:
        calls.append(squares)
        return sum(squares)

    # When the group runs on two workers at once
    other = make_app(store=make_store())
    other.registry.update(app.registry)
    async with running(app, concurrency=8), running(other, concurrency=8):
        handle = await group(*(square.s({"n": n}) for n in range(20))).then(total.s()).enqueue()
        result = await handle.result(timeout=20)

    # Then the callback ran once, with every output in member order
    assert result == sum(n * n for n in range(20))
    assert calls == [[n * n for n in range(20)]]


async def test_a_failed_member_means_no_callback(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    app = make_app(store=make_store())
    called: list[object] = []

    @app.job(name="math.risky", max_attempts=1)
    async def risky(n: int) -> int:
        if n == 3:
            raise ValueError("three is bad")
        return n

    @app.job(name="math.collect")
    async def collect(values: list[int]) -> None:
        called.append(values)

    async with running(app):
        handle = await group(*(risky.s({"n": n}) for n in range(5))).then(collect.s()).enqueue()
        with pytest.raises(JobFailed, match="three is bad"):
            await handle.result(timeout=15)
    assert called == []
    with pytest.raises(ConfigurationError, match="must be a list"):
        group(risky.s({"n": 1})).then(risky.s())
