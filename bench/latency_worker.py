"""The consumer half of the latency scenario, run in its own process by :mod:`bench.latency`.

``--mode ours`` runs an amqp-jobs Worker whose probe job records
``time.time() - ctx.envelope.enqueued_at``; ``--mode raw`` runs a plain aio-pika
consume-and-ack loop that records ``time.time() - body["t"]``. Probes with ``n < 0``
are warm-up and not recorded. It prints ``ready`` once consuming, and when
``--expected`` probes were recorded (or on SIGTERM) writes the latencies in
milliseconds as JSON to ``--out``, then prints ``done`` and exits.

Usage: ``python -m bench.latency_worker --mode ours --namespace NS --expected 5000 --out F``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import aio_pika

from amqp_jobs import JobApp, JobContext
from bench.common import DEFAULT_URL

QUEUE = "latency"
PROBE_JOB = "bench.latency.probe"


def raw_queue_name(namespace: str) -> str:
    """The queue of the raw latency baseline."""
    return f"{namespace}.raw.latency"


class Recorder:
    """Collects latencies (ms) and signals when the expected number arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies_ms: list[float] = []
        self.done = asyncio.Event()

    def record(self, n: int, seconds: float) -> None:
        """Record probe ``n``'s latency unless it is a warm-up probe."""
        if n < 0:
            return
        self.latencies_ms.append(seconds * 1000)
        if len(self.latencies_ms) >= self.expected:
            self.done.set()


def define_probe(app: JobApp, recorder: Recorder | None) -> None:
    """Register the probe job on ``app`` (publishers pass ``None``: they never run it)."""

    @app.job(name=PROBE_JOB, queue=QUEUE)
    async def probe(ctx: JobContext, n: int) -> None:
        if recorder is not None:
            recorder.record(n, time.time() - ctx.envelope.enqueued_at)


async def run_ours(url: str, namespace: str, recorder: Recorder, concurrency: int) -> None:
    """An amqp-jobs worker on the probe queue until the recorder is done."""
    app = JobApp(url, namespace=namespace, service=f"{namespace}-worker")
    define_probe(app, recorder)
    worker = app.worker([QUEUE], concurrency=concurrency)
    await worker.start()
    print("ready", flush=True)
    try:
        await recorder.done.wait()
    finally:
        await worker.stop(grace_period=5.0)
        await app.close()


async def run_raw(url: str, namespace: str, recorder: Recorder, concurrency: int) -> None:
    """A plain aio-pika consume-and-ack loop on the raw queue until the recorder is done."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=concurrency)
        queue = await channel.get_queue(raw_queue_name(namespace), ensure=True)

        async def consume() -> None:
            async with queue.iterator() as messages:
                print("ready", flush=True)
                async for message in messages:
                    received = time.time()
                    probe = json.loads(message.body)
                    recorder.record(probe["n"], received - probe["t"])
                    await message.ack()
                    if recorder.done.is_set():
                        return

        consumer = asyncio.create_task(consume())
        stopped = asyncio.create_task(recorder.done.wait())
        await asyncio.wait({consumer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (consumer, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await connection.close()


async def main(argv: list[str] | None = None) -> None:
    """Parse arguments, consume until done, write the latencies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ours", "raw"], required=True)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    recorder = Recorder(args.expected)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, recorder.done.set)
    runner = run_ours if args.mode == "ours" else run_raw
    try:
        await runner(args.url, args.namespace, recorder, args.concurrency)
    finally:
        args.out.write_text(json.dumps({"latencies_ms": recorder.latencies_ms}))
        print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
