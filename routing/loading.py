"""Reading a policy from a mapping or a file, with schema errors reworded to name the rule."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from routing.errors import PolicyError
from routing.models import PolicyModel

_SECTION_NAMES = {"queues": "queue", "tiers": "tier", "exchanges": "exchange"}


def model_from_dict(data: Mapping[str, Any], source: str | None = None) -> PolicyModel:
    """Validate `data` against the policy schema, raising PolicyError on any problem."""
    try:
        return PolicyModel.model_validate(data)
    except ValidationError as exc:
        problems = [_describe_error(data, error) for error in exc.errors()]
        raise PolicyError(list(dict.fromkeys(problems)), source) from None


def read_policy_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw contents of a .toml or .json policy file."""
    file = Path(path)
    try:
        if file.suffix == ".toml":
            with file.open("rb") as stream:
                return tomllib.load(stream)
        if file.suffix == ".json":
            with file.open(encoding="utf-8") as stream:
                data = json.load(stream)
            if not isinstance(data, dict):
                raise PolicyError("the top level of a JSON policy must be an object", str(file))
            return data
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file: {exc}", str(file)) from exc
    raise PolicyError(
        f"unsupported policy file type {file.suffix!r}; use .toml or .json", str(file)
    )


def _describe_error(data: Mapping[str, Any], error: ErrorDetails) -> str:
    location = list(error["loc"])
    where, rest = _owner(data, location)
    field = _dotted(rest)
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field {field!r}; check the spelling against the policy format"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{where}: {field} is required"
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def _owner(data: Mapping[str, Any], location: list[int | str]) -> tuple[str, list[int | str]]:
    """Who the error is about ('rule "x"', 'queue "q"', ...) and the location inside it."""
    if len(location) >= 2 and location[0] == "rules" and isinstance(location[1], int):
        return _rule_label(data, location[1]), location[2:]
    if len(location) >= 2 and location[0] in _SECTION_NAMES:
        return f"{_SECTION_NAMES[str(location[0])]} {location[1]!r}", location[2:]
    if location and location[0] == "defaults":
        return "defaults", location[1:]
    return "policy", location


def _rule_label(data: Mapping[str, Any], position: int) -> str:
    rules = data.get("rules")
    rule = rules[position] if isinstance(rules, list) and position < len(rules) else None
    name = rule.get("name") if isinstance(rule, Mapping) else None
    if isinstance(name, str) and name:
        return f"rule {name!r}"
    return f"rules[{position}] (unnamed)"


def _dotted(location: list[int | str]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")
