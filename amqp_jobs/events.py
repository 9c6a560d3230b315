"""Conditional dispatch: events and the rules that turn them into jobs.

Services emit events (``await app.emit("user.signed_up", payload, user=...)``) to the
namespace's topic exchange, routed by event name. A rule
(``@app.on("user.signed_up", when=lambda e: e.plan == "pro")``) has its own durable
queue bound to that exchange (or to an existing topic exchange of the user's, with
``exchange=``), so events wait while no worker runs and each event is dispatched once
per rule however many workers share the queue. The worker evaluates the rule's
condition and publishes one job per target, with the event's data mapped to the job's
input, then acknowledges the event. A condition or mapping that raises is an error
recorded for that event (the event goes to the dead-letter queue with the reason); the
listener goes on with the next event.

Dispatched jobs get ids derived from (event id, rule, job), so an event delivered twice
publishes the same job ids, which the store and idempotency claims recognise.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from amqp_jobs.conditions import Condition, FieldMap, compile_condition, compile_mapping
from amqp_jobs.errors import ConfigurationError, UnroutableError
from amqp_jobs.ids import new_job_id
from amqp_jobs.topology import BindingDecl, Declaration
from amqp_jobs.transport.base import Delivery, OutgoingMessage

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp
    from amqp_jobs.client import PreparedJob
    from amqp_jobs.worker import Worker

log = logging.getLogger(__name__)

EVENT_CONTENT_TYPE = "application/vnd.amqp-jobs.event.v1+json"
"""AMQP ``content_type`` of events published by :meth:`JobApp.emit`."""

DISPATCH_NAMESPACE = uuid.UUID("6f0d8a52-3b7e-4a8e-9d0c-52a1d7c3e9b1")
"""UUIDv5 namespace of the job ids that rules dispatch."""

RULE_HEADER = "x-amqp-jobs-rule"
EVENT_EXCHANGE_HEADER = "x-amqp-jobs-event-exchange"
EVENT_ROUTING_KEY_HEADER = "x-amqp-jobs-event-name"


@dataclass(frozen=True, slots=True)
class Event:
    """One event, as a rule's condition and mapping see it.

    The event's data fields read as attributes (``e.plan``), next to ``name``,
    ``user``, ``id``, ``emitted_at`` and ``publisher``.
    """

    name: str
    data: Any = None
    user: dict[str, Any] | None = None
    id: str = field(default_factory=new_job_id)
    emitted_at: float = field(default_factory=time.time)
    publisher: str | None = None

    def __getattr__(self, item: str) -> Any:
        # Only called for names that are not fields: look them up in the data.
        if item.startswith("__"):
            raise AttributeError(item)
        data = object.__getattribute__(self, "data")
        if isinstance(data, Mapping) and item in data:
            return data[item]
        name = object.__getattribute__(self, "name")
        raise AttributeError(f"event {name!r} has no field {item!r}")

    def to_body(self) -> bytes:
        """The JSON body of this event on the wire."""
        return json.dumps(
            {
                "id": self.id,
                "name": self.name,
                "data": self.data,
                "user": self.user,
                "emitted_at": self.emitted_at,
                "publisher": self.publisher,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_delivery(cls, delivery: Delivery) -> Event:
        """Read an event: ours (by content type), or any JSON message on a user's exchange.

        Raises ``ValueError`` with the reason when the body is not usable.
        """
        try:
            body = json.loads(delivery.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"event body is not JSON: {exc}") from None
        if delivery.content_type == EVENT_CONTENT_TYPE:
            if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                raise ValueError("event body lacks its 'name'")
            user = body.get("user")
            return cls(
                name=body["name"],
                data=body.get("data"),
                user=user if isinstance(user, dict) else None,
                id=str(body.get("id") or delivery.message_id or new_job_id()),
                emitted_at=float(body.get("emitted_at") or time.time()),
                publisher=body.get("publisher"),
            )
        # A foreign message: its routing key names it (kept in a header when it was
        # requeued from the dead-letter queue), its whole body is the data.
        return cls(
            name=str(delivery.headers.get(EVENT_ROUTING_KEY_HEADER) or delivery.routing_key or ""),
            data=body,
            id=delivery.message_id or str(uuid.uuid5(DISPATCH_NAMESPACE, delivery.body.hex())),
        )


@dataclass(slots=True)
class Rule:
    """``event`` (a topic pattern: ``user.*``, ``order.#``) dispatches ``jobs`` when
    ``condition`` holds, with ``mapping`` turning the event into each job's input."""

    name: str
    event: str
    jobs: tuple[str, ...]
    condition: Callable[[Any], bool] | None = None
    mapping: Callable[[Any], Any] | None = None
    exchange: str | None = None  # an existing topic exchange; default: the app's events
    queue: str | None = None  # the dispatched jobs' queue; default: each job's own
    priority: int | None = None

    def input_for(self, event: Event) -> Any:
        """The input of the dispatched jobs: the mapping's result, or the event's data."""
        return self.mapping(event) if self.mapping is not None else event.data

    def job_id(self, event: Event, job: str) -> str:
        """The id of the job this rule dispatches for ``event``: the same on redelivery."""
        return str(uuid.uuid5(DISPATCH_NAMESPACE, f"{event.id}:{self.name}:{job}"))


def make_rule(
    app: JobApp,
    event: str,
    jobs: Sequence[str],
    *,
    when: Condition | None,
    map: FieldMap | None,
    name: str | None,
    exchange: str | None,
    queue: str | None,
    priority: int | None,
) -> Rule:
    """Validate and build a rule (see :meth:`JobApp.on`)."""
    if not event or any(not part for part in event.split(".")):
        raise ConfigurationError(f"rule on {event!r}: the event is a name or topic pattern")
    if not jobs:
        raise ConfigurationError(f"rule on {event!r}: name at least one job to dispatch")
    rule_name = name or f"{event}->{','.join(jobs)}"
    where = f"rule {rule_name!r}"
    unknown = [job for job in jobs if job not in app.registry]
    if unknown:
        raise ConfigurationError(
            f"{where} names unknown job(s) {unknown}; known: {sorted(app.registry)}"
        )
    if any(rule.name == rule_name for rule in app.rules):
        raise ConfigurationError(f"{where} is already defined; give this one another name=")
    if queue is not None:
        app.topology.queue_name(queue)
    return Rule(
        name=rule_name,
        event=event,
        jobs=tuple(jobs),
        condition=compile_condition(when, where=where),
        mapping=compile_mapping(map, where=where),
        exchange=exchange,
        queue=queue,
        priority=priority,
    )


def rule_declarations(app: JobApp, rule: Rule) -> list[Declaration]:
    """The rule's queue and its binding (the exchange must exist already)."""
    exchange = rule.exchange or app.topology.events_exchange
    queue = app.topology.rule_queue_declaration(rule.name)
    return [queue, BindingDecl(exchange, queue.name, rule.event)]


async def emit(
    app: JobApp,
    name: str,
    data: Any = None,
    *,
    user: Mapping[str, Any] | None = None,
    event_id: str | None = None,
) -> bool:
    """Publish event ``name`` (see :meth:`JobApp.emit`); False when no rule listens to it."""
    from amqp_jobs.context import current_user

    if not name or any(not part for part in name.split(".")) or "*" in name or "#" in name:
        raise ConfigurationError(f"event name {name!r} must be dotted words without wildcards")
    if isinstance(data, pydantic.BaseModel):
        data = data.model_dump(mode="json")
    if user is None:
        user = current_user.get()
    event = Event(
        name=name,
        data=data,
        user=dict(user) if user is not None else None,
        id=event_id or new_job_id(),
        publisher=app.service_name,
    )
    await app.connect()
    await app.client.ensure_infrastructure()
    message = OutgoingMessage(
        body=event.to_body(),
        message_id=event.id,
        type=name,
        content_type=EVENT_CONTENT_TYPE,
        app_id=app.service_name,
    )
    try:
        await app.transport.publish(
            message, app.topology.events_exchange, name, timeout=app.publish_timeout
        )
    except UnroutableError:
        log.debug("event %s (%s): no rule listens to it", event.id, name)
        return False
    return True


class RuleListener:
    """Consumes the queues of the app's rules inside a worker and dispatches their jobs."""

    def __init__(self, worker: Worker, rules: Sequence[Rule], *, prefetch: int = 32) -> None:
        self.worker = worker
        self.app = worker.app
        self.rules = list(rules)
        self.prefetch = prefetch
        self.dispatched = 0
        self.errors = 0

    async def start(self) -> None:
        """Declare each rule's queue and binding, then consume them."""
        await self.app.client.ensure_infrastructure()
        for rule in self.rules:
            await self.app.transport.declare(rule_declarations(self.app, rule))
        for rule in self.rules:
            await self.worker.subscribe(
                self.app.topology.rule_queue(rule.name), self._handler(rule), self.prefetch
            )

    def _handler(self, rule: Rule) -> Callable[[Delivery], Any]:
        async def on_event(delivery: Delivery) -> None:
            await self.worker.guarded(delivery, lambda: self._handle(rule, delivery))

        return on_event

    async def _handle(self, rule: Rule, delivery: Delivery) -> None:
        try:
            event = Event.from_delivery(delivery)
        except ValueError as exc:
            await self._refuse(rule, delivery, str(exc))
            return
        try:
            if rule.condition is not None and not rule.condition(event):
                delivery.ack()
                return
            data = rule.input_for(event)
        except Exception as exc:  # the user's condition or mapping: record, don't crash
            await self._refuse(
                rule,
                delivery,
                f"rule {rule.name!r} failed on event {event.name!r} ({event.id}): "
                f"{type(exc).__name__}: {exc}",
            )
            return
        prepared: list[PreparedJob] = []
        try:
            for job in rule.jobs:
                prepared.append(
                    await self.app.client.build(
                        job,
                        data,
                        queue=rule.queue,
                        priority=rule.priority,
                        job_id=rule.job_id(event, job),
                        user=event.user,
                        correlation_id=event.id,
                        labels={"event": event.name[:255], "rule": rule.name[:255]},
                    )
                )
        except Exception as exc:  # e.g. the event's data does not fit a job's input
            await self._refuse(
                rule,
                delivery,
                f"rule {rule.name!r} cannot dispatch event {event.name!r} ({event.id}): {exc}",
            )
            return
        for ready in prepared:
            await self.app.client.publish(ready)
        delivery.ack()
        self.dispatched += len(prepared)

    async def _refuse(self, rule: Rule, delivery: Delivery, reason: str) -> None:
        self.errors += 1
        await self.worker.dead_letter(
            delivery,
            reason,
            extra_headers={
                RULE_HEADER: rule.name,
                EVENT_EXCHANGE_HEADER: rule.exchange or self.app.topology.events_exchange,
                EVENT_ROUTING_KEY_HEADER: delivery.routing_key or "",
            },
        )
