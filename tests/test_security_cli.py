"""``amqp-jobs keys | grants | audit`` against a real SQLite store, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from amqp_jobs import JobApp
from amqp_jobs.security import MasterKey, SigningKey
from amqp_jobs.security.guard import Security
from amqp_jobs.store.schema_security import audit_log

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amqp_jobs.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )


async def test_operators_rotate_and_forget_keys_revoke_grants_and_verify_the_audit_log(
    tmp_path: Path, amqp_url: str
) -> None:
    # Given a store with a user key, a grant and some audit history
    url = f"sqlite+aiosqlite:///{tmp_path}/ops.db"
    master, signing = MasterKey.generate(), SigningKey.generate("ops-1")
    app = JobApp(amqp_url, store=url, security=Security(master_key=master, signing_key=signing))
    assert app.security is not None and app.security.keys is not None
    await app.security.keys.current("ann", "acme")
    await app.grants.allow("sam")
    grant = await app.grants.issue(
        actor="sam",
        subject="ann",
        tenant="acme",
        scopes=["reports.*"],
        ttl=timedelta(hours=1),
        reason="ticket 7",
        approved_by="lea",
    )
    await app.audit.record("data.access", actor="sam", on_behalf_of="ann", user_id="ann")
    await app.close()
    env = {"AMQP_JOBS_MASTER_KEY": master.to_text(), "AMQP_JOBS_SIGNING_KEY": signing.to_text()}
    where = ("--store", url)

    # keys rotate starts version 2
    rotated = cli(env, "keys", "rotate", "--user", "ann", "--tenant", "acme", *where)
    assert rotated.returncode == 0, rotated.stderr
    assert "key version 2" in rotated.stdout

    # grants list shows the grant; revoke revokes it
    listed = cli(env, "grants", "list", *where)
    assert grant.id in listed.stdout and "active" in listed.stdout and "sam as ann" in listed.stdout
    revoked = cli(env, "grants", "revoke", grant.id, "--by", "lea", *where)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in cli(env, "grants", "list", *where).stdout

    # audit show lists Ann's entries; verify says the chain is intact
    shown = cli(env, "audit", "show", "--user", "ann", *where)
    assert '"action": "data.access"' in shown.stdout and '"action": "key.rotate"' in shown.stdout
    intact = cli(env, "audit", "verify", *where)
    assert intact.returncode == 0 and "intact" in intact.stdout

    # keys forget-user destroys both versions, and is audited
    forgot = cli(env, "keys", "forget-user", "ann", "--tenant", "acme", *where)
    assert forgot.returncode == 0, forgot.stderr
    assert "destroyed 2 key version(s)" in forgot.stdout

    # When someone edits an entry behind the log's back, verify names it
    engine = sa.create_engine(f"sqlite:///{tmp_path}/ops.db")
    with engine.begin() as connection:
        connection.execute(audit_log.update().where(audit_log.c.seq == 2).values(actor="eve"))
    engine.dispose()
    broken = cli(env, "audit", "verify", *where)
    assert broken.returncode != 0
    assert "entry 2" in broken.stderr and "edited" in broken.stderr
