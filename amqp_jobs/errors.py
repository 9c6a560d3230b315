"""Every exception amqp-jobs raises, under one base class.

Errors from aio-pika / aiormq are turned into these at the transport boundary
(see :func:`amqp_jobs.transport.amqp.translate_errors`), so user code only ever
catches ``AmqpJobsError`` subclasses.
"""

from __future__ import annotations


class AmqpJobsError(Exception):
    """Base class of every amqp-jobs error."""


# --- Definition and configuration -------------------------------------------------


class ConfigurationError(AmqpJobsError):
    """The app, a job or a worker was configured wrongly."""


class UnknownJobOptionError(ConfigurationError):
    """A job was given an option that no installed middleware understands."""


class UnknownJobError(AmqpJobsError):
    """A job name that is not registered with this app."""


# --- Validation ---------------------------------------------------------------------


class ValidationError(AmqpJobsError):
    """Job input or output does not fit the job's schema."""


class EnvelopeError(AmqpJobsError):
    """A message body is not a valid amqp-jobs envelope (poison message)."""


# --- Broker / transport -------------------------------------------------------------


class TransportError(AmqpJobsError):
    """The broker could not be reached or refused an operation."""


class PublishError(TransportError):
    """A job could not be published."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for its route."""


class PublishTimeoutError(PublishError):
    """The broker did not confirm a publish in time; the job may or may not be queued."""


class PublishNackedError(PublishError):
    """The broker refused a publish (negative confirm), e.g. a full queue with reject-publish."""


# --- State store ----------------------------------------------------------------------


class StoreError(AmqpJobsError):
    """The job store could not be read or written."""


class JobFailed(AmqpJobsError):
    """A job whose result was asked for ended dead or cancelled.

    ``error_type`` and ``message`` are what the worker recorded; the remote exception
    class is never rebuilt from stored data.
    """

    def __init__(self, job_id: str, state: str, error_type: str | None, message: str | None):
        super().__init__(f"job {job_id} ended {state}: {error_type}: {message}")
        self.job_id = job_id
        self.state = state
        self.error_type = error_type
        self.message = message


# --- Job outcomes (raised by job code) -----------------------------------------------


class Retry(AmqpJobsError):
    """Raised by a job to ask for another attempt, optionally after ``delay`` seconds."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Abort(AmqpJobsError):
    """Raised by a job to fail now, with no further attempts: it goes to the dead-letter queue."""


class WorkerLost(AmqpJobsError):
    """The worker running an attempt died or lost the broker (the message was redelivered)."""


class JobTimeoutError(AmqpJobsError):
    """A job ran longer than its time limit and was cancelled."""
