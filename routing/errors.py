"""Every error the routing package raises: one base class, grouped by when it happens."""

from __future__ import annotations

from collections.abc import Sequence


class RoutingError(Exception):
    """Base class of every error raised by the routing package."""


# --- Load time: the policy itself is wrong -------------------------------------------------


class PolicyError(RoutingError, ValueError):
    """The policy is invalid; the message lists every problem found, naming rule and field."""

    def __init__(self, problems: Sequence[str] | str, source: str | None = None) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.source = source
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f" ({self.source})" if self.source else ""
        if len(self.problems) == 1:
            return f"invalid routing policy{where}: {self.problems[0]}"
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"invalid routing policy{where}: {len(self.problems)} problems:\n{listed}"


# --- Decision time: a valid policy cannot route this job for this user ---------------------


class RouteError(RoutingError, ValueError):
    """A route could not be built for these inputs, e.g. a template value is missing."""


class TemplateValueError(RouteError):
    """A name template could not be filled: its value is missing or not safe in a name."""

    def __init__(self, placeholder: str, problem: str) -> None:
        self.placeholder = placeholder
        self.problem = problem
        super().__init__(f"placeholder {{{placeholder}}}: {problem}")
