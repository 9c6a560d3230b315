"""What every scenario shares: results, ABAB alternation, namespaces, clean-up, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractConnection

from amqp_jobs import JobApp
from amqp_jobs.envelope import encode
from amqp_jobs.topology import Declaration, ExchangeDecl, QueueDecl

DEFAULT_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")

Direction = Literal["min_ratio", "min_value", "max_value"]
RoundResult = dict[str, float]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for one metric: a floor on ours/raw, or a floor or ceiling on ours."""

    kind: Direction
    value: float

    def describe(self, unit: str) -> str:
        """The target as a short phrase, e.g. ``>= 1.0x raw`` or ``<= 10 ms``."""
        if self.kind == "min_ratio":
            return f">= {self.value:g}x raw"
        sign = ">=" if self.kind == "min_value" else "<="
        return f"{sign} {self.value:g} {unit}"


@dataclass(slots=True)
class Metric:
    """One measured quantity: every round of ours, and of the raw baseline when there is one.

    ``higher_is_better`` only documents the metric's direction; the ratio is always
    ours / raw (for a throughput >= 1 is good, for a latency <= 1 is good).
    """

    scenario: str
    name: str
    unit: str
    ours: list[float]
    raw: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    target: Target | None = None
    note: str = ""

    @property
    def ours_median(self) -> float:
        """Median of ours over the rounds."""
        return statistics.median(self.ours)

    @property
    def raw_median(self) -> float | None:
        """Median of the raw baseline over the rounds, or None without a baseline."""
        return statistics.median(self.raw) if self.raw else None

    @property
    def ratio(self) -> float | None:
        """Ratio of the medians, ours / raw."""
        raw = self.raw_median
        if raw is None or raw == 0:
            return None
        return self.ours_median / raw

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None when there is no target or no baseline)."""
        if self.target is None:
            return None
        if self.target.kind == "min_ratio":
            ratio = self.ratio
            return None if ratio is None else ratio >= self.target.value
        if self.target.kind == "min_value":
            return self.ours_median >= self.target.value
        return self.ours_median <= self.target.value

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with every round's values."""
        return {
            "scenario": self.scenario,
            "metric": self.name,
            "unit": self.unit,
            "ours_median": self.ours_median,
            "raw_median": self.raw_median,
            "ratio_ours_over_raw": self.ratio,
            "higher_is_better": self.higher_is_better,
            "target": self.target.describe(self.unit) if self.target else None,
            "met": self.met,
            "ours_rounds": self.ours,
            "raw_rounds": self.raw,
            "note": self.note,
        }


def log(message: str) -> None:
    """Progress line on stderr (the results table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def unique_namespace(scenario: str) -> str:
    """A fresh namespace for one scenario run, recognisable in ``rabbitmqctl list_queues``."""
    return f"bench_{scenario}_{uuid.uuid4().hex[:8]}"


async def alternate(
    rounds: int,
    ours: Callable[[int], Awaitable[RoundResult]],
    raw: Callable[[int], Awaitable[RoundResult]] | None,
    *,
    label: str,
) -> tuple[list[RoundResult], list[RoundResult]]:
    """Run ``ours`` and ``raw`` alternately (ABAB...) ``rounds`` times each.

    Each callable gets the round number and returns its metrics for that round.
    """
    ours_results: list[RoundResult] = []
    raw_results: list[RoundResult] = []
    for number in range(rounds):
        ours_results.append(await _one(ours, number, f"{label} round {number + 1}/{rounds} ours"))
        if raw is not None:
            raw_results.append(await _one(raw, number, f"{label} round {number + 1}/{rounds} raw "))
    return ours_results, raw_results


async def _one(
    run: Callable[[int], Awaitable[RoundResult]], number: int, label: str
) -> RoundResult:
    """One round; retried once if it fails (the broker is shared and is sometimes restarted)."""
    for attempt in (1, 2):
        try:
            result = await run(number)
        except Exception as exc:
            if attempt == 2:
                raise
            log(f"{label}: failed ({type(exc).__name__}: {exc}); retrying the round in 5 s")
            await asyncio.sleep(5)
            continue
        log(f"{label}: {_brief(result)}")
        return result
    raise AssertionError("unreachable")


def _brief(result: RoundResult) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in result.items())


def column(results: Sequence[RoundResult], key: str) -> list[float]:
    """The values of ``key`` across rounds."""
    return [result[key] for result in results]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def envelope_size(app: JobApp, job: str, data: Any) -> int:
    """Size in bytes of the body amqp-jobs publishes for ``job(data)`` (for equal raw bodies)."""
    from amqp_jobs.envelope import Envelope

    definition = app.registry[job]
    envelope = Envelope(
        job=job,
        queue=definition.queue,
        data=definition.validate_input(data).model_dump(mode="json"),
        publisher=app.service_name,
    )
    return len(encode(envelope))


@contextlib.asynccontextmanager
async def scenario_app(
    url: str,
    namespace: str,
    *,
    raw_queues: Sequence[str] = (),
    raw_exchanges: Sequence[str] = (),
    routing: Any = None,
) -> AsyncIterator[JobApp]:
    """A connected app in ``namespace``; on exit (error or not) deletes everything declared.

    That is the shared infrastructure, the work queue of every registered job and
    every queue the app's client declared, plus the named raw-baseline queues and
    exchanges; then the connection is closed.
    """
    app = JobApp(url, namespace=namespace, service=namespace, routing=routing)
    try:
        await app.connect()
        yield app
    finally:
        try:
            await delete_everything(app, raw_queues=raw_queues, raw_exchanges=raw_exchanges)
        finally:
            await app.close()


async def delete_everything(
    app: JobApp, *, raw_queues: Sequence[str] = (), raw_exchanges: Sequence[str] = ()
) -> None:
    """Delete the app's infrastructure, its work queues and the given raw queues/exchanges."""
    queues = app.client.ready_queues | {d.queue for d in app.registry.values()}
    declarations: list[Declaration] = list(app.topology.infrastructure())
    if app.router is not None:
        declarations += app.router.static_declarations()
    for queue in sorted(queues):
        declarations += app.topology.work_queue(queue)
    declarations += [QueueDecl(name) for name in raw_queues]
    declarations += [ExchangeDecl(name, "direct") for name in raw_exchanges]
    await app.connect()  # reconnects if a failure closed it; no-op otherwise
    await app.transport.delete(declarations)


@contextlib.asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[AbstractConnection]:
    """A plain (non-robust) aio-pika connection for the raw baselines."""
    connection = await aio_pika.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def declare_raw_queue(
    connection: AbstractConnection, name: str, arguments: dict[str, Any]
) -> None:
    """Declare a durable raw-baseline queue with ``arguments`` on a short-lived channel."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    finally:
        await channel.close()


async def purge_raw_queue(connection: AbstractConnection, name: str) -> None:
    """Empty a raw-baseline queue (between rounds)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await channel.get_queue(name, ensure=True)
        await queue.purge()
    finally:
        await channel.close()


async def raw_publish_many(
    connection: AbstractConnection,
    routing_key: str,
    bodies: Sequence[bytes],
    *,
    window: int = 500,
    exchange_name: str = "",
    unique_ids: bool = False,
    **message_options: Any,
) -> None:
    """The raw baseline publisher: confirms on, ``window`` publishes in flight, mandatory.

    ``message_options`` are AMQP properties for every message; ``unique_ids`` gives each
    message its own ``message_id`` (as amqp-jobs does with the job id).
    """
    channel = await connection.channel(publisher_confirms=True)
    try:
        exchange = (
            channel.default_exchange
            if not exchange_name
            else await channel.get_exchange(exchange_name)
        )
        in_flight = asyncio.Semaphore(window)

        async def one(body: bytes) -> None:
            async with in_flight:
                options = dict(message_options)
                if unique_ids:
                    options["message_id"] = str(uuid.uuid4())
                await exchange.publish(
                    aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **options
                    ),
                    routing_key,
                    mandatory=True,
                )

        await asyncio.gather(*(one(body) for body in bodies))
    finally:
        await channel.close()


def pad_body(prefix: bytes, size: int) -> bytes:
    """``prefix`` padded with spaces to ``size`` bytes (raw bodies as big as our envelopes)."""
    return prefix + b" " * max(0, size - len(prefix))
