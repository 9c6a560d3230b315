"""Names and declarations of every exchange and queue amqp-jobs uses.

Delays without a broker plugin: the binary-level design of NServiceBus and kombu's
"native delayed delivery". Level ``L`` is a topic exchange and a queue whose
``x-message-ttl`` is ``2**L`` milliseconds and whose dead-letter exchange is level
``L-1`` (level 0 dead-letters into the delivery exchange). A delayed message's
routing key spells the delay's bits, highest level first, then the destination
queue: ``0.1.1.<...>.<queue>``. At each level the message either waits in that
level's queue (bit 1) or falls through an exchange-to-exchange binding (bit 0).
All messages in one level queue share one TTL, so nothing waits behind a longer
delay, and nothing is held in any process's memory.

The declarations here are plain data; a transport turns them into broker calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from amqp_jobs.errors import ConfigurationError

DEFAULT_NAMESPACE = "amqp_jobs"
DEFAULT_MAX_PRIORITY = 10
DELAY_LEVELS = 36
"""2**36 ms is about 2.2 years: the longest delay is ``2**36 - 1`` milliseconds."""

CLASSIC_QUEUE_VERSION = 2
"""Classic queues v2 (RabbitMQ 3.10+): about twice the confirmed persistent publish rate of
v1 on the benchmark machine (BENCHMARKS.md); older brokers ignore the argument."""

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_MAX_ROUTING_KEY = 255


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    """An exchange to declare."""

    name: str
    type: Literal["direct", "topic", "fanout", "headers"]
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueDecl:
    """A durable queue to declare."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BindingDecl:
    """A binding from an exchange to a queue, or (``to_exchange``) to another exchange."""

    source: str
    destination: str
    routing_key: str
    to_exchange: bool = False


Declaration = ExchangeDecl | QueueDecl | BindingDecl


@dataclass(frozen=True, slots=True)
class Topology:
    """The broker layout of one namespace.

    Every name is prefixed by ``namespace`` so that several apps (or test runs) can
    share a broker without seeing each other's queues.
    """

    namespace: str = DEFAULT_NAMESPACE
    max_priority: int = DEFAULT_MAX_PRIORITY
    delay_levels: int = DELAY_LEVELS

    def __post_init__(self) -> None:
        if not _QUEUE_NAME.match(self.namespace):
            raise ConfigurationError(
                f"namespace {self.namespace!r} must be words of letters, digits, '_' or '-' "
                "separated by dots"
            )
        if not 1 <= self.max_priority <= 255:
            raise ConfigurationError(f"max_priority must be 1..255, not {self.max_priority}")

    # --- names -------------------------------------------------------------------

    def queue_name(self, queue: str) -> str:
        """The AMQP name of the logical work queue ``queue``."""
        if not _QUEUE_NAME.match(queue):
            raise ConfigurationError(
                f"queue name {queue!r} must be words of letters, digits, '_' or '-' "
                "separated by dots"
            )
        return f"{self.namespace}.q.{queue}"

    def logical_queue(self, amqp_name: str) -> str:
        """The logical queue name of an AMQP work queue name (inverse of :meth:`queue_name`)."""
        prefix = f"{self.namespace}.q."
        return amqp_name[len(prefix) :] if amqp_name.startswith(prefix) else amqp_name

    @property
    def dead_letter_exchange(self) -> str:
        """Fanout exchange in front of the dead-letter queue."""
        return f"{self.namespace}.dead"

    @property
    def events_exchange(self) -> str:
        """Topic exchange that ``app.emit`` publishes events to, by event name."""
        return f"{self.namespace}.events"

    def rule_queue(self, rule: str) -> str:
        """The durable queue of event rule ``rule``: events wait there while no worker runs."""
        name = re.sub(r"[^A-Za-z0-9_\-.]+", "_", rule).strip(".") or "rule"
        return f"{self.namespace}.on.{name}"[:_MAX_ROUTING_KEY]

    def rule_queue_declaration(self, rule: str) -> QueueDecl:
        """Declaration of :meth:`rule_queue`."""
        return QueueDecl(
            self.rule_queue(rule),
            {"x-queue-type": "classic", "x-queue-version": CLASSIC_QUEUE_VERSION},
        )

    @property
    def dead_letter_queue(self) -> str:
        """The queue holding exhausted and poisonous jobs, each with its reason."""
        return f"{self.namespace}.dead"

    @property
    def delivery_exchange(self) -> str:
        """Topic exchange where delayed messages leave level 0 for their work queue."""
        return f"{self.namespace}.delay.deliver"

    def delay_exchange(self, level: int) -> str:
        """Topic exchange of delay level ``level``."""
        return f"{self.namespace}.delay.{level:02d}"

    def delay_queue(self, level: int) -> str:
        """Queue of delay level ``level``: every message in it waits ``2**level`` ms."""
        return f"{self.namespace}.delay.{level:02d}"

    @property
    def max_delay_ms(self) -> int:
        """The longest delay the levels can express, in milliseconds."""
        return (1 << self.delay_levels) - 1

    # --- delayed routing -----------------------------------------------------------

    def delay_route(self, delay_ms: int, amqp_queue: str) -> tuple[str, str]:
        """Return ``(exchange, routing_key)`` that delivers into ``amqp_queue`` after ``delay_ms``.

        The message enters at the level of the delay's highest set bit: the levels above
        would only pass it down.
        """
        if delay_ms <= 0:
            raise ValueError("delay_route needs a positive delay")
        if delay_ms > self.max_delay_ms:
            raise ConfigurationError(
                f"a delay of {delay_ms} ms exceeds the longest possible delay of "
                f"{self.max_delay_ms} ms (about {self.max_delay_ms / 86_400_000:.0f} days)"
            )
        bits = format(delay_ms, f"0{self.delay_levels}b")
        routing_key = ".".join(bits) + "." + amqp_queue
        if len(routing_key) > _MAX_ROUTING_KEY:
            raise ConfigurationError(f"queue name {amqp_queue!r} is too long for delayed delivery")
        return self.delay_exchange(delay_ms.bit_length() - 1), routing_key

    # --- declarations ----------------------------------------------------------------

    def work_queue_arguments(
        self, max_priority: int | None = None, extra_arguments: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Arguments of a work queue: a priority queue dead-lettering to the DLQ.

        ``extra_arguments`` adds e.g. ``x-max-length`` and ``x-overflow`` from a policy.
        """
        return {
            "x-queue-type": "classic",
            "x-queue-version": CLASSIC_QUEUE_VERSION,
            "x-max-priority": max_priority or self.max_priority,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            **(extra_arguments or {}),
        }

    def work_queue(
        self,
        queue: str,
        *,
        max_priority: int | None = None,
        extra_arguments: dict[str, Any] | None = None,
    ) -> list[Declaration]:
        """Declarations for one work queue: the queue and its binding for delayed delivery."""
        name = self.queue_name(queue)
        any_delay = ".".join(["*"] * self.delay_levels)
        return [
            QueueDecl(name, self.work_queue_arguments(max_priority, extra_arguments)),
            BindingDecl(self.delivery_exchange, name, f"{any_delay}.{name}"),
        ]

    def infrastructure(self) -> list[Declaration]:
        """Declarations shared by all queues: dead-letter queue, delay levels, events exchange."""
        return [
            *self._dead_letter(),
            *self._delay_levels(),
            ExchangeDecl(self.events_exchange, "topic"),
        ]

    def _dead_letter(self) -> Iterator[Declaration]:
        yield ExchangeDecl(self.dead_letter_exchange, "fanout")
        yield QueueDecl(
            self.dead_letter_queue,
            {"x-queue-type": "classic", "x-queue-version": CLASSIC_QUEUE_VERSION},
        )
        yield BindingDecl(self.dead_letter_exchange, self.dead_letter_queue, "")

    def _delay_levels(self) -> Iterator[Declaration]:
        yield ExchangeDecl(self.delivery_exchange, "topic")
        for level in range(self.delay_levels):
            exchange = self.delay_exchange(level)
            lower = self.delay_exchange(level - 1) if level else self.delivery_exchange
            higher_bits = "*." * (self.delay_levels - 1 - level)
            yield ExchangeDecl(exchange, "topic")
            yield QueueDecl(
                self.delay_queue(level),
                {
                    "x-queue-type": "classic",
                    "x-queue-version": CLASSIC_QUEUE_VERSION,
                    "x-message-ttl": 1 << level,
                    "x-dead-letter-exchange": lower,
                },
            )
            yield BindingDecl(exchange, self.delay_queue(level), f"{higher_bits}1.#")
            yield BindingDecl(exchange, lower, f"{higher_bits}0.#", to_exchange=True)
