"""Applying a routing policy: AMQP names, declarations, tenant queues, tier consumption.

The policy itself is pure (the top-level ``routing`` package, or any object with the
:class:`RoutingPolicy` shape); this module maps its logical names onto the namespace's
AMQP names and tells the client what to declare and the worker what to consume.

Tenant queues are declared by the publisher on the first job for that tenant and
announced on the namespace's registry stream (``<ns>.registry``, a RabbitMQ stream
queue). Workers read the stream from its start, so they learn every tenant queue,
old and new, without a restart and without the management API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from amqp_jobs.client import RouteLike
from amqp_jobs.errors import ConfigurationError
from amqp_jobs.topology import BindingDecl, Declaration, ExchangeDecl, QueueDecl, Topology

REGISTRY_RETENTION_BYTES = 100_000_000
_RESOLVED_CACHE_LIMIT = 100_000


class PolicyQueue(Protocol):
    """A queue the policy declares (``routing.QueueDecl`` has this shape)."""

    @property
    def name(self) -> str: ...
    @property
    def max_priority(self) -> int: ...
    @property
    def tier(self) -> str | None: ...
    @property
    def arguments(self) -> dict[str, int | str]: ...


class PolicyExchange(Protocol):
    """An exchange the policy declares."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...


class PolicyBinding(Protocol):
    """A binding from a policy exchange to a policy queue."""

    @property
    def exchange(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def routing_key(self) -> str: ...


class TenantPattern(Protocol):
    """Recognises tenant queue names made from one template."""

    @property
    def weight(self) -> int: ...
    def match(self, queue_name: str) -> dict[str, str] | None: ...


class RoutingPolicy(Protocol):
    """What the core needs of a routing policy (``routing.Policy`` fits)."""

    def route(
        self,
        job: str,
        queue: str,
        user: Mapping[str, Any] | None,
        labels: Mapping[str, str] | None = None,
    ) -> RouteLike: ...
    def queues(self) -> Sequence[PolicyQueue]: ...
    def exchanges(self) -> Sequence[PolicyExchange]: ...
    def bindings(self) -> Sequence[PolicyBinding]: ...
    def declarations_for_tenant(
        self, tenant: str, attributes: Mapping[str, str] | None = None
    ) -> tuple[Sequence[PolicyQueue], Sequence[PolicyBinding]]: ...
    def queues_for_tier(self, tier: str) -> list[tuple[str, int]]: ...
    def tenant_queue_patterns(self, tier: str) -> Sequence[TenantPattern]: ...


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """Where one job goes, in AMQP names, and what must exist before it is published."""

    exchange: str
    routing_key: str
    queue: str
    priority: int | None
    tenant_queue: bool
    declarations: tuple[Declaration, ...]
    vhost: str | None = None


@dataclass(frozen=True, slots=True)
class ConsumptionPlan:
    """What a worker of some tiers consumes: static queues with weights, tenant patterns."""

    queues: tuple[tuple[str, int], ...]
    tenant_patterns: tuple[TenantPattern, ...]

    def tenant_weight(self, queue: str) -> int | None:
        """The weight of a tenant queue this plan consumes, or None if it is not for it."""
        weights = [p.weight for p in self.tenant_patterns if p.match(queue) is not None]
        return max(weights) if weights else None


class Router:
    """A routing policy applied within one namespace."""

    def __init__(self, policy: RoutingPolicy, topology: Topology) -> None:
        self.policy = policy
        self.topology = topology
        self._static_queues = {q.name: q for q in policy.queues()}
        # queue -> (is a tenant queue, its declarations): the same for every job routed there.
        self._resolved: dict[str, tuple[bool, tuple[Declaration, ...]]] = {}

    # --- names -------------------------------------------------------------------------

    def exchange_name(self, exchange: str) -> str:
        """The AMQP name of a policy exchange ("" stays the default exchange)."""
        return f"{self.topology.namespace}.x.{exchange}" if exchange else ""

    @property
    def registry_stream(self) -> str:
        """The stream queue on which tenant queues are announced."""
        return f"{self.topology.namespace}.registry"

    # --- declarations --------------------------------------------------------------------

    def queue_declarations(self, queue: PolicyQueue) -> list[Declaration]:
        """A policy queue as a work queue (priority, length limit, overflow, DLX)."""
        extra = {k: v for k, v in queue.arguments.items() if k != "x-max-priority"}
        return self.topology.work_queue(
            queue.name, max_priority=queue.max_priority, extra_arguments=extra
        )

    def declarations_for(self, queue: str) -> list[Declaration]:
        """Declarations of a static queue the policy knows, or of a plain work queue."""
        known = self._static_queues.get(queue)
        return self.queue_declarations(known) if known else self.topology.work_queue(queue)

    def static_declarations(self) -> list[Declaration]:
        """Every exchange, static queue and binding of the policy, and the registry stream."""
        declarations: list[Declaration] = [
            QueueDecl(
                self.registry_stream,
                {"x-queue-type": "stream", "x-max-length-bytes": REGISTRY_RETENTION_BYTES},
            )
        ]
        declarations += [
            ExchangeDecl(self.exchange_name(e.name), _exchange_type(e.type))
            for e in self.policy.exchanges()
        ]
        for queue in self.policy.queues():
            declarations += self.queue_declarations(queue)
        declarations += self._bindings(self.policy.bindings())
        return declarations

    def _bindings(self, bindings: Iterable[PolicyBinding]) -> list[Declaration]:
        return [
            BindingDecl(
                self.exchange_name(b.exchange), self.topology.queue_name(b.queue), b.routing_key
            )
            for b in bindings
        ]

    # --- publishing ------------------------------------------------------------------------

    def resolve(
        self,
        job: str,
        queue: str,
        user: Mapping[str, Any] | None,
        labels: Mapping[str, str] | None,
    ) -> ResolvedRoute:
        """Apply the policy to one job and its user."""
        route = self.policy.route(job, queue, user, labels)
        known = self._resolved.get(route.queue)
        if known is not None:
            tenant_queue, declarations_made = known
            return self._resolved_route(route, tenant_queue, declarations_made)
        declarations: list[Declaration] | None = None
        if route.queue not in self._static_queues and user is not None and "tenant" in user:
            attributes = {k: str(v) for k, v in user.items() if isinstance(v, str | int)}
            queues, bindings = self.policy.declarations_for_tenant(str(user["tenant"]), attributes)
            if any(q.name == route.queue for q in queues):
                declarations = [d for q in queues for d in self.queue_declarations(q)]
                declarations += self._bindings(bindings)
        tenant_queue = declarations is not None
        if declarations is None:
            declarations = self.declarations_for(route.queue)
        if len(self._resolved) < _RESOLVED_CACHE_LIMIT:
            self._resolved[route.queue] = (tenant_queue, tuple(declarations))
        return self._resolved_route(route, tenant_queue, tuple(declarations))

    def _resolved_route(
        self, route: RouteLike, tenant_queue: bool, declarations: tuple[Declaration, ...]
    ) -> ResolvedRoute:
        amqp_queue = self.topology.queue_name(route.queue)
        exchange = self.exchange_name(route.exchange)
        return ResolvedRoute(
            exchange=exchange,
            # On the default exchange the routing key is the queue's (namespaced) name.
            routing_key=route.routing_key if exchange else amqp_queue,
            queue=route.queue,
            priority=route.priority,
            tenant_queue=tenant_queue,
            declarations=declarations,
            vhost=route.vhost,
        )

    def announcement(self, queue: str) -> bytes:
        """The registry-stream message that announces tenant queue ``queue``."""
        return json.dumps({"queue": queue}).encode()

    @staticmethod
    def announced_queue(body: bytes) -> str | None:
        """The queue a registry-stream message announces, or None if it is not one."""
        try:
            value = json.loads(body).get("queue")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and _LOGICAL_QUEUE.match(value) else None

    # --- consuming ---------------------------------------------------------------------------

    def consumption_plan(self, tiers: Sequence[str]) -> ConsumptionPlan:
        """The queues (and tenant queue patterns) that workers of ``tiers`` consume."""
        if not tiers:
            raise ConfigurationError("a consumption plan needs at least one tier")
        weights: dict[str, int] = {}
        patterns: list[TenantPattern] = []
        for tier in tiers:
            for queue, weight in self.policy.queues_for_tier(tier):
                weights[queue] = max(weight, weights.get(queue, 0))
            patterns += self.policy.tenant_queue_patterns(tier)
        return ConsumptionPlan(tuple(weights.items()), tuple(patterns))


_LOGICAL_QUEUE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def _exchange_type(value: str) -> Any:
    if value not in ("direct", "topic", "fanout", "headers"):
        raise ConfigurationError(f"exchange type {value!r} is not supported")
    return value
