"""Conditions on data: decide whether an event rule fires or a chain step runs.

A condition is either a function of the value (``lambda e: e.plan == "pro"``) or a
declarative mapping of field paths to tests, which can travel inside a message::

    {"plan": "pro"}                        # equal
    {"seats": {"gte": 10}, "plan": {"in": ["pro", "team"]}}
    {"address.country": {"ne": "US"}, "coupon": {"exists": False}}

Every test of a mapping must hold. Operators: ``eq ne in not_in gt gte lt lte exists``.
A mapping is checked when it is defined, so a typo in an operator fails at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from amqp_jobs.errors import ConfigurationError

Condition = Callable[[Any], Any] | Mapping[str, Any]
"""A function of the value, or a mapping of field paths to tests."""

_MISSING = object()

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda found, wanted: found is not _MISSING and found == wanted,
    "ne": lambda found, wanted: found is _MISSING or found != wanted,
    "in": lambda found, wanted: found is not _MISSING and found in wanted,
    "not_in": lambda found, wanted: found is _MISSING or found not in wanted,
    "gt": lambda found, wanted: _ordered(found) and found > wanted,
    "gte": lambda found, wanted: _ordered(found) and found >= wanted,
    "lt": lambda found, wanted: _ordered(found) and found < wanted,
    "lte": lambda found, wanted: _ordered(found) and found <= wanted,
    "exists": lambda found, wanted: (found is not _MISSING) == bool(wanted),
}


def _ordered(found: Any) -> bool:
    return found is not _MISSING and found is not None


def validate_condition(spec: Mapping[str, Any], *, where: str) -> None:
    """Raise :class:`ConfigurationError` naming ``where`` if ``spec`` is not a valid mapping."""
    if not spec:
        raise ConfigurationError(f"{where}: an empty condition would always hold; omit it")
    for path, test in spec.items():
        if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
            raise ConfigurationError(f"{where}: {path!r} is not a field path like 'a' or 'a.b'")
        if isinstance(test, Mapping):
            unknown = sorted(set(test) - set(_OPERATORS))
            if unknown or not test:
                raise ConfigurationError(
                    f"{where}: field {path!r} has unknown operator(s) {unknown or '(none)'}; "
                    f"use {sorted(_OPERATORS)}"
                )
            for operator in ("in", "not_in"):
                if operator in test and not isinstance(test[operator], list | tuple | set):
                    raise ConfigurationError(
                        f"{where}: field {path!r}: {operator!r} needs a list, not "
                        f"{test[operator]!r}"
                    )


def field_value(value: Any, path: str) -> Any:
    """The value at dotted ``path`` in nested mappings or objects; ``_MISSING`` if absent."""
    current = value
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part, _MISSING)
        else:
            current = getattr(current, part, _MISSING)
        if current is _MISSING:
            return _MISSING
    return current


def holds(spec: Mapping[str, Any], value: Any) -> bool:
    """Whether every test of the mapping ``spec`` holds for ``value``."""
    for path, test in spec.items():
        found = field_value(value, path)
        tests = test.items() if isinstance(test, Mapping) else (("eq", test),)
        for operator, wanted in tests:
            try:
                if not _OPERATORS[operator](found, wanted):
                    return False
            except TypeError:  # e.g. "gt" between a string and a number: it does not hold
                return False
    return True


def compile_condition(spec: Condition | None, *, where: str) -> Callable[[Any], bool] | None:
    """A predicate for ``spec`` (validated now), or None when there is no condition."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        validate_condition(spec, where=where)
        frozen = dict(spec)
        return lambda value: holds(frozen, value)
    if callable(spec):
        return lambda value: bool(spec(value))
    raise ConfigurationError(
        f"{where}: a condition is a function or a mapping of fields to tests, not {spec!r}"
    )


FieldMap = Callable[[Any], Any] | Mapping[str, str]
"""How an event becomes a job's input: a function of the event, or ``{input field: path}``."""


def compile_mapping(spec: FieldMap | None, *, where: str) -> Callable[[Any], Any] | None:
    """A function building job input from a value, or None to pass the data as it is."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        for target, path in spec.items():
            if not isinstance(target, str) or not isinstance(path, str) or not path:
                raise ConfigurationError(
                    f"{where}: a field map is {{'input_field': 'path.in.data'}}, not {spec!r}"
                )
        pairs = dict(spec)

        def mapped(value: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for target, path in pairs.items():
                found = field_value(value, path)
                if found is not _MISSING:
                    out[target] = found
            return out

        return mapped
    if callable(spec):
        return spec
    raise ConfigurationError(f"{where}: map= is a function or a mapping, not {spec!r}")
