"""A policy that cannot work is refused at load time, with a message naming rule and problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routing import Policy, PolicyError


def load_error(data: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict(data)
    return str(caught.value)


# --- schema -----------------------------------------------------------------------------------


def test_unknown_match_field_names_the_rule(policy_data: dict[str, Any]) -> None:
    # Given a rule with a misspelt condition
    policy_data["rules"] = [{"name": "pro-users", "match": {"teir": "pro"}}]
    # When it is loaded, Then the error names the rule and the unknown field
    message = load_error(policy_data)
    assert "rule 'pro-users'" in message
    assert "unknown field 'match.teir'" in message


def test_unknown_top_level_and_queue_fields_are_refused(policy_data: dict[str, Any]) -> None:
    policy_data["rule"] = []
    policy_data["queues"]["default"]["max_prio"] = 3
    message = load_error(policy_data)
    assert "policy: unknown field 'rule'" in message
    assert "queue 'default': unknown field 'max_prio'" in message


def test_condition_values_of_the_wrong_type_are_refused(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "odd", "match": {"tier": 5, "roles": [], "attributes": {"region": 1.5}}}
    ]
    message = load_error(policy_data)
    assert "rule 'odd': match.tier[0]: Input should be a valid string" in message
    assert "rule 'odd': match.roles: " in message
    assert "rule 'odd': match.attributes.region: 1.5 is not a string, integer or boolean" in message


def test_unnamed_rule_is_located_by_position(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [{"name": "ok"}, {"match": {"tier": "pro"}}]
    message = load_error(policy_data)
    assert "rules[1] (unnamed): name is required" in message


def test_priority_outside_the_amqp_range_is_refused(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [{"name": "urgent", "route": {"priority": 300}}]
    message = load_error(policy_data)
    assert "rule 'urgent': route.priority" in message
    assert "255" in message


def test_rule_priority_above_the_queue_max_priority_is_refused(
    policy_data: dict[str, Any],
) -> None:
    # Given a queue with max_priority 3 and a rule routing there with priority 7
    policy_data["queues"]["low"] = {"max_priority": 3}
    policy_data["rules"] = [
        {"name": "bulk", "match": {"job": "bulk.*"}, "route": {"queue": "low", "priority": 7}}
    ]
    message = load_error(policy_data)
    assert "rule 'bulk'" in message
    assert "priority 7" in message
    assert "queue 'low'" in message
    assert "max_priority 3" in message


def test_tier_priority_above_the_max_priority_of_a_rule_queue_is_refused(
    policy_data: dict[str, Any],
) -> None:
    # Given a rule that picks a low-priority queue but leaves the priority to the tier
    policy_data["queues"]["low"] = {"max_priority": 3}
    policy_data["rules"] = [{"name": "bulk", "match": {"job": "bulk.*"}, "route": {"queue": "low"}}]
    message = load_error(policy_data)
    # Then the enterprise (9) and pro (5) tiers are too high for that queue; free (1) is fine
    assert "rule 'bulk': tier 'enterprise' users get priority 9 (from tier 'enterprise')" in message
    assert "tier 'pro' users get priority 5" in message
    assert "tier 'free'" not in message


def test_tier_priority_check_only_covers_the_tiers_a_rule_can_match(
    policy_data: dict[str, Any],
) -> None:
    policy_data["queues"]["low"] = {"max_priority": 3}
    policy_data["rules"] = [
        {"name": "free-bulk", "match": {"tier": "free"}, "route": {"queue": "low"}}
    ]
    assert Policy.from_dict(policy_data).route("x", "default", {"tier": "free"}).queue == "low"


def test_tier_priority_above_its_own_queue_max_is_refused(policy_data: dict[str, Any]) -> None:
    policy_data["queues"]["enterprise"]["max_priority"] = 5
    message = load_error(policy_data)
    assert "defaults (no rule matched): tier 'enterprise' users get priority 9" in message
    assert "max_priority 5" in message


# --- references -------------------------------------------------------------------------------


def test_route_to_an_undeclared_queue_is_refused(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [{"name": "vip", "match": {"group": "vip"}, "route": {"queue": "vip"}}]
    message = load_error(policy_data)
    assert "rule 'vip': queue 'vip' is not declared in [queues]" in message


def test_tier_and_defaults_queues_must_be_declared_too(policy_data: dict[str, Any]) -> None:
    policy_data["tiers"]["pro"]["queue"] = "pro"
    policy_data["defaults"] = {"queue": "fallback"}
    message = load_error(policy_data)
    assert "tier 'pro': queue 'pro' is not declared" in message
    assert "defaults: queue 'fallback' is not declared" in message


def test_route_to_an_undeclared_exchange_is_refused(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "canary", "match": {"group": "canary"}, "route": {"exchange": "canary"}}
    ]
    message = load_error(policy_data)
    assert "rule 'canary': exchange 'canary' is not declared in [exchanges]" in message


def test_binding_to_an_undeclared_queue_is_refused(policy_data: dict[str, Any]) -> None:
    policy_data["exchanges"]["beta"]["bindings"].append({"queue": "ghost"})
    message = load_error(policy_data)
    assert "exchange 'beta' binding to 'ghost': queue 'ghost' is not declared" in message


def test_exchange_route_without_a_matching_binding_is_refused(
    policy_data: dict[str, Any],
) -> None:
    # Given exchange 'beta' is bound to queue 'beta' only, and a rule sends 'reports' through it
    policy_data["rules"] = [
        {
            "name": "beta-reports",
            "match": {"group": "beta"},
            "route": {"exchange": "beta", "queue": "reports"},
        }
    ]
    message = load_error(policy_data)
    assert "rule 'beta-reports' publishes to exchange 'beta' with routing key 'reports'" in message
    assert "no binding of 'beta' delivers that key to 'reports'" in message


def test_topic_binding_patterns_are_understood(policy_data: dict[str, Any]) -> None:
    policy_data["exchanges"]["events"] = {
        "type": "topic",
        "bindings": [{"queue": "reports", "routing_key": "report.#"}],
    }
    policy_data["rules"] = [
        {
            "name": "reports",
            "match": {"job": "report.*"},
            "route": {"exchange": "events", "queue": "reports", "routing_key": "report.daily.eu"},
        }
    ]
    route = Policy.from_dict(policy_data).route("report.daily", "default", None)
    assert (route.exchange, route.routing_key, route.queue) == (
        "events",
        "report.daily.eu",
        "reports",
    )


def test_default_exchange_with_a_foreign_routing_key_is_refused(
    policy_data: dict[str, Any],
) -> None:
    policy_data["rules"] = [
        {"name": "odd", "match": {"group": "odd"}, "route": {"queue": "beta", "routing_key": "x"}}
    ]
    message = load_error(policy_data)
    assert "rule 'odd' routes through the default exchange with routing key 'x'" in message


def test_condition_on_an_undeclared_tier_or_attribute_is_refused(
    policy_data: dict[str, Any],
) -> None:
    policy_data["rules"] = [
        {"name": "gold", "match": {"tier": "gold"}},
        {"name": "eu", "match": {"attributes": {"regoin": "eu"}}},
    ]
    message = load_error(policy_data)
    assert "rule 'gold': match.tier 'gold' is not declared in [tiers]" in message
    assert "rule 'eu': match.attributes.regoin names an undeclared user attribute" in message


# --- templates --------------------------------------------------------------------------------


def test_template_placeholder_that_is_not_an_attribute_is_refused(
    policy_data: dict[str, Any],
) -> None:
    policy_data["queues"]["tenant.{tenant}.{zone}"] = {}
    policy_data["rules"] = [
        {"name": "zoned", "match": {"group": "zoned"}, "route": {"queue": "tenant.{tenant}.{zone}"}}
    ]
    message = load_error(policy_data)
    assert (
        "queue 'tenant.{tenant}.{zone}': the name 'tenant.{tenant}.{zone}' uses placeholder "
        "{zone}, which is not a known user attribute" in message
    )
    assert "rule 'zoned': queue 'tenant.{tenant}.{zone}' uses placeholder {zone}" in message


def test_malformed_templates_are_refused(policy_data: dict[str, Any]) -> None:
    policy_data["queues"]["tenant.{tenant!r}"] = {}
    policy_data["queues"]["tenant.{tenant"] = {}
    policy_data["rules"] = [{"name": "keyed", "route": {"routing_key": "k.{0}"}}]
    message = load_error(policy_data)
    assert "queue 'tenant.{tenant!r}'" in message
    assert "must be a plain attribute name" in message
    assert "queue 'tenant.{tenant'" in message
    assert "rule 'keyed': routing_key: 'k.{0}'" in message


def test_binding_key_template_needs_a_template_queue(policy_data: dict[str, Any]) -> None:
    policy_data["exchanges"]["beta"]["bindings"] = [{"queue": "beta", "routing_key": "b.{tenant}"}]
    message = load_error(policy_data)
    assert "binding to 'beta': routing_key 'b.{tenant}' uses placeholders" in message


def test_queue_template_must_be_per_tenant(policy_data: dict[str, Any]) -> None:
    policy_data["queues"]["region.{region}"] = {}
    message = load_error(policy_data)
    assert "queue 'region.{region}': a queue template must contain {tenant}" in message


# --- rules ------------------------------------------------------------------------------------


def test_duplicate_rule_names_are_refused(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "vip", "match": {"group": "vip"}},
        {"name": "vip", "match": {"group": "staff"}},
    ]
    message = load_error(policy_data)
    assert "rule 'vip' (rules[1]): the name is already used by an earlier rule" in message


def test_a_rule_narrower_than_an_earlier_one_is_shadowed(policy_data: dict[str, Any]) -> None:
    # Given {tier: pro} before {tier: pro, tenant: acme}
    policy_data["rules"] = [
        {"name": "pro", "match": {"tier": "pro"}, "route": {"queue": "reports"}},
        {
            "name": "pro-acme",
            "match": {"tier": "pro", "tenant": "acme"},
            "route": {"queue": "beta", "exchange": "beta"},
        },
    ]
    message = load_error(policy_data)
    assert "rule 'pro-acme' can never match: the earlier rule 'pro'" in message
    assert "move 'pro-acme' above 'pro'" in message


def test_a_catch_all_shadows_every_later_rule(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "everything", "route": {"queue": "reports"}},
        {"name": "beta", "match": {"group": "beta"}},
        {"name": "mail", "match": {"job": "email.*"}},
    ]
    message = load_error(policy_data)
    assert "rule 'beta' can never match: the earlier rule 'everything' (no conditions" in message
    assert "rule 'mail' can never match: the earlier rule 'everything'" in message


def test_any_of_lists_shadow_a_subset(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "paid", "match": {"tier": ["pro", "enterprise"], "roles": ["a", "b"]}},
        {"name": "pro-a", "match": {"tier": "pro", "roles": "a", "group": "x"}},
    ]
    assert "rule 'pro-a' can never match: the earlier rule 'paid'" in load_error(policy_data)


def test_job_glob_shadows_exact_names_it_matches_and_identical_globs(
    policy_data: dict[str, Any],
) -> None:
    policy_data["rules"] = [
        {"name": "mail", "match": {"job": "email.*"}},
        {"name": "welcome", "match": {"job": "email.welcome", "tier": "pro"}},
        {"name": "mail-again", "match": {"job": ["email.*"], "queue": "default"}},
    ]
    message = load_error(policy_data)
    assert "rule 'welcome' can never match: the earlier rule 'mail'" in message
    assert "rule 'mail-again' can never match: the earlier rule 'mail'" in message


def test_shadow_detection_has_no_false_positives(policy_data: dict[str, Any]) -> None:
    # Given later rules that each can match something the earlier ones do not
    policy_data["rules"] = [
        {"name": "pro-acme", "match": {"tier": "pro", "tenant": "acme"}},
        {"name": "pro", "match": {"tier": "pro"}},  # wider than the earlier rule
        {"name": "mail", "match": {"job": "email.*"}},
        {"name": "mail-welcome", "match": {"job": "email.welcome*"}},  # a different glob
        {"name": "free-or-pro", "match": {"tier": ["free", "pro"], "group": "x"}},  # wider set
        {"name": "roles", "match": {"roles": ["a"]}},
        {"name": "more-roles", "match": {"roles": ["a", "b"]}},  # any-of a wider set
        {"name": "labelled", "match": {"labels": {"team": "x"}}},
        {"name": "other-label", "match": {"labels": {"team": "y"}}},
    ]
    # When it is loaded, Then no rule is reported
    policy = Policy.from_dict(policy_data)
    assert policy.decide("email.welcome2", "default", {"tier": "free"}).rule == "mail"


# --- tiers and queues ------------------------------------------------------------------------


def test_queue_settings_that_contradict_each_other_are_refused(
    policy_data: dict[str, Any],
) -> None:
    policy_data["queues"]["beta"]["overflow"] = "drop-head"
    policy_data["queues"]["enterprise"]["weight"] = 2
    policy_data["queues"]["reports"]["tier"] = "gold"
    policy_data["tiers"]["pro"]["weight"] = 3
    message = load_error(policy_data)
    assert "queue 'beta': overflow 'drop-head' needs max_length" in message
    assert "queue 'enterprise': its tiers and declaration give different weights [2, 5]" in message
    assert "queue 'reports': tier 'gold' is not declared in [tiers]" in message
    assert "tier 'pro': weight is the consumption weight of the tier's queue" in message


def test_every_problem_is_reported_at_once(policy_data: dict[str, Any]) -> None:
    policy_data["rules"] = [
        {"name": "a", "route": {"queue": "nowhere"}},
        {"name": "b", "route": {"exchange": "nothing"}},
    ]
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict(policy_data)
    assert len(caught.value.problems) == 2
    assert "2 problems" in str(caught.value)


# --- files ------------------------------------------------------------------------------------


def test_json_policy_files_load_and_errors_name_the_file(
    tmp_path: Path, policy_data: dict[str, Any]
) -> None:
    good = tmp_path / "routes.json"
    good.write_text(json.dumps(policy_data))
    assert Policy.from_file(good).route("x", "default", {"tier": "pro"}).priority == 5

    policy_data["rules"] = [{"name": "broken", "route": {"queue": "nowhere"}}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(policy_data))
    with pytest.raises(PolicyError, match=r"bad\.json.*rule 'broken'"):
        Policy.from_file(bad)


def test_unreadable_or_unsupported_files_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "routes.toml"
    broken.write_text("rules = [")
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        Policy.from_file(broken)
    yaml = tmp_path / "routes.yaml"
    yaml.write_text("rules: []")
    with pytest.raises(PolicyError, match=r"unsupported policy file type '\.yaml'"):
        Policy.from_file(yaml)
