"""The result of routing: where one job goes, and which rule sent it there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    """Where to publish a job: exchange ("" is the AMQP default), key, logical queue, priority.

    ``vhost`` is set when the route puts the job in a virtual host of its own (hard
    tenant isolation); None means the connection's own virtual host.
    """

    exchange: str
    routing_key: str
    queue: str
    priority: int | None
    vhost: str | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """A route and the name of the rule that chose it (None when the defaults applied)."""

    route: Route
    rule: str | None
