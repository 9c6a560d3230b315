"""The job store: job records, attempts and results in SQLite or PostgreSQL."""

from amqp_jobs.store.database import (
    DEFAULT_URL,
    AttemptRecord,
    JobRecord,
    JobStore,
    Page,
    StateChange,
)
from amqp_jobs.store.recorder import StoreRecorder

__all__ = [
    "DEFAULT_URL",
    "AttemptRecord",
    "JobRecord",
    "JobStore",
    "Page",
    "StateChange",
    "StoreRecorder",
]
