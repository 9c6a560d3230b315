"""The policy file's schema: pydantic models that validate a policy at the boundary.

These models only check shapes and ranges. Cross-references (a rule routing to an
undeclared queue, shadowed rules, ...) are checked by `routing.validation` when a
`Policy` is built, and the hot path never touches these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Scalar = str | int | bool
"""A user attribute value a condition can compare with."""

Overflow = Literal["reject-publish", "drop-head"]
ExchangeType = Literal["direct", "topic", "fanout"]


def _one_or_many(value: Any) -> Any:
    """Let a condition be written as one value or as a list of alternatives."""
    return value if isinstance(value, list) else [value]


Names = Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)]
"""One string or a non-empty list of strings (any-of)."""


def _one_or_many_scalars(value: Any) -> Any:
    """Like `_one_or_many`, with one clear message instead of one per scalar type."""
    values = _one_or_many(value)
    for item in values:
        if not isinstance(item, str | int | bool):
            raise ValueError(f"{item!r} is not a string, integer or boolean")
    return values


Scalars = Annotated[list[Scalar], BeforeValidator(_one_or_many_scalars), Field(min_length=1)]
"""One scalar or a non-empty list of scalars (any-of)."""

Priority = Annotated[int, Field(ge=0, le=255)]
Weight = Annotated[int, Field(ge=1)]


class _PolicyPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchModel(_PolicyPart):
    """Conditions that must all hold for a rule to apply; each one lists accepted values."""

    tier: Names | None = None
    group: Names | None = None
    tenant: Names | None = None
    roles: Names | None = Field(default=None, description="Matches if the user has any of them.")
    attributes: dict[str, Scalars] = Field(
        default_factory=dict,
        description="Other user attributes, each declared in the policy's `attributes` list.",
    )
    job: Names | None = Field(default=None, description="Exact job names or globs ('email.*').")
    queue: Names | None = Field(default=None, description="The job's declared default queue.")
    labels: dict[str, Names] = Field(default_factory=dict)


class RouteModel(_PolicyPart):
    """Where a matching rule sends the job; unset fields fall back to tier, then defaults."""

    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    priority: Priority | None = None
    vhost: str | None = Field(
        default=None,
        description="A RabbitMQ virtual host for hard isolation, e.g. 'tenant-{tenant}'.",
    )


class DefaultsModel(_PolicyPart):
    """Route fields used when neither a rule nor the user's tier sets them."""

    exchange: str = Field(default="", description='"" is the AMQP default exchange.')
    routing_key: str | None = Field(default=None, description="None means the queue name.")
    queue: str | None = Field(default=None, description="None means the job's own queue.")
    priority: Priority | None = None


class TierModel(_PolicyPart):
    """What a user tier implies when no rule says otherwise."""

    priority: Priority | None = None
    queue: str | None = Field(default=None, description="A queue dedicated to this tier.")
    weight: Weight | None = Field(
        default=None, description="Consumption weight of the tier's queue for its workers."
    )


class QueueModel(_PolicyPart):
    """A declared work queue; its name may be a tenant template such as 'tenant.{tenant}'."""

    max_priority: Annotated[int, Field(ge=1, le=255)] = 10
    max_length: Annotated[int, Field(ge=1)] | None = None
    overflow: Overflow | None = None
    tier: str | None = Field(
        default=None, description="Only workers of this tier consume it; unset means all tiers."
    )
    weight: Weight | None = None


class BindingModel(_PolicyPart):
    """Binds an exchange to a declared queue."""

    queue: str
    routing_key: str | None = Field(default=None, description="None means the queue name.")


class ExchangeModel(_PolicyPart):
    """A declared exchange and the queues bound to it."""

    type: ExchangeType
    bindings: list[BindingModel] = Field(default_factory=list)


class RuleModel(_PolicyPart):
    """One routing rule: the first rule whose conditions all hold decides the route."""

    name: Annotated[str, Field(min_length=1)]
    match: MatchModel = Field(default_factory=MatchModel)
    route: RouteModel = Field(default_factory=RouteModel)


class PolicyModel(_PolicyPart):
    """A whole routing policy, as read from TOML or JSON or built in code."""

    attributes: list[str] = Field(
        default_factory=list,
        description="User attributes besides tier, group, tenant and roles that rules use.",
    )
    defaults: DefaultsModel = Field(default_factory=DefaultsModel)
    tiers: dict[str, TierModel] = Field(default_factory=dict)
    queues: dict[str, QueueModel] = Field(default_factory=dict)
    exchanges: dict[str, ExchangeModel] = Field(default_factory=dict)
    rules: list[RuleModel] = Field(default_factory=list)
