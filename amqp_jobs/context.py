"""JobContext: what a running job knows about itself and the resources it may use."""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from amqp_jobs.security.users import UserContext

if TYPE_CHECKING:
    from amqp_jobs.client import Client, JobHandle
    from amqp_jobs.envelope import Envelope
    from amqp_jobs.jobs import JobDefinition
    from amqp_jobs.security.guard import Security
    from amqp_jobs.security.storage import ScopedStorage
    from amqp_jobs.store.progress import ProgressReporter

log = logging.getLogger("amqp_jobs.job")

current_user: ContextVar[dict[str, Any] | None] = ContextVar("amqp_jobs_user", default=None)
"""The user jobs are published for when ``enqueue`` gets no ``user=``: set while a job
runs (so the jobs it enqueues inherit its user) and by ``JobApp.acting_as``."""

current_grant: ContextVar[str | None] = ContextVar("amqp_jobs_grant", default=None)
"""The impersonation grant token jobs are published with when ``enqueue`` gets no
``grant=``: set by ``JobApp.acting_as(user, grant=...)`` and while a job that carries one runs."""


class JobContext:
    """Passed as the first argument to a job that asks for it (``ctx: JobContext``).

    ``resources`` holds what the app's start-up hooks made (database pools, HTTP
    clients...). Jobs enqueued through :meth:`enqueue` carry this job's correlation
    id, this job as their parent, and its user.
    """

    __slots__ = (
        "_cancel_requested",
        "_client",
        "_progress",
        "_security",
        "_user",
        "ack_after",
        "definition",
        "envelope",
        "preferences",
        "resources",
        "worker_id",
    )

    def __init__(
        self,
        envelope: Envelope,
        definition: JobDefinition,
        *,
        client: Client,
        resources: dict[str, Any],
        worker_id: str,
        progress: ProgressReporter | None = None,
        security: Security | None = None,
    ) -> None:
        self.envelope = envelope
        self.definition = definition
        self.resources = resources
        self.worker_id = worker_id
        self._client = client
        self._progress = progress
        self._security = security
        self._cancel_requested = False
        self._user: UserContext | bool | None = False  # False: not read yet
        self.ack_after: list[asyncio.Future[Any]] = []
        """Futures the worker waits for before it acknowledges a successful job's
        message (for middleware: the store puts its outcome's group commit here, so the
        job's slot is free while the commit runs). If one fails, the message goes back
        to its queue instead."""
        self.preferences: Any = None
        """The user's preferences (the app's ``Security(preferences=Model)``), loaded
        before the job starts; None when the app keeps none or the job has no user."""

    @property
    def job_id(self) -> str:
        """This job's id."""
        return self.envelope.id

    @property
    def job_name(self) -> str:
        """This job's registered name."""
        return self.envelope.job

    @property
    def attempt(self) -> int:
        """1 for the first run; grows with each retry or redelivery."""
        return self.envelope.attempt

    @property
    def max_attempts(self) -> int:
        """How many runs the job's retry policy allows in all."""
        return self.definition.retry.max_attempts

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now sends the job to the dead-letter queue."""
        return self.envelope.attempt >= self.definition.retry.max_attempts

    @property
    def user(self) -> UserContext | None:
        """The user the job runs for, as the (signed) envelope carries it."""
        if self._user is False:
            self._user = UserContext.from_wire(self.envelope.user)
        return self._user  # type: ignore[return-value]

    @property
    def storage(self) -> ScopedStorage:
        """Artifacts of this job's user (``put``/``get``/``list``/``delete``), encrypted
        with the user's key; needs ``Security(storage_root=...)`` and a job with a user."""
        from amqp_jobs.errors import ConfigurationError

        storage = self._security.storage if self._security is not None else None
        if storage is None:
            raise ConfigurationError(
                "ctx.storage needs JobApp(security=Security(storage_root=...), store=...)"
            )
        user = self.user
        if user is None or user.anonymous:
            raise ConfigurationError(
                f"job {self.job_name!r} has no user, so it has no user storage"
            )
        return storage.for_user(user)

    @property
    def options(self) -> dict[str, Any]:
        """The middleware options the job was defined with."""
        return self.definition.options

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that tags records with the job id and name."""
        return logging.LoggerAdapter(log, {"job_id": self.job_id, "job": self.job_name})

    @property
    def cancelled(self) -> bool:
        """True once someone asked to cancel this job; a long job may poll it and stop."""
        return self._cancel_requested

    def request_cancel(self) -> None:
        """Mark the job as cancelled (the worker does this when a cancellation arrives)."""
        self._cancel_requested = True

    async def progress(
        self, percent: float | None = None, message: str | None = None, **data: Any
    ) -> None:
        """Report progress: ``await ctx.progress(40, "page 4 of 10", pages_done=4)``.

        Reports are throttled (the last one within the interval wins and is written when
        it ends), so reporting in a tight loop costs nothing. Without a job store there is
        nowhere to keep them and they are dropped.
        """
        if self._progress is None:
            return
        from amqp_jobs.store.recorder import change_of

        identity = change_of(self.envelope, "running", worker=self.worker_id)
        if self._security is not None and self.envelope.sealed is not None:
            # A sealed job's progress is sealed too: message and data may name user data.
            sealed = await self._security.seal_value(
                self.envelope, "progress", {"message": message, "data": data}
            )
            await self._progress.report(self.job_id, percent, None, sealed, identity)
            return
        await self._progress.report(self.job_id, percent, message, data, identity)

    async def enqueue(self, job: str, data: Any = None, **options: Any) -> JobHandle:
        """Publish a follow-up job that inherits this job's correlation id and user."""
        options.setdefault("correlation_id", self.envelope.correlation_id or self.job_id)
        options.setdefault("parent_id", self.job_id)
        options.setdefault("user", self.envelope.user)
        options.setdefault("grant", self.envelope.grant)
        return await self._client.enqueue(job, data, **options)
