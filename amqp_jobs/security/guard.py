"""Security: the configuration that ties signing, encryption, grants, audit, preferences
and user storage into an app's publishing and its workers.

``JobApp(..., store=..., security=Security(signing_key=..., trusted_keys=...,
master_key=..., encrypt=True))``. What each part does on the hot path:

- publishing: the payload is sealed for the job's user (a fresh AES-256-GCM data key per
  job, wrapped by the user's current key) when the encryption policy covers the job; the
  envelope is then signed with the service's Ed25519 key, last, in
  :meth:`Security.sign_body`, so retries and follow-ups the worker publishes are signed too.
- a worker checks, before anything else, that the envelope is signed by a trusted key;
  then, before the job starts: that a finished job is not being replayed, that an
  impersonation grant (if any) is valid for this job, and it opens the sealed payload.
  A refusal sends the message to the dead-letter queue with the reason, never retried,
  and is audited.
- outputs and progress of a sealed job are sealed for the same user before they are
  stored, and opened when ``handle.result()`` / ``handle.progress()`` read them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
import sqlalchemy as sa

from amqp_jobs.envelope import Envelope, Sealed, signing_bytes
from amqp_jobs.errors import ConfigurationError
from amqp_jobs.middleware import Middleware
from amqp_jobs.security.encryption import associated_data, open_json, seal_json
from amqp_jobs.security.errors import DecryptionError, SecurityError
from amqp_jobs.security.keys import KeyProvider, MasterKey, UserKeys
from amqp_jobs.security.signing import Keyring, PublicKey, SigningKey, verify_envelope
from amqp_jobs.security.users import UserContext
from amqp_jobs.store.database import FINAL_STATES
from amqp_jobs.store.schema import jobs

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp
    from amqp_jobs.jobs import JobDefinition
    from amqp_jobs.security.audit import AuditLog
    from amqp_jobs.security.grants import Grants
    from amqp_jobs.security.preferences import Preferences
    from amqp_jobs.security.storage import UserStorage
    from amqp_jobs.store.database import JobRecord, JobStore, Progress

log = logging.getLogger(__name__)

SEALED_MARKER = "$sealed"
"""Key of a stored JSON value that holds a :class:`Sealed` instead of plain data."""


class ReplayError(SecurityError):
    """An envelope of a job that already finished arrived again."""


class EncryptionRequiredError(SecurityError):
    """A job the encryption policy covers arrived (or was published) in plaintext."""


class Security:
    """What an app signs, verifies, encrypts and audits.

    ``signing_key``: this service's Ed25519 key (a :class:`SigningKey` or its text form
    ``"<key id>:<base64>"``); every envelope the app publishes is signed with it.
    ``trusted_keys``: the public keys workers accept (several per service, for rotation);
    when given, unsigned or badly signed jobs are refused. ``master_key``: wraps the user
    keys (a :class:`KeyProvider`, e.g. ``MasterKey.from_env()``); needed for encryption
    and user storage. ``encrypt``: False, True (every job that has a user), or a
    collection of tenants; ``@app.job(encrypt=True)`` turns it on for one job.
    ``storage_root`` enables ``ctx.storage``; ``preferences`` (a pydantic model) enables
    ``ctx.preferences``. ``audit`` records every job's life in the hash-chained log.
    ``replay_protection`` refuses an envelope of a job the store has seen finish.
    Everything but signing needs the app's store.
    """

    def __init__(
        self,
        *,
        signing_key: SigningKey | str | None = None,
        trusted_keys: Keyring | Iterable[PublicKey | str] | None = None,
        master_key: KeyProvider | None = None,
        encrypt: bool | Iterable[str] = False,
        storage_root: str | Path | None = None,
        storage_retention: timedelta = timedelta(days=30),
        preferences: type[pydantic.BaseModel] | None = None,
        audit: bool = True,
        replay_protection: bool = True,
        key_cache_size: int = 10_000,
        key_cache_ttl: float = 300.0,
        grant_max_ttl: timedelta = timedelta(days=7),
    ) -> None:
        self.signing_key = (
            SigningKey.from_text(signing_key) if isinstance(signing_key, str) else signing_key
        )
        self.keyring = _keyring(trusted_keys)
        if self.signing_key is not None and self.keyring is not None:
            own = self.signing_key.public_key()
            if own.key_id not in self.keyring:
                self.keyring.add(own)  # a service trusts what it signs itself
        self.master_key = master_key
        self.encrypt_all = encrypt is True
        self.encrypt_tenants = frozenset() if isinstance(encrypt, bool) else frozenset(encrypt)
        self.storage_root = storage_root
        self.storage_retention = storage_retention
        self.preferences_model = preferences
        self.audit_enabled = audit
        self.replay_protection = replay_protection
        self._key_cache = (key_cache_size, key_cache_ttl)
        self._grant_max_ttl = grant_max_ttl
        self.app: JobApp | None = None
        self.keys: UserKeys | None = None
        self.audit: AuditLog | None = None
        self.grants: Grants | None = None
        self.preferences: Preferences[Any] | None = None
        self.storage: UserStorage | None = None

    # --- set-up -----------------------------------------------------------------------

    def bind(self, app: JobApp) -> None:
        """Attach to ``app``: build the store-backed parts and install the middleware."""
        from amqp_jobs.security.audit import AuditLog, AuditRecorder
        from amqp_jobs.security.grants import Grants
        from amqp_jobs.security.preferences import Preferences
        from amqp_jobs.security.storage import UserStorage

        self.app = app
        store = app.store
        needs_store = [
            what
            for what, wanted in (
                ("encryption", self.encrypt_all or bool(self.encrypt_tenants)),
                ("user storage", self.storage_root is not None),
                ("preferences", self.preferences_model is not None),
            )
            if wanted
        ]
        if store is None:
            if needs_store:
                raise ConfigurationError(
                    f"security: {', '.join(needs_store)} need(s) a store: JobApp(store=...)"
                )
            return
        provider = self.master_key
        if provider is None and (self.encrypt_all or self.encrypt_tenants or self.storage_root):
            provider = MasterKey.from_env()  # a clear error when the variable is missing
        if provider is not None:
            size, ttl = self._key_cache
            self.keys = UserKeys(store, provider, cache_size=size, cache_ttl=ttl)
        if self.audit_enabled:
            self.audit = AuditLog(store)
            app.middleware.add(AuditRecorder(self.audit))
        if self.signing_key is not None:
            keyring = self.keyring or Keyring([self.signing_key.public_key()])
            self.grants = Grants(
                store, self.signing_key, keyring, self.audit, max_ttl=self._grant_max_ttl
            )
        if self.preferences_model is not None:
            self.preferences = Preferences(store, self.preferences_model)
        if self.storage_root is not None:
            assert self.keys is not None
            self.storage = UserStorage(
                self.storage_root, self.keys, retention=self.storage_retention
            )

    def _require_keys(self) -> UserKeys:
        if self.keys is None:
            raise ConfigurationError(
                "security: encryption needs a master key (Security(master_key=...) or the "
                "AMQP_JOBS_MASTER_KEY variable) and a store"
            )
        return self.keys

    # --- publishing -------------------------------------------------------------------

    def covers(self, envelope: Envelope, definition: JobDefinition | None) -> bool:
        """Whether the encryption policy covers this job."""
        if definition is not None and definition.options.get("encrypt") is not None:
            return bool(definition.options["encrypt"])
        if self.encrypt_all:
            return True
        tenant = envelope.owner[1]
        return tenant is not None and tenant in self.encrypt_tenants

    async def seal_envelope(self, envelope: Envelope, definition: JobDefinition | None) -> Envelope:
        """Encrypt the payload for the job's user when the policy covers the job."""
        if envelope.sealed is not None or not self.covers(envelope, definition):
            return envelope
        user_id, tenant = _owner(envelope)
        if not user_id:
            raise EncryptionRequiredError(
                f"job {envelope.job!r} must be encrypted for its user, but it has no user "
                "(pass user= or publish inside app.acting_as(user))"
            )
        version, key = await self._require_keys().current(user_id, tenant)
        aad = associated_data(envelope.id, envelope.job, user_id, tenant)
        sealed = seal_json(envelope.data, key, version, aad)
        return envelope.model_copy(update={"data": None, "sealed": sealed})

    def sign_body(self, envelope: Envelope) -> bytes | None:
        """The signed JSON body of ``envelope``, or None when the app does not sign.

        The signature is the envelope's last field, so the body is the signed bytes with
        the signature appended: one JSON encoding per publish, not two.
        """
        if self.signing_key is None:
            return None
        unsigned = signing_bytes(envelope)
        value = self.signing_key.sign(unsigned)
        return unsigned[:-1] + _signature_suffix(self.signing_key.key_id, value)

    # --- working ----------------------------------------------------------------------

    def verify(self, envelope: Envelope, body: bytes | None = None) -> None:
        """Refuse (:class:`SignatureError`) an envelope not signed by a trusted key.

        With the received ``body``, a body laid out as :meth:`sign_body` writes it (the
        signed bytes, then exactly the parsed signature and the closing brace) is checked
        as it came, without serialising the envelope again; anything else is checked by
        re-serialising the parsed envelope. Either way the bytes checked are the parsed
        fields: nothing can follow the signature.
        """
        if self.keyring is None:
            return
        signature = envelope.signature
        if body is not None and signature is not None:
            suffix = _signature_suffix(signature.key_id, signature.value)
            if body.endswith(suffix):
                signed = body[: -len(suffix)] + b"}"
                self.keyring.verify(signature.key_id, signed, signature.value, subject="envelope")
                return
        verify_envelope(envelope, self.keyring)

    async def admit(self, envelope: Envelope, definition: JobDefinition) -> Any:
        """Checks at the start of a job; returns its payload (opened if sealed).

        Raises :class:`SecurityError` or ``GrantError`` with the reason for a refusal.
        """
        if self.replay_protection and self.app is not None and self.app.store is not None:
            outcome = await self.app.store.outcome(envelope.id)
            # A job requeued from the dead-letter queue is re-stamped: newer than its end.
            if outcome is not None and outcome[0] in FINAL_STATES:
                state, ended_at = outcome
                if envelope.enqueued_at <= ended_at:
                    raise ReplayError(
                        f"job {envelope.id} already ended {state}; this envelope is a replay"
                    )
        if envelope.grant is not None:
            await self._check_grant(envelope)
        if envelope.sealed is None:
            if self.covers(envelope, definition) and _owner(envelope)[0]:
                raise EncryptionRequiredError(
                    f"job {envelope.job!r} must arrive encrypted for its user; it came in plaintext"
                )
            return envelope.data
        user_id, tenant = _owner(envelope)
        key = await self._require_keys().get(user_id, tenant, envelope.sealed.key_version)
        aad = associated_data(envelope.id, envelope.job, user_id, tenant)
        return open_json(envelope.sealed, key, aad)

    async def _check_grant(self, envelope: Envelope) -> None:
        if self.grants is None:
            from amqp_jobs.security.grants import GrantError

            raise GrantError(
                "this worker cannot check impersonation grants (it has no signing key and "
                "store configured)",
                code="unchecked",
            )
        user = UserContext.from_wire(envelope.user)
        assert envelope.grant is not None
        await self.grants.check(
            envelope.grant,
            job=envelope.job,
            tenant=user.tenant if user else None,
            subject=user.user_id if user else "",
            permissions=user.permissions if user else (),
            job_id=envelope.id,
        )

    async def refused(self, envelope: Envelope | None, reason: str, error_type: str) -> None:
        """Audit a refusal (the worker dead-letters the message)."""
        if self.audit is None:
            return
        user_id, tenant = _owner(envelope) if envelope is not None else ("", None)
        await self.audit.record(
            "refused",
            actor=envelope.publisher if envelope is not None else None,
            user_id=user_id or None,
            tenant=tenant,
            job_id=envelope.id if envelope is not None else None,
            job=envelope.job if envelope is not None else None,
            outcome="refused",
            detail={"error_type": error_type, "reason": reason[:500]},
        )

    # --- stored outputs and progress --------------------------------------------------

    async def seal_value(self, envelope: Envelope, purpose: str, value: Any) -> Any:
        """``value`` sealed for the job's user when the job itself was sealed."""
        if envelope.sealed is None or value is None:
            return value
        user_id, tenant = _owner(envelope)
        version, key = await self._require_keys().current(user_id, tenant)
        aad = associated_data(envelope.id, f"{envelope.job}#{purpose}", user_id, tenant)
        return {SEALED_MARKER: seal_json(value, key, version, aad).model_dump()}

    async def open_value(
        self,
        job_id: str,
        job: str,
        user_id: str | None,
        tenant: str | None,
        purpose: str,
        value: Any,
    ) -> Any:
        """Open a value :meth:`seal_value` stored (plain values pass through)."""
        if not (isinstance(value, Mapping) and SEALED_MARKER in value):
            return value
        sealed = Sealed.model_validate(value[SEALED_MARKER])
        key = await self._require_keys().get(user_id or "", tenant, sealed.key_version)
        aad = associated_data(job_id, f"{job}#{purpose}", user_id or "", tenant)
        return open_json(sealed, key, aad)

    async def open_record(self, record: JobRecord) -> Any:
        """The plain output of a stored job."""
        return await self.open_value(
            record.id, record.job, record.user_id, record.tenant, "result", record.result
        )

    async def open_progress(self, record: JobRecord, progress: Progress) -> Progress:
        """The progress report with its sealed message and data opened."""
        if SEALED_MARKER not in progress.data:
            return progress
        opened = await self.open_value(
            record.id, record.job, record.user_id, record.tenant, "progress", progress.data
        )
        return dataclasses.replace(
            progress, message=opened.get("message"), data=opened.get("data") or {}
        )

    # --- erasure ----------------------------------------------------------------------

    async def forget_user(self, user_id: str, tenant: str | None = None) -> dict[str, int]:
        """Crypto-shred a user: destroy their keys (their queued jobs then end dead, and
        their sealed results become unreadable), delete their stored results and
        artifacts, and audit it. Returns counts of what was destroyed."""
        keys = self._require_keys()
        destroyed = await keys.forget(user_id, tenant)
        removed = 0
        if self.storage is not None:
            removed = await self.storage.forget_user(user_id, tenant)
        cleared = 0
        if self.app is not None and self.app.store is not None:
            cleared = await _clear_results(self.app.store, user_id, tenant)
        if self.audit is not None:
            await self.audit.record(
                "key.forget",
                user_id=user_id,
                tenant=tenant,
                outcome="destroyed",
                detail={"key_versions": destroyed, "artifacts": removed, "results": cleared},
            )
        return {"key_versions": destroyed, "artifacts": removed, "results": cleared}

    async def rotate_user_key(self, user_id: str, tenant: str | None = None) -> int:
        """Start a new key version for a user (older data stays readable); audited."""
        version = await self._require_keys().rotate(user_id, tenant)
        if self.audit is not None:
            await self.audit.record(
                "key.rotate", user_id=user_id, tenant=tenant, outcome=f"version {version}"
            )
        return version


class SecurityMiddleware(Middleware):
    """Seals payloads at publish time (``@app.job(encrypt=True)`` is its job option)."""

    job_options: ClassVar[frozenset[str]] = frozenset({"encrypt"})

    def __init__(self, security: Security) -> None:
        self.security = security

    async def before_publish(self, envelope: Envelope) -> Envelope:
        app = self.security.app
        definition = app.registry.get(envelope.job) if app is not None else None
        return await self.security.seal_envelope(envelope, definition)


def _signature_suffix(key_id: str, value: str) -> bytes:
    """How a signed body ends: the signature field, then the envelope's closing brace."""
    field = json.dumps({"key_id": key_id, "value": value}, separators=(",", ":"))
    return b',"signature":' + field.encode() + b"}"


def _owner(envelope: Envelope) -> tuple[str, str | None]:
    """:attr:`Envelope.owner` with ``""`` for no user: the key and storage identity."""
    user_id, tenant = envelope.owner
    return user_id or "", tenant


def _keyring(keys: Keyring | Iterable[PublicKey | str] | None) -> Keyring | None:
    if keys is None or isinstance(keys, Keyring):
        return keys
    return Keyring(PublicKey.from_text(k) if isinstance(k, str) else k for k in keys)


async def _clear_results(store: JobStore, user_id: str, tenant: str | None) -> int:
    condition = jobs.c.user_id == user_id
    if tenant is not None:
        condition = sa.and_(condition, jobs.c.tenant == tenant)
    engine = await store.engine()
    async with engine.begin() as connection:
        result = await connection.execute(
            jobs.update()
            .where(condition)
            .values(result=None, progress_data=None, progress_message=None)
        )
    return int(result.rowcount or 0)


__all__ = [
    "SEALED_MARKER",
    "DecryptionError",
    "EncryptionRequiredError",
    "ReplayError",
    "Security",
    "SecurityMiddleware",
]
