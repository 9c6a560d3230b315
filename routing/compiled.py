"""The compiled form of a policy that the hot path runs: plain tuples, closures and plans.

Everything that depends only on the policy is resolved at load time. For every rule and
every tier a `RoutePlan` fixes which exchange, queue, routing key and priority apply, and
where each came from; at decision time only templates and the job's own queue remain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from routing.conditions import Condition, Labels, MatchSpec, Predicate, User
from routing.errors import RouteError, TemplateValueError
from routing.models import PolicyModel, RouteModel, RuleModel
from routing.route import Route, RouteDecision
from routing.templates import Template

_Value = TypeVar("_Value")

_CACHE_LIMIT = 1024
"""Routes remembered per plan for distinct job queues; bounded so odd inputs can't grow it."""


class RoutePlan:
    """How one rule (or the defaults) routes users of one tier."""

    __slots__ = (
        "_cache",
        "_fixed",
        "exchange",
        "priority",
        "queue",
        "routing_key",
        "rule",
        "sources",
        "vhost",
    )

    def __init__(
        self,
        rule: str | None,
        exchange: str,
        queue: Template | None,
        routing_key: Template | None,
        priority: int | None,
        sources: Mapping[str, str],
        vhost: Template | None = None,
    ) -> None:
        """`sources` says, per field, where its value comes from ("from tier 'pro'")."""
        self.rule = rule
        self.exchange = exchange
        self.queue = queue  # None: the job's own queue
        self.routing_key = routing_key  # None: the queue name
        self.priority = priority
        self.vhost = vhost  # None: the connection's own virtual host
        self.sources = sources
        self._fixed: RouteDecision | None = None
        self._cache: dict[str, RouteDecision] | None = None
        if _is_static(queue) and _is_static(routing_key) and _is_static(vhost):
            if queue is not None:
                self._fixed = self._decide(queue.text, None)
            else:
                self._cache = {}

    def decide(self, job_queue: str, user: User) -> RouteDecision:
        """The decision for a job declared on `job_queue`, submitted by `user`."""
        if self._fixed is not None:
            return self._fixed
        cache = self._cache
        if cache is None:
            return self._decide(job_queue, user)
        decision = cache.get(job_queue)
        if decision is None:
            decision = self._decide(job_queue, user)
            if len(cache) < _CACHE_LIMIT:
                cache[job_queue] = decision
        return decision

    def _decide(self, job_queue: str, user: User) -> RouteDecision:
        try:
            queue = job_queue if self.queue is None else self.queue.render(user)
            key = queue if self.routing_key is None else self.routing_key.render(user)
            vhost = None if self.vhost is None else self.vhost.render(user)
        except TemplateValueError as exc:
            who = f"rule {self.rule!r}" if self.rule else "the defaults"
            raise RouteError(f"{who} matched but its route cannot be built: {exc}") from exc
        return RouteDecision(Route(self.exchange, key, queue, self.priority, vhost), self.rule)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready for the hot path: its tests and, per user tier, its route plan."""

    name: str | None
    spec: MatchSpec
    conditions: tuple[Condition, ...]
    tests: tuple[Predicate, ...]
    plans: Mapping[str | None, RoutePlan]

    def failures(self, job: str, queue: str, user: User, labels: Labels) -> list[str]:
        """Why each failing condition fails, in order (empty when the rule matches)."""
        return [
            condition.why_not(job, queue, user, labels)
            for condition in self.conditions
            if not condition.test(job, queue, user, labels)
        ]


def _is_static(template: Template | None) -> bool:
    return template is None or template.is_static


def plan_route(
    model: PolicyModel,
    templates: Mapping[str, Template],
    rule: RuleModel | None,
    tier_name: str | None,
) -> RoutePlan:
    """Resolve each route field: the rule's, else the tier's, else the defaults'."""
    route = rule.route if rule is not None else RouteModel()
    by_rule = f"from rule {rule.name!r}" if rule is not None else "from defaults"
    tier = model.tiers.get(tier_name) if tier_name is not None else None
    by_tier = f"from tier {tier_name!r}"
    defaults = model.defaults
    sources: dict[str, str] = {}
    queue = _first(
        sources,
        "queue",
        "the job's own queue",
        [
            (route.queue, by_rule),
            (tier.queue if tier else None, by_tier),
            (defaults.queue, "from defaults"),
        ],
    )
    priority = _first(
        sources,
        "priority",
        "no rule, tier or default sets one",
        [
            (route.priority, by_rule),
            (tier.priority if tier else None, by_tier),
            (defaults.priority, "from defaults"),
        ],
    )
    exchange = _first(
        sources,
        "exchange",
        "from defaults",
        [
            (route.exchange, by_rule),
            (defaults.exchange, "from defaults"),
        ],
    )
    routing_key = _first(
        sources,
        "routing_key",
        "the queue name",
        [
            (route.routing_key, by_rule),
            (defaults.routing_key, "from defaults"),
        ],
    )
    return RoutePlan(
        rule=rule.name if rule is not None else None,
        exchange=exchange or "",
        queue=templates[queue] if queue is not None else None,
        routing_key=templates[routing_key] if routing_key is not None else None,
        priority=priority,
        sources=sources,
        vhost=templates[route.vhost] if route.vhost is not None else None,
    )


def _first(
    sources: dict[str, str],
    field: str,
    fallback_source: str,
    candidates: Sequence[tuple[_Value | None, str]],
) -> _Value | None:
    """The first value that is set, recording in `sources` where it came from."""
    for value, source in candidates:
        if value is not None:
            sources[field] = source
            return value
    sources[field] = fallback_source
    return None
