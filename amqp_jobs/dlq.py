"""The dead-letter queue: list, requeue and purge what ended there, with each reason."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from amqp_jobs.envelope import CONTENT_TYPE, decode
from amqp_jobs.errors import EnvelopeError
from amqp_jobs.events import EVENT_ROUTING_KEY_HEADER
from amqp_jobs.transport.base import Delivery, OutgoingMessage
from amqp_jobs.worker import (
    DEAD_AT_HEADER,
    DEAD_ATTEMPTS_HEADER,
    DEAD_ERROR_HEADER,
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
)

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp


@dataclass(frozen=True, slots=True)
class DeadJob:
    """One message in the dead-letter queue."""

    id: str
    job: str
    queue: str
    reason: str
    error_type: str | None
    attempts: int | None
    dead_at: float | None
    size: int


def describe(delivery: Delivery) -> DeadJob:
    """Read what a dead-lettered message says about itself.

    Messages dead-lettered by a worker carry ``x-amqp-jobs-*`` headers; those the
    broker dead-lettered (rejected, expired, over a length limit) carry ``x-death``.
    """
    headers = delivery.headers
    reason = headers.get(DEAD_REASON_HEADER)
    queue = headers.get(DEAD_QUEUE_HEADER)
    dead_at = headers.get(DEAD_AT_HEADER)
    if reason is None:
        deaths: list[Any] = list(headers.get("x-death") or [])
        first: dict[str, Any] = deaths[0] if deaths else {}
        reason = f"dead-lettered by the broker: {_text(first.get('reason', 'unknown'))}"
        queue = first.get("queue")
        stamp: Any = first.get("time")
        dead_at = stamp.timestamp() if isinstance(stamp, datetime) else None
    attempts = headers.get(DEAD_ATTEMPTS_HEADER)
    error = headers.get(DEAD_ERROR_HEADER)
    return DeadJob(
        id=delivery.message_id or "",
        job=delivery.type or "",
        queue=_text(queue or ""),
        reason=_text(reason),
        error_type=_text(error) if error is not None else None,
        attempts=int(attempts) if attempts is not None else None,
        dead_at=float(dead_at) if dead_at is not None else None,
        size=len(delivery.body),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DeadLetters:
    """Manage the dead-letter queue of an app's namespace."""

    def __init__(self, app: JobApp) -> None:
        self.app = app

    @property
    def queue(self) -> str:
        """AMQP name of the dead-letter queue."""
        return self.app.topology.dead_letter_queue

    async def list(self, limit: int = 100) -> list[DeadJob]:
        """The oldest ``limit`` dead jobs; reading leaves them in the queue."""
        await self._ready()
        found: list[DeadJob] = []
        async with self.app.transport.reader(self.queue) as reader:
            while len(found) < limit and (delivery := await reader.get()) is not None:
                found.append(describe(delivery))
        return found

    async def requeue(self, job_id: str | None = None, *, limit: int = 100_000) -> int:
        """Send dead jobs back to their queue with fresh attempts; all when ``job_id`` is None.

        Returns how many were requeued. A message whose body is not a valid envelope is
        requeued unchanged (it will be dead-lettered again with its reason).
        """
        await self._ready()
        requeued = 0
        async with self.app.transport.reader(self.queue) as reader:
            seen = 0
            while seen < limit and (delivery := await reader.get()) is not None:
                seen += 1
                if job_id is not None and delivery.message_id != job_id:
                    continue
                await self._send_back(delivery)
                delivery.ack()
                requeued += 1
                if job_id is not None:
                    break
        return requeued

    async def purge(self) -> int:
        """Delete every dead job; return how many."""
        await self._ready()
        return await self.app.transport.purge(self.queue)

    async def _ready(self) -> None:
        await self.app.connect()
        await self.app.transport.declare(self.app.topology.infrastructure())

    async def _send_back(self, delivery: Delivery) -> None:
        dead = describe(delivery)
        body = delivery.body
        envelope = None
        with contextlib.suppress(EnvelopeError):  # not an envelope: requeued unchanged
            envelope = decode(body, max_bytes=None)
        if envelope is not None:
            envelope = envelope.model_copy(update={"attempt": 1, "enqueued_at": time.time()})
            body = self.app.client.encode(envelope)  # re-signed by this app's key, if any
            if self.app.security is not None and self.app.security.audit is not None:
                user_id, tenant = envelope.owner
                await self.app.security.audit.record(
                    "requeue",
                    actor=self.app.service_name,
                    user_id=user_id,
                    tenant=tenant,
                    job_id=envelope.id,
                    job=envelope.job,
                    outcome="requeued",
                )
        # An event a rule failed on goes back to the rule's queue, its name kept aside
        # (published directly to the queue, its routing key is the queue's name).
        kept = {k: v for k, v in delivery.headers.items() if k == EVENT_ROUTING_KEY_HEADER}
        message = OutgoingMessage(
            body=body,
            message_id=delivery.message_id or "",
            type=delivery.type or "",
            content_type=delivery.content_type or CONTENT_TYPE,
            priority=delivery.priority,
            headers=kept,
        )
        await self.app.transport.publish(message, "", dead.queue, timeout=self.app.publish_timeout)
