"""What a policy needs declared on the broker: queues, exchanges, bindings, tier weights.

Plain frozen dataclasses with logical names; the core maps them onto real AMQP
declarations (adding dead-lettering and so on). Tenant queues are templates here and are
expanded per tenant by `Topology.for_tenant`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from routing.models import ExchangeType, Overflow, PolicyModel
from routing.templates import Template


@dataclass(frozen=True, slots=True)
class QueueDecl:
    """A work queue the policy routes to (`tenant_template`: its name is a template)."""

    name: str
    max_priority: int
    max_length: int | None
    overflow: Overflow | None
    tier: str | None
    tenant_template: bool

    @property
    def arguments(self) -> dict[str, int | str]:
        """The queue's AMQP `x-` arguments that follow from the policy."""
        arguments: dict[str, int | str] = {"x-max-priority": self.max_priority}
        if self.max_length is not None:
            arguments["x-max-length"] = self.max_length
        if self.overflow is not None:
            arguments["x-overflow"] = self.overflow
        return arguments


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    """An exchange the policy routes through."""

    name: str
    type: ExchangeType


@dataclass(frozen=True, slots=True)
class BindingDecl:
    """A binding from an exchange to a queue."""

    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class TenantQueuePattern:
    """Recognises the concrete tenant queues made from one template, e.g. 'tenant.{tenant}'."""

    template: str
    tier: str | None
    weight: int
    regex: re.Pattern[str]

    def match(self, queue_name: str) -> dict[str, str] | None:
        """The placeholder values if `queue_name` was made from this template, else None."""
        found = self.regex.fullmatch(queue_name)
        return None if found is None else found.groupdict()


def tiers_naming_queue(model: PolicyModel) -> dict[str, list[str]]:
    """For each queue, the tiers whose entry names it as their queue."""
    naming: dict[str, list[str]] = {}
    for tier_name, tier in model.tiers.items():
        if tier.queue is not None:
            naming.setdefault(tier.queue, []).append(tier_name)
    return naming


@dataclass(frozen=True)
class Topology:
    """Every declaration a (validated) policy implies, split into static and per-tenant."""

    static_queues: tuple[QueueDecl, ...]
    tenant_queues: tuple[QueueDecl, ...]
    weights: Mapping[str, int]
    exchanges: tuple[ExchangeDecl, ...]
    static_bindings: tuple[BindingDecl, ...]
    tenant_bindings: tuple[BindingDecl, ...]

    @classmethod
    def from_model(cls, model: PolicyModel) -> Topology:
        """Build the declarations of a policy that `routing.validation` found valid."""
        naming = tiers_naming_queue(model)
        queues: list[QueueDecl] = []
        weights: dict[str, int] = {}
        for name, queue in model.queues.items():
            named_by = naming.get(name, [])
            # A queue that is exactly one tier's queue belongs to that tier unless it says so.
            tier = queue.tier or (named_by[0] if len(named_by) == 1 else None)
            tier_weights = [w for t in named_by if (w := model.tiers[t].weight) is not None]
            weights[name] = queue.weight or (tier_weights[0] if tier_weights else 1)
            is_template = not Template.parse(name).is_static
            queues.append(
                QueueDecl(
                    name, queue.max_priority, queue.max_length, queue.overflow, tier, is_template
                )
            )
        bindings = [
            BindingDecl(exchange_name, binding.queue, binding.routing_key or binding.queue)
            for exchange_name, exchange in model.exchanges.items()
            for binding in exchange.bindings
        ]
        template_queues = {queue.name for queue in queues if queue.tenant_template}
        return cls(
            static_queues=tuple(queue for queue in queues if not queue.tenant_template),
            tenant_queues=tuple(queue for queue in queues if queue.tenant_template),
            weights=weights,
            exchanges=tuple(
                ExchangeDecl(name, exchange.type) for name, exchange in model.exchanges.items()
            ),
            static_bindings=tuple(b for b in bindings if b.queue not in template_queues),
            tenant_bindings=tuple(b for b in bindings if b.queue in template_queues),
        )

    def queues_for_tier(self, tier: str) -> list[tuple[str, int]]:
        """Static queues consumed by workers of `tier` (its own and the shared ones)."""
        return [
            (queue.name, self.weights[queue.name])
            for queue in self.static_queues
            if queue.tier in (tier, None)
        ]

    def tenant_queue_patterns(self, tier: str) -> list[TenantQueuePattern]:
        """Patterns recognising tenant queues consumed by workers of `tier`."""
        return [
            TenantQueuePattern(
                queue.name,
                queue.tier,
                self.weights[queue.name],
                Template.parse(queue.name).pattern(),
            )
            for queue in self.tenant_queues
            if queue.tier in (tier, None)
        ]

    def for_tenant(self, values: Mapping[str, object]) -> tuple[list[QueueDecl], list[BindingDecl]]:
        """The tenant queues and their bindings with the placeholders filled from `values`."""
        queues = [
            replace(queue, name=Template.parse(queue.name).render(values), tenant_template=False)
            for queue in self.tenant_queues
        ]
        bindings = [
            replace(
                binding,
                queue=Template.parse(binding.queue).render(values),
                routing_key=Template.parse(binding.routing_key).render(values),
            )
            for binding in self.tenant_bindings
        ]
        return queues, bindings
