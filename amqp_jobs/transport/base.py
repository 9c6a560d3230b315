"""The small interface the rest of amqp-jobs uses to talk to a broker.

The AMQP implementation is :mod:`amqp_jobs.transport.amqp`; an in-memory or other
transport implements the same two classes.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amqp_jobs.topology import Declaration


@dataclass(slots=True)
class OutgoingMessage:
    """A message to publish; ``body`` is an encoded envelope."""

    body: bytes
    message_id: str
    type: str
    content_type: str
    priority: int | None = None
    app_id: str | None = None
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Publication:
    """One message and where it goes, for :meth:`Transport.publish_many`."""

    message: OutgoingMessage
    exchange: str
    routing_key: str


class Delivery(abc.ABC):
    """A message received from a queue, to be settled exactly once."""

    body: bytes
    queue: str
    message_id: str | None
    type: str | None
    content_type: str | None
    priority: int | None
    redelivered: bool
    headers: Mapping[str, Any]
    routing_key: str | None  # as published; events use it as their name

    @abc.abstractmethod
    def ack(self) -> None:
        """Acknowledge: the broker forgets the message. May be batched with other acks."""

    @abc.abstractmethod
    async def reject(self) -> None:
        """Reject without requeue: the broker dead-letters it through the queue's DLX."""

    @abc.abstractmethod
    async def requeue(self) -> None:
        """Give the message back to its queue (it comes back marked redelivered)."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


class Subscription(abc.ABC):
    """A running consumer."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new messages; settled and unsettled ones are unaffected."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel, then release the consumer's channel (unsettled messages go back)."""


class QueueReader(abc.ABC):
    """Reads messages one by one (basic.get) without consuming."""

    @abc.abstractmethod
    async def get(self) -> Delivery | None:
        """The next message, or None when the queue has no more."""


class Transport(abc.ABC):
    """A connection to a broker: declare, publish, consume."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending acks and close the connection."""

    @abc.abstractmethod
    async def declare(self, declarations: Iterable[Declaration]) -> None:
        """Declare exchanges, queues and bindings idempotently (cached per connection)."""

    @abc.abstractmethod
    async def delete(self, declarations: Iterable[Declaration]) -> None:
        """Delete the given exchanges and queues (used by tests and ``topology --delete``)."""

    @abc.abstractmethod
    async def publish(
        self, message: OutgoingMessage, exchange: str, routing_key: str, *, timeout: float
    ) -> None:
        """Publish with a confirm, as mandatory; raise a :class:`PublishError` on failure."""

    @abc.abstractmethod
    async def publish_many(
        self, publications: Iterable[Publication], *, timeout: float, window: int = 500
    ) -> list[BaseException | None]:
        """Publish many with up to ``window`` confirms in flight; one outcome per message."""

    @abc.abstractmethod
    async def consume(
        self,
        queue: str,
        handler: DeliveryHandler,
        *,
        prefetch: int,
        arguments: Mapping[str, Any] | None = None,
    ) -> Subscription:
        """Call ``handler`` for each message of ``queue``, with ``prefetch`` unsettled at most.

        ``arguments`` are consumer arguments (e.g. ``x-stream-offset`` for a stream).
        """

    @abc.abstractmethod
    def reader(self, queue: str) -> contextlib.AbstractAsyncContextManager[QueueReader]:
        """A reader of ``queue``: messages it reads and does not ack return to the queue."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete every ready message of ``queue``; return how many."""

    @abc.abstractmethod
    async def message_count(self, queue: str) -> int:
        """Number of ready messages in ``queue``."""
