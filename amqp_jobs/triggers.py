"""Outcome triggers: ``@app.job(on_success=..., on_failure=...)`` dispatch follow-up jobs.

``on_success`` jobs get the job's output as their input (checked like a chain step's);
``on_failure`` jobs get a :class:`JobFailure` when the job ends dead (retries exhausted,
an error that is not retried, or its worker lost every attempt). The worker publishes
them before it acknowledges the job, with ids derived from the job's id, so a
redelivered job dispatches the same follow-up ids again rather than new ones.

Targets may be named before they are defined (jobs in one module reference each
other); they are checked as soon as both are known, and all of them when a worker starts.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from amqp_jobs.errors import ConfigurationError

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp
    from amqp_jobs.envelope import Envelope
    from amqp_jobs.jobs import JobDefinition

log = logging.getLogger(__name__)

TRIGGER_NAMESPACE = uuid.UUID("0b7c5d1e-6a43-4f8e-b2a9-3e0f6c1d9a27")


class JobFailure(pydantic.BaseModel):
    """The input of an ``on_failure`` job: which job failed for good, and why."""

    model_config = pydantic.ConfigDict(frozen=True)

    job_id: str
    job: str
    error_type: str | None = None
    reason: str
    attempts: int
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Produces:
    """A stand-in "previous step" that outputs ``output_type`` (for the chain check)."""

    name: str
    output_type: Any


def target_names(spec: Any, *, where: str) -> tuple[str, ...]:
    """Normalise an ``on_success`` / ``on_failure`` option to job names."""
    from amqp_jobs.jobs import Job

    if spec is None:
        return ()
    items = [spec] if isinstance(spec, str | Job) else list(spec)
    names = []
    for item in items:
        if isinstance(item, Job):
            names.append(item.name)
        elif isinstance(item, str) and item:
            names.append(item)
        else:
            raise ConfigurationError(f"{where}: a follow-up job is a job or its name, not {item!r}")
    return tuple(names)


def check(app: JobApp, definition: JobDefinition, *, strict: bool) -> None:
    """Check ``definition``'s follow-ups that are registered (all of them if ``strict``)."""
    from amqp_jobs.pipelines import _input_field

    for kind, targets in (
        ("on_success", definition.on_success),
        ("on_failure", definition.on_failure),
    ):
        for target in targets:
            following = app.registry.get(target)
            if following is None:
                if strict:
                    raise ConfigurationError(
                        f"job {definition.name!r}: {kind} names unknown job {target!r}; "
                        f"known: {sorted(app.registry)}"
                    )
                continue
            if kind == "on_success":
                _input_field(definition, following)
            else:
                _input_field(_Produces(definition.name, JobFailure), following)


def check_all(app: JobApp) -> None:
    """Check every job's follow-ups (a worker does this when it starts)."""
    for definition in app.registry.values():
        if definition.on_success or definition.on_failure:
            check(app, definition, strict=True)


def _job_id(envelope: Envelope, kind: str, target: str) -> str:
    return str(uuid.uuid5(TRIGGER_NAMESPACE, f"{envelope.id}:{kind}:{target}"))


async def dispatch_success(
    app: JobApp, envelope: Envelope, definition: JobDefinition, result: Any
) -> None:
    """Publish the ``on_success`` jobs with ``result`` as their input (before the ack)."""
    from amqp_jobs.pipelines import _input_field

    output = definition.dump_output(result)
    for target in definition.on_success:
        field = _input_field(definition, app.get_job(target))
        await app.client.enqueue(
            target,
            {field: output} if field else output,
            job_id=_job_id(envelope, "on_success", target),
            correlation_id=envelope.correlation_id or envelope.id,
            parent_id=envelope.id,
            user=envelope.user,
        )


async def dispatch_failure(
    app: JobApp,
    envelope: Envelope,
    definition: JobDefinition,
    reason: str,
    error_type: str | None,
) -> None:
    """Publish the ``on_failure`` jobs with a :class:`JobFailure` (before the dead-letter).

    A follow-up that cannot be published is logged: the failed job itself is kept in the
    dead-letter queue either way, so nothing is lost.
    """
    from amqp_jobs.pipelines import _input_field

    failure = JobFailure(
        job_id=envelope.id,
        job=envelope.job,
        error_type=error_type,
        reason=reason[:2000],
        attempts=envelope.attempt,
        correlation_id=envelope.correlation_id,
    )
    for target in definition.on_failure:
        try:
            field = _input_field(_Produces(definition.name, JobFailure), app.get_job(target))
            await app.client.enqueue(
                target,
                {field: failure} if field else failure,
                job_id=_job_id(envelope, "on_failure", target),
                correlation_id=envelope.correlation_id or envelope.id,
                parent_id=envelope.id,
                user=envelope.user,
            )
        except Exception:
            log.exception("job %s: could not dispatch on_failure job %s", envelope.id, target)
