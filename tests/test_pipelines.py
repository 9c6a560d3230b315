"""Chains against the real RabbitMQ and store: outputs feed inputs, failures stop them."""

from __future__ import annotations

from collections.abc import Callable

import pydantic
import pytest

from amqp_jobs import ConfigurationError, JobApp, JobFailed
from amqp_jobs.pipelines import chain
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
