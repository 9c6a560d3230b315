"""Security end to end, against the real RabbitMQ and store: signed and encrypted jobs,
and each kind of bad input refused with its reason, dead-lettered without retries,
audited, while the worker keeps going."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa

from amqp_jobs import JobApp, JobContext, JobFailed
from amqp_jobs.dlq import DeadLetters
from amqp_jobs.envelope import CONTENT_TYPE, decode, encode
from amqp_jobs.security import MasterKey, SigningKey, StorageNameError, UserContext
from amqp_jobs.security.guard import Security
from amqp_jobs.store import JobStore
from amqp_jobs.store.schema import jobs as jobs_table
from amqp_jobs.transport.base import OutgoingMessage
from tests.helpers import running, wait_until

ANN = UserContext(user_id="ann", tenant="acme", permissions=("reports:read",))
BOB = UserContext(user_id="bob", tenant="acme")


class Prefs(pydantic.BaseModel):
    date_format: str = "iso"


class Statement(pydantic.BaseModel):
    account: str
    secret_note: str


@dataclasses.dataclass
class Secured:
    app: JobApp
    key: SigningKey
    ran: list[dict[str, Any]]


def build(
    make_app: Callable[..., JobApp], store: JobStore, tmp_path: Path, **security: Any
) -> Secured:
    key = SigningKey.generate("billing-1")
    settings: dict[str, Any] = {
        "signing_key": key,
        "trusted_keys": [key.public_key()],
        "master_key": MasterKey.generate(),
        "encrypt": True,
        "storage_root": tmp_path / "artifacts",
        "preferences": Prefs,
    }
    settings.update(security)
    app = make_app(store=store, security=Security(**settings))
    ran: list[dict[str, Any]] = []

    @app.job(name="bank.statement", max_attempts=3, backoff="fixed", backoff_base=0.05)
    async def statement(ctx: JobContext, data: Statement) -> dict[str, Any]:
        await ctx.progress(50, f"rendering {data.secret_note}", note=data.secret_note)
        ran.append({"id": ctx.job_id, "user": ctx.user, "note": data.secret_note})
        day = "2026-12-04" if ctx.preferences.date_format == "iso" else "04.12.2026"
        return {"account": data.account, "day": day, "note": data.secret_note}

    @app.job(name="bank.archive")
    async def archive(ctx: JobContext, name: str, text: str) -> list[str]:
        await ctx.storage.put(name, text)
        assert await ctx.storage.get(name) == text.encode()
        return await ctx.storage.list()

    return Secured(app, key, ran)


async def publish_body(app: JobApp, body: bytes, queue: str = "default") -> None:
    message = OutgoingMessage(
        body=body, message_id="x", type="bank.statement", content_type=CONTENT_TYPE
    )
    await app.client.ensure_queue(queue)
    await app.transport.publish(
        message, "", app.topology.queue_name(queue), timeout=app.publish_timeout
    )


async def signed_body(app: JobApp, data: Any, user: UserContext, **options: Any) -> bytes:
    prepared = await app.client.build("bank.statement", data, user=user, **options)
    return app.client.encode(prepared.envelope)


def resign(secured: Secured, body: bytes, **changes: Any) -> bytes:
    """The envelope in ``body`` with ``changes``, signed again with the trusted key."""
    envelope = decode(body).model_copy(update={"signature": None, **changes})
    assert secured.app.security is not None
    signed = secured.app.security.sign_body(envelope)
    assert signed is not None
    return signed


async def refusals(app: JobApp, count: int) -> list[str]:
    await wait_until(lambda: _dead_count(app, count), timeout=15)
    return [dead.reason for dead in await DeadLetters(app).list()]


async def _dead_count(app: JobApp, count: int) -> bool:
    return len(await DeadLetters(app).list()) >= count


async def test_a_signed_encrypted_job_runs_and_nothing_readable_leaves_the_process(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    # Given a service that signs and encrypts everything
    secured = build(make_app, make_store(), tmp_path)
    app = secured.app
    await app.preferences.set("bob", "acme", {"date_format": "german"})

    # The body on the wire carries neither the account nor the note
    body = await signed_body(app, {"account": "DE-1", "secret_note": "s3cr3t"}, ANN)
    assert b"s3cr3t" not in body and b"DE-1" not in body
    assert decode(body).sealed is not None and decode(body).signature is not None

    async with running(app):
        # When Ann's and Bob's statements run
        ann = await app.enqueue(
            "bank.statement", {"account": "DE-1", "secret_note": "s3cr3t"}, user=ANN
        )
        async with app.acting_as(BOB):
            bob = await app.enqueue("bank.statement", {"account": "DE-2", "secret_note": "n2"})
        ann_out = await ann.result(timeout=15)
        bob_out = await bob.result(timeout=15)
        progress = await ann.progress()

    # Then each ran for its own user, with its preferences, and the results read back
    assert ann_out == {"account": "DE-1", "day": "2026-12-04", "note": "s3cr3t"}
    assert bob_out["day"] == "04.12.2026"
    assert {r["user"].user_id for r in secured.ran} == {"ann", "bob"}
    assert progress is not None and progress.message == "rendering s3cr3t"
    assert progress.data == {"note": "s3cr3t"}

    # And the store holds only ciphertext for outputs and progress
    engine = await app.store.engine()  # type: ignore[union-attr]
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(jobs_table))).mappings().all()
    stored = json.dumps([dict(r) for r in rows], default=str)
    assert "s3cr3t" not in stored and "DE-1" not in stored

    # And the audit log has the whole life of both jobs, unbroken
    actions = [e.action for e in await app.audit.entries(job_id=ann.id)]
    assert {"enqueue", "start", "finish"} <= set(actions)
    assert await app.audit.verify() is None


async def test_unsigned_forged_and_tampered_envelopes_are_refused(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    secured = build(make_app, make_store(), tmp_path, encrypt=False)
    app = secured.app
    good = await signed_body(app, {"account": "A", "secret_note": "ok"}, ANN)

    # An unsigned envelope, as a publisher without the key would send it
    unsigned = encode(decode(good).model_copy(update={"signature": None}))
    # The user changed after signing (a forged user context)
    forged_user = encode(decode(good).model_copy(update={"user": BOB.to_wire()}))
    # Signed by a key the worker does not trust
    stranger = SigningKey.generate("billing-1")  # same id, other key
    impostor = Security(signing_key=stranger).sign_body(
        decode(good).model_copy(update={"signature": None})
    )
    assert impostor is not None
    unknown_id = Security(signing_key=SigningKey.generate("mallory")).sign_body(
        decode(good).model_copy(update={"signature": None})
    )
    assert unknown_id is not None

    # A field appended after the signature (JSON's last duplicate key would win)
    appended = good[:-1] + b',"data":{"account":"EVIL","secret_note":"x"}}'
    assert decode(appended).data["account"] == "EVIL"

    async with running(app) as worker:
        for body in (unsigned, forged_user, impostor, unknown_id, appended):
            await publish_body(app, body)
        # Forged headers claim another user; only the signed envelope counts
        headers_forged = OutgoingMessage(
            body=good,
            message_id="x",
            type="bank.statement",
            content_type=CONTENT_TYPE,
            app_id="admin",
            headers={"user-id": "bob", "x-user": "root"},
        )
        await app.transport.publish(
            headers_forged, "", app.topology.queue_name("default"), timeout=5
        )
        reasons = await refusals(app, 5)
        await wait_until(lambda: len(secured.ran) == 1)
        assert worker.stats.dead == 5 and worker.stats.retried == 0

    assert any("is not signed" in r for r in reasons)
    assert sum("does not match the envelope" in r for r in reasons) == 3
    assert any("'mallory'" in r for r in reasons)
    assert all(r.startswith("refused:") for r in reasons)
    assert secured.ran[0]["user"].user_id == "ann"  # not bob, not root
    refused = [e for e in await app.audit.entries(action="refused", limit=10)]
    assert len(refused) == 5


async def test_ciphertext_that_was_tampered_or_moved_does_not_decrypt(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    secured = build(make_app, make_store(), tmp_path)
    app = secured.app
    ann_body = await signed_body(app, {"account": "A", "secret_note": "ann"}, ANN)
    bob_body = await signed_body(app, {"account": "B", "secret_note": "bob"}, BOB)
    sealed = decode(ann_body).sealed
    assert sealed is not None

    # One flipped bit in the ciphertext (re-signed, so only the decryption can notice)
    raw = bytearray(base64.urlsafe_b64decode(sealed.ciphertext))
    raw[3] ^= 0x01
    flipped = sealed.model_copy(
        update={"ciphertext": base64.urlsafe_b64encode(bytes(raw)).decode()}
    )
    tampered = resign(secured, ann_body, sealed=flipped)
    # Ann's sealed payload moved into Bob's job (an associated-data swap)
    swapped = resign(secured, bob_body, sealed=sealed)
    # A key version that never existed
    unknown_version = resign(secured, ann_body, sealed=sealed.model_copy(update={"key_version": 9}))

    async with running(app) as worker:
        for body in (tampered, swapped, unknown_version):
            await publish_body(app, body)
        reasons = await refusals(app, 3)
        assert worker.stats.retried == 0
        # And the worker goes on: a good job still runs
        handle = await app.enqueue("bank.statement", {"account": "C", "secret_note": "c"}, user=ANN)
        assert (await handle.result(timeout=10))["note"] == "c"

    assert sum("altered" in r for r in reasons) == 2, reasons
    assert any("has no key version 9" in r for r in reasons), reasons


async def test_a_forgotten_users_jobs_end_dead_and_their_data_is_gone(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    secured = build(make_app, make_store(), tmp_path)
    app = secured.app
    assert app.security is not None
    async with running(app):
        done = await app.enqueue("bank.statement", {"account": "A", "secret_note": "x"}, user=ANN)
        await done.result(timeout=10)
        stored = await app.enqueue(
            "bank.archive", {"name": "logs/a.txt", "text": "hello"}, user=ANN
        )
        assert await stored.result(timeout=10) == ["logs/a.txt"]

    # Given a queued job of Ann's, when Ann's keys are destroyed (an erasure request)
    queued = await app.enqueue("bank.statement", {"account": "A", "secret_note": "y"}, user=ANN)
    counts = await app.security.forget_user("ann", "acme")
    assert counts["key_versions"] == 1 and counts["artifacts"] == 1 and counts["results"] >= 2

    async with running(app) as worker:
        reasons = await refusals(app, 1)
        assert worker.stats.retried == 0

    # Then the queued job ended dead with a clear reason, once, and her data is gone
    assert "destroyed" in reasons[0] and "ann" in reasons[0]
    with pytest.raises(JobFailed):
        await queued.result(timeout=5)
    record = await app.jobs.get(done.id)
    assert record is not None and record.result is None
    assert not list((tmp_path / "artifacts").rglob("a.txt*"))
    assert [e.action for e in await app.audit.entries(action="key.forget")] == ["key.forget"]


async def test_a_replayed_envelope_of_a_finished_job_is_refused(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    secured = build(make_app, make_store(), tmp_path)
    app = secured.app
    body = await signed_body(app, {"account": "A", "secret_note": "once"}, ANN)
    async with running(app):
        await publish_body(app, body)
        await wait_until(lambda: len(secured.ran) == 1)
        await wait_until(lambda: _finished(app, decode(body).id))
        await publish_body(app, body)  # the same signed bytes again
        reasons = await refusals(app, 1)
    assert len(secured.ran) == 1
    assert "replay" in reasons[0]


async def _finished(app: JobApp, job_id: str) -> bool:
    record = await app.jobs.get(job_id)
    return record is not None and record.finished


async def test_impersonation_needs_a_valid_grant_for_the_job(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    secured = build(make_app, make_store(), tmp_path, encrypt=False)
    app = secured.app
    await app.grants.allow("support-sam", by="security-team")
    grant = await app.grants.issue(
        actor="support-sam",
        subject="ann",
        tenant="acme",
        scopes=["bank.statement"],
        ttl=timedelta(minutes=10),
        reason="ticket 42",
        approved_by="lead-lea",
    )
    other_job = await app.grants.issue(
        actor="support-sam",
        subject="ann",
        tenant="acme",
        scopes=["bank.archive"],
        ttl=timedelta(minutes=10),
        reason="ticket 43",
        approved_by="lead-lea",
    )
    revoked = await app.grants.issue(
        actor="support-sam",
        subject="ann",
        tenant="acme",
        scopes=["bank.statement"],
        ttl=timedelta(minutes=10),
        reason="ticket 44",
        approved_by="lead-lea",
    )
    await app.grants.revoke(revoked.id, by="lead-lea")
    expired = await app.grants.issue(
        actor="support-sam",
        subject="ann",
        tenant="acme",
        scopes=["bank.statement"],
        ttl=timedelta(milliseconds=300),
        reason="ticket 45",
        approved_by="lead-lea",
    )
    await asyncio.sleep(0.4)

    async with running(app) as worker:
        async with app.acting_as(ANN, grant=grant):
            ok = await app.enqueue("bank.statement", {"account": "A", "secret_note": "g"})
        for bad in (other_job, revoked, expired):
            await app.enqueue(
                "bank.statement", {"account": "A", "secret_note": "b"}, user=ANN, grant=bad
            )
        # a grant for Ann used for Bob's job
        await app.enqueue(
            "bank.statement", {"account": "B", "secret_note": "b"}, user=BOB, grant=grant
        )
        assert (await ok.result(timeout=10))["note"] == "g"
        reasons = await refusals(app, 4)
        assert worker.stats.retried == 0

    assert len(secured.ran) == 1
    assert any(f"grant {expired.id}" in r and "expired" in r for r in reasons), reasons
    assert any(f"grant {revoked.id} was revoked" in r for r in reasons)
    assert any(f"grant {other_job.id} does not cover job 'bank.statement'" in r for r in reasons)
    assert any(f"grant {grant.id} is for 'ann', not for 'bob'" in r for r in reasons)
    uses = await app.audit.entries(action="impersonation.use")
    assert [(e.actor, e.on_behalf_of) for e in uses] == [("support-sam", "ann")]
    assert len(await app.audit.entries(action="impersonation.refused")) == 4


async def test_oversized_payloads_and_bad_storage_names_are_refused(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore], tmp_path: Path
) -> None:
    secured = build(make_app, make_store(), tmp_path)
    app = secured.app
    async with running(app, max_body_bytes=4096) as worker:
        big = await app.enqueue(
            "bank.statement", {"account": "A", "secret_note": "x" * 8000}, user=ANN
        )
        escape = await app.enqueue(
            "bank.archive", {"name": "../../etc/passwd", "text": "root::0:0"}, user=ANN
        )
        with pytest.raises(JobFailed) as failed:
            await escape.result(timeout=15)
        reasons = await refusals(app, 2)
        assert worker.stats.dead == 2
    assert failed.value.error_type == StorageNameError.__name__
    assert any("exceeds the limit" in r for r in reasons)
    assert not (tmp_path / "etc").exists()
    assert await app.audit.verify() is None
    dead = await app.audit.entries(action="dead_letter")
    assert len(dead) >= 2 and big.id


async def test_encryption_is_on_per_tenant_or_per_job_by_configuration(
    make_app: Callable[..., JobApp], make_store: Callable[[], JobStore]
) -> None:
    # Given encryption for tenant "acme" only, and one job that is always encrypted
    key = SigningKey.generate("svc-1")
    app = make_app(
        store=make_store(),
        security=Security(signing_key=key, master_key=MasterKey.generate(), encrypt={"acme"}),
    )

    @app.job(name="t.plain")
    async def plain(note: str) -> None:
        pass

    @app.job(name="t.secret", encrypt=True)
    async def secret(note: str) -> None:
        pass

    @app.job(name="t.never", encrypt=False)
    async def never(note: str) -> None:
        pass

    other = UserContext(user_id="zed", tenant="globex")

    async def sealed(job: str, user: UserContext) -> bool:
        prepared = await app.client.build(job, {"note": "n"}, user=user)
        return prepared.envelope.sealed is not None

    # Then the tenant's jobs are sealed, other tenants' are not, and the job options win
    assert await sealed("t.plain", ANN) is True
    assert await sealed("t.plain", other) is False
    assert await sealed("t.secret", other) is True
    assert await sealed("t.never", ANN) is False
