"""Defining schedules: ``app.schedule(...)`` in code, ``queue.add(..., repeat=...)`` at run time.

Both check everything when the schedule is defined: the cron expression, the time
zone, the misfire policy, and that the job is registered in the app.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from amqp_jobs.errors import ConfigurationError, ValidationError
from amqp_jobs.scheduling.spec import Schedule, ScheduleSpec

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp

_SPEC_SETTINGS = frozenset({"cron", "every", "timezone", "misfire", "jitter"})
_JOB_SETTINGS = frozenset({"data", "queue", "priority", "user", "labels"})
_REPEAT_KEYS = _SPEC_SETTINGS | {"name"}


def build_schedule(app: JobApp, name: str, job: str, settings: Mapping[str, Any]) -> Schedule:
    """A validated :class:`Schedule` of ``app`` from ``app.schedule``-style settings."""
    unknown = set(settings) - _SPEC_SETTINGS - _JOB_SETTINGS
    if unknown:
        raise ConfigurationError(
            f"schedule {name!r}: unknown setting(s) {sorted(unknown)}; known: "
            f"{', '.join(sorted(_SPEC_SETTINGS | _JOB_SETTINGS))}"
        )
    if job not in app.registry:
        raise ConfigurationError(
            f"schedule {name!r} names job {job!r}, which is not registered in this app; "
            f"known jobs: {sorted(app.registry) or 'none'}"
        )
    try:
        spec = ScheduleSpec.of(**{k: settings[k] for k in _SPEC_SETTINGS if k in settings})
    except ConfigurationError as exc:
        raise ConfigurationError(f"schedule {name!r}: {exc}") from None
    queue = settings.get("queue")
    if queue is not None:
        app.topology.queue_name(queue)  # validates the name now
    priority = settings.get("priority")
    if priority is not None and not 0 <= priority <= app.topology.max_priority:
        raise ConfigurationError(
            f"schedule {name!r}: priority {priority} is outside 0..{app.topology.max_priority}"
        )
    data = settings.get("data")
    definition = app.registry[job]
    try:
        # Validated now, so a bad payload fails here rather than at every fire.
        validated = definition.validate_input(data)
    except ValidationError as exc:
        raise ConfigurationError(f"schedule {name!r}: {exc}") from None
    json_data = None if data is None else validated.model_dump(mode="json")
    user = settings.get("user")
    labels = settings.get("labels")
    return Schedule(
        name=name,
        job=job,
        spec=spec,
        queue=queue,
        data=json_data,
        priority=priority,
        user=dict(user) if user is not None else None,
        labels=dict(labels) if labels is not None else None,
    )


def define_schedule(app: JobApp, name: str, job: str, **settings: Any) -> Schedule:
    """Define an in-code schedule (``app.schedule``): recorded in ``app.schedules``;
    every scheduler of the app stores it (by name, keeping its paused state) at start."""
    if name in app.schedules:
        raise ConfigurationError(f"a schedule named {name!r} is already defined in this app")
    schedule = build_schedule(app, name, job, settings)
    app.schedules[name] = schedule
    return schedule


async def add_repeating(
    app: JobApp, queue_name: str, job: str, data: Any = None, **options: Any
) -> Schedule:
    """Store a schedule at run time (``app.queue(q).add(job, data, repeat={...})``).

    ``repeat`` holds ``cron`` or ``every`` and optionally ``timezone``, ``misfire``,
    ``jitter`` and ``name``; other options may be ``priority``, ``user``, ``labels``.
    Without a name, one is derived from the queue, job, spec and data, so adding the
    same repeat twice stores one schedule. Needs ``app.store``.
    """
    repeat = options.pop("repeat")
    if not isinstance(repeat, Mapping):
        raise ConfigurationError(f"repeat= must be a dict with cron or every, not {repeat!r}")
    unknown_repeat = set(repeat) - _REPEAT_KEYS
    if unknown_repeat:
        raise ConfigurationError(
            f"repeat has unknown key(s) {sorted(unknown_repeat)}; known: "
            f"{', '.join(sorted(_REPEAT_KEYS))}"
        )
    unknown = set(options) - {"priority", "user", "labels"}
    if unknown:
        raise ConfigurationError(
            f"option(s) {sorted(unknown)} cannot be used with repeat= (a schedule takes "
            "priority, user and labels)"
        )
    settings: dict[str, Any] = {k: v for k, v in repeat.items() if k != "name"}
    settings.update(options, data=data, queue=queue_name)
    name = repeat.get("name") or _derived_name(queue_name, job, settings)
    schedule = build_schedule(app, name, job, settings)
    if app.store is None:
        raise ConfigurationError("repeat= stores a schedule and needs a job store (JobApp(store=))")
    from amqp_jobs.scheduling.store import ScheduleStore

    await ScheduleStore(app.store).upsert(schedule, origin="store")
    return schedule


def _derived_name(queue: str, job: str, settings: Mapping[str, Any]) -> str:
    def plain(value: Any) -> Any:
        return value.total_seconds() if isinstance(value, timedelta) else value

    canonical = json.dumps(
        {key: plain(value) for key, value in settings.items()}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return f"{queue}:{job}:{digest}"
