"""The shipped example policy loads from TOML and routes as its comments promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routing import Policy, Route


@pytest.fixture
def example(example_policy_path: Path) -> Policy:
    return Policy.from_file(example_policy_path)


def test_free_and_pro_share_the_default_queue_with_different_priorities(example: Policy) -> None:
    assert example.route("email.send", "default", {"tier": "free"}) == Route(
        "", "default", "default", 1
    )
    assert example.route("email.send", "default", {"tier": "pro"}) == Route(
        "", "default", "default", 5
    )


def test_enterprise_has_a_dedicated_weighted_queue(example: Policy) -> None:
    assert example.route("email.send", "default", {"tier": "enterprise"}) == Route(
        "", "enterprise", "enterprise", 9
    )
    assert ("enterprise", 5) in example.queues_for_tier("enterprise")
    assert all(queue != "enterprise" for queue, _ in example.queues_for_tier("pro"))


def test_beta_group_goes_through_the_beta_exchange(example: Policy) -> None:
    decision = example.decide("email.send", "default", {"tier": "pro", "group": "beta"})
    assert decision.route == Route("beta", "beta", "beta", 5)
    assert decision.rule == "beta-testers"


def test_dedicated_tenants_get_their_own_bounded_queue(example: Policy) -> None:
    user = {"tier": "enterprise", "tenant": "acme", "isolation": "dedicated", "group": "beta"}
    decision = example.decide("email.send", "default", user)
    assert decision.rule == "dedicated-tenants"
    assert decision.route == Route("", "tenant.acme", "tenant.acme", 9)
    [queue], _ = example.declarations_for_tenant("acme")
    assert (queue.name, queue.max_length, queue.overflow) == (
        "tenant.acme",
        10000,
        "reject-publish",
    )


def test_the_example_declares_what_it_routes_to(example: Policy) -> None:
    assert [queue.name for queue in example.queues()] == ["default", "enterprise", "beta"]
    assert [exchange.name for exchange in example.exchanges()] == ["beta"]


def test_the_same_policy_as_json_behaves_the_same(example: Policy, tmp_path: Path) -> None:
    as_json = tmp_path / "routes.json"
    as_json.write_text(json.dumps(example.model.model_dump(exclude_none=True)))
    from_json = Policy.from_file(as_json)
    user = {"tier": "pro", "roles": ["oncall"]}
    assert from_json.decide("alerts.disk", "default", user) == example.decide(
        "alerts.disk", "default", user
    )
