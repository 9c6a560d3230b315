"""Benchmark of the routing hot path: microseconds per `Policy.route()` on a 50-rule policy.

The probed user matches none of the first 49 rules, so every call scans the whole list:
the worst case for first-match routing. Run from the repository root:
`python -m bench.routing_bench`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from routing import Policy

RULE_COUNT = 50
REPETITIONS = 7


def build_policy(rule_count: int = RULE_COUNT) -> Policy:
    """A policy whose rules mix tier, group, attribute, role, label and job-glob conditions."""
    rules: list[dict[str, Any]] = []
    for number in range(rule_count - 1):
        kind = number % 5
        match: dict[str, Any]
        if kind == 0:
            match = {"group": f"group-{number}"}
        elif kind == 1:
            match = {"tier": "enterprise", "tenant": [f"tenant-{number}", f"other-{number}"]}
        elif kind == 2:
            match = {"job": f"reports{number}.*", "attributes": {"region": "eu"}}
        elif kind == 3:
            match = {"roles": [f"role-{number}", "auditor"]}
        else:
            match = {"labels": {"team": f"team-{number}"}, "queue": "default"}
        rules.append({"name": f"rule-{number}", "match": match, "route": {"queue": "special"}})
    rules.append(
        {"name": "pro-mail", "match": {"tier": "pro", "job": "email.*"}, "route": {"priority": 7}}
    )
    return Policy.from_dict(
        {
            "attributes": ["region"],
            "tiers": {
                "free": {"priority": 1},
                "pro": {"priority": 5},
                "enterprise": {"priority": 9},
            },
            "queues": {"default": {}, "special": {}},
            "rules": rules,
        }
    )


def run(n: int = 100_000) -> dict[str, float]:
    """Median (and best) microseconds per route() over REPETITIONS runs of `n` calls."""
    policy = build_policy()
    user = {"tier": "pro", "tenant": "acme", "group": "staff", "roles": ["dev"], "region": "us"}
    labels = {"team": "mail"}
    route = policy.route
    assert route("email.send", "default", user, labels).priority == 7  # last rule wins
    per_call_us: list[float] = []
    for _ in range(REPETITIONS):
        started = time.perf_counter_ns()
        for _ in range(n):
            route("email.send", "default", user, labels)
        per_call_us.append((time.perf_counter_ns() - started) / n / 1000)
    return {
        "rules": float(RULE_COUNT),
        "calls_per_repetition": float(n),
        "median_us_per_route": statistics.median(per_call_us),
        "best_us_per_route": min(per_call_us),
    }


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {value:.3f}" if name.endswith("route") else f"{name}: {value:.0f}")
