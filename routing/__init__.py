"""Routing policy for amqp-jobs: a job plus its user's attributes in, a `Route` out.

Pure policy: this package imports neither aio_pika nor amqp_jobs. The core accepts any
object with `Policy`'s method shape.

    policy = Policy.from_file("routes.toml")
    policy.route("email.send", "default", {"tier": "pro"})
    # Route(exchange='', routing_key='default', queue='default', priority=5)
"""

from routing.declarations import BindingDecl, ExchangeDecl, QueueDecl, TenantQueuePattern
from routing.errors import PolicyError, RouteError, RoutingError, TemplateValueError
from routing.models import (
    BindingModel,
    DefaultsModel,
    ExchangeModel,
    MatchModel,
    PolicyModel,
    QueueModel,
    RouteModel,
    RuleModel,
    TierModel,
)
from routing.policy import Policy
from routing.route import Route, RouteDecision
from routing.templates import TEMPLATE_VALUE_PATTERN

__all__ = [
    "TEMPLATE_VALUE_PATTERN",
    "BindingDecl",
    "BindingModel",
    "DefaultsModel",
    "ExchangeDecl",
    "ExchangeModel",
    "MatchModel",
    "Policy",
    "PolicyError",
    "PolicyModel",
    "QueueDecl",
    "QueueModel",
    "Route",
    "RouteDecision",
    "RouteError",
    "RouteModel",
    "RoutingError",
    "RuleModel",
    "TemplateValueError",
    "TenantQueuePattern",
    "TierModel",
]
