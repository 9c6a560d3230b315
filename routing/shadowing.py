"""Shadowing: finding rules that can never match because an earlier rule always wins.

The check is deliberately conservative: it only reports a rule when an earlier rule's
conditions are provably at least as wide on every key, so a report is never wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TypeVar

from routing.conditions import MatchSpec, describe_values, is_glob

_Value = TypeVar("_Value")


def covers(earlier: MatchSpec, later: MatchSpec) -> bool:
    """True when every job and user that `later` matches is also matched by `earlier`."""
    return (
        _sets_cover(earlier.user_values, later.user_values)
        and _optional_set_covers(earlier.roles, later.roles)
        and _optional_set_covers(earlier.queues, later.queues)
        and _sets_cover(earlier.labels, later.labels)
        and _jobs_cover(earlier.jobs, later.jobs)
    )


def shadowing_problems(rules: Sequence[tuple[str, MatchSpec]]) -> list[str]:
    """One problem per rule that an earlier rule shadows, naming both rules."""
    problems: list[str] = []
    for position, (name, spec) in enumerate(rules):
        for earlier_name, earlier_spec in rules[:position]:
            if covers(earlier_spec, spec):
                problems.append(
                    f"rule {name!r} can never match: the earlier rule {earlier_name!r} "
                    f"({describe_match(earlier_spec)}) matches everything it would; "
                    f"move {name!r} above {earlier_name!r} or narrow {earlier_name!r}"
                )
                break
    return problems


def describe_match(spec: MatchSpec) -> str:
    """A short human summary of a rule's conditions."""
    if spec.is_catch_all:
        return "no conditions, so it matches everything"
    parts = [f"{name} in {describe_values(values)}" for name, values in spec.user_values.items()]
    if spec.roles is not None:
        parts.append(f"roles any of {describe_values(spec.roles)}")
    if spec.jobs is not None:
        parts.append(f"job in {describe_values(spec.jobs)}")
    if spec.queues is not None:
        parts.append(f"queue in {describe_values(spec.queues)}")
    parts.extend(f"label {name} in {describe_values(v)}" for name, v in spec.labels.items())
    return "; ".join(parts)


def _sets_cover(
    earlier: Mapping[str, frozenset[_Value]], later: Mapping[str, frozenset[_Value]]
) -> bool:
    return all(name in later and later[name] <= accepted for name, accepted in earlier.items())


def _optional_set_covers(
    earlier: frozenset[_Value] | None, later: frozenset[_Value] | None
) -> bool:
    return earlier is None or (later is not None and later <= earlier)


def _jobs_cover(earlier: tuple[str, ...] | None, later: tuple[str, ...] | None) -> bool:
    if earlier is None:
        return True
    if later is None:
        return False
    return all(_job_pattern_covered(pattern, earlier) for pattern in later)


def _job_pattern_covered(pattern: str, earlier: tuple[str, ...]) -> bool:
    if is_glob(pattern):
        # Comparing two globs in general is hard; identical ones (or '*') are provably wider.
        return pattern in earlier or "*" in earlier
    return any(fnmatchcase(pattern, earlier_pattern) for earlier_pattern in earlier)
