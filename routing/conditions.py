"""Rule conditions: a rule's match normalised into value sets, and compiled into predicates.

`MatchSpec` is the shape both the shadowing check and the compiler read, so they can
never disagree about what a rule matches. `Condition.test` is a plain closure: the hot
path calls it with (job, queue, user, labels) and nothing else.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from routing.models import MatchModel, Scalar

User = Mapping[str, Any] | None
Labels = Mapping[str, str] | None
Predicate = Callable[[str, str, User, Labels], bool]
Reader = Callable[[str, str, User, Labels], object]

BUILTIN_USER_ATTRIBUTES = ("tier", "group", "tenant")
"""Scalar user attributes every policy knows; `roles` is the builtin collection one."""

MISSING = object()
"""What a reader returns when the attribute or label is absent."""

_GLOB_CHARACTERS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """True when a job pattern uses glob syntax rather than naming one job."""
    return not _GLOB_CHARACTERS.isdisjoint(pattern)


@dataclass(frozen=True, slots=True)
class MatchSpec:
    """A rule's conditions as sets of accepted values; a missing key means 'any'."""

    user_values: Mapping[str, frozenset[Scalar]]
    roles: frozenset[str] | None
    jobs: tuple[str, ...] | None
    queues: frozenset[str] | None
    labels: Mapping[str, frozenset[str]]

    @classmethod
    def from_model(cls, match: MatchModel) -> MatchSpec:
        """Normalise a validated match table."""
        user_values: dict[str, frozenset[Scalar]] = {}
        for name in BUILTIN_USER_ATTRIBUTES:
            accepted: list[str] | None = getattr(match, name)
            if accepted is not None:
                user_values[name] = frozenset(accepted)
        for name, values in match.attributes.items():
            user_values[name] = frozenset(values)
        return cls(
            user_values=user_values,
            roles=frozenset(match.roles) if match.roles is not None else None,
            jobs=tuple(dict.fromkeys(match.job)) if match.job is not None else None,
            queues=frozenset(match.queue) if match.queue is not None else None,
            labels={name: frozenset(values) for name, values in match.labels.items()},
        )

    @property
    def is_catch_all(self) -> bool:
        """True when the rule has no conditions at all."""
        return not (self.user_values or self.labels or self.roles or self.jobs or self.queues)


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition: a fast test, plus what `explain` needs to say why it failed."""

    subject: str
    wanted: str
    test: Predicate
    read: Reader
    about_user: bool

    def why_not(self, job: str, queue: str, user: User, labels: Labels) -> str:
        """Describe, for a human, why this condition does not hold."""
        if self.about_user and user is None:
            return f"{self.subject}: the user is anonymous (wanted {self.wanted})"
        actual = self.read(job, queue, user, labels)
        if actual is MISSING:
            return f"{self.subject} is missing (wanted {self.wanted})"
        return f"{self.subject} is {actual!r} (wanted {self.wanted})"


def compile_conditions(spec: MatchSpec) -> tuple[Condition, ...]:
    """Turn a rule's match into conditions that must all hold, cheapest first."""
    conditions: list[Condition] = []
    if spec.jobs is not None:
        conditions.append(_job_condition(spec.jobs))
    if spec.queues is not None:
        conditions.append(_queue_condition(spec.queues))
    for name, accepted in spec.user_values.items():
        conditions.append(_user_value_condition(name, accepted))
    if spec.roles is not None:
        conditions.append(_roles_condition(spec.roles))
    for name, accepted_labels in spec.labels.items():
        conditions.append(_label_condition(name, accepted_labels))
    return tuple(conditions)


def describe_values(values: Iterable[object]) -> str:
    """'a' or 'b' or 'c', in a stable order."""
    return " or ".join(sorted(repr(value) for value in values))


def _job_condition(patterns: tuple[str, ...]) -> Condition:
    exact = frozenset(pattern for pattern in patterns if not is_glob(pattern))
    globs = [pattern for pattern in patterns if is_glob(pattern)]
    test: Predicate
    if not globs:

        def test(job: str, queue: str, user: User, labels: Labels) -> bool:
            return job in exact

    else:
        matches_glob = re.compile("|".join(fnmatch.translate(glob) for glob in globs)).match

        def test(job: str, queue: str, user: User, labels: Labels) -> bool:
            return job in exact or matches_glob(job) is not None

    wanted = " or ".join(
        [repr(name) for name in sorted(exact)] + [f"matching {glob!r}" for glob in globs]
    )
    return Condition("job", wanted, test, lambda job, queue, user, labels: job, False)


def _queue_condition(accepted: frozenset[str]) -> Condition:
    def test(job: str, queue: str, user: User, labels: Labels) -> bool:
        return queue in accepted

    return Condition(
        "queue", describe_values(accepted), test, lambda job, q, user, labels: q, False
    )


def _user_value_condition(name: str, accepted: frozenset[Scalar]) -> Condition:
    def test(job: str, queue: str, user: User, labels: Labels) -> bool:
        if user is None:
            return False
        try:
            return user.get(name, MISSING) in accepted
        except TypeError:  # an unhashable value (a list, say) can equal no accepted value
            return False

    def read(job: str, queue: str, user: User, labels: Labels) -> object:
        return MISSING if user is None else user.get(name, MISSING)

    subject = name if name in BUILTIN_USER_ATTRIBUTES else f"attribute {name!r}"
    return Condition(subject, describe_values(accepted), test, read, True)


def _roles_condition(accepted: frozenset[str]) -> Condition:
    def test(job: str, queue: str, user: User, labels: Labels) -> bool:
        if user is None:
            return False
        roles = user.get("roles")
        if roles is None:
            return False
        if isinstance(roles, str):  # one role given as a bare string, not its characters
            return roles in accepted
        try:
            return not accepted.isdisjoint(roles)
        except TypeError:
            return False

    def read(job: str, queue: str, user: User, labels: Labels) -> object:
        return MISSING if user is None else user.get("roles", MISSING)

    return Condition("roles", f"any of {describe_values(accepted)}", test, read, True)


def _label_condition(name: str, accepted: frozenset[str]) -> Condition:
    def test(job: str, queue: str, user: User, labels: Labels) -> bool:
        return labels is not None and labels.get(name) in accepted

    def read(job: str, queue: str, user: User, labels: Labels) -> object:
        return MISSING if labels is None else labels.get(name, MISSING)

    return Condition(f"label {name!r}", describe_values(accepted), test, read, False)
