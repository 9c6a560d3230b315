"""The audit trail: an append-only, hash-chained log of who did what to which job.

Each entry's hash is ``sha256(prev_hash || canonical JSON of the entry)`` (the JSON
includes its ``seq``), and its ``prev_hash`` is the hash of the entry before it, so an
entry edited, deleted, moved or cut off breaks the chain where it happened.
:meth:`AuditLog.verify` walks the chain and names the first bad entry.

Appends come from many processes (workers and publishers on one SQLite file, or on
several machines against PostgreSQL). Each append transaction locks the one-row chain
head first (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the transaction starts
with a write, which takes the database's write lock), numbers its entries after the
head, writes them and moves the head. So the chain stays one line whoever appends.
Entries are written by a group commit: records made within a millisecond of each other
share one transaction.

Entries never hold payloads: only ids, names, outcomes and small details.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from amqp_jobs.errors import AmqpJobsError, StoreError
from amqp_jobs.middleware import Middleware
from amqp_jobs.store.database import GroupCommit, JobStore
from amqp_jobs.store.schema_security import audit_head, audit_log

if TYPE_CHECKING:
    from amqp_jobs.context import JobContext
    from amqp_jobs.envelope import Envelope

log = logging.getLogger(__name__)

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first entry."""

MAX_DETAIL_BYTES: Final = 4096
"""Largest ``detail`` (as canonical JSON) an entry may carry: details, never payloads."""

_HEAD_ID: Final = 1
_ENTRY_FIELDS: Final = (
    "seq",
    "at",
    "action",
    "actor",
    "on_behalf_of",
    "user_id",
    "tenant",
    "job_id",
    "job",
    "outcome",
    "detail",
)
_TEXT_LIMITS: Final = {
    "action": 64,
    "actor": 255,
    "on_behalf_of": 255,
    "user_id": 255,
    "tenant": 255,
    "job_id": 36,
    "job": 255,
    "outcome": 64,
}


class AuditError(AmqpJobsError):
    """An audit entry could not be recorded (bad input, or the store failed)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log, as stored."""

    seq: int
    at: float
    action: str
    actor: str | None
    on_behalf_of: str | None
    user_id: str | None
    tenant: str | None
    job_id: str | None
    job: str | None
    outcome: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """The first place where the audit chain is broken.

    ``kind`` is one of ``edited``, ``missing``, ``out_of_order``, ``truncated``,
    ``head_missing`` or ``outside_chain``; ``seq`` the first bad entry; ``message`` a
    sentence for people.
    """

    seq: int
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class _Pending:
    """An entry waiting for its seq (given under the chain head's lock)."""

    at: float
    action: str
    actor: str | None
    on_behalf_of: str | None
    user_id: str | None
    tenant: str | None
    job_id: str | None
    job: str | None
    outcome: str | None
    detail: str  # canonical JSON


def canonical_json(value: Any) -> str:
    """The one JSON spelling of ``value`` that hashes are computed over."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """``sha256(prev_hash || canonical JSON of the entry's fields, seq included)``.

    ``fields`` holds every name in the entry but ``prev_hash`` and ``hash``, with
    ``detail`` as a dict.
    """
    body = canonical_json({name: fields[name] for name in _ENTRY_FIELDS})
    return hashlib.sha256(prev_hash.encode("ascii") + body.encode("utf-8")).hexdigest()


class AuditLog:
    """The audit log of one store: :meth:`record` entries, :meth:`verify` the chain,
    read :meth:`entries`.

    ``max_batch`` and ``max_delay`` tune the group commit (entries per transaction, and
    how long an idle log waits to gather a batch); :meth:`verify` reads ``verify_page``
    entries at a time.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        max_batch: int = 500,
        max_delay: float = 0.001,
        verify_page: int = 1000,
    ) -> None:
        if verify_page < 1:
            raise ValueError(f"verify_page must be at least 1, not {verify_page}")
        self.store = store
        self.verify_page = verify_page
        # GroupCommit is typed for job state changes; it only queues and hands back
        # opaque items, so it serves audit entries as well.
        self._writer = GroupCommit(self._append, max_batch=max_batch, max_delay=max_delay)

    async def record(
        self,
        action: str,
        *,
        actor: str | None = None,
        on_behalf_of: str | None = None,
        user_id: str | None = None,
        tenant: str | None = None,
        job_id: str | None = None,
        job: str | None = None,
        outcome: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one entry; return once the transaction holding it has committed.

        Raises :class:`AuditError` when an argument is unfit (an empty action, a text
        too long for its column, a detail that is not small JSON) or the store fails.
        """
        pending = _Pending(
            at=time.time(),
            action=_checked_action(action),
            actor=_checked_text("actor", actor),
            on_behalf_of=_checked_text("on_behalf_of", on_behalf_of),
            user_id=_checked_text("user_id", user_id),
            tenant=_checked_text("tenant", tenant),
            job_id=_checked_text("job_id", job_id),
            job=_checked_text("job", job),
            outcome=_checked_text("outcome", outcome),
            detail=_checked_detail(detail),
        )
        await self.store.open()
        try:
            await self._writer.submit(pending)  # type: ignore[arg-type]
        except StoreError as exc:
            raise AuditError(f"could not record audit entry {action!r}: {exc}") from exc

    async def drain(self) -> None:
        """Write every entry still waiting for its transaction."""
        await self._writer.drain()

    async def _append(self, batch: list[Any]) -> None:
        pending: list[_Pending] = batch
        engine = await self.store.engine()
        async with self.store.writing(), engine.begin() as connection:
            seq, prev_hash = await self._lock_head(connection)
            rows: list[dict[str, Any]] = []
            for item in pending:
                seq += 1
                row = {name: getattr(item, name) for name in _ENTRY_FIELDS if name != "seq"}
                row["seq"] = seq
                row["prev_hash"] = prev_hash
                row["hash"] = prev_hash = entry_hash(prev_hash, {**row, "detail": _load(item)})
                rows.append(row)
            await connection.execute(audit_log.insert(), rows)
            await connection.execute(
                audit_head.update()
                .where(audit_head.c.id == _HEAD_ID)
                .values(seq=seq, hash=prev_hash, updated_at=time.time())
            )

    async def _lock_head(self, connection: AsyncConnection) -> tuple[int, str]:
        """Lock the chain head for this transaction and return (last seq, last hash).

        The first statement is a write on both databases: on SQLite it takes the write
        lock before anything is read (a write statement starts a write transaction
        even when it changes no row), so no other appender can slip in between this
        read and our writes, and no stale read snapshot has to be upgraded.
        """
        await connection.execute(
            self.store.insert()(audit_head)
            .values(id=_HEAD_ID, seq=0, hash=GENESIS_HASH, updated_at=time.time())
            .on_conflict_do_nothing()
        )
        query = sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID)
        if self.store.dialect == "postgresql":
            query = query.with_for_update()
        row = (await connection.execute(query)).one()
        return int(row.seq), str(row.hash)

    async def head(self) -> tuple[int, str]:
        """The last entry's seq and hash ((0, genesis) for an empty log).

        Keep it somewhere else now and then (a ticket, a log line): a log whose tail was
        cut off *and* whose head was rewritten to match can only be caught that way.
        """
        engine = await self.store.engine()
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(audit_head.c.seq, audit_head.c.hash).where(
                        audit_head.c.id == _HEAD_ID
                    )
                )
            ).first()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))

    async def verify(self) -> AuditProblem | None:
        """Recompute the chain in seq order; return the first bad entry, or None.

        Reads in pages (bounded memory) up to the head as it was when the check began,
        so appends made meanwhile neither disturb nor extend the check.
        """
        engine = await self.store.engine()
        async with engine.connect() as connection:
            head = (
                await connection.execute(
                    sa.select(audit_head.c.seq, audit_head.c.hash).where(
                        audit_head.c.id == _HEAD_ID
                    )
                )
            ).first()
            walker = _ChainWalker()
            query = sa.select(audit_log).order_by(audit_log.c.seq).limit(self.verify_page)
            if head is not None:
                query = query.where(audit_log.c.seq <= head.seq)
            last = 0
            while True:
                page = (await connection.execute(query.where(audit_log.c.seq > last))).all()
                for row in page:
                    problem = walker.step(row)
                    if problem is not None:
                        return problem
                if len(page) < self.verify_page:
                    break
                last = int(page[-1].seq)
            if head is None:
                if walker.seq == 0:
                    return None  # nothing was ever appended
                return AuditProblem(
                    walker.seq,
                    "head_missing",
                    f"the chain head is missing: the log's end (entry {walker.seq}) cannot "
                    "be confirmed",
                )
            problem = walker.finish(int(head.seq), str(head.hash))
            if problem is not None:
                return problem
            return await self._beyond_head(connection)

    async def _beyond_head(self, connection: AsyncConnection) -> AuditProblem | None:
        # The highest seq first, then the head: an honest append moves both in one
        # transaction, so only an entry written outside the chain lies beyond the head.
        highest = (await connection.execute(sa.select(sa.func.max(audit_log.c.seq)))).scalar()
        head_seq = (
            await connection.execute(sa.select(audit_head.c.seq).where(audit_head.c.id == _HEAD_ID))
        ).scalar()
        if highest is not None and head_seq is not None and int(highest) > int(head_seq):
            first = int(head_seq) + 1
            return AuditProblem(
                first,
                "outside_chain",
                f"entry {first} was written outside the chain (the chain head ends at "
                f"entry {head_seq}, but entries up to {highest} exist)",
            )
        return None

    async def entries(
        self,
        *,
        user_id: str | None = None,
        job_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        after_seq: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries matching every given filter, in seq order (``newest_first`` reverses it).

        ``user_id`` matches the user an entry is about or the one acting on their behalf
        is impersonating; ``since`` is a Unix time; ``after_seq`` pages on.
        """
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be 1..10000, not {limit}")
        query = sa.select(audit_log)
        if user_id is not None:
            query = query.where(
                sa.or_(audit_log.c.user_id == user_id, audit_log.c.on_behalf_of == user_id)
            )
        if job_id is not None:
            query = query.where(audit_log.c.job_id == job_id)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        if after_seq is not None:
            query = query.where(
                audit_log.c.seq < after_seq if newest_first else audit_log.c.seq > after_seq
            )
        order = audit_log.c.seq.desc() if newest_first else audit_log.c.seq
        engine = await self.store.engine()
        async with engine.connect() as connection:
            rows = (await connection.execute(query.order_by(order).limit(limit))).all()
        return [_entry(row) for row in rows]


class _ChainWalker:
    """Checks entries one by one, in seq order, against the entry before."""

    def __init__(self) -> None:
        self.seq = 0
        self.hash = GENESIS_HASH

    def step(self, row: sa.Row[Any]) -> AuditProblem | None:
        seq = int(row.seq)
        expected = self.seq + 1
        if seq != expected:
            return AuditProblem(
                expected,
                "missing",
                f"entry {expected} is missing (deleted: the log jumps from entry "
                f"{self.seq} to entry {seq})",
            )
        if row.prev_hash != self.hash:
            return AuditProblem(
                seq,
                "out_of_order",
                f"entry {seq} is out of order: its prev_hash does not match the hash of "
                f"entry {self.seq} (entries were moved, replaced or inserted)",
            )
        try:
            detail = json.loads(row.detail)
        except (TypeError, ValueError):
            return AuditProblem(seq, "edited", f"entry {seq} was edited (its detail is not JSON)")
        fields = {name: getattr(row, name) for name in _ENTRY_FIELDS}
        fields["detail"] = detail
        if entry_hash(row.prev_hash, fields) != row.hash:
            return AuditProblem(
                seq, "edited", f"entry {seq} was edited (its hash does not match its contents)"
            )
        self.seq, self.hash = seq, str(row.hash)
        return None

    def finish(self, head_seq: int, head_hash: str) -> AuditProblem | None:
        if self.seq < head_seq:
            first = self.seq + 1
            return AuditProblem(
                first,
                "truncated",
                f"entry {first} is missing: the log ends at entry {self.seq} but its chain "
                f"head records entry {head_seq} (entries {first}..{head_seq} were deleted)",
            )
        if self.hash != head_hash:
            return AuditProblem(
                self.seq,
                "edited",
                f"entry {self.seq} was replaced: its hash does not match the chain head",
            )
        return None


def _checked_action(action: str) -> str:
    if not isinstance(action, str) or not action.strip():
        raise AuditError(f"an audit entry needs a non-empty action, not {action!r}")
    _checked_text("action", action)
    return action


def _checked_text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AuditError(f"audit {name} must be a string, not {type(value).__name__}")
    limit = _TEXT_LIMITS[name]
    if len(value) > limit:
        raise AuditError(f"audit {name} is {len(value)} characters long; the limit is {limit}")
    return value


def _checked_detail(detail: Mapping[str, Any] | None) -> str:
    if detail is None:
        return "{}"
    if not isinstance(detail, Mapping):
        raise AuditError(f"audit detail must be a mapping, not {type(detail).__name__}")
    try:
        text = canonical_json(dict(detail))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit detail must be plain JSON: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_DETAIL_BYTES:
        raise AuditError(
            f"audit detail is {size} bytes as JSON; the limit is {MAX_DETAIL_BYTES} "
            "(record ids and outcomes, never payloads)"
        )
    return text


def _load(item: _Pending) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(item.detail)
    return value


def _entry(row: sa.Row[Any]) -> AuditEntry:
    values = {field.name: getattr(row, field.name) for field in dataclasses.fields(AuditEntry)}
    values["detail"] = json.loads(row.detail)
    return AuditEntry(**values)


# --- Middleware ---------------------------------------------------------------------------


class AuditRecorder(Middleware):
    """Audits each job's life: enqueue, start, finish or failure, dead letter, cancel.

    Entries carry who acted (the grant's actor when the job runs on someone's behalf,
    else the envelope's user, else its publisher), whom for, the job's id and name and
    the outcome; never the payload, nor error messages (which may quote it): failures
    record the error type only.

    Worker entries are committed before the message is settled (the worker calls these
    hooks before it acks), so a job never ends unaudited: if the log cannot be written
    the hook raises and the message is not acknowledged. The "start" entry is written
    while the job runs (the group commit keeps it ahead of the outcome's entry), and the
    outcome hooks wait for it first, so a start that could not be written also keeps the
    message unacknowledged. An enqueue is already on the broker when ``after_publish``
    runs, so a failure there is logged instead.
    """

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._starts: dict[str, asyncio.Task[None]] = {}

    async def _started(self, job_id: str) -> None:
        """Wait for the job's "start" entry; raise if it could not be written."""
        start = self._starts.pop(job_id, None)
        if start is not None:
            await start

    def _forget_written(self, job_id: str, start: asyncio.Task[None]) -> None:
        # A written start needs no waiting; a failed one stays to fail the outcome hook.
        written = not start.cancelled() and start.exception() is None
        if written and self._starts.get(job_id) is start:
            del self._starts[job_id]

    async def after_publish(self, envelope: Envelope) -> None:
        delayed = envelope.not_before is not None and envelope.not_before > time.time()
        try:
            await self._record("enqueue", envelope, outcome="scheduled" if delayed else "queued")
        except AuditError as exc:
            log.error("job %s is queued but its enqueue was not audited: %s", envelope.id, exc)

    async def before_process(self, ctx: JobContext) -> None:
        start = asyncio.get_running_loop().create_task(
            self._record("start", ctx.envelope, outcome="running", worker=ctx.worker_id)
        )
        self._starts[ctx.job_id] = start
        start.add_done_callback(functools.partial(self._forget_written, ctx.job_id))

    async def after_process(
        self, ctx: JobContext, result: Any, error: BaseException | None
    ) -> None:
        await self._started(ctx.job_id)
        if error is None:
            await self._record("finish", ctx.envelope, outcome="succeeded")
        else:
            await self._record(
                "failure", ctx.envelope, outcome="failed", error_type=type(error).__name__
            )

    async def on_dead_letter(
        self, envelope: Envelope | None, reason: str, error_type: str | None
    ) -> None:
        if envelope is None:
            await self.audit.record(
                "dead_letter",
                outcome="dead",
                detail={"reason": "the message is not a valid job envelope"},
            )
            return
        await self._record(
            "dead_letter",
            envelope,
            outcome="dead",
            reason=_safe_reason(reason, error_type),
            error_type=error_type,
        )

    async def on_cancelled(self, envelope: Envelope) -> None:
        await self._started(envelope.id)
        await self._record("cancel", envelope, outcome="cancelled")

    async def _record(
        self, action: str, envelope: Envelope, *, outcome: str, **detail: Any
    ) -> None:
        user_id, tenant = envelope.owner
        actor, on_behalf_of, grant_id = user_id or envelope.publisher, None, None
        if envelope.grant is not None:
            claim = _grant_claim(envelope.grant)
            if claim is not None:
                actor, on_behalf_of, grant_id = claim
        detail.update(attempt=envelope.attempt, publisher=envelope.publisher, grant_id=grant_id)
        await self.audit.record(
            action,
            actor=actor,
            on_behalf_of=on_behalf_of,
            user_id=user_id,
            tenant=tenant,
            job_id=envelope.id,
            job=envelope.job,
            outcome=outcome,
            detail={k: v for k, v in detail.items() if v is not None},
        )


def _grant_claim(token: str) -> tuple[str | None, str | None, str | None] | None:
    """(actor, subject, grant id) a grant token claims, unverified, or None if unreadable.

    Good enough for the audit trail, which records claims; whether the grant holds is
    decided (and audited) by :meth:`amqp_jobs.security.grants.Grants.check`.
    """
    from amqp_jobs.security.grants import read_claims

    claims = read_claims(token)
    if claims is None:
        return None
    return (
        _text(claims.get("actor")),
        _text(claims.get("subject")),
        _text(claims.get("id")),
    )


def _safe_reason(reason: str, error_type: str | None) -> str:
    """The worker's own words of a dead-letter reason, without the job's error message
    (which may quote the payload)."""
    if error_type == "ValidationError":
        return "its input or output did not validate"
    if error_type is not None:
        marker = f": {error_type}:"
        cut = reason.find(marker)
        if cut != -1:
            return reason[: cut + len(marker) - 1]
    return reason[:300]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:255]
