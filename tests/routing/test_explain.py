"""`explain` tells a human which route applies, which rule chose it and why others did not."""

from __future__ import annotations

from typing import Any

from routing import Policy


def make_policy(policy_data: dict[str, Any]) -> Policy:
    policy_data["rules"] = [
        {
            "name": "beta",
            "match": {"group": "beta"},
            "route": {"exchange": "beta", "queue": "beta"},
        },
        {
            "name": "ops",
            "match": {"roles": ["admin", "oncall"], "job": "alerts.*"},
            "route": {"priority": 9},
        },
        {
            "name": "dedicated",
            "match": {"attributes": {"isolation": "dedicated"}},
            "route": {"queue": "tenant.{tenant}"},
        },
    ]
    return Policy.from_dict(policy_data)


def test_explain_names_the_rule_the_route_and_where_each_field_came_from(
    policy_data: dict[str, Any],
) -> None:
    # Given a pro user who is on call, When an alert job is explained
    text = make_policy(policy_data).explain(
        "alerts.disk", "default", {"tier": "pro", "roles": ["oncall"]}
    )
    # Then the earlier rule's failure, the winning rule and the route are all spelt out
    assert "job 'alerts.disk' on queue 'default' for user tier='pro', roles=['oncall']" in text
    assert "rule 'beta' did not match: group is missing (wanted 'beta')" in text
    assert "rule 'ops' matched" in text
    assert "queue 'default' (the job's own queue)" in text
    assert "priority 9 (from rule 'ops')" in text
    assert "exchange '' (the default exchange, from defaults)" in text
    # And rules after the winner are not mentioned
    assert "dedicated" not in text


def test_explain_when_the_defaults_apply(policy_data: dict[str, Any]) -> None:
    text = make_policy(policy_data).explain(
        "report.build", "default", {"tier": "enterprise", "group": "staff"}
    )
    assert "rule 'beta' did not match: group is 'staff' (wanted 'beta')" in text
    assert (
        "rule 'ops' did not match: job is 'report.build' (wanted matching 'alerts.*'); "
        "roles is missing (wanted any of 'admin' or 'oncall')" in text
    )
    assert "no rule matched, so the defaults apply" in text
    assert "queue 'enterprise' (from tier 'enterprise')" in text
    assert "priority 9 (from tier 'enterprise')" in text


def test_explain_for_an_anonymous_user(policy_data: dict[str, Any]) -> None:
    text = make_policy(policy_data).explain("alerts.disk", "default", None)
    assert "for an anonymous user" in text
    assert "rule 'beta' did not match: group: the user is anonymous" in text
    assert "priority none (no rule, tier or default sets one)" in text


def test_explain_reports_a_route_that_cannot_be_built(policy_data: dict[str, Any]) -> None:
    text = make_policy(policy_data).explain("x", "default", {"isolation": "dedicated"})
    assert "rule 'dedicated' matched" in text
    assert "but no route: " in text
    assert "no 'tenant' attribute" in text


def test_explain_shows_only_attributes_the_policy_knows(policy_data: dict[str, Any]) -> None:
    text = make_policy(policy_data).explain("x", "default", {"tier": "pro", "api_token": "s3cret"})
    assert "s3cret" not in text
