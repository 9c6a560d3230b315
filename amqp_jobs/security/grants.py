"""Impersonation: explicit, signed, time-bound, scoped grants to act on someone's behalf.

A support engineer (the *actor*) who must run a job as a customer (the *subject*) gets
a :class:`Grant`: who, for whom, in which tenant, for which jobs or permissions, until
when, why, and who approved it. Only actors on the store's list of impersonators may
be granted anything. The grant is signed by the issuing service's Ed25519 key; its
``token`` travels in the envelope of each job enqueued on the subject's behalf, and the
worker calls :meth:`Grants.check` when the job starts. Every use and every refusal is
audited with actor and subject.

Token: ``base64url(canonical JSON of the claims) + "." + base64url(signature)``; the
signature covers the first part exactly as written, so no character of it can change.
"""

from __future__ import annotations

import builtins
import fnmatch
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import pydantic
import sqlalchemy as sa

from amqp_jobs.errors import AmqpJobsError
from amqp_jobs.ids import new_job_id
from amqp_jobs.security.encryption import b64decode, b64encode
from amqp_jobs.security.errors import SignatureError
from amqp_jobs.store.database import JobStore
from amqp_jobs.store.schema_security import grants as grants_table
from amqp_jobs.store.schema_security import impersonators

if TYPE_CHECKING:
    from amqp_jobs.security.audit import AuditLog
    from amqp_jobs.security.signing import Keyring, SigningKey

DEFAULT_MAX_TTL: Final = timedelta(days=7)
"""Longest a grant may last unless :class:`Grants` is told otherwise."""

CLOCK_SKEW: Final = 60.0
"""Seconds a grant's ``issued_at`` may lie in the future (clocks of machines differ)."""

MAX_REASON_CHARS: Final = 1000
MAX_TOKEN_CHARS: Final = 16_384
_PERMISSION_PREFIX: Final = "perm:"


class GrantError(AmqpJobsError):
    """A grant was refused: at issue (bad request) or at use (invalid for this job).

    ``reason`` is the sentence saying why (also ``str(error)``); ``code`` a short,
    stable word for programs: ``not_allowed``, ``bad_request``, ``malformed``,
    ``untrusted_key``, ``bad_signature``, ``not_yet_valid``, ``expired``, ``unknown``,
    ``revoked``, ``subject_mismatch``, ``tenant_mismatch``, ``out_of_scope``.
    """

    def __init__(self, reason: str, *, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _Claims(pydantic.BaseModel):
    """What a token states, signed."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str
    actor: str
    subject: str
    tenant: str | None
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    reason: str
    approved_by: str
    key_id: str


class Grant(pydantic.BaseModel):
    """A grant for ``actor`` to run ``scopes`` as ``subject`` until ``expires_at``.

    ``scopes`` are job names, glob patterns of job names (``"reports.*"``) or
    ``"perm:<permission>"`` (covers any job that needs that permission). Times are Unix
    seconds. ``token`` is the signed form that travels with jobs. ``revoked_at`` and
    ``revoked_by`` are the store's knowledge, not part of the token.
    """

    model_config = pydantic.ConfigDict(frozen=True)

    id: str
    actor: str
    subject: str
    tenant: str | None
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    reason: str
    approved_by: str
    key_id: str
    token: str
    revoked_at: float | None = None
    revoked_by: str | None = None

    def covers(self, job: str, permissions: Sequence[str] = ()) -> bool:
        """Whether a scope names ``job`` (or a pattern matching it), or one of ``permissions``."""
        for scope in self.scopes:
            if scope.startswith(_PERMISSION_PREFIX):
                if scope[len(_PERMISSION_PREFIX) :] in permissions:
                    return True
            elif fnmatch.fnmatchcase(job, scope):
                return True
        return False

    def active(self, now: float | None = None) -> bool:
        """Not revoked (as far as this copy knows) and not expired."""
        return self.revoked_at is None and (time.time() if now is None else now) < self.expires_at


def read_claims(token: str) -> dict[str, Any] | None:
    """The claims of a token WITHOUT checking its signature (None if unreadable).

    For records of what was claimed (the audit trail); decisions use :meth:`Grants.check`.
    """
    try:
        return _parse(token)[0].model_dump()
    except GrantError:
        return None


def _parse(token: str) -> tuple[_Claims, str, str]:
    """(claims, signed part, signature) of a token, or GrantError("malformed")."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise GrantError("the grant token is not a string of a sensible size", code="malformed")
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise GrantError(
            "the grant token is malformed (expected '<claims>.<signature>')", code="malformed"
        )
    try:
        claims = _Claims.model_validate_json(b64decode(payload, "grant claims"))
    except (ValueError, pydantic.ValidationError):
        raise GrantError("the grant token's claims cannot be read", code="malformed") from None
    return claims, payload, signature


def _seconds(ttl: timedelta | float, what: str) -> float:
    if isinstance(ttl, timedelta):
        return ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise GrantError(f"{what} must be a timedelta or seconds, not {ttl!r}", code="bad_request")
    return float(ttl)


def _required_text(name: str, value: Any, limit: int = 255) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GrantError(f"a grant needs a non-empty {name}", code="bad_request")
    if len(value) > limit:
        raise GrantError(
            f"the grant's {name} is {len(value)} characters long; the limit is {limit}",
            code="bad_request",
        )
    return value


def _checked_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        raise GrantError(
            "scopes must be a list of job names, patterns or 'perm:<permission>', "
            f"not the single string {scopes!r}",
            code="bad_request",
        )
    checked = tuple(scopes)
    if not checked:
        raise GrantError("a grant needs at least one scope", code="bad_request")
    for scope in checked:
        _required_text("scope", scope)
        if scope == _PERMISSION_PREFIX:
            raise GrantError("scope 'perm:' names no permission", code="bad_request")
        if scope.strip("*?") == "":
            raise GrantError(
                f"scope {scope!r} would cover every job; name the jobs or patterns",
                code="bad_request",
            )
    return checked


class Grants:
    """Issues, checks, lists and revokes impersonation grants, and keeps the list of
    actors who may impersonate.

    ``signing_key`` signs new grants; ``keyring`` holds the public keys whose grants
    are trusted (include ``signing_key.public_key()``). ``audit`` receives every issue,
    revocation, use and refusal. ``max_ttl`` caps a grant's life. Revocations and the
    impersonator list are looked up at most every ``cache_ttl`` seconds per grant and
    actor; this object's own :meth:`revoke` and :meth:`disallow` take effect at once.
    ``clock`` returns Unix time (a test may pass a fake one).
    """

    def __init__(
        self,
        store: JobStore,
        signing_key: SigningKey,
        keyring: Keyring,
        audit: AuditLog | None = None,
        *,
        max_ttl: timedelta | float = DEFAULT_MAX_TTL,
        cache_ttl: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.keyring = keyring
        self.audit = audit
        self.max_ttl = _seconds(max_ttl, "max_ttl")
        if self.max_ttl <= 0:
            raise ValueError(f"max_ttl must be positive, not {max_ttl!r}")
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._revoked: dict[str, tuple[float, bool | None]] = {}  # id -> (read at, revoked)
        self._allowed: dict[str, tuple[float, bool]] = {}  # actor -> (read at, allowed)
        self._cache_limit = 10_000

    # --- who may impersonate ------------------------------------------------------------

    async def allow(self, actor: str, *, by: str | None = None) -> None:
        """Let ``actor`` be granted impersonation (idempotent)."""
        actor = _required_text("actor", actor)
        insert = self.store.insert()(impersonators).values(
            actor=actor, allowed_by=by, allowed_at=time.time()
        )
        engine = await self.store.engine()
        async with engine.begin() as connection:
            await connection.execute(insert.on_conflict_do_nothing())
        self._allowed.pop(actor, None)
        await self._audit("impersonation.allow", actor=by, on_behalf_of=None, detail={"of": actor})

    async def disallow(self, actor: str, *, by: str | None = None) -> bool:
        """Stop ``actor`` impersonating: their grants, even unexpired ones, stop working
        (at once in this process, within ``cache_ttl`` in others).

        Returns whether they were allowed before.
        """
        engine = await self.store.engine()
        async with engine.begin() as connection:
            result = await connection.execute(
                impersonators.delete().where(impersonators.c.actor == actor)
            )
        self._allowed[actor] = (time.monotonic(), False)
        removed = bool(result.rowcount)
        if removed:
            await self._audit("impersonation.disallow", actor=by, detail={"of": actor})
        return removed

    async def may_impersonate(self, actor: str) -> bool:
        """Whether ``actor`` is on the list of impersonators (fresh from the store)."""
        engine = await self.store.engine()
        async with engine.connect() as connection:
            found = (
                await connection.execute(
                    sa.select(impersonators.c.actor).where(impersonators.c.actor == actor)
                )
            ).first()
        allowed = found is not None
        self._remember(self._allowed, actor, allowed)
        return allowed

    # --- issuing ------------------------------------------------------------------------

    async def issue(
        self,
        *,
        actor: str,
        subject: str,
        scopes: Sequence[str],
        ttl: timedelta | float,
        reason: str,
        approved_by: str,
        tenant: str | None = None,
    ) -> Grant:
        """Grant ``actor`` the right to run ``scopes`` as ``subject`` for ``ttl``.

        Refused with :class:`GrantError` (code ``bad_request`` or ``not_allowed``) when
        a field is empty or too long, the ttl is not positive or above ``max_ttl``, the
        approver is the actor, actor and subject are the same, or the actor is not
        allowed to impersonate.
        """
        actor = _required_text("actor", actor)
        subject = _required_text("subject", subject)
        approved_by = _required_text("approver (approved_by)", approved_by)
        reason = _required_text("reason", reason, MAX_REASON_CHARS)
        checked_scopes = _checked_scopes(scopes)
        if tenant is not None:
            tenant = _required_text("tenant", tenant)
        seconds = _seconds(ttl, "ttl")
        if not 0 < seconds <= self.max_ttl:
            raise GrantError(
                f"a grant's ttl must be more than 0 and at most {self.max_ttl:g} seconds, "
                f"not {seconds:g}",
                code="bad_request",
            )
        if approved_by == actor:
            raise GrantError(
                f"{actor!r} cannot approve their own grant; another person must approve it",
                code="bad_request",
            )
        if subject == actor:
            raise GrantError(f"{actor!r} need not impersonate themselves", code="bad_request")
        if not await self.may_impersonate(actor):
            raise GrantError(
                f"{actor!r} is not allowed to impersonate anyone (see Grants.allow)",
                code="not_allowed",
            )
        now = self.clock()
        claims = _Claims(
            id=new_job_id(),
            actor=actor,
            subject=subject,
            tenant=tenant,
            scopes=checked_scopes,
            issued_at=now,
            expires_at=now + seconds,
            reason=reason,
            approved_by=approved_by,
            key_id=self.signing_key.key_id,
        )
        payload = b64encode(claims.model_dump_json().encode())
        token = f"{payload}.{self.signing_key.sign(payload.encode('ascii'))}"
        grant = Grant(**claims.model_dump(), token=token)
        row = grant.model_dump(exclude={"revoked_at", "revoked_by"})
        row["scopes"] = list(grant.scopes)
        engine = await self.store.engine()
        async with engine.begin() as connection:
            await connection.execute(grants_table.insert().values(**row))
        await self._audit(
            "grant.issue",
            actor=actor,
            on_behalf_of=subject,
            tenant=tenant,
            detail={
                "grant_id": grant.id,
                "scopes": list(grant.scopes),
                "expires_at": grant.expires_at,
                "approved_by": approved_by,
                "reason": reason[:200],
            },
        )
        return grant

    # --- checking -----------------------------------------------------------------------

    async def check(
        self,
        token: str,
        *,
        job: str,
        tenant: str | None,
        subject: str,
        permissions: Sequence[str] = (),
        job_id: str | None = None,
    ) -> Grant:
        """The grant ``token`` stands for, if it lets its actor run ``job`` as ``subject``
        in ``tenant`` now; else :class:`GrantError` saying why.

        Checks, in order: the token's form, its signature by a trusted key, its time
        window, that the store knows it and it is not revoked, the subject, the tenant,
        the scope (a job name or pattern, or ``perm:P`` with P in ``permissions``), and
        that the actor is still allowed to impersonate. Audits ``impersonation.use`` or
        ``impersonation.refused`` (with the reason), naming actor and subject.
        """
        claims: _Claims | None = None
        try:
            claims, payload, signature = _parse(token)
            self._verify_signature(claims.key_id, payload, signature)
            grant = await self._check_claims(
                claims, token, job=job, tenant=tenant, subject=subject, permissions=permissions
            )
        except GrantError as refusal:
            await self._audit(
                "impersonation.refused",
                actor=claims.actor if claims else None,
                on_behalf_of=claims.subject if claims else subject,
                user_id=subject,
                tenant=tenant,
                job_id=job_id,
                job=job,
                outcome=refusal.code,
                detail={"reason": refusal.reason, "grant_id": claims.id if claims else None},
            )
            raise
        await self._audit(
            "impersonation.use",
            actor=grant.actor,
            on_behalf_of=grant.subject,
            user_id=subject,
            tenant=tenant,
            job_id=job_id,
            job=job,
            outcome="allowed",
            detail={"grant_id": grant.id},
        )
        return grant

    def _verify_signature(self, key_id: str, payload: str, signature: str) -> None:
        if key_id not in self.keyring:
            raise GrantError(
                f"the grant is signed by key {key_id!r}, which is not trusted",
                code="untrusted_key",
            )
        try:
            self.keyring.verify(key_id, payload.encode("ascii"), signature, subject="grant")
        except SignatureError as exc:
            raise GrantError(
                f"the grant's signature is invalid: {exc}", code="bad_signature"
            ) from None

    async def _check_claims(
        self,
        claims: _Claims,
        token: str,
        *,
        job: str,
        tenant: str | None,
        subject: str,
        permissions: Sequence[str],
    ) -> Grant:
        grant = Grant(**claims.model_dump(), token=token)
        now = self.clock()
        if grant.issued_at > now + CLOCK_SKEW:
            raise GrantError(f"grant {grant.id} is not valid yet", code="not_yet_valid")
        if now >= grant.expires_at:
            ago = now - grant.expires_at
            raise GrantError(f"grant {grant.id} expired {ago:.0f}s ago", code="expired")
        revoked = await self._is_revoked(grant.id)
        if revoked is None:
            raise GrantError(f"grant {grant.id} was never issued by this store", code="unknown")
        if revoked:
            raise GrantError(f"grant {grant.id} was revoked", code="revoked")
        if grant.subject != subject:
            raise GrantError(
                f"grant {grant.id} is for {grant.subject!r}, not for {subject!r}",
                code="subject_mismatch",
            )
        if grant.tenant != tenant:
            raise GrantError(
                f"grant {grant.id} is for tenant {grant.tenant!r}, not {tenant!r}",
                code="tenant_mismatch",
            )
        if not grant.covers(job, permissions):
            raise GrantError(
                f"grant {grant.id} does not cover job {job!r} (its scopes: "
                f"{', '.join(grant.scopes)})",
                code="out_of_scope",
            )
        if not await self._actor_allowed(grant.actor):
            raise GrantError(
                f"{grant.actor!r} is no longer allowed to impersonate", code="not_allowed"
            )
        return grant

    async def _is_revoked(self, grant_id: str) -> bool | None:
        """True/False, or None for a grant the store does not know (cached briefly)."""
        cached = self._revoked.get(grant_id)
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return cached[1]
        engine = await self.store.engine()
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(grants_table.c.revoked_at).where(grants_table.c.id == grant_id)
                )
            ).first()
        revoked = None if row is None else row.revoked_at is not None
        self._remember(self._revoked, grant_id, revoked)
        return revoked

    async def _actor_allowed(self, actor: str) -> bool:
        cached = self._allowed.get(actor)
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return cached[1]
        return await self.may_impersonate(actor)

    def _remember(self, cache: dict[str, Any], key: str, value: Any) -> None:
        if len(cache) >= self._cache_limit:
            cache.clear()  # simple bound; entries are cheap to read again
        cache[key] = (time.monotonic(), value)

    # --- revoking and reading -----------------------------------------------------------

    async def revoke(self, grant_id: str, *, by: str | None = None) -> bool:
        """Revoke a grant; True if it was active-or-expired and unrevoked, False if unknown
        or already revoked. Checks in this process refuse it from now on."""
        now = self.clock()
        engine = await self.store.engine()
        async with engine.begin() as connection:
            result = await connection.execute(
                grants_table.update()
                .where(grants_table.c.id == grant_id, grants_table.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=by)
            )
            revoked = bool(result.rowcount)
            row = (
                await connection.execute(
                    sa.select(
                        grants_table.c.actor, grants_table.c.subject, grants_table.c.tenant
                    ).where(grants_table.c.id == grant_id)
                )
            ).first()
        if row is not None:
            self._revoked[grant_id] = (time.monotonic(), True)
        if revoked and row is not None:
            await self._audit(
                "grant.revoke",
                actor=by,
                on_behalf_of=row.subject,
                tenant=row.tenant,
                detail={"grant_id": grant_id, "grant_actor": row.actor},
            )
        return revoked

    async def get(self, grant_id: str) -> Grant | None:
        """The grant of that id as stored (with its revocation), or None."""
        engine = await self.store.engine()
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(grants_table).where(grants_table.c.id == grant_id)
                )
            ).first()
        return None if row is None else _grant(row)

    async def list(
        self,
        *,
        active_only: bool = False,
        actor: str | None = None,
        subject: str | None = None,
        limit: int = 1000,
    ) -> builtins.list[Grant]:
        """Grants, newest first; ``active_only`` leaves out revoked and expired ones."""
        query = sa.select(grants_table)
        if active_only:
            query = query.where(
                grants_table.c.revoked_at.is_(None), grants_table.c.expires_at > self.clock()
            )
        if actor is not None:
            query = query.where(grants_table.c.actor == actor)
        if subject is not None:
            query = query.where(grants_table.c.subject == subject)
        query = query.order_by(grants_table.c.issued_at.desc(), grants_table.c.id.desc())
        engine = await self.store.engine()
        async with engine.connect() as connection:
            rows = (await connection.execute(query.limit(limit))).all()
        return [_grant(row) for row in rows]

    async def _audit(self, action: str, **entry: Any) -> None:
        if self.audit is None:
            return
        detail = entry.pop("detail", None)
        if detail is not None:
            detail = {k: v for k, v in detail.items() if v is not None}
        await self.audit.record(action, detail=detail, **entry)


def _grant(row: sa.Row[Any]) -> Grant:
    values = dict(row._mapping)
    values["scopes"] = tuple(values["scopes"] or ())
    return Grant(**values)


__all__ = ["DEFAULT_MAX_TTL", "Grant", "GrantError", "Grants", "read_claims"]
