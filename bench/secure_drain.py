"""Secure: what signing and per-user encryption cost a worker's drain rate.

``jobs`` persistent no-op jobs, each with a user (10 users of one tenant, in turn), are
published with ``enqueue_many`` (not timed); then one worker (``concurrency`` jobs in
flight) drains them, timed from just before ``worker.start()`` until the last job ran,
as in :mod:`bench.drain`. Variants, each its own app, namespace and SQLite store file
(in one temporary folder), run one after the other in every round (ABC...ABC...):

- ``off``: the job store (SQLite, records every job), no security;
- ``sign+encrypt``: the same store, plus Ed25519 signing (the worker verifies every
  envelope) and AES-256-GCM sealing of every payload for its user; audit and replay
  protection off. Target: >= 0.7x ``off`` (issue 6);
- ``everything``: ``sign+encrypt`` plus the hash-chained audit log (start and finish
  entries per job) and replay protection (a store read per job);
- ``no store``: neither store nor security, and ``signing, no store``: signing alone
  without a store (encryption needs one), for the cost of signing on a fast drain.

The per-operation costs of :mod:`bench.crypto` (sign, verify, seal, open, a cached user
key) are measured afterwards in the same process, so one command gives every figure.

``python -m bench.secure_drain --profile [--jobs N]`` instead profiles one drain of the
``sign+encrypt`` variant with cProfile (slower; its times are not results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import pstats
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from amqp_jobs import JobApp
from amqp_jobs.client import EnqueueRequest
from amqp_jobs.security import MasterKey, SigningKey
from amqp_jobs.security.guard import Security
from amqp_jobs.store import JobStore
from bench.common import (
    DEFAULT_URL,
    Metric,
    RoundResult,
    Target,
    delete_everything,
    log,
    unique_namespace,
)
from bench.drain import Countdown

QUEUE = "secure"
JOB = "bench.secure.noop"
USERS = 10
TENANT = "t1"
TARGET_RATIO = 0.7

OFF = "off"
SIGN_ENCRYPT = "sign+encrypt"
EVERYTHING = "everything"
NO_STORE = "no store"
SIGN_NO_STORE = "signing, no store"


@dataclass(frozen=True, slots=True)
class Variant:
    """One configuration of the drained app."""

    name: str
    store: bool
    sign: bool = False
    encrypt: bool = False
    audit: bool = False
    replay_protection: bool = False

    def security(self) -> Security | None:
        """The app's security settings (None when nothing is on)."""
        if not self.sign:
            return None
        key = SigningKey.generate("bench-1")
        return Security(
            signing_key=key,
            trusted_keys=[key.public_key()],
            master_key=MasterKey.generate() if self.encrypt else None,
            encrypt=self.encrypt,
            audit=self.audit,
            replay_protection=self.replay_protection,
        )


VARIANTS = (
    Variant(OFF, store=True),
    Variant(SIGN_ENCRYPT, store=True, sign=True, encrypt=True),
    Variant(EVERYTHING, store=True, sign=True, encrypt=True, audit=True, replay_protection=True),
    Variant(NO_STORE, store=False),
    Variant(SIGN_NO_STORE, store=False, sign=True),
)


def requests(jobs: int) -> list[EnqueueRequest]:
    """``jobs`` no-op jobs, each for one of :data:`USERS` users of one tenant in turn."""
    return [
        EnqueueRequest(JOB, {"n": n}, {"user": {"user_id": f"u{n % USERS}", "tenant": TENANT}})
        for n in range(jobs)
    ]


@contextlib.asynccontextmanager
async def variant_apps(
    url: str, variants: tuple[Variant, ...], countdown: Countdown
) -> AsyncIterator[dict[str, JobApp]]:
    """A connected app per variant (store files in a temporary folder); on exit, every
    queue each app declared is deleted, the apps and stores closed, the folder removed."""
    apps: dict[str, JobApp] = {}
    with tempfile.TemporaryDirectory(prefix="bench_secure_") as folder:
        try:
            for variant in variants:
                slug = "".join(c if c.isalnum() else "_" for c in variant.name)
                store = (
                    JobStore(f"sqlite+aiosqlite:///{Path(folder) / slug}.db")
                    if variant.store
                    else None
                )
                namespace = unique_namespace(f"secure_{slug}")
                app = JobApp(
                    url,
                    namespace=namespace,
                    service=namespace,
                    store=store,
                    security=variant.security(),
                )
                apps[variant.name] = app

                @app.job(name=JOB, queue=QUEUE)
                async def noop(n: int) -> None:
                    countdown.hit()

                await app.connect()
                await app.client.ensure_queue(QUEUE)
            yield apps
        finally:
            for app in apps.values():
                try:
                    await delete_everything(app)
                finally:
                    await app.close()  # closes its store too


async def drain_round(
    app: JobApp, countdown: Countdown, *, jobs: int, concurrency: int, timeout: float
) -> RoundResult:
    """Pre-publish ``jobs`` jobs (not timed), then time one worker draining them."""
    await app.enqueue_many(requests(jobs))
    countdown.reset(jobs)
    worker = app.worker([QUEUE], concurrency=concurrency)
    started = time.perf_counter()
    await worker.start()
    try:
        await asyncio.wait_for(countdown.done.wait(), timeout)
        elapsed = time.perf_counter() - started
    finally:
        await worker.stop(grace_period=10.0)
    left = await app.queue(QUEUE).size()
    if left:
        log(f"secure: {left} messages left in the queue after the round; purging")
        await app.transport.purge(app.topology.queue_name(QUEUE))
    dead = await app.transport.message_count(app.topology.dead_letter_queue)
    if dead:
        raise RuntimeError(f"secure: {dead} jobs were dead-lettered; the round is not valid")
    return {"jobs_per_s": jobs / elapsed, "seconds": elapsed}


async def _retried(run: Callable[[], Awaitable[RoundResult]], label: str) -> RoundResult:
    """One round, retried once after 5 s if it fails (the broker is shared)."""
    try:
        result = await run()
    except Exception as exc:
        log(f"{label}: failed ({type(exc).__name__}: {exc}); retrying the round in 5 s")
        await asyncio.sleep(5)
        result = await run()
    log(f"{label}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return result


async def drain_all(
    url: str, variants: tuple[Variant, ...], *, jobs: int, rounds: int, concurrency: int
) -> dict[str, list[float]]:
    """jobs/s of every variant, every round; the variants alternate within each round."""
    countdown = Countdown()
    timeout = max(120.0, jobs / 50)
    rates: dict[str, list[float]] = {variant.name: [] for variant in variants}
    async with variant_apps(url, variants, countdown) as apps:
        log(f"secure: {jobs} jobs, concurrency {concurrency}, {USERS} users, variants {list(apps)}")
        for number in range(1, rounds + 1):
            for name, app in apps.items():
                result = await _retried(
                    functools.partial(
                        drain_round,
                        app,
                        countdown,
                        jobs=jobs,
                        concurrency=concurrency,
                        timeout=timeout,
                    ),
                    f"secure round {number}/{rounds} {name}",
                )
                rates[name].append(result["jobs_per_s"])
    return rates


async def crypto_metrics(iterations: int, rounds: int) -> list[Metric]:
    """The per-operation costs of :mod:`bench.crypto`, as metrics in microseconds."""
    from bench import crypto

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # its size line goes into the notes instead
        results = await crypto.measure(iterations, rounds)
    sizes = printed.getvalue().strip()
    return [
        Metric(
            "secure",
            name,
            "us",
            [micros],
            higher_is_better=False,
            note=f"median of {rounds} x {iterations} calls; {sizes}" if index == 0 else "",
        )
        for index, (name, micros) in enumerate(results)
    ]


async def run(
    url: str,
    *,
    jobs: int = 20_000,
    rounds: int = 3,
    concurrency: int = 200,
    crypto_iterations: int = 3000,
    crypto_rounds: int = 5,
) -> list[Metric]:
    """Run the secure scenario; return the drain ratios and the per-operation costs."""
    rates = await drain_all(url, VARIANTS, jobs=jobs, rounds=rounds, concurrency=concurrency)
    drained = f"drain {jobs} jobs"
    metrics = [
        Metric(
            "secure",
            f"{drained}, signing+encryption vs off (sqlite store)",
            "jobs/s",
            rates[SIGN_ENCRYPT],
            rates[OFF],
            target=Target("min_ratio", TARGET_RATIO),
            note="raw column = the same drain and store, no security; audit, replay off",
        ),
        Metric(
            "secure",
            f"{drained}, everything vs off (sqlite store)",
            "jobs/s",
            rates[EVERYTHING],
            rates[OFF],
            note="everything = signing, encryption, audit log and replay protection",
        ),
        Metric(
            "secure",
            f"{drained}, signing only vs off (no store)",
            "jobs/s",
            rates[SIGN_NO_STORE],
            rates[NO_STORE],
            note="no store: encryption cannot be on; this is the cost of signing alone",
        ),
    ]
    return metrics + await crypto_metrics(crypto_iterations, crypto_rounds)


async def profile(url: str, jobs: int, concurrency: int, top: int) -> None:
    """Profile one drain of the ``sign+encrypt`` variant (publishing not profiled)."""
    countdown = Countdown()
    variant = next(v for v in VARIANTS if v.name == SIGN_ENCRYPT)
    async with variant_apps(url, (variant,), countdown) as apps:
        app = apps[SIGN_ENCRYPT]
        await app.enqueue_many(requests(jobs))
        countdown.reset(jobs)
        worker = app.worker([QUEUE], concurrency=concurrency)
        profiler = cProfile.Profile()
        profiler.enable()
        started = time.perf_counter()
        await worker.start()
        await asyncio.wait_for(countdown.done.wait(), max(120.0, jobs / 20))
        elapsed = time.perf_counter() - started
        profiler.disable()
        await worker.stop(grace_period=10.0)
    print(f"{jobs} jobs in {elapsed:.2f} s under cProfile ({jobs / elapsed:,.0f} jobs/s)")
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(top)
        print(text.getvalue())


def main() -> None:
    """``python -m bench.secure_drain --profile``: the cProfile run (the scenario itself
    runs with ``python -m bench --only secure``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile a sign+encrypt drain")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    if not args.profile:
        parser.error("run the scenario with `python -m bench --only secure`; --profile here")
    asyncio.run(profile(args.url, args.jobs, args.concurrency, args.top))


if __name__ == "__main__":
    main()
