"""What a policy needs declared: static queues, exchanges, bindings, tenant and tier views."""

from __future__ import annotations

from typing import Any

import pytest

from routing import BindingDecl, ExchangeDecl, Policy, PolicyError, QueueDecl, RouteError


@pytest.fixture
def policy(policy_data: dict[str, Any]) -> Policy:
    policy_data["queues"]["shared-reports"] = policy_data["queues"].pop("reports")
    policy_data["queues"]["pro-only"] = {"tier": "pro", "weight": 3}
    policy_data["exchanges"]["tenants"] = {
        "type": "topic",
        "bindings": [{"queue": "tenant.{tenant}", "routing_key": "jobs.{tenant}.#"}],
    }
    return Policy.from_dict(policy_data)


def test_queues_lists_static_queues_with_their_settings(policy: Policy) -> None:
    queues = {queue.name: queue for queue in policy.queues()}
    assert set(queues) == {"default", "enterprise", "shared-reports", "beta", "pro-only"}
    # The enterprise queue is the enterprise tier's own queue, so it belongs to that tier
    assert queues["enterprise"] == QueueDecl("enterprise", 10, None, None, "enterprise", False)
    assert queues["default"].arguments == {"x-max-priority": 10}


def test_tenant_templates_are_listed_apart(policy: Policy) -> None:
    [template] = policy.tenant_queue_templates()
    assert template == QueueDecl("tenant.{tenant}", 10, 10000, "reject-publish", None, True)
    assert template.arguments == {
        "x-max-priority": 10,
        "x-max-length": 10000,
        "x-overflow": "reject-publish",
    }


def test_exchanges_and_static_bindings(policy: Policy) -> None:
    assert policy.exchanges() == [ExchangeDecl("beta", "direct"), ExchangeDecl("tenants", "topic")]
    # The binding to the tenant template is per tenant, so it is not a static binding
    assert policy.bindings() == [BindingDecl("beta", "beta", "beta")]


def test_declarations_for_tenant_fill_in_the_templates(policy: Policy) -> None:
    queues, bindings = policy.declarations_for_tenant("acme")
    assert queues == [QueueDecl("tenant.acme", 10, 10000, "reject-publish", None, False)]
    assert bindings == [BindingDecl("tenants", "tenant.acme", "jobs.acme.#")]


def test_declarations_for_tenant_refuse_unsafe_names(policy: Policy) -> None:
    with pytest.raises(RouteError, match="cannot be part of a name"):
        policy.declarations_for_tenant("acme/../other")


def test_queues_for_tier_lists_the_tier_queues_and_the_shared_ones(policy: Policy) -> None:
    assert policy.queues_for_tier("enterprise") == [
        ("default", 1),
        ("enterprise", 5),
        ("beta", 1),
        ("shared-reports", 1),
    ]
    assert policy.queues_for_tier("pro") == [
        ("default", 1),
        ("beta", 1),
        ("shared-reports", 1),
        ("pro-only", 3),
    ]
    assert ("enterprise", 5) not in policy.queues_for_tier("free")


def test_queues_for_an_undeclared_tier_is_an_error(policy: Policy) -> None:
    with pytest.raises(PolicyError, match="tier 'gold' is not declared"):
        policy.queues_for_tier("gold")


def test_tenant_queue_patterns_recognise_tenant_queues(policy: Policy) -> None:
    [pattern] = policy.tenant_queue_patterns("pro")
    assert (pattern.template, pattern.tier, pattern.weight) == ("tenant.{tenant}", None, 1)
    assert pattern.match("tenant.acme") == {"tenant": "acme"}
    assert pattern.match("tenant.acme.extra") is None
    assert pattern.match("default") is None


def test_tenant_queue_patterns_respect_the_template_tier(policy_data: dict[str, Any]) -> None:
    policy_data["queues"]["tenant.{tenant}"]["tier"] = "enterprise"
    policy_data["queues"]["tenant.{tenant}"]["weight"] = 4
    policy = Policy.from_dict(policy_data)
    assert policy.tenant_queue_patterns("free") == []
    [pattern] = policy.tenant_queue_patterns("enterprise")
    assert (pattern.tier, pattern.weight) == ("enterprise", 4)


def test_templates_with_other_attributes_take_them_as_arguments(
    policy_data: dict[str, Any],
) -> None:
    policy_data["queues"] = {"tenant.{tenant}.{region}": {}}
    policy_data.update(tiers={}, exchanges={})
    policy = Policy.from_dict(policy_data)
    queues, _ = policy.declarations_for_tenant("acme", {"region": "eu"})
    assert [queue.name for queue in queues] == ["tenant.acme.eu"]
    with pytest.raises(RouteError, match="no 'region' attribute"):
        policy.declarations_for_tenant("acme")
