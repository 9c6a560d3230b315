"""Signed, encrypted jobs that read their user's preferences and write user storage.

Run it with ``python -m examples.statements`` (RabbitMQ at AMQP_URL). It makes throwaway
keys and a SQLite store in a temporary folder; a real deployment loads the signing key
and the master key from its secrets (``SigningKey.from_text(...)``,
``MasterKey.from_env()``) and shares the store between publishers and workers.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from pydantic import BaseModel

from amqp_jobs import JobApp, JobContext
from amqp_jobs.security import MasterKey, SigningKey, UserContext
from amqp_jobs.security.guard import Security


class StatementPreferences(BaseModel):
    """Per-user preferences: how a user wants their statements."""

    date_format: str = "iso"  # "iso" or "german"
    currency_symbol: bool = False


class StatementRequest(BaseModel):
    account: str
    cents: int


def build_app(folder: Path) -> JobApp:
    """The app: every job with a user is signed and encrypted for that user."""
    key = SigningKey.generate("statements-1")
    app = JobApp(
        service="statements",
        namespace="example_statements",
        store=f"sqlite+aiosqlite:///{folder}/jobs.db",
        security=Security(
            signing_key=key,
            trusted_keys=[key.public_key()],
            master_key=MasterKey.generate(),
            encrypt=True,
            storage_root=folder / "artifacts",
            preferences=StatementPreferences,
        ),
    )

    @app.job(name="statements.render")
    async def render(ctx: JobContext, data: StatementRequest) -> str:
        """Formats the statement the way its user prefers, and keeps a copy for them."""
        prefs: StatementPreferences = ctx.preferences
        day = "2026-12-04" if prefs.date_format == "iso" else "04.12.2026"
        amount = f"{data.cents / 100:.2f}"
        amount = f"€{amount}" if prefs.currency_symbol else f"{amount} EUR"
        text = f"{day}  {data.account}  {amount}"
        await ctx.storage.put(f"statements/{ctx.job_id}.txt", text)
        return text

    return app


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        app = build_app(Path(folder))
        ann = UserContext(user_id="ann", tenant="acme")
        bob = UserContext(user_id="bob", tenant="acme")
        await app.preferences.set("bob", "acme", {"date_format": "german", "currency_symbol": True})
        worker = app.worker()
        await worker.start()
        try:
            for user in (ann, bob):
                handle = await app.enqueue(
                    "statements.render", {"account": "DE-42", "cents": 12345}, user=user
                )
                print(f"{user.user_id}: {await handle.result(timeout=15)}")
            print("audit log intact:", await app.audit.verify() is None)
        finally:
            await worker.stop()
            await app.close()


if __name__ == "__main__":
    asyncio.run(main())
