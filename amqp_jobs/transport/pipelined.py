"""Pipelined publishing: many confirmed publishes in one write to the socket.

aiormq's ``basic_publish`` costs, per message, a channel-lock round, two async context
managers, a timeout, a queued write and (with ``wait``) a drain. ``enqueue_many`` only
needs each message's confirm, so :func:`send_batch` takes the lock once for a batch,
numbers the messages the way aiormq does (so its reader settles their confirms and
returns as usual), marshals every frame into one buffer and hands that to the
connection's writer as one frame. Only publishes go this way; everything else on the
channel (single publishes, the reader, closing) stays aiormq's.

It relies on aiormq's channel internals (``delivery_tag``, ``confirmations``,
``message_id_delivery_tag``, ``write_queue``, ``max_content_size``), the same ones its own
``basic_publish`` uses; the transport tests publish through both paths on one channel,
with returns, nacks and multi-frame bodies, to catch a change in them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import aiormq.abc
import pamqp.frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from amqp_jobs.transport.base import OutgoingMessage, Publication

PERSISTENT = 2


def properties_of(message: OutgoingMessage) -> Basic.Properties:
    """The AMQP properties of a job message: persistent, with its id, type and origin."""
    return Basic.Properties(
        content_type=message.content_type,
        delivery_mode=PERSISTENT,
        priority=message.priority,
        message_id=message.message_id,
        message_type=message.type,
        app_id=message.app_id,
        correlation_id=message.correlation_id,
        headers=message.headers or None,
    )


async def send_batch(
    channel: aiormq.abc.AbstractChannel, publications: Sequence[Publication]
) -> list[asyncio.Future[object]]:
    """Write ``publications`` (mandatory, persistent) in one frame; return their confirms.

    Each future resolves when the broker confirms its message, or fails with aiormq's
    ``PublishError`` (returned unroutable), ``DeliveryError`` (nacked) or the channel's
    close reason. The channel must be in confirm mode. If the write itself never
    happens (cancelled while the writer's queue is full, or the channel closed), the
    numbers are given back and the futures cancelled, as ``basic_publish`` does.
    """
    ch: aiormq.Channel = channel  # type: ignore[assignment]  # the concrete class
    number = ch.number
    frame_max = ch.max_content_size
    method_frames: dict[tuple[str, str], bytes] = {}
    buffer = bytearray()
    futures: list[asyncio.Future[object]] = []
    async with ch.lock:
        first_tag = ch.delivery_tag + 1
        for publication in publications:
            message = publication.message
            route = (publication.exchange, publication.routing_key)
            method = method_frames.get(route)
            if method is None:
                method = pamqp.frame.marshal(
                    Basic.Publish(exchange=route[0], routing_key=route[1], mandatory=True),
                    number,
                )
                method_frames[route] = method
            body = message.body
            header = ContentHeader(body_size=len(body), properties=properties_of(message))
            buffer += method
            buffer += pamqp.frame.marshal(header, number)
            for start in range(0, len(body), frame_max):
                buffer += pamqp.frame.marshal(ContentBody(body[start : start + frame_max]), number)
            ch.delivery_tag += 1
            tag = ch.delivery_tag
            future: asyncio.Future[object] = ch.create_future()
            ch.confirmations[tag] = future
            ch.message_id_delivery_tag[message.message_id] = tag
            future.add_done_callback(_forgetter(ch, message.message_id, tag))
            futures.append(future)
        try:
            await ch.write_queue.put(
                aiormq.abc.ChannelFrame(payload=bytes(buffer), should_close=False)
            )
        except BaseException:
            # Nothing reached the writer: hand the numbers back while holding the lock.
            ch.delivery_tag = first_tag - 1
            for tag in range(first_tag, first_tag + len(futures)):
                ch.confirmations.pop(tag, None)
            for future in futures:
                future.cancel()
            raise
    return futures


def _forgetter(
    channel: aiormq.Channel, message_id: str, tag: int
) -> Callable[[asyncio.Future[object]], None]:
    # The id maps a returned message back to its number; drop it once it is settled.
    def forget(_: asyncio.Future[object]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    return forget
