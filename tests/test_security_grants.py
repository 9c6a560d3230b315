"""Impersonation grants: issue, check (every refusal audited with its reason), revoke, list
(SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from amqp_jobs.security.audit import AuditEntry, AuditLog
from amqp_jobs.security.grants import Grant, GrantError, Grants, read_claims
from amqp_jobs.security.signing import Keyring, SigningKey
from amqp_jobs.store import JobStore


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    grants: Grants
    audit: AuditLog
    clock: FakeClock
    key: SigningKey
    store: JobStore

    async def issue(self, **overrides: Any) -> Grant:
        settings: dict[str, Any] = {
            "actor": "alice@support",
            "subject": "u-42",
            "tenant": "acme",
            "scopes": ["reports.*", "invoices.resend", "perm:billing.read"],
            "ttl": timedelta(hours=1),
            "reason": "ticket SUP-123: customer cannot export",
            "approved_by": "bob@support",
        }
        settings.update(overrides)
        return await self.grants.issue(**settings)

    async def refusals(self) -> list[AuditEntry]:
        return await self.audit.entries(action="impersonation.refused")


@pytest.fixture
async def setup(make_store: Callable[[], JobStore]) -> Setup:
    store = make_store()
    audit = AuditLog(store)
    key = SigningKey.generate("support-svc-1")
    clock = FakeClock()
    grants = Grants(store, key, Keyring([key.public_key()]), audit, clock=clock, cache_ttl=60)
    await grants.allow("alice@support", by="security-team")
    return Setup(grants, audit, clock, key, store)


async def _refused(setup: Setup, token: str, code: str, **check: Any) -> GrantError:
    """Check ``token`` expecting refusal ``code``; assert the refusal was audited."""
    arguments: dict[str, Any] = {"job": "reports.monthly", "tenant": "acme", "subject": "u-42"}
    arguments.update(check)
    before = len(await setup.refusals())
    with pytest.raises(GrantError) as caught:
        await setup.grants.check(token, **arguments)
    assert caught.value.code == code, caught.value.reason
    assert str(caught.value) == caught.value.reason
    refusals = await setup.refusals()
    assert len(refusals) == before + 1
    entry = refusals[-1]
    assert entry.outcome == code and entry.detail["reason"] == caught.value.reason
    assert entry.user_id == arguments["subject"] and entry.job == arguments["job"]
    return caught.value


async def test_a_valid_grant_passes_and_its_use_is_audited(setup: Setup) -> None:
    # Given a grant for alice to run report jobs as u-42 in tenant acme
    grant = await setup.issue()

    # When a report job checks it
    checked = await setup.grants.check(
        grant.token, job="reports.monthly", tenant="acme", subject="u-42", job_id="job-1"
    )

    # Then the grant holds, and its issue and use are in the audit log with actor and subject
    assert checked.id == grant.id and checked.actor == "alice@support"
    assert checked.expires_at == setup.clock.now + 3600
    (use,) = await setup.audit.entries(action="impersonation.use")
    assert (use.actor, use.on_behalf_of, use.job_id, use.job, use.tenant) == (
        "alice@support",
        "u-42",
        "job-1",
        "reports.monthly",
        "acme",
    )
    (issued,) = await setup.audit.entries(action="grant.issue")
    assert issued.detail["grant_id"] == grant.id and issued.detail["approved_by"] == "bob@support"
    assert await setup.audit.verify() is None


async def test_exact_names_patterns_and_permissions_are_covered(setup: Setup) -> None:
    grant = await setup.issue()
    check = {"tenant": "acme", "subject": "u-42"}
    await setup.grants.check(grant.token, job="invoices.resend", **check)
    await setup.grants.check(
        grant.token, job="billing.export", permissions=["billing.read"], **check
    )
    await _refused(setup, grant.token, "out_of_scope", job="invoices.delete")
    await _refused(setup, grant.token, "out_of_scope", job="billing.export")
    error = await _refused(
        setup, grant.token, "out_of_scope", job="billing.export", permissions=["billing.write"]
    )
    assert "does not cover job 'billing.export'" in error.reason


async def test_an_expired_grant_is_refused(setup: Setup) -> None:
    grant = await setup.issue(ttl=60)
    setup.clock.now += 61
    error = await _refused(setup, grant.token, "expired")
    assert "expired 1s ago" in error.reason


async def test_a_revoked_grant_is_refused_at_once_despite_the_cache(setup: Setup) -> None:
    # Given a grant that was checked once (so its revocation status is cached for 60 s)
    grant = await setup.issue()
    await setup.grants.check(grant.token, job="reports.x", tenant="acme", subject="u-42")

    # When it is revoked
    assert await setup.grants.revoke(grant.id, by="carol@security") is True
    assert await setup.grants.revoke(grant.id) is False  # already revoked

    # Then the next check refuses it, and the revocation is audited
    await _refused(setup, grant.token, "revoked")
    (revocation,) = await setup.audit.entries(action="grant.revoke")
    assert (revocation.actor, revocation.detail["grant_id"]) == ("carol@security", grant.id)
    stored = await setup.grants.get(grant.id)
    assert stored is not None and stored.revoked_by == "carol@security"


async def test_a_revocation_by_another_process_is_seen(
    setup: Setup, make_store: Callable[[], JobStore]
) -> None:
    # Given a second Grants on its own store connection, with no caching
    grant = await setup.issue()
    other = Grants(
        make_store(), setup.key, Keyring([setup.key.public_key()]), clock=setup.clock, cache_ttl=0
    )
    await other.check(grant.token, job="reports.x", tenant="acme", subject="u-42")

    # When the first revokes the grant, then the second checks it
    await setup.grants.revoke(grant.id)

    with pytest.raises(GrantError) as caught:
        await other.check(grant.token, job="reports.x", tenant="acme", subject="u-42")
    assert caught.value.code == "revoked"


async def test_another_tenant_or_subject_is_refused(setup: Setup) -> None:
    grant = await setup.issue()
    error = await _refused(setup, grant.token, "tenant_mismatch", tenant="globex")
    assert error.reason == f"grant {grant.id} is for tenant 'acme', not 'globex'"
    await _refused(setup, grant.token, "tenant_mismatch", tenant=None)
    error = await _refused(setup, grant.token, "subject_mismatch", subject="u-43")
    assert error.reason == f"grant {grant.id} is for 'u-42', not for 'u-43'"


async def test_a_tampered_token_is_refused(setup: Setup) -> None:
    # Given a grant whose token has one character of its claims changed
    grant = await setup.issue()
    claims, signature = grant.token.split(".")
    middle = len(claims) // 2
    flipped = "B" if claims[middle] != "B" else "C"
    tampered = f"{claims[:middle]}{flipped}{claims[middle + 1 :]}.{signature}"

    # Then it is refused: for its signature, or as unreadable if the flip broke the JSON
    error = await _refused_any(setup, tampered)
    assert error.code in {"bad_signature", "malformed"}
    # A change that keeps the JSON valid (a longer expiry) is caught by the signature
    forged = _reclaim(grant.token, expires_at=grant.expires_at + 86_400)
    error = await _refused(setup, forged, "bad_signature")
    assert "does not match the grant" in error.reason
    # And a flipped character in the signature too
    other = "A" if signature[10] != "A" else "B"
    bad_signature = f"{claims}.{signature[:10]}{other}{signature[11:]}"
    await _refused(setup, bad_signature, "bad_signature")
    await _refused(setup, "not-a-token", "malformed")


async def _refused_any(setup: Setup, token: str) -> GrantError:
    with pytest.raises(GrantError) as caught:
        await setup.grants.check(token, job="reports.x", tenant="acme", subject="u-42")
    (entry,) = await setup.refusals()
    assert entry.outcome == caught.value.code
    return caught.value


def _reclaim(token: str, **changes: Any) -> str:
    import json

    from amqp_jobs.security.encryption import b64decode, b64encode

    claims, signature = token.split(".")
    payload = json.loads(b64decode(claims))
    payload.update(changes)
    return f"{b64encode(json.dumps(payload).encode())}.{signature}"


async def test_a_grant_signed_by_an_untrusted_key_is_refused(setup: Setup) -> None:
    # Given a grant issued by a service whose key the checker does not trust
    rogue_key = SigningKey.generate("rogue-svc")
    rogue = Grants(setup.store, rogue_key, Keyring([rogue_key.public_key()]), clock=setup.clock)
    grant = await rogue.issue(
        actor="alice@support",
        subject="u-42",
        tenant="acme",
        scopes=["reports.*"],
        ttl=600,
        reason="looks legitimate",
        approved_by="mallory",
    )

    # Then it is refused, with the actor it claims in the audit entry
    error = await _refused(setup, grant.token, "untrusted_key")
    assert error.reason == "the grant is signed by key 'rogue-svc', which is not trusted"
    (entry,) = await setup.refusals()
    assert (entry.actor, entry.on_behalf_of) == ("alice@support", "u-42")
    # And re-signing its claims under a trusted key id without that key fails too
    claims = read_claims(grant.token)
    assert claims is not None
    forged = _reclaim(grant.token, key_id="support-svc-1")
    await _refused(setup, forged, "bad_signature")


async def test_an_actor_disallowed_after_issue_can_no_longer_use_grants(setup: Setup) -> None:
    # Given a grant that works
    grant = await setup.issue()
    await setup.grants.check(grant.token, job="reports.x", tenant="acme", subject="u-42")

    # When alice is taken off the list of impersonators
    assert await setup.grants.disallow("alice@support") is True

    # Then her unexpired grant is refused, and she cannot be granted more
    error = await _refused(setup, grant.token, "not_allowed")
    assert error.reason == "'alice@support' is no longer allowed to impersonate"
    with pytest.raises(GrantError, match="not allowed to impersonate") as caught:
        await setup.issue()
    assert caught.value.code == "not_allowed"


async def test_a_grant_unknown_to_the_store_is_refused(setup: Setup) -> None:
    # Given a validly signed grant whose row was never stored (e.g. another environment)
    grant = await setup.issue()
    engine = await setup.store.engine()
    from amqp_jobs.store.schema_security import grants as table

    async with engine.begin() as connection:
        await connection.execute(table.delete().where(table.c.id == grant.id))

    await _refused(setup, grant.token, "unknown")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ttl": 0}, "ttl must be more than 0"),
        ({"ttl": timedelta(days=8)}, "at most 604800 seconds"),
        ({"ttl": -5}, "ttl must be more than 0"),
        ({"reason": "  "}, "non-empty reason"),
        ({"scopes": []}, "at least one scope"),
        ({"scopes": "reports.*"}, "not the single string"),
        ({"scopes": ["*"]}, "would cover every job"),
        ({"scopes": ["perm:"]}, "names no permission"),
        ({"approved_by": "alice@support"}, "cannot approve their own grant"),
        ({"approved_by": ""}, "non-empty approver"),
        ({"subject": "alice@support"}, "need not impersonate themselves"),
        ({"actor": "eve@support"}, "'eve@support' is not allowed to impersonate"),
    ],
)
async def test_bad_grant_requests_are_refused(
    setup: Setup, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(GrantError, match=message):
        await setup.issue(**overrides)
    assert await setup.grants.list() == []
    assert await setup.audit.entries(action="grant.issue") == []


async def test_grants_are_listed_and_fetched(setup: Setup) -> None:
    # Given three grants: one active, one revoked, one expired
    await setup.grants.allow("dave@support")
    active = await setup.issue()
    setup.clock.now += 1
    revoked = await setup.issue(subject="u-7")
    await setup.grants.revoke(revoked.id)
    setup.clock.now += 10
    expired = await setup.issue(actor="dave@support", ttl=5)
    setup.clock.now += 6

    # Then listings filter them, newest first, and get() returns the stored grant
    listed = await setup.grants.list()
    assert [g.id for g in listed] == [expired.id, revoked.id, active.id]
    assert [g.id for g in await setup.grants.list(active_only=True)] == [active.id]
    assert [g.id for g in await setup.grants.list(actor="dave@support")] == [expired.id]
    assert [g.id for g in await setup.grants.list(subject="u-7")] == [revoked.id]
    fetched = await setup.grants.get(active.id)
    assert fetched == active
    assert fetched.scopes == ("reports.*", "invoices.resend", "perm:billing.read")
    assert await setup.grants.get("no-such-grant") is None
