"""Recurring jobs: cron and interval schedules, fired by a highly available scheduler.

- :mod:`~amqp_jobs.scheduling.spec`: the maths (next fire times across daylight saving,
  misfire catch-up, jitter); pure.
- :mod:`~amqp_jobs.scheduling.registry`: ``app.schedule(...)`` and ``repeat=``.
- :mod:`~amqp_jobs.scheduling.store`: schedules and occurrence claims in the job store.
- :mod:`~amqp_jobs.scheduling.scheduler`: the running scheduler (``amqp-jobs scheduler``).
"""

from amqp_jobs.scheduling.scheduler import Scheduler, leader_queue, occurrence_id
from amqp_jobs.scheduling.spec import Schedule, ScheduleSpec, Timetable
from amqp_jobs.scheduling.store import (
    ScheduleExistsError,
    ScheduleRecord,
    ScheduleStore,
    UnknownScheduleError,
)

__all__ = [
    "Schedule",
    "ScheduleExistsError",
    "ScheduleRecord",
    "ScheduleSpec",
    "ScheduleStore",
    "Scheduler",
    "Timetable",
    "UnknownScheduleError",
    "leader_queue",
    "occurrence_id",
]
