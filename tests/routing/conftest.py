"""Shared fixtures for the routing tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

EXAMPLE_POLICY = REPO_ROOT / "routing" / "examples" / "routes.toml"

_BASE_POLICY: dict[str, Any] = {
    "attributes": ["isolation", "region"],
    "tiers": {
        "free": {"priority": 1},
        "pro": {"priority": 5},
        "enterprise": {"priority": 9, "queue": "enterprise", "weight": 5},
    },
    "queues": {
        "default": {"max_priority": 10},
        "enterprise": {"max_priority": 10},
        "reports": {"max_priority": 10},
        "beta": {"max_priority": 10},
        "tenant.{tenant}": {"max_length": 10000, "overflow": "reject-publish"},
    },
    "exchanges": {"beta": {"type": "direct", "bindings": [{"queue": "beta"}]}},
    "rules": [],
}


@pytest.fixture
def repo_root() -> Path:
    """The repository checkout the tests run from."""
    return REPO_ROOT


@pytest.fixture
def example_policy_path() -> Path:
    """The example policy shipped with the package."""
    return EXAMPLE_POLICY


@pytest.fixture
def policy_data() -> dict[str, Any]:
    """A fresh, valid policy (three tiers, a few queues, no rules) for a test to extend."""
    return copy.deepcopy(_BASE_POLICY)
