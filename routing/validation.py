"""Load-time checks across a policy's parts; every problem names where it is and what to do.

`reference_problems` runs on the validated model before anything is compiled (names,
declarations, templates). `route_problems` runs on the compiled route plans, so it checks
exactly the routes the hot path will produce: priorities and exchange/queue delivery.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from routing.compiled import CompiledRule, RoutePlan
from routing.conditions import BUILTIN_USER_ATTRIBUTES, MatchSpec
from routing.declarations import tiers_naming_queue
from routing.models import PolicyModel, RouteModel
from routing.shadowing import shadowing_problems
from routing.templates import Template, TemplateSyntaxError

_RESERVED_PREFIX = "amq."  # the broker refuses to declare names starting with it


def known_attributes(model: PolicyModel) -> frozenset[str]:
    """User attributes that conditions and templates may name."""
    return frozenset((*BUILTIN_USER_ATTRIBUTES, *model.attributes))


def reference_problems(model: PolicyModel) -> list[str]:
    """Problems with names, declarations and references, in a stable order."""
    problems = [
        *_attribute_declaration_problems(model),
        *_rule_name_problems(model),
        *_queue_declaration_problems(model),
        *_exchange_declaration_problems(model),
        *_tier_problems(model),
        *_match_problems(model),
    ]
    for where, route in _route_sources(model):
        problems.extend(_route_reference_problems(model, where, route))
    return list(dict.fromkeys(problems))


def route_problems(model: PolicyModel, rules: Sequence[CompiledRule]) -> list[str]:
    """Problems with the routes the compiled rules (and defaults) produce; shadowed rules."""
    problems: list[str] = []
    for rule in rules:
        for tier_name in _reachable_tiers(model, rule.spec):
            plan = rule.plans[tier_name]
            problems.extend(_priority_problems(model, plan, tier_name))
            problems.extend(_delivery_problems(model, plan))
    named = [(rule.name, rule.spec) for rule in rules if rule.name is not None]
    problems.extend(shadowing_problems(named))
    return list(dict.fromkeys(problems))


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic binding pattern ('*' one word, '#' any words) matches a routing key."""
    return _topic_words_match(pattern.split("."), routing_key.split("."))


# --- declarations --------------------------------------------------------------------------


def _attribute_declaration_problems(model: PolicyModel) -> Iterator[str]:
    seen: set[str] = set()
    for name in model.attributes:
        if name in (*BUILTIN_USER_ATTRIBUTES, "roles"):
            yield f"attributes: {name!r} is built in; remove it from `attributes`"
        elif not name.isidentifier():
            yield f"attributes: {name!r} is not a valid attribute name (use letters, digits, _)"
        elif name in seen:
            yield f"attributes: {name!r} is declared twice"
        seen.add(name)


def _rule_name_problems(model: PolicyModel) -> Iterator[str]:
    seen: set[str] = set()
    for position, rule in enumerate(model.rules):
        if rule.name in seen:
            yield (
                f"rule {rule.name!r} (rules[{position}]): the name is already used by an "
                "earlier rule; rule names must be unique"
            )
        seen.add(rule.name)


def _queue_declaration_problems(model: PolicyModel) -> Iterator[str]:
    for name, queue in model.queues.items():
        where = f"queue {name!r}"
        if not name or name.startswith(_RESERVED_PREFIX):
            yield f"{where}: queue names must be non-empty and not start with 'amq.'"
        problem = _template_problem(model, where, "the name", name)
        if problem is not None:
            yield problem
        elif _placeholders(name) and "tenant" not in _placeholders(name):
            yield f"{where}: a queue template must contain {{tenant}}, it is a per-tenant queue"
        if queue.overflow is not None and queue.max_length is None:
            yield f"{where}: overflow {queue.overflow!r} needs max_length to be set"
        if queue.tier is not None and queue.tier not in model.tiers:
            yield f"{where}: tier {queue.tier!r} is not declared in [tiers]"


def _exchange_declaration_problems(model: PolicyModel) -> Iterator[str]:
    for name, exchange in model.exchanges.items():
        where = f"exchange {name!r}"
        if not name or name.startswith(_RESERVED_PREFIX) or "{" in name or "}" in name:
            yield f"{where}: exchange names must be non-empty, plain, and not start with 'amq.'"
        for binding in exchange.bindings:
            bound = f"{where} binding to {binding.queue!r}"
            if binding.queue not in model.queues:
                yield f"{bound}: queue {binding.queue!r} is not declared in [queues]"
                continue
            if binding.routing_key is None:
                continue
            problem = _template_problem(model, bound, "routing_key", binding.routing_key)
            if problem is not None:
                yield problem
            elif not _placeholders(binding.routing_key) <= _placeholders(binding.queue):
                yield (
                    f"{bound}: routing_key {binding.routing_key!r} uses placeholders "
                    "its queue name does not, so it could not be filled in per tenant"
                )


def _tier_problems(model: PolicyModel) -> Iterator[str]:
    for name, tier in model.tiers.items():
        if tier.weight is not None and tier.queue is None:
            yield (
                f"tier {name!r}: weight is the consumption weight of the tier's queue, "
                "so it needs `queue` to be set"
            )
    for queue_name, tier_names in tiers_naming_queue(model).items():
        queue = model.queues.get(queue_name)
        weights = {weight for t in tier_names if (weight := model.tiers[t].weight) is not None}
        if queue is not None and queue.weight is not None:
            weights.add(queue.weight)
        if len(weights) > 1:
            yield (
                f"queue {queue_name!r}: its tiers and declaration give different weights "
                f"{sorted(weights)}; set the weight in one place"
            )


def _match_problems(model: PolicyModel) -> Iterator[str]:
    declared = set(model.attributes)
    for rule in model.rules:
        where = f"rule {rule.name!r}"
        for tier in rule.match.tier or []:
            if tier not in model.tiers:
                yield f"{where}: match.tier {tier!r} is not declared in [tiers]"
        for name in rule.match.attributes:
            if name not in declared:
                yield (
                    f"{where}: match.attributes.{name} names an undeclared user attribute; "
                    f"add {name!r} to the policy's `attributes` list or fix the name"
                )


# --- routes ---------------------------------------------------------------------------------


def _route_sources(model: PolicyModel) -> Iterator[tuple[str, RouteModel]]:
    """Every place that can set route fields, as a RouteModel, with its name."""
    for rule in model.rules:
        yield f"rule {rule.name!r}", rule.route
    for name, tier in model.tiers.items():
        yield f"tier {name!r}", RouteModel(queue=tier.queue)
    yield (
        "defaults",
        RouteModel(
            exchange=model.defaults.exchange,
            queue=model.defaults.queue,
            routing_key=model.defaults.routing_key,
        ),
    )


def _route_reference_problems(model: PolicyModel, where: str, route: RouteModel) -> Iterator[str]:
    if route.exchange and route.exchange not in model.exchanges:
        yield (
            f"{where}: exchange {route.exchange!r} is not declared in [exchanges] "
            '(use "" for the default exchange)'
        )
    if route.queue is not None:
        problem = _template_problem(model, where, "queue", route.queue)
        if problem is not None:
            yield problem
        elif route.queue not in model.queues:
            yield (
                f"{where}: queue {route.queue!r} is not declared in [queues]; every queue "
                "a rule, tier or the defaults route to must be declared (templates too)"
            )
    if route.routing_key is not None:
        problem = _template_problem(model, where, "routing_key", route.routing_key)
        if problem is not None:
            yield problem
    if route.vhost is not None:
        problem = _template_problem(model, where, "vhost", route.vhost)
        if problem is not None:
            yield problem


def _template_problem(model: PolicyModel, where: str, field: str, text: str) -> str | None:
    try:
        template = Template.parse(text)
    except TemplateSyntaxError as exc:
        return f"{where}: {field}: {exc}"
    unknown = sorted(template.placeholders - known_attributes(model))
    if unknown:
        known = ", ".join(sorted(known_attributes(model)))
        return (
            f"{where}: {field} {text!r} uses placeholder {{{unknown[0]}}}, which is not a "
            f"known user attribute (known: {known}; declare others in `attributes`)"
        )
    return None


def _placeholders(text: str) -> frozenset[str]:
    """The placeholders of a template; none for a malformed one (reported elsewhere)."""
    try:
        return Template.parse(text).placeholders
    except TemplateSyntaxError:
        return frozenset()


def _reachable_tiers(model: PolicyModel, spec: MatchSpec) -> list[str | None]:
    """The tier entries a user matching `spec` can have (None: no tier entry applies)."""
    wanted = spec.user_values.get("tier")
    if wanted is None:
        return [None, *model.tiers]
    return [name for name in model.tiers if name in wanted]


def _priority_problems(model: PolicyModel, plan: RoutePlan, tier_name: str | None) -> Iterator[str]:
    if plan.queue is None or plan.priority is None:
        return
    max_priority = model.queues[plan.queue.text].max_priority
    if plan.priority > max_priority:
        users = f"tier {tier_name!r} users get " if tier_name is not None else ""
        yield (
            f"{_who(plan)}: {users}priority {plan.priority} ({plan.sources['priority']}) "
            f"on queue {plan.queue.text!r} ({plan.sources['queue']}), above that "
            f"queue's max_priority {max_priority}; lower the priority or raise max_priority"
        )


def _delivery_problems(model: PolicyModel, plan: RoutePlan) -> Iterator[str]:
    if plan.queue is None:
        return  # the job's own queue is only known when it is published
    queue = plan.queue.text
    key = plan.routing_key.text if plan.routing_key is not None else queue
    who = _who(plan)
    if not plan.exchange:
        if key != queue:
            yield (
                f"{who} routes through the default exchange with routing key {key!r} to "
                f"queue {queue!r}, but the default exchange delivers by queue name; "
                "leave routing_key unset or name a declared exchange"
            )
        return
    if not _exchange_delivers(model, plan.exchange, key, queue):
        yield (
            f"{who} publishes to exchange {plan.exchange!r} with routing key {key!r} for "
            f"queue {queue!r}, but no binding of {plan.exchange!r} delivers that key to "
            f"{queue!r}; add one under [exchanges.{plan.exchange}]"
        )


def _who(plan: RoutePlan) -> str:
    return f"rule {plan.rule!r}" if plan.rule else "defaults (no rule matched)"


def _exchange_delivers(model: PolicyModel, exchange_name: str, key: str, queue: str) -> bool:
    exchange = model.exchanges[exchange_name]
    for binding in exchange.bindings:
        if binding.queue != queue:
            continue
        binding_key = binding.routing_key or binding.queue
        # A templated key is only known per user, so any binding to the queue may deliver it.
        if exchange.type == "fanout" or binding_key == key or not Template.parse(key).is_static:
            return True
        if exchange.type == "topic" and topic_matches(binding_key, key):
            return True
    return False


def _topic_words_match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic_words_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words or head not in ("*", words[0]):
        return False
    return _topic_words_match(rest, words[1:])
