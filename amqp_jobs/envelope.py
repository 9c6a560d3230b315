"""The wire format: one AMQP message per job, its body a JSON envelope.

Everything that decides how a job runs is inside the body. AMQP properties and
headers (``x-death``, ``redelivered``, ``user-id``...) are claims of the broker or
the publisher, used only as hints; the worker never trusts them for decisions.
"""

from __future__ import annotations

import time
from typing import Any

import pydantic

from amqp_jobs.errors import EnvelopeError
from amqp_jobs.ids import new_job_id

CONTENT_TYPE = "application/vnd.amqp-jobs.v1+json"
"""AMQP ``content_type`` of an envelope; the version is part of it."""

MAX_BODY_BYTES = 1_048_576
"""Default largest envelope a worker accepts; bigger ones are dead-lettered as oversized."""


class ChainStep(pydantic.BaseModel):
    """A step still to come in a chain: it runs with the previous step's output as input."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    id: str
    job: str
    queue: str | None = None
    input_field: str | None = None  # wrap the output as {input_field: output}
    # Run only if this holds for the previous output: a field-test mapping
    # (amqp_jobs.conditions) or the name of a condition registered with @app.condition.
    when: dict[str, Any] | str | None = None


class GroupMember(pydantic.BaseModel):
    """This job is member ``position`` of a group whose callback gets every output."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    id: str
    position: int
    callback: ChainStep


class Sealed(pydantic.BaseModel):
    """An encrypted payload: AES-256-GCM under a fresh data key, that key wrapped by the
    user's key of version ``key_version``. Binary fields are URL-safe base64."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    key_version: int
    wrapped_key: str  # nonce || AES-GCM(user key, data key), associated data bound
    nonce: str
    ciphertext: str


class EnvelopeSignature(pydantic.BaseModel):
    """Ed25519 signature over :func:`signing_bytes` by the key ``key_id``."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    key_id: str
    value: str  # URL-safe base64


class Envelope(pydantic.BaseModel):
    """One job on the wire.

    ``attempt`` is 1 for the first run and grows by one for each retry or each
    redelivery after a worker died. Times are Unix seconds (float).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    id: str = pydantic.Field(default_factory=new_job_id)
    job: str
    queue: str
    data: Any = None
    attempt: int = 1
    enqueued_at: float = pydantic.Field(default_factory=time.time)
    not_before: float | None = None
    expires_at: float | None = None
    priority: int | None = None
    publisher: str | None = None
    correlation_id: str | None = None
    parent_id: str | None = None
    idempotency_key: str | None = None
    labels: dict[str, str] = pydantic.Field(default_factory=dict)
    user: dict[str, Any] | None = None
    chain: tuple[ChainStep, ...] = ()
    group: GroupMember | None = None
    sealed: Sealed | None = None  # set instead of ``data`` when the payload is encrypted
    grant: str | None = None  # a signed impersonation grant, when published on someone's behalf
    signature: EnvelopeSignature | None = None  # last, over every other field

    @property
    def owner(self) -> tuple[str | None, str | None]:
        """``(user_id, tenant)`` of the job's user as text, each None when absent."""
        user = self.user or {}
        user_id, tenant = user.get("user_id"), user.get("tenant")
        return (None if user_id is None else str(user_id), None if tenant is None else str(tenant))

    def next_attempt(self, *, not_before: float | None = None) -> Envelope:
        """Return a copy of this envelope for the following attempt."""
        return self.model_copy(update={"attempt": self.attempt + 1, "not_before": not_before})


def signing_bytes(envelope: Envelope) -> bytes:
    """The bytes a signature covers: the JSON body without its ``signature`` field.

    The model fixes the field order, so publisher and worker produce the same bytes.
    """
    return envelope.model_dump_json(exclude={"signature"}).encode()


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope to its JSON body (field order is fixed by the model)."""
    return envelope.model_dump_json(exclude_defaults=False).encode()


def decode(body: bytes, *, max_bytes: int | None = MAX_BODY_BYTES) -> Envelope:
    """Parse and validate an envelope body (``max_bytes=None``: no size limit).

    Raises :class:`EnvelopeError` with a sentence saying what is wrong, so the
    worker can dead-letter the message with that reason.
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise EnvelopeError(f"body of {len(body)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return Envelope.model_validate_json(body)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:5]
        )
        raise EnvelopeError(f"body is not a valid job envelope ({problems})") from None
