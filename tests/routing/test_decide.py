"""Deciding routes: first match wins, tiers and defaults fill the gaps, templates fill names."""

from __future__ import annotations

from typing import Any

import pytest

from routing import Policy, Route, RouteDecision, RouteError


def test_first_matching_rule_wins(policy_data: dict[str, Any]) -> None:
    # Given two rules that both match a pro user in group beta
    policy_data["rules"] = [
        {
            "name": "beta",
            "match": {"group": "beta"},
            "route": {"exchange": "beta", "queue": "beta"},
        },
        {"name": "pro-reports", "match": {"tier": "pro"}, "route": {"queue": "reports"}},
    ]
    policy = Policy.from_dict(policy_data)
    # When a pro beta user submits, Then the earlier rule decides
    decision = policy.decide("report.build", "default", {"tier": "pro", "group": "beta"})
    assert decision == RouteDecision(Route("beta", "beta", "beta", 5), "beta")
    # And a pro user outside beta falls through to the second rule
    assert policy.decide("report.build", "default", {"tier": "pro"}).rule == "pro-reports"


def test_route_returns_the_decided_route(policy_data: dict[str, Any]) -> None:
    policy = Policy.from_dict(policy_data)
    user = {"tier": "free"}
    assert policy.route("x", "default", user) == policy.decide("x", "default", user).route


def test_defaults_apply_when_no_rule_matches(policy_data: dict[str, Any]) -> None:
    # Given a policy without rules, When a user without a tier submits a job
    decision = Policy.from_dict(policy_data).decide("email.send", "mail", {"group": "staff"})
    # Then the job keeps its own queue on the default exchange, keyed by the queue name
    assert decision == RouteDecision(Route("", "mail", "mail", None), None)


def test_tier_gives_priority_and_dedicated_queue(policy_data: dict[str, Any]) -> None:
    policy = Policy.from_dict(policy_data)
    assert policy.route("x", "default", {"tier": "free"}) == Route("", "default", "default", 1)
    assert policy.route("x", "default", {"tier": "pro"}) == Route("", "default", "default", 5)
    assert policy.route("x", "default", {"tier": "enterprise"}) == Route(
        "", "enterprise", "enterprise", 9
    )
    # An undeclared tier value is just a user without tier settings
    assert policy.route("x", "default", {"tier": "gold"}) == Route("", "default", "default", None)


def test_rule_fields_override_the_tier_and_unset_ones_fall_back(
    policy_data: dict[str, Any],
) -> None:
    # Given a rule that only sets the queue
    policy_data["rules"] = [
        {"name": "reports", "match": {"job": "report.*"}, "route": {"queue": "reports"}}
    ]
    policy = Policy.from_dict(policy_data)
    # Then the enterprise tier still gives the priority, but not its dedicated queue
    route = policy.route("report.build", "default", {"tier": "enterprise"})
    assert route == Route("", "reports", "reports", 9)


def test_policy_defaults_come_after_rule_and_tier(policy_data: dict[str, Any]) -> None:
    policy_data["defaults"] = {"queue": "reports", "priority": 2}
    policy = Policy.from_dict(policy_data)
    assert policy.route("x", "default", None) == Route("", "reports", "reports", 2)
    assert policy.route("x", "default", {"tier": "pro"}) == Route("", "reports", "reports", 5)
    assert policy.route("x", "default", {"tier": "enterprise"}).queue == "enterprise"


def test_any_of_lists_match_any_listed_value(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "paid", "match": {"tier": ["pro", "enterprise"]}, "route": {"queue": "reports"}}
    ]
    policy = Policy.from_dict(policy_data)
    assert policy.decide("x", "default", {"tier": "pro"}).rule == "paid"
    assert policy.decide("x", "default", {"tier": "enterprise"}).rule == "paid"
    assert policy.decide("x", "default", {"tier": "free"}).rule is None


def test_all_conditions_of_a_rule_must_hold(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {
            "name": "acme-eu",
            "match": {
                "tenant": "acme",
                "attributes": {"region": ["eu", "uk"]},
                "queue": "default",
                "labels": {"team": "data"},
            },
        }
    ]
    policy = Policy.from_dict(policy_data)
    user = {"tenant": "acme", "region": "uk"}
    assert policy.decide("x", "default", user, {"team": "data"}).rule == "acme-eu"
    assert policy.decide("x", "other", user, {"team": "data"}).rule is None
    assert policy.decide("x", "default", user, {"team": "web"}).rule is None
    assert policy.decide("x", "default", user).rule is None
    assert policy.decide("x", "default", {"tenant": "acme"}, {"team": "data"}).rule is None


def test_job_conditions_take_exact_names_and_globs(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "mail", "match": {"job": ["email.*", "sms.send"]}, "route": {"queue": "reports"}}
    ]
    policy = Policy.from_dict(policy_data)
    assert policy.decide("email.welcome", "default", None).rule == "mail"
    assert policy.decide("sms.send", "default", None).rule == "mail"
    assert policy.decide("sms.sendall", "default", None).rule is None
    assert policy.decide("emails.welcome", "default", None).rule is None


def test_roles_match_if_the_user_has_any_of_them(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "ops", "match": {"roles": ["oncall", "admin"]}, "route": {"priority": 9}}
    ]
    policy = Policy.from_dict(policy_data)
    assert policy.decide("x", "default", {"roles": ["dev", "admin"]}).rule == "ops"
    assert policy.decide("x", "default", {"roles": ("oncall",)}).rule == "ops"
    assert policy.decide("x", "default", {"roles": "admin"}).rule == "ops"  # a bare string
    assert policy.decide("x", "default", {"roles": "oncall-admin"}).rule is None
    assert policy.decide("x", "default", {"roles": []}).rule is None


def test_missing_or_odd_user_attributes_do_not_match(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "acme", "match": {"tenant": "acme"}, "route": {"queue": "reports"}},
        {
            "name": "ops",
            "match": {"roles": "admin"},
            "route": {"queue": "beta", "exchange": "beta"},
        },
    ]
    policy = Policy.from_dict(policy_data)
    assert policy.decide("x", "default", {}).rule is None
    assert policy.decide("x", "default", {"tenant": ["acme"], "roles": 7}).rule is None


def test_anonymous_users_only_match_rules_without_user_conditions(
    policy_data: dict[str, Any],
) -> None:
    policy_data["rules"] = [
        {"name": "pro", "match": {"tier": "pro"}, "route": {"queue": "reports"}},
        {"name": "ops", "match": {"roles": "admin"}, "route": {"queue": "reports"}},
        {
            "name": "mail",
            "match": {"job": "email.*"},
            "route": {"queue": "beta", "exchange": "beta"},
        },
    ]
    policy = Policy.from_dict(policy_data)
    assert policy.decide("email.send", "default", None).rule == "mail"
    assert policy.decide("report.build", "default", None) == RouteDecision(
        Route("", "default", "default", None), None
    )


def test_queue_templates_are_filled_from_user_attributes(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {
            "name": "dedicated",
            "match": {"attributes": {"isolation": "dedicated"}},
            "route": {"queue": "tenant.{tenant}"},
        }
    ]
    policy = Policy.from_dict(policy_data)
    user: dict[str, object] = {"tier": "pro", "tenant": "acme-42", "isolation": "dedicated"}
    assert policy.route("x", "default", user) == Route("", "tenant.acme-42", "tenant.acme-42", 5)
    # Integer attribute values are fine too
    user["tenant"] = 42
    assert policy.route("x", "default", user).queue == "tenant.42"


def test_routing_key_templates_are_filled_in(policy_data: dict[str, Any]) -> None:
    policy_data["exchanges"]["events"] = {
        "type": "topic",
        "bindings": [{"queue": "reports", "routing_key": "report.#"}],
    }
    policy_data["rules"] = [
        {
            "name": "reports",
            "match": {"job": "report.*"},
            "route": {
                "exchange": "events",
                "queue": "reports",
                "routing_key": "report.{tenant}.{region}",
            },
        }
    ]
    policy = Policy.from_dict(policy_data)
    route = policy.route("report.x", "default", {"tenant": "acme", "region": "eu"})
    assert route == Route("events", "report.acme.eu", "reports", None)


def test_a_template_value_the_user_lacks_is_an_error_not_a_silent_fallback(
    policy_data: dict[str, Any],
) -> None:
    # Given a dedicated-isolation rule whose queue needs the tenant
    policy_data["rules"] = [
        {
            "name": "dedicated",
            "match": {"attributes": {"isolation": "dedicated"}},
            "route": {"queue": "tenant.{tenant}"},
        }
    ]
    policy = Policy.from_dict(policy_data)
    # When the user has no tenant, Then routing fails loudly instead of using a shared queue
    with pytest.raises(RouteError, match=r"rule 'dedicated'.*no 'tenant' attribute"):
        policy.route("x", "default", {"isolation": "dedicated"})
    # And a value that could break out of the name is refused
    with pytest.raises(RouteError, match=r"'acme\.other' cannot be part of a name"):
        policy.route("x", "default", {"isolation": "dedicated", "tenant": "acme.other"})


def test_policy_can_be_built_in_code() -> None:
    from routing import MatchModel, PolicyModel, QueueModel, RouteModel, RuleModel, TierModel

    model = PolicyModel(
        tiers={"pro": TierModel(priority=5)},
        queues={"default": QueueModel(), "pro": QueueModel()},
        rules=[
            RuleModel(name="pro", match=MatchModel(tier=["pro"]), route=RouteModel(queue="pro"))
        ],
    )
    assert Policy(model).route("x", "default", {"tier": "pro"}) == Route("", "pro", "pro", 5)
