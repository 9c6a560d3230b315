"""Crypto: the per-job cost of signing, verifying, sealing and opening, in microseconds.

``python -m bench.crypto [--rounds 7] [--iterations 5000]``

A typical job: a ~200-byte JSON payload for a user of a tenant. Each operation runs
``iterations`` times per round; the figure is the median over ``rounds`` of the mean
time per operation. "plain" signs the envelope with its payload in clear, "sealed" the
envelope carrying the sealed payload (what is signed when both features are on).
"cached user key" is a :meth:`UserKeys.get` served from the cache, as a worker does per
job (the store is a SQLite file in a temporary folder, read once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pydantic_core

from amqp_jobs.envelope import Envelope, decode, encode
from amqp_jobs.security import (
    Keyring,
    MasterKey,
    SigningKey,
    UserContext,
    UserKeys,
    associated_data,
    open_json,
    seal_json,
    sign_envelope,
    verify_envelope,
)
from amqp_jobs.store import JobStore

PAYLOAD = {
    "invoice_id": "inv_2026_000123",
    "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
    "lines": [{"sku": "WID-1", "quantity": 3, "price": "9.99"}],
    "currency": "EUR",
    "send_copy_to_accountant": True,
}


def _time_sync(operation: Callable[[], object], iterations: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            operation()
        samples.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(samples)


async def _time_async(
    operation: Callable[[], Awaitable[object]], iterations: int, rounds: int
) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            await operation()
        samples.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(samples)


async def measure(iterations: int, rounds: int) -> list[tuple[str, float]]:
    """(operation, median microseconds per job) for every operation."""
    key = SigningKey.generate("billing-1")
    keyring = Keyring([key.public_key()])
    user = UserContext(user_id="u-1842", tenant="acme", tier="pro")
    plain = Envelope(job="send_invoice", queue="billing", data=PAYLOAD, user=user.to_wire())
    user_key = os.urandom(32)
    aad = associated_data(plain.id, plain.job, user.user_id, user.tenant)
    sealed_payload = seal_json(PAYLOAD, user_key, 1, aad)
    sealed = plain.model_copy(update={"data": None, "sealed": sealed_payload})
    signed_plain = decode(encode(sign_envelope(plain, key)))
    signed_sealed = decode(encode(sign_envelope(sealed, key)))

    with tempfile.TemporaryDirectory() as folder:
        store = JobStore(f"sqlite+aiosqlite:///{Path(folder) / 'keys.db'}")
        keys = UserKeys(store, MasterKey.generate())
        await keys.current(user.user_id, user.tenant)
        cached = await _time_async(
            lambda: keys.get(user.user_id, user.tenant, 1), iterations, rounds
        )
        await store.close()

    operations: list[tuple[str, Callable[[], object]]] = [
        ("sign (plain envelope)", lambda: sign_envelope(plain, key)),
        ("verify (plain envelope)", lambda: verify_envelope(signed_plain, keyring)),
        ("encrypt (seal_json payload)", lambda: seal_json(PAYLOAD, user_key, 1, aad)),
        ("decrypt (open_json payload)", lambda: open_json(sealed_payload, user_key, aad)),
        ("sign (sealed envelope)", lambda: sign_envelope(sealed, key)),
        ("verify (sealed envelope)", lambda: verify_envelope(signed_sealed, keyring)),
    ]
    results = [(name, _time_sync(op, iterations, rounds)) for name, op in operations]
    results.append(("cached user key (UserKeys.get)", cached))
    payload_bytes = len(pydantic_core.to_json(PAYLOAD))
    print(
        f"payload {payload_bytes} B of JSON; envelope {len(encode(plain))} B plain, "
        f"{len(encode(signed_plain))} B signed, {len(encode(signed_sealed))} B sealed and signed"
    )
    return results


def main() -> None:
    """Run the measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    results = asyncio.run(measure(args.iterations, args.rounds))
    print(f"{'operation':<34}{'us/job':>10}   (median of {args.rounds} rounds x {args.iterations})")
    for name, micros in results:
        print(f"{name:<34}{micros:>10.1f}")


if __name__ == "__main__":
    main()
