"""`Policy`: the compiled routing policy that turns a job and its user into a route."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from routing.compiled import CompiledRule, RoutePlan, plan_route
from routing.conditions import MatchSpec, User, compile_conditions
from routing.declarations import BindingDecl, ExchangeDecl, QueueDecl, TenantQueuePattern, Topology
from routing.errors import PolicyError, RouteError
from routing.loading import model_from_dict, read_policy_file
from routing.models import MatchModel, PolicyModel, RuleModel
from routing.route import Route, RouteDecision
from routing.templates import Template
from routing.validation import known_attributes, reference_problems, route_problems


class Policy:
    """An ordered list of rules plus tiers and defaults; the first matching rule wins.

    Build one with `Policy.from_file`, `Policy.from_dict` or `Policy(PolicyModel(...))`.
    Everything is validated and compiled on construction (a `PolicyError` lists every
    problem); afterwards `decide` / `route` only run plain closures and cached plans.
    """

    def __init__(self, model: PolicyModel) -> None:
        problems = reference_problems(model)
        if problems:
            raise PolicyError(problems)
        self._model = model
        self._tier_names = frozenset(model.tiers)
        templates = _parse_templates(model)
        self._rules = tuple(_compile_rule(model, templates, rule) for rule in [*model.rules, None])
        problems = route_problems(model, self._rules)
        if problems:
            raise PolicyError(problems)
        self._topology = Topology.from_model(model)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Policy:
        """Validate and compile a policy given as plain data (e.g. parsed TOML or JSON)."""
        model = model_from_dict(data, source)
        try:
            return cls(model)
        except PolicyError as exc:
            raise PolicyError(exc.problems, source) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Policy:
        """Load a policy from a .toml or .json file."""
        return cls.from_dict(read_policy_file(path), source=os.fspath(path))

    @property
    def model(self) -> PolicyModel:
        """The validated policy this was compiled from."""
        return self._model

    # --- routing (the hot path) --------------------------------------------------------------

    def decide(
        self,
        job: str,
        queue: str,
        user: Mapping[str, Any] | None,
        labels: Mapping[str, str] | None = None,
    ) -> RouteDecision:
        """Route `job` (declared on `queue`) for `user` (None: anonymous); say which rule won.

        Raises RouteError when the winning rule's template needs a value the user lacks.
        """
        for rule in self._rules:
            for test in rule.tests:
                if not test(job, queue, user, labels):
                    break
            else:
                return rule.plans[self._tier_of(user)].decide(queue, user)
        raise AssertionError("unreachable: the compiled defaults match everything")

    def route(
        self,
        job: str,
        queue: str,
        user: Mapping[str, Any] | None,
        labels: Mapping[str, str] | None = None,
    ) -> Route:
        """The route `decide` would choose."""
        return self.decide(job, queue, user, labels).route

    def explain(
        self,
        job: str,
        queue: str,
        user: Mapping[str, Any] | None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Say in words which route applies, which rule chose it and why earlier ones didn't."""
        lines = [f"job {job!r} on queue {queue!r} for {self._describe_user(user)}:"]
        for rule in self._rules:
            failures = rule.failures(job, queue, user, labels)
            if failures:
                lines.append(f"  rule {rule.name!r} did not match: {'; '.join(failures)}")
                continue
            if rule.name is None:
                lines.append("  no rule matched, so the defaults apply")
            else:
                lines.append(f"  rule {rule.name!r} matched")
            lines.append(self._describe_route(rule.plans[self._tier_of(user)], queue, user))
            break
        return "\n".join(lines)

    def _tier_of(self, user: User) -> str | None:
        if user is None:
            return None
        tier = user.get("tier")
        return tier if isinstance(tier, str) and tier in self._tier_names else None

    def _describe_user(self, user: User) -> str:
        if user is None:
            return "an anonymous user"
        # Only attributes the policy knows: user mappings can carry things not meant for logs.
        shown = [
            f"{name}={user[name]!r}"
            for name in (*sorted(known_attributes(self._model)), "roles")
            if name in user
        ]
        return f"user {', '.join(shown)}" if shown else "a user with no routing attributes"

    @staticmethod
    def _describe_route(plan: RoutePlan, queue: str, user: User) -> str:
        try:
            route = plan.decide(queue, user).route
        except RouteError as exc:
            return f"  but no route: {exc}"
        sources = plan.sources
        default_exchange = "the default exchange, " if not route.exchange else ""
        priority = "none" if route.priority is None else str(route.priority)
        return (
            f"  route: exchange {route.exchange!r} ({default_exchange}{sources['exchange']}), "
            f"routing key {route.routing_key!r} ({sources['routing_key']}), "
            f"queue {route.queue!r} ({sources['queue']}), "
            f"priority {priority} ({sources['priority']})"
            + (f", virtual host {route.vhost!r}" if route.vhost else "")
        )

    # --- declarations ----------------------------------------------------------------------

    def queues(self) -> list[QueueDecl]:
        """The static queues the policy routes to (tenant templates are not included)."""
        return list(self._topology.static_queues)

    def tenant_queue_templates(self) -> list[QueueDecl]:
        """The per-tenant queue templates, such as 'tenant.{tenant}'."""
        return list(self._topology.tenant_queues)

    def exchanges(self) -> list[ExchangeDecl]:
        """The exchanges the policy routes through (the default exchange is implicit)."""
        return list(self._topology.exchanges)

    def bindings(self) -> list[BindingDecl]:
        """The bindings between declared exchanges and static queues."""
        return list(self._topology.static_bindings)

    def declarations_for_tenant(
        self, tenant: str, attributes: Mapping[str, str] | None = None
    ) -> tuple[list[QueueDecl], list[BindingDecl]]:
        """The tenant's queues and bindings: every tenant template filled in for `tenant`.

        `attributes` supplies other placeholders the templates use. Raises RouteError if
        a value is missing or cannot be part of a name.
        """
        return self._topology.for_tenant({**(attributes or {}), "tenant": tenant})

    def queues_for_tier(self, tier: str) -> list[tuple[str, int]]:
        """(queue, weight) for the static queues a worker started with `--tier TIER` consumes.

        That is the queues whose tier is TIER plus the shared queues (no tier), so idle
        dedicated workers help with the shared backlog. Raises PolicyError for an
        undeclared tier.
        """
        self._check_tier(tier)
        return self._topology.queues_for_tier(tier)

    def tenant_queue_patterns(self, tier: str) -> list[TenantQueuePattern]:
        """Patterns recognising the tenant queues a worker of `tier` consumes, with weights."""
        self._check_tier(tier)
        return self._topology.tenant_queue_patterns(tier)

    def _check_tier(self, tier: str) -> None:
        if tier not in self._tier_names:
            declared = ", ".join(sorted(self._tier_names)) or "none"
            raise PolicyError(f"tier {tier!r} is not declared in [tiers] (declared: {declared})")


def _parse_templates(model: PolicyModel) -> dict[str, Template]:
    """Every queue and routing-key template the routes can use, parsed once."""
    texts = [*model.queues]
    texts += [
        text for rule in model.rules for text in (rule.route.routing_key, rule.route.vhost) if text
    ]
    if model.defaults.routing_key:
        texts.append(model.defaults.routing_key)
    return {text: Template.parse(text) for text in texts}


def _compile_rule(
    model: PolicyModel, templates: Mapping[str, Template], rule: RuleModel | None
) -> CompiledRule:
    """Compile a rule, or the defaults when `rule` is None (a rule that always matches)."""
    spec = MatchSpec.from_model(rule.match if rule else MatchModel())
    conditions = compile_conditions(spec)
    plans = {
        tier_name: plan_route(model, templates, rule, tier_name)
        for tier_name in [None, *model.tiers]
    }
    return CompiledRule(
        name=rule.name if rule else None,
        spec=spec,
        conditions=conditions,
        tests=tuple(condition.test for condition in conditions),
        plans=plans,
    )
