"""The audit trail: hash chain, tamper detection, concurrent appends, and the middleware
that audits each job's life (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from amqp_jobs import JobApp, JobContext
from amqp_jobs.envelope import Envelope
from amqp_jobs.middleware import Middleware
from amqp_jobs.security.audit import (
    GENESIS_HASH,
    AuditError,
    AuditLog,
    AuditRecorder,
    entry_hash,
)
from amqp_jobs.store import JobStore
from tests.helpers import running, wait_until


async def _log_of(make_store: Callable[[], JobStore], n: int) -> tuple[JobStore, AuditLog]:
    store = make_store()
    audit = AuditLog(store)
    for i in range(1, n + 1):
        await audit.record(
            "enqueue",
            actor=f"actor-{i}",
            user_id=f"user-{i % 3}",
            job_id=f"job-{i}",
            job="reports.build",
            outcome="queued",
            detail={"n": i},
        )
    return store, audit


async def _sql(store: JobStore, *statements: str) -> None:
    """Tamper with the log behind the library's back, as someone with database access."""
    engine = await store.engine()
    async with engine.begin() as connection:
        for statement in statements:
            await connection.execute(sa.text(statement))


async def test_entries_form_a_verifiable_chain(make_store: Callable[[], JobStore]) -> None:
    # Given 25 entries recorded one after another
    _, audit = await _log_of(make_store, 25)

    # When the log is read and verified
    entries = await audit.entries(limit=1000)

    # Then they are numbered 1..25, each chained to the one before, and the chain holds
    assert [e.seq for e in entries] == list(range(1, 26))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    first = entries[0]
    fields = {
        "seq": 1,
        "at": first.at,
        "action": "enqueue",
        "actor": "actor-1",
        "on_behalf_of": None,
        "user_id": "user-1",
        "tenant": None,
        "job_id": "job-1",
        "job": "reports.build",
        "outcome": "queued",
        "detail": {"n": 1},
    }
    assert first.hash == entry_hash(GENESIS_HASH, fields)
    assert await audit.verify() is None
    assert await audit.head() == (25, entries[-1].hash)


async def test_an_empty_log_verifies(make_store: Callable[[], JobStore]) -> None:
    assert await AuditLog(make_store()).verify() is None


async def test_entries_are_filtered_and_paged(make_store: Callable[[], JobStore]) -> None:
    # Given entries about three users and several jobs
    _, audit = await _log_of(make_store, 12)
    await audit.record("impersonation.use", actor="support-1", on_behalf_of="user-0")

    # When they are queried by user, job, action and page
    by_user = await audit.entries(user_id="user-0")
    by_job = await audit.entries(job_id="job-7")
    uses = await audit.entries(action="impersonation.use")
    newest = await audit.entries(newest_first=True, limit=2)
    after = await audit.entries(after_seq=11)

    # Then each filter matches what it says (a user's list includes acting on their behalf)
    assert [e.seq for e in by_user] == [3, 6, 9, 12, 13]
    assert [(e.seq, e.detail) for e in by_job] == [(7, {"n": 7})]
    assert [(e.actor, e.on_behalf_of) for e in uses] == [("support-1", "user-0")]
    assert [e.seq for e in newest] == [13, 12]
    assert [e.seq for e in after] == [12, 13]
    since = await audit.entries(since=by_job[0].at)
    assert since[0].seq <= 7 and since[-1].seq == 13


async def test_an_edited_entry_is_named(make_store: Callable[[], JobStore]) -> None:
    # Given a log of 20 entries whose entries 17 and 19 were edited in the database
    store, audit = await _log_of(make_store, 20)
    await _sql(
        store,
        "UPDATE amqp_jobs_audit SET outcome = 'succeeded' WHERE seq = 17",
        "UPDATE amqp_jobs_audit SET actor = 'someone-else' WHERE seq = 19",
    )

    # When it is verified
    problem = await audit.verify()

    # Then the first edited entry is named
    assert problem is not None and (problem.seq, problem.kind) == (17, "edited")
    assert str(problem) == "entry 17 was edited (its hash does not match its contents)"


async def test_an_edited_detail_is_found(make_store: Callable[[], JobStore]) -> None:
    store, audit = await _log_of(make_store, 5)
    await _sql(store, """UPDATE amqp_jobs_audit SET detail = '{"n": 99}' WHERE seq = 2""")

    problem = await audit.verify()

    assert problem is not None and (problem.seq, problem.kind) == (2, "edited")


async def test_verification_reads_in_pages_and_still_finds_the_first_bad_entry(
    make_store: Callable[[], JobStore],
) -> None:
    # Given 25 entries, read back four at a time, with entries 11 and 23 edited
    store, _ = await _log_of(make_store, 25)
    paged = AuditLog(store, verify_page=4)
    assert await paged.verify() is None
    await _sql(
        store,
        "UPDATE amqp_jobs_audit SET job = 'other' WHERE seq = 11",
        "UPDATE amqp_jobs_audit SET job = 'other' WHERE seq = 23",
    )

    problem = await paged.verify()

    assert problem is not None and (problem.seq, problem.kind) == (11, "edited")


async def test_a_deleted_entry_is_named(make_store: Callable[[], JobStore]) -> None:
    # Given entry 18 of 20 deleted
    store, audit = await _log_of(make_store, 20)
    await _sql(store, "DELETE FROM amqp_jobs_audit WHERE seq = 18")

    problem = await audit.verify()

    assert problem is not None and (problem.seq, problem.kind) == (18, "missing")
    assert "entry 18 is missing" in str(problem)


async def test_a_deleted_entry_renumbered_to_hide_the_gap_is_found(
    make_store: Callable[[], JobStore],
) -> None:
    # Given entry 8 deleted and the later ones moved down a place to close the gap
    store, audit = await _log_of(make_store, 10)
    await _sql(
        store,
        "DELETE FROM amqp_jobs_audit WHERE seq = 8",
        "UPDATE amqp_jobs_audit SET seq = seq + 100 WHERE seq > 8",
        "UPDATE amqp_jobs_audit SET seq = seq - 101 WHERE seq > 100",
        "UPDATE amqp_jobs_audit_head SET seq = 9",
    )

    problem = await audit.verify()

    # Then the entry now at 8 does not follow entry 7
    assert problem is not None and (problem.seq, problem.kind) == (8, "out_of_order")


async def test_two_swapped_entries_are_named(make_store: Callable[[], JobStore]) -> None:
    # Given entries 20 and 21 swapped (each takes the other's place in the order)
    store, audit = await _log_of(make_store, 25)
    await _sql(
        store,
        "UPDATE amqp_jobs_audit SET seq = -1 WHERE seq = 20",
        "UPDATE amqp_jobs_audit SET seq = 20 WHERE seq = 21",
        "UPDATE amqp_jobs_audit SET seq = 21 WHERE seq = -1",
    )

    problem = await audit.verify()

    assert problem is not None and (problem.seq, problem.kind) == (20, "out_of_order")
    assert "entry 20 is out of order: its prev_hash does not match" in str(problem)


async def test_a_truncated_tail_is_found_through_the_chain_head(
    make_store: Callable[[], JobStore],
) -> None:
    # Given the last three of 20 entries deleted
    store, audit = await _log_of(make_store, 20)
    await _sql(store, "DELETE FROM amqp_jobs_audit WHERE seq > 17")

    problem = await audit.verify()

    assert problem is not None and (problem.seq, problem.kind) == (18, "truncated")
    assert "ends at entry 17" in str(problem) and "records entry 20" in str(problem)


async def test_a_rewritten_last_entry_is_found_through_the_chain_head(
    make_store: Callable[[], JobStore],
) -> None:
    # Given the last entry edited and its hash recomputed to match (the chain is intact)
    store, audit = await _log_of(make_store, 6)
    last = (await audit.entries(after_seq=5))[0]
    fields = {
        "seq": 6,
        "at": last.at,
        "action": "enqueue",
        "actor": "nobody",
        "on_behalf_of": None,
        "user_id": last.user_id,
        "tenant": None,
        "job_id": last.job_id,
        "job": last.job,
        "outcome": last.outcome,
        "detail": last.detail,
    }
    forged = entry_hash(last.prev_hash, fields)
    await _sql(
        store, f"UPDATE amqp_jobs_audit SET actor = 'nobody', hash = '{forged}' WHERE seq = 6"
    )

    problem = await audit.verify()

    assert problem is not None and (problem.seq, problem.kind) == (6, "edited")


async def test_an_entry_added_outside_the_chain_is_found(
    make_store: Callable[[], JobStore],
) -> None:
    store, audit = await _log_of(make_store, 3)
    await _sql(
        store,
        "INSERT INTO amqp_jobs_audit (seq, at, action, detail, prev_hash, hash) "
        "VALUES (4, 0, 'finish', '{}', 'x', 'y')",
    )

    problem = await audit.verify()

    assert problem is not None and (problem.seq, problem.kind) == (4, "outside_chain")


async def test_concurrent_appends_from_two_stores_keep_one_chain(
    make_store: Callable[[], JobStore],
) -> None:
    # Given two JobStores (two connection pools, as two processes would have) on one database
    one, two = AuditLog(make_store()), AuditLog(make_store())
    # (Opened one after the other: a fresh database's first migration is not safe to run
    # from two stores at once.)
    await one.store.open()
    await two.store.open()

    # When each has four writers appending 40 entries one after another, so that the
    # two stores' transactions (of up to four entries) keep overlapping
    async def writer(audit: AuditLog, name: str) -> None:
        for i in range(40):
            await audit.record("start", actor=name, detail={"i": i})

    await asyncio.gather(
        *(
            writer(audit, f"{label}-{w}")
            for label, audit in (("one", one), ("two", two))
            for w in range(4)
        )
    )

    # Then all 320 entries are in one unbroken chain, seen the same from either store
    entries = await two.entries(limit=1000)
    assert [e.seq for e in entries] == list(range(1, 321))
    by_actor = Counter(e.actor for e in entries)
    assert by_actor == {f"{label}-{w}": 40 for label in ("one", "two") for w in range(4)}
    assert await one.verify() is None and await two.verify() is None


async def test_bad_entries_are_refused_with_a_reason(make_store: Callable[[], JobStore]) -> None:
    audit = AuditLog(make_store())
    with pytest.raises(AuditError, match="non-empty action"):
        await audit.record("")
    with pytest.raises(AuditError, match="plain JSON"):
        await audit.record("data.access", detail={"when": object()})
    with pytest.raises(AuditError, match="never payloads"):
        await audit.record("data.access", detail={"blob": "x" * 5000})
    with pytest.raises(AuditError, match="actor is 300 characters long"):
        await audit.record("data.access", actor="a" * 300)
    assert await audit.entries() == []


# --- the middleware, with a real app and worker -------------------------------------------


class _OnBehalfOf(Middleware):
    """Attaches a grant token to every envelope, as an impersonating publisher would."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def before_publish(self, envelope: Envelope) -> Envelope:
        return envelope.model_copy(update={"grant": self.token})


async def test_the_recorder_audits_each_job_s_life_without_its_payload(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given an app whose jobs are audited: one succeeds, one always fails, one is cancelled
    store = make_store()
    app = make_app(store=store)
    audit = AuditLog(store)
    app.add_middleware(AuditRecorder(audit))
    user = {"user_id": "u-1", "tenant": "acme"}

    @app.job(name="t.ok")
    async def ok(secret: str) -> str:
        return "done"

    @app.job(name="t.bad", max_attempts=1)
    async def bad(secret: str) -> None:
        raise ValueError(f"cannot use {secret}")

    @app.job(name="t.never")
    async def never(secret: str) -> None: ...

    secret = "card-4111-1111"
    cancelled = await never.enqueue({"secret": secret}, user=user)
    assert await cancelled.cancel() == "cancelled"

    # When they run on a worker
    async with running(app) as worker:
        done = await ok.enqueue({"secret": secret}, user=user)
        failed = await bad.enqueue({"secret": secret}, user=user)
        await done.result(timeout=10)
        await wait_until(lambda: worker.stats.dead == 1 and worker.stats.cancelled == 1)

    # Then each step is audited with who, for whom and the outcome, in a valid chain
    async def steps(job_id: str) -> list[tuple[str, str | None]]:
        entries = await audit.entries(job_id=job_id)
        return [(e.action, e.outcome) for e in entries if e.action != "enqueue"]

    # (The log is in commit order: a worker may audit a start before the publisher's
    # enqueue entry commits, so the enqueue is compared apart.)
    assert await steps(done.id) == [("start", "running"), ("finish", "succeeded")]
    assert await steps(failed.id) == [
        ("start", "running"),
        ("failure", "failed"),
        ("dead_letter", "dead"),
    ]
    assert await steps(cancelled.id) == [("cancel", "cancelled")]
    enqueues = await audit.entries(action="enqueue")
    assert {e.job_id for e in enqueues} == {done.id, failed.id, cancelled.id}
    assert {e.outcome for e in enqueues} == {"queued"}
    everything = await audit.entries(limit=1000)
    for entry in everything:
        assert (entry.actor, entry.user_id, entry.tenant) == ("u-1", "u-1", "acme")
        assert entry.detail["publisher"] == app.client.service
    (dead,) = [e for e in everything if e.action == "dead_letter"]
    assert dead.detail["error_type"] == "ValueError"
    assert dead.detail["reason"] == "failed on attempt 1 of 1: ValueError"
    # ... and neither the payload nor the error message quoting it is anywhere in the log
    assert secret not in json.dumps([e.detail for e in everything])
    assert await audit.verify() is None


async def test_the_recorder_names_the_impersonating_actor(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given a job published on a customer's behalf under a grant
    from amqp_jobs.security.grants import Grants
    from amqp_jobs.security.signing import Keyring, SigningKey

    store = make_store()
    key = SigningKey.generate("support-svc")
    grants = Grants(store, key, Keyring([key.public_key()]))
    await grants.allow("alice@support")
    grant = await grants.issue(
        actor="alice@support",
        subject="u-9",
        scopes=["t.*"],
        ttl=600,
        reason="ticket 123",
        approved_by="bob@support",
    )
    app = make_app(store=store, middleware=[_OnBehalfOf(grant.token)])
    audit = AuditLog(store)
    app.add_middleware(AuditRecorder(audit))

    @app.job(name="t.report")
    async def report(ctx: JobContext) -> None: ...

    # When it runs
    async with running(app):
        handle = await report.enqueue(user={"user_id": "u-9"})
        await handle.result(timeout=10)

    # Then its entries name alice as the actor, on behalf of u-9, with the grant's id
    entries = await audit.entries(job_id=handle.id)
    assert sorted(e.action for e in entries) == ["enqueue", "finish", "start"]
    assert {(e.actor, e.on_behalf_of, e.user_id) for e in entries} == {
        ("alice@support", "u-9", "u-9")
    }
    assert {e.detail["grant_id"] for e in entries} == {grant.id}
