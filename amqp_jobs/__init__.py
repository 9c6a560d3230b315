"""amqp-jobs: background jobs and scheduling on RabbitMQ for multi-tenant worker fleets."""

from amqp_jobs.app import JobApp, QueueClient
from amqp_jobs.client import EnqueueRequest, JobHandle
from amqp_jobs.context import JobContext
from amqp_jobs.envelope import Envelope
from amqp_jobs.errors import (
    Abort,
    AmqpJobsError,
    ConfigurationError,
    EnvelopeError,
    JobFailed,
    JobTimeoutError,
    PublishError,
    PublishNackedError,
    PublishTimeoutError,
    Retry,
    StoreError,
    TransportError,
    UnknownJobError,
    UnknownJobOptionError,
    UnroutableError,
    ValidationError,
)
from amqp_jobs.jobs import Job, JobDefinition
from amqp_jobs.middleware import Middleware
from amqp_jobs.pipelines import Chain, ChainHandle, Group, GroupHandle, Signature, chain, group
from amqp_jobs.retries import RetryPolicy
from amqp_jobs.worker import Worker

__all__ = [
    "Abort",
    "AmqpJobsError",
    "Chain",
    "ChainHandle",
    "ConfigurationError",
    "EnqueueRequest",
    "Envelope",
    "EnvelopeError",
    "Group",
    "GroupHandle",
    "Job",
    "JobApp",
    "JobContext",
    "JobDefinition",
    "JobFailed",
    "JobHandle",
    "JobTimeoutError",
    "Middleware",
    "PublishError",
    "PublishNackedError",
    "PublishTimeoutError",
    "QueueClient",
    "Retry",
    "RetryPolicy",
    "Signature",
    "StoreError",
    "TransportError",
    "UnknownJobError",
    "UnknownJobOptionError",
    "UnroutableError",
    "ValidationError",
    "Worker",
    "chain",
    "group",
]
