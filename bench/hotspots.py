"""Profile amqp-jobs' hot paths with cProfile: where a publish or a drained job spends time.

Usage: ``python -m bench.hotspots [enqueue|many|drain ...] [--jobs N] [--top K]``.
Each case runs once against the broker in a fresh namespace (deleted afterwards)
and prints the ``top`` functions by internal and by cumulative time. Not part of
``python -m bench``: profiling slows everything down, so its numbers are not results.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
from collections.abc import Awaitable, Callable

from amqp_jobs import JobApp
from bench.common import DEFAULT_URL, scenario_app, unique_namespace
from bench.drain import Countdown

QUEUE = "hotspots"
JOB = "bench.hotspots.noop"


async def profile_case(case: str, url: str, jobs: int) -> cProfile.Profile:
    """Run ``case`` once under cProfile (set-up and clean-up not profiled)."""
    profiler = cProfile.Profile()
    async with scenario_app(url, unique_namespace(f"hot_{case}")) as app:
        countdown = Countdown()

        @app.job(name=JOB, queue=QUEUE)
        async def noop(n: int) -> None:
            countdown.hit()

        await app.client.ensure_queue(QUEUE)

        async def enqueue() -> None:
            for n in range(jobs):
                await noop.enqueue({"n": n})

        async def many() -> None:
            await app.enqueue_many([(JOB, {"n": n}) for n in range(jobs)])

        async def drain() -> None:
            countdown.reset(jobs)
            worker = app.worker([QUEUE], concurrency=200)
            await worker.start()
            await countdown.done.wait()
            await worker.stop()

        if case == "drain":
            await app.enqueue_many([(JOB, {"n": n}) for n in range(jobs)])
        body: Callable[[], Awaitable[None]] = {"enqueue": enqueue, "many": many, "drain": drain}[
            case
        ]
        profiler.enable()
        await body()
        profiler.disable()
        await _empty(app)
    return profiler


async def _empty(app: JobApp) -> None:
    await app.transport.purge(app.topology.queue_name(QUEUE))


def report(profiler: cProfile.Profile, top: int) -> str:
    """The ``top`` functions by internal time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    """Profile the chosen cases and print their reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=["enqueue", "many", "drain"])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    for case in args.cases:
        profiler = asyncio.run(profile_case(case, args.url, args.jobs))
        print(f"===== {case} ({args.jobs} jobs) =====")
        print(report(profiler, args.top))


if __name__ == "__main__":
    main()
