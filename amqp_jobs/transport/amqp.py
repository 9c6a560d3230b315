"""RabbitMQ transport on aio-pika: robust connection, confirmed publishes, batched acks."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import aio_pika
import aiormq
import aiormq.exceptions
import tenacity
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from amqp_jobs.errors import (
    ConfigurationError,
    PublishNackedError,
    PublishTimeoutError,
    TransportError,
    UnroutableError,
)
from amqp_jobs.topology import BindingDecl, Declaration, ExchangeDecl, QueueDecl
from amqp_jobs.transport import pipelined
from amqp_jobs.transport.base import (
    Delivery,
    DeliveryHandler,
    OutgoingMessage,
    Publication,
    QueueReader,
    Subscription,
    Transport,
)

log = logging.getLogger(__name__)

_PIPELINE_BATCH = 100  # publishes per write; a batch is marshalled while holding the channel


def translate(error: BaseException, action: str) -> BaseException:
    """The amqp-jobs error for an aio-pika / aiormq error raised while doing ``action``."""
    if isinstance(error, aiormq.exceptions.PublishError):
        return UnroutableError(
            f"{action}: the broker returned the message as unroutable "
            f"({getattr(error.frame, 'reply_text', 'NO_ROUTE')}); "
            "declare the queue or check the route"
        )
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return PublishNackedError(
            f"{action}: the broker refused the message (negative confirm); "
            "the queue may be full (overflow reject-publish)"
        )
    if isinstance(error, TimeoutError):
        return PublishTimeoutError(
            f"{action}: no confirm from the broker in time; the job may or may not be queued"
        )
    if isinstance(error, aiormq.exceptions.ChannelPreconditionFailed):
        return ConfigurationError(
            f"{action}: the broker refused it ({error}); an existing queue or exchange "
            "was declared with other arguments: delete it or use another namespace"
        )
    if isinstance(error, aiormq.exceptions.AMQPError | ConnectionError | RuntimeError):
        return TransportError(f"{action}: {type(error).__name__}: {error}")
    return error


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn aio-pika / aiormq errors raised while doing ``action`` into amqp-jobs errors."""
    try:
        yield
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
        raise translate(exc, action) from exc


class BackoffRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, reconnecting with exponential backoff and jitter.

    aio-pika waits ``reconnect_interval`` between attempts; here that interval doubles
    with each failed attempt (up to ``MAX_RECONNECT_INTERVAL``) and falls back to the
    configured one once connected, so a fleet does not hammer a broker that is down.
    """

    MAX_RECONNECT_INTERVAL = 30.0

    @property
    def reconnect_interval(self) -> float:
        """Seconds to wait before the next attempt (read by aio-pika after each one)."""
        if self.connected.is_set():
            self._failed_attempts = 0
            return float(self._base_interval)
        self._failed_attempts += 1
        interval = min(
            self._base_interval * 2 ** (self._failed_attempts - 1), self.MAX_RECONNECT_INTERVAL
        )
        return float(interval * random.uniform(0.8, 1.0))

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._base_interval = float(value)
        self._failed_attempts = 0


class _AckBatcher:
    """Coalesces the acks of one channel.

    Acks requested during one event-loop iteration are sent together: the longest
    run of settled delivery tags from the oldest unsettled one goes as a single
    ``basic.ack(multiple=True)``; settled tags behind a still-running job go singly,
    so a long job never holds back the prefetch window.

    One sender at a time: aiormq's write queue is bounded and ``asyncio.Queue.put``
    is not first-come first-served (a new put takes a freed slot before a woken
    waiter does), so two concurrent senders could put a later batch's
    ``multiple=True`` ack ahead of an earlier batch's ack of a tag it covers, and
    the broker closes the channel on that "unknown delivery tag". Acks requested
    while the sender waits for room are taken by the sender itself, in order.
    """

    __slots__ = ("_channel", "_flush_scheduled", "_sender", "_unsettled")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel
        self._unsettled: dict[int, bool] = {}  # delivery tag -> acked, in delivery order
        self._flush_scheduled = False
        self._sender: asyncio.Task[None] | None = None

    def delivered(self, tag: int) -> None:
        self._unsettled[tag] = False

    def forget(self, tag: int) -> None:
        self._unsettled.pop(tag, None)

    def ack(self, tag: int) -> None:
        self._unsettled[tag] = True
        if self._sender is None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self, timeout: float) -> None:
        """Send the acks requested so far, waiting up to ``timeout`` seconds for them
        to be handed to the connection (call it before closing the channel)."""
        if self._sender is None:
            self._flush()
        if self._sender is not None:
            await asyncio.wait({self._sender}, timeout=timeout)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._sender is not None:
            return  # the running sender takes these acks when its frames are out
        batch = self._take()
        if batch is not None:
            self._sender = asyncio.ensure_future(self._send(*batch))

    def _take(self) -> tuple[int | None, list[int]] | None:
        """Remove the acked tags: the highest of the acked prefix and the acked rest."""
        if self._channel.is_closed:
            # The broker requeues everything unacked on a closed channel.
            self._unsettled.clear()
            return None
        multiple_up_to: int | None = None
        singles: list[int] = []
        in_prefix = True
        for tag, acked in self._unsettled.items():
            if not acked:
                in_prefix = False
            elif in_prefix:
                multiple_up_to = tag
            else:
                singles.append(tag)
        if multiple_up_to is None and not singles:
            return None
        if multiple_up_to is not None:
            for tag in list(self._unsettled):
                if tag > multiple_up_to:
                    break
                del self._unsettled[tag]
        for tag in singles:
            del self._unsettled[tag]
        return multiple_up_to, singles

    async def _send(self, multiple_up_to: int | None, singles: list[int]) -> None:
        batch: tuple[int | None, list[int]] | None = (multiple_up_to, singles)
        try:
            while batch is not None:
                multiple_up_to, singles = batch
                if multiple_up_to is not None:
                    await self._channel.basic_ack(multiple_up_to, multiple=True, wait=False)
                for tag in singles:
                    await self._channel.basic_ack(tag, wait=False)
                batch = self._take()  # acks requested while this batch waited for room
        except (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            # Unacked messages are redelivered by the broker; the worker counts that.
            log.warning("could not send acks (%s); the broker will redeliver them", exc)
        finally:
            self._sender = None


class _ConfirmWindow:
    """The confirms one ``publish_many`` has in flight, and a wake-up when one settles."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.in_flight = 0
        self._settled = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - self.in_flight

    def add(self, confirm: asyncio.Future[object]) -> None:
        self.in_flight += 1
        confirm.add_done_callback(self._on_settled)

    def _on_settled(self, _: asyncio.Future[object]) -> None:
        self.in_flight -= 1
        self._settled.set()

    async def progressed(self) -> bool:
        """Wait for a confirm to settle; False if none did within the timeout."""
        self._settled.clear()
        try:
            async with asyncio.timeout(self.timeout):
                await self._settled.wait()
        except TimeoutError:
            return False
        return True


class AmqpDelivery(Delivery):
    """A delivery from a consumer channel; acks go through the channel's batcher."""

    __slots__ = (
        "_batcher",
        "_channel",
        "_tag",
        "_unbatched_acks",
        "body",
        "content_type",
        "headers",
        "message_id",
        "priority",
        "queue",
        "redelivered",
        "routing_key",
        "type",
    )

    def __init__(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        batcher: _AckBatcher | None,
        unbatched_acks: list[asyncio.Future[None]] | None = None,
    ) -> None:
        self.body = message.body
        self.queue = queue
        self.message_id = message.message_id
        self.type = message.type
        self.content_type = message.content_type
        self.priority = message.priority
        self.routing_key = message.routing_key
        self.redelivered = bool(message.redelivered)
        self.headers = message.headers or {}
        self._channel = message.channel
        self._tag = message.delivery_tag or 0
        self._batcher = batcher
        self._unbatched_acks = unbatched_acks
        if batcher is not None:
            batcher.delivered(self._tag)

    def ack(self) -> None:
        if self._batcher is not None:
            self._batcher.ack(self._tag)
        else:
            sent = asyncio.ensure_future(self._settle(self._channel.basic_ack(self._tag)))
            if self._unbatched_acks is not None:
                self._unbatched_acks.append(sent)

    async def reject(self) -> None:
        await self._settle(self._channel.basic_reject(self._tag, requeue=False))

    async def requeue(self) -> None:
        await self._settle(self._channel.basic_reject(self._tag, requeue=True))

    async def _settle(self, frame_sent: Any) -> None:
        with translate_errors("settling a message"):
            await frame_sent
        # Forgotten only once the reject is out: a tag whose reject never left stays
        # unsettled, so no later multiple ack can ack it (the broker requeues it when
        # the channel closes).
        if self._batcher is not None:
            self._batcher.forget(self._tag)


class AmqpSubscription(Subscription):
    """A consumer on its own robust channel (so each queue has its own prefetch)."""

    #: Seconds :meth:`close` waits for the acks already requested to go out.
    ACK_DRAIN_TIMEOUT = 5.0

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: aio_pika.abc.AbstractQueue,
        tag: str,
        batchers: Mapping[int, _AckBatcher] | None = None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._tag: str | None = tag
        self._batchers = batchers if batchers is not None else {}

    async def cancel(self) -> None:
        if self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
            self._tag = None

    async def close(self) -> None:
        await self.cancel()
        # Acks not yet handed to the connection would be lost with the channel and the
        # broker would deliver those jobs again.
        for batcher in list(self._batchers.values()):
            await batcher.drain(self.ACK_DRAIN_TIMEOUT)
        with contextlib.suppress(Exception):
            await self._channel.close()


class AmqpQueueReader(QueueReader):
    """Reads messages with basic.get; whatever is not acked returns to the queue on close."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
        self._channel = channel
        self._queue_name = queue
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self.acks: list[asyncio.Future[None]] = []

    async def get(self) -> Delivery | None:
        """The next message, or None when the queue has no more."""
        with translate_errors(f"reading queue {self._queue_name!r}"):
            if self._queue is None:
                self._queue = await self._channel.get_queue(self._queue_name, ensure=True)
            message = await self._queue.get(no_ack=False, fail=False)
        if message is None:
            return None
        return AmqpDelivery(message, self._queue_name, None, self.acks)


class AmqpTransport(Transport):
    """:class:`Transport` over one robust aio-pika connection.

    Publishes go through one confirm channel; each consumed queue gets its own
    channel. The connection reconnects by itself with ``reconnect_interval``; during
    an outage publishes fail after their timeout instead of hanging.
    """

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "amqp-jobs",
        reconnect_interval: float = 1.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._connection_name = connection_name
        self._reconnect_interval = reconnect_interval
        self._connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._declared: set[tuple[str, str, str]] = set()
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._connection is not None:
                return
            with translate_errors(f"connecting to {self._safe_url()}"):
                connection = await aio_pika.connect_robust(
                    self.url,
                    connection_class=BackoffRobustConnection,
                    client_properties={"connection_name": self._connection_name},
                    reconnect_interval=self._reconnect_interval,
                    timeout=self._connect_timeout,
                )
                self._publish_channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            self._connection = connection

    def _safe_url(self) -> str:
        head, _, tail = self.url.rpartition("@")
        return f"{head.split('//')[0]}//***@{tail}" if head else self.url

    def _require(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise TransportError("the transport is not connected; call connect() first")
        return self._connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.sleep(0)  # let scheduled ack flushes run
            with contextlib.suppress(Exception):
                await connection.close()
        self._declared.clear()

    @contextlib.asynccontextmanager
    async def _admin_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        # A fresh channel: a refused declaration closes the channel it was made on.
        channel = await self._require().channel(publisher_confirms=False)
        try:
            yield await channel.get_underlay_channel()
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def declare(self, declarations: Iterable[Declaration]) -> None:
        pending = [d for d in declarations if _declaration_key(d) not in self._declared]
        if not pending:
            return
        async with self._admin_channel() as channel:
            for declaration in pending:
                with translate_errors(f"declaring {declaration}"):
                    await _declare_one(channel, declaration)
                self._declared.add(_declaration_key(declaration))

    async def delete(self, declarations: Iterable[Declaration]) -> None:
        async with self._admin_channel() as channel:
            for declaration in declarations:
                with contextlib.suppress(Exception):
                    if isinstance(declaration, QueueDecl):
                        await channel.queue_delete(declaration.name)
                    elif isinstance(declaration, ExchangeDecl):
                        await channel.exchange_delete(declaration.name)
                self._declared.discard(_declaration_key(declaration))

    async def publish(
        self, message: OutgoingMessage, exchange: str, routing_key: str, *, timeout: float
    ) -> None:
        """Publish with a confirm, as mandatory, within ``timeout`` seconds in all.

        While the connection is down the publish waits for the robust connection to
        come back and tries again, until the timeout. A publish whose confirm was lost
        in a disconnect may thus reach the queue twice (at-least-once; ids tell them
        apart). Returned, refused or unconfirmed publishes raise at once.
        """
        error = await self._publish(message, exchange, routing_key, timeout)
        if error is not None:
            raise error

    async def _publish(
        self,
        message: OutgoingMessage,
        exchange: str,
        routing_key: str,
        timeout: float,
    ) -> BaseException | None:
        """Publish; return the (translated) error instead of raising it."""
        channel, connection = self._publish_channel, self._connection
        if channel is None or connection is None:
            return TransportError("the transport is not connected; call connect() first")
        properties = pipelined.properties_of(message)
        if connection.connected.is_set() and not channel.is_closed:
            # The usual case, kept cheap: one try, aiormq's own timeout, no retry machinery.
            try:
                underlay = await channel.get_underlay_channel()
                await underlay.basic_publish(
                    message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                    timeout=timeout,
                    # The confirm comes after the write anyway: skip the drain future.
                    # (aiormq's Channel takes `wait`; its abstract base does not say so.)
                    wait=False,  # type: ignore[call-arg]
                )
                return None
            except Exception as exc:
                if not _is_connection_loss(exc):
                    return translate(exc, _publishing(message))
        try:
            async with asyncio.timeout(timeout):
                async for attempt in tenacity.AsyncRetrying(
                    wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
                    retry=tenacity.retry_if_exception(_is_connection_loss),
                    reraise=True,
                ):
                    with attempt:
                        underlay = await channel.get_underlay_channel()
                        await underlay.basic_publish(
                            message.body,
                            exchange=exchange,
                            routing_key=routing_key,
                            properties=properties,
                            mandatory=True,
                        )
        except Exception as exc:
            return translate(exc, _publishing(message))
        return None

    async def publish_many(
        self, publications: Iterable[Publication], *, timeout: float, window: int = 500
    ) -> list[BaseException | None]:
        """Publish with up to ``window`` confirms in flight, pipelined.

        Publications are taken from the iterable only when a slot is free, so a delayed
        job's delay is computed right before it is sent. Free slots are filled in one
        write (:mod:`amqp_jobs.transport.pipelined`) rather than a task per message.
        ``timeout`` bounds the wait for progress: if no confirm arrives for that long,
        the publishes still waiting fail with :class:`PublishTimeoutError`. Publishes
        caught by a lost connection are sent again once it is back, pipelined again;
        those lost a second time go one by one through :meth:`publish`'s path, which
        waits for the reconnection (at-least-once, as there).
        """
        return await self._publish_many(publications, timeout, window, resend=True)

    async def _publish_many(
        self, publications: Iterable[Publication], timeout: float, window: int, *, resend: bool
    ) -> list[BaseException | None]:
        confirms = _ConfirmWindow(window, timeout)
        sent: list[tuple[Publication, asyncio.Future[object]]] = []
        source = iter(publications)
        stalled = False
        try:
            while not stalled:
                if confirms.free <= 0:
                    stalled = not await confirms.progressed()
                    continue
                batch = list(itertools.islice(source, min(confirms.free, _PIPELINE_BATCH)))
                if not batch:
                    break
                futures = await self._send_batch(batch)
                for publication, future in zip(batch, futures, strict=True):
                    confirms.add(future)
                    sent.append((publication, future))
                await asyncio.sleep(0)  # let the reader settle confirms between batches
            while confirms.in_flight > 0 and not stalled:
                stalled = not await confirms.progressed()
        finally:
            for _, future in sent:
                if not future.done():
                    future.cancel()
        lost = [i for i, (_, future) in enumerate(sent) if _is_connection_loss_of(future)]
        again: dict[int, BaseException | None] = {}
        if lost and resend:
            log.warning(
                "%d publishes were caught by a lost connection; sending them again", len(lost)
            )
            await self._wait_for_channel(timeout)
            outcomes_again = await self._publish_many(
                [sent[i][0] for i in lost], timeout, window, resend=False
            )
            again = dict(zip(lost, outcomes_again, strict=True))
        outcomes = [
            again[i] if i in again else await self._outcome(p, future, timeout)
            for i, (p, future) in enumerate(sent)
        ]
        if stalled:
            # Those never taken from the iterable were not published either.
            for publication in source:
                outcomes.append(translate(TimeoutError(), _publishing(publication.message)))
        return outcomes

    async def _outcome(
        self, publication: Publication, confirm: asyncio.Future[object], timeout: float
    ) -> BaseException | None:
        """What became of a pipelined publish; one lost with the connection is sent again."""
        message = publication.message
        if confirm.cancelled():
            return translate(TimeoutError(), _publishing(message))
        error = confirm.exception()
        if error is None:
            return None
        if _is_connection_loss(error):
            return await self._publish(
                message, publication.exchange, publication.routing_key, timeout
            )
        return translate(error, _publishing(message))

    async def _wait_for_channel(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until the robust publish channel is usable again."""
        channel = self._publish_channel
        if channel is None:
            return
        with contextlib.suppress(Exception):  # the sends that follow report what is wrong
            async with asyncio.timeout(timeout):
                await channel.get_underlay_channel()  # waits for the reconnection
                while channel.is_closed:
                    await asyncio.sleep(0.05)

    async def _send_batch(self, batch: list[Publication]) -> list[asyncio.Future[object]]:
        """Write ``batch`` in one go; futures that fail with a connection loss if it is down."""
        channel = self._publish_channel
        try:
            if channel is None or channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("the publish channel is closed")
            underlay = await channel.get_underlay_channel()
            return await pipelined.send_batch(underlay, batch)
        except Exception as exc:
            if not _is_connection_loss(exc):
                raise
            failed: list[asyncio.Future[object]] = []
            for _ in batch:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(aiormq.exceptions.ChannelInvalidStateError(str(exc)))
                failed.append(future)
            return failed

    async def consume(
        self,
        queue: str,
        handler: DeliveryHandler,
        *,
        prefetch: int,
        arguments: Mapping[str, Any] | None = None,
    ) -> Subscription:
        connection = self._require()
        with translate_errors(f"consuming {queue!r}"):
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            amqp_queue = await channel.get_queue(queue, ensure=True)
        batchers: dict[int, _AckBatcher] = {}

        async def on_message(message: AbstractIncomingMessage) -> None:
            underlying = message.channel
            batcher = batchers.get(id(underlying))
            if batcher is None:  # first message, or first after a reconnect
                batchers.clear()
                batcher = batchers[id(underlying)] = _AckBatcher(underlying)
            await handler(AmqpDelivery(message, queue, batcher))

        with translate_errors(f"consuming {queue!r}"):
            tag = await amqp_queue.consume(
                on_message, arguments=dict(arguments) if arguments else None
            )
        return AmqpSubscription(channel, amqp_queue, tag, batchers)

    @contextlib.asynccontextmanager
    async def reader(self, queue: str) -> AsyncIterator[QueueReader]:
        """A reader on its own channel; unacked messages go back when it closes."""
        channel = await self._require().channel(publisher_confirms=False)
        reader = AmqpQueueReader(channel, queue)
        try:
            yield reader
        finally:
            # Acks must reach the broker before the close returns the rest to the queue.
            await asyncio.gather(*reader.acks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await channel.close()

    async def purge(self, queue: str) -> int:
        async with self._admin_channel() as channel:
            with translate_errors(f"purging {queue!r}"):
                result = await channel.queue_purge(queue)
        return int(result.message_count or 0)

    async def message_count(self, queue: str) -> int:
        async with self._admin_channel() as channel:
            with translate_errors(f"inspecting {queue!r}"):
                result = await channel.queue_declare(queue, passive=True)
        return int(result.message_count or 0)


def _publishing(message: OutgoingMessage) -> str:
    return f"publishing job {message.message_id} ({message.type})"


def _is_connection_loss_of(future: asyncio.Future[object]) -> bool:
    if not future.done() or future.cancelled():
        return False
    error = future.exception()
    return error is not None and _is_connection_loss(error)


def _is_connection_loss(error: BaseException) -> bool:
    if isinstance(error, aiormq.exceptions.DeliveryError | TimeoutError):
        return False  # the broker answered, or the caller's deadline passed
    return isinstance(
        error,
        aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ChannelInvalidStateError
        | aiormq.exceptions.ConnectionClosed
        | ConnectionError,
    )


def _declaration_key(declaration: Declaration) -> tuple[str, str, str]:
    if isinstance(declaration, BindingDecl):
        return (
            "binding",
            f"{declaration.source}>{declaration.destination}",
            declaration.routing_key,
        )
    kind = "queue" if isinstance(declaration, QueueDecl) else "exchange"
    return (kind, declaration.name, "")


async def _declare_one(channel: aiormq.abc.AbstractChannel, declaration: Declaration) -> None:
    if isinstance(declaration, ExchangeDecl):
        await channel.exchange_declare(
            declaration.name,
            exchange_type=declaration.type,
            durable=True,
            arguments=dict(declaration.arguments),
        )
    elif isinstance(declaration, QueueDecl):
        await channel.queue_declare(
            declaration.name, durable=True, arguments=dict(declaration.arguments)
        )
    elif declaration.to_exchange:
        await channel.exchange_bind(
            destination=declaration.destination,
            source=declaration.source,
            routing_key=declaration.routing_key,
        )
    else:
        await channel.queue_bind(
            declaration.destination, declaration.source, routing_key=declaration.routing_key
        )
