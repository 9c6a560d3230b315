"""Latency: enqueue-to-start time at a steady publish rate, worker in another process.

Ours: this process enqueues probe jobs with ``app.enqueue`` at ``rate`` jobs/s for
``seconds`` seconds (each publish its own task, fired on schedule so a slow confirm
never delays the next one); a worker process (:mod:`bench.latency_worker`) records
``time.time() - ctx.envelope.enqueued_at`` when each job starts. Raw: the same rate
of confirmed aio-pika publishes carrying ``time.time()`` in the body, consumed by a
plain aio-pika loop in another process. ``warmup`` probes go first and are not counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika

from bench.common import (
    Metric,
    RoundResult,
    Target,
    alternate,
    column,
    declare_raw_queue,
    envelope_size,
    log,
    pad_body,
    percentile,
    raw_connection,
    scenario_app,
    unique_namespace,
)
from bench.latency_worker import PROBE_JOB, QUEUE, define_probe, raw_queue_name

REPO_ROOT = Path(__file__).resolve().parent.parent


async def paced(count: int, rate: float, send: Callable[[int], Awaitable[object]]) -> float:
    """Call ``send(i)`` for i < count as tasks, ``rate`` per second; return the rate kept."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[object]] = []
    for i in range(count):
        wait = start + i / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(send(i)))
    sent_in = loop.time() - start
    await asyncio.gather(*tasks)
    return (count - 1) / sent_in if sent_in > 0 else float("nan")


async def one_round(
    mode: str,
    url: str,
    namespace: str,
    send: Callable[[int], Awaitable[object]],
    *,
    count: int,
    warmup: int,
    rate: float,
    concurrency: int,
) -> RoundResult:
    """Start a worker process, publish warm-up then ``count`` paced probes, collect latencies."""
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        out = Path(folder) / "latencies.json"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.latency_worker",
            f"--mode={mode}",
            f"--url={url}",
            f"--namespace={namespace}",
            f"--expected={count}",
            f"--concurrency={concurrency}",
            f"--out={out}",
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), 60)
            if ready.strip() != b"ready":
                raise RuntimeError(f"latency worker ({mode}) did not start: {ready!r}")
            kept = await paced(warmup + count, rate, lambda i: send(i - warmup))
            try:
                await asyncio.wait_for(process.stdout.readline(), count / rate + 30)
            except TimeoutError:
                log(f"latency ({mode}): worker did not see every probe in time; stopping it")
                process.terminate()
            await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        latencies = json.loads(out.read_text())["latencies_ms"]
    if len(latencies) < count:
        raise RuntimeError(f"latency ({mode}): only {len(latencies)} of {count} probes arrived")
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=math.nan),
        "rate_kept": kept,
        "received": float(len(latencies)),
    }


async def run(
    url: str,
    *,
    rate: float = 500.0,
    seconds: float = 10.0,
    rounds: int = 3,
    warmup: int = 100,
    concurrency: int = 200,
) -> list[Metric]:
    """Run the latency scenario; return p50, p99 and max enqueue-to-start latency in ms."""
    namespace = unique_namespace("latency")
    raw_queue = raw_queue_name(namespace)
    count = round(rate * seconds)
    async with (
        scenario_app(url, namespace, raw_queues=[raw_queue]) as app,
        raw_connection(url) as connection,
    ):
        define_probe(app, None)
        await app.client.ensure_queue(QUEUE)
        await declare_raw_queue(connection, raw_queue, app.topology.work_queue_arguments())
        body_size = envelope_size(app, PROBE_JOB, {"n": count - 1})
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        log(f"latency: {count} probes at {rate:g}/s (+{warmup} warm-up), ns {namespace}")

        async def send_ours(n: int) -> object:
            return await app.enqueue(PROBE_JOB, {"n": n})

        async def send_raw(n: int) -> object:
            body = pad_body(json.dumps({"n": n, "t": time.time()}).encode(), body_size)
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            return await exchange.publish(message, raw_queue, mandatory=True)

        async def round_of(mode: str, send: Callable[[int], Awaitable[object]]) -> RoundResult:
            return await one_round(
                mode,
                url,
                namespace,
                send,
                count=count,
                warmup=warmup,
                rate=rate,
                concurrency=concurrency,
            )

        ours, raw = await alternate(
            rounds,
            lambda _: round_of("ours", send_ours),
            lambda _: round_of("raw", send_raw),
            label="latency",
        )
        await channel.close()
    note = (
        f"{count} probes at {rate:g}/s after {warmup} warm-up; worker in a separate process; "
        f"rate kept: ours {statistics.median(column(ours, 'rate_kept')):.0f}/s"
    )
    name = f"enqueue-to-start at {rate:g}/s"
    return [
        Metric(
            "latency",
            f"{name}, p50",
            "ms",
            column(ours, "p50_ms"),
            column(raw, "p50_ms"),
            higher_is_better=False,
            target=Target("max_value", 2.0),
            note=note,
        ),
        Metric(
            "latency",
            f"{name}, p99",
            "ms",
            column(ours, "p99_ms"),
            column(raw, "p99_ms"),
            higher_is_better=False,
            target=Target("max_value", 10.0),
        ),
        Metric(
            "latency",
            f"{name}, max",
            "ms",
            column(ours, "max_ms"),
            column(raw, "max_ms"),
            higher_is_better=False,
        ),
    ]
