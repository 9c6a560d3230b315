"""Middleware: named hooks around publishing and processing, as in dramatiq.

The client and the worker call hooks in the order the middleware was added for
``before_*`` hooks and in reverse order for ``after_*`` hooks. A middleware names
the job options it understands in ``job_options``; ``@app.job(some_option=...)``
with an option no middleware claims fails at definition time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from amqp_jobs.context import JobContext
    from amqp_jobs.envelope import Envelope
    from amqp_jobs.worker import Worker


class Middleware:
    """Base class: override the hooks you need; the others cost nothing."""

    job_options: ClassVar[frozenset[str]] = frozenset()
    """Names of ``@app.job(...)`` keyword options this middleware reads (``ctx.options``)."""

    async def before_publish(self, envelope: Envelope) -> Envelope:
        """Called before a job is published; may return a changed envelope."""
        return envelope

    async def after_publish(self, envelope: Envelope) -> None:
        """Called once the broker confirmed the job."""

    async def before_process(self, ctx: JobContext) -> None:
        """Called before a job runs; raising here fails the attempt like the job would."""

    async def after_process(
        self, ctx: JobContext, result: Any, error: BaseException | None
    ) -> None:
        """Called after a job ran, with its result or the error it raised."""

    async def on_retry(self, ctx: JobContext, error: BaseException, delay: float) -> None:
        """Called when a failed attempt will run again after ``delay`` seconds.

        Runs before the retry is published and the message acknowledged: raising here
        leaves the message unacknowledged (it is redelivered), so nothing is lost.
        """

    async def on_dead_letter(
        self, envelope: Envelope | None, reason: str, error_type: str | None
    ) -> None:
        """Called when a job (or an undecodable message: envelope None) is dead-lettered.

        Runs before the message goes to the dead-letter queue and is acknowledged.
        """

    async def on_cancelled(self, envelope: Envelope) -> None:
        """Called when a job is dropped or stopped because its cancellation was requested.

        Runs before the message is acknowledged.
        """

    async def after_worker_start(self, worker: Worker) -> None:
        """Called when a worker has connected and is about to consume."""

    async def before_worker_stop(self, worker: Worker) -> None:
        """Called when a worker begins to shut down."""


HOOKS = (
    "before_publish",
    "after_publish",
    "before_process",
    "after_process",
    "on_retry",
    "on_dead_letter",
    "on_cancelled",
    "after_worker_start",
    "before_worker_stop",
)


class MiddlewareStack:
    """The installed middleware, with each hook resolved once to the ones that override it."""

    def __init__(self, middleware: list[Middleware]) -> None:
        self.middleware = list(middleware)
        self._by_hook: dict[str, list[Any]] = {}
        self._rebuild()

    def add(self, middleware: Middleware) -> None:
        """Install one more middleware (its hooks run after those already installed)."""
        self.middleware.append(middleware)
        self._rebuild()

    def _rebuild(self) -> None:
        self._by_hook = {
            hook: [
                getattr(m, hook)
                for m in self.middleware
                if getattr(type(m), hook) is not getattr(Middleware, hook)
            ]
            for hook in HOOKS
        }

    def hooks(self, name: str, *, reverse: bool = False) -> list[Any]:
        """Bound methods implementing hook ``name``, in call order."""
        found = self._by_hook[name]
        return found[::-1] if reverse else found

    @property
    def job_options(self) -> frozenset[str]:
        """Every job option some installed middleware understands."""
        return frozenset().union(*(m.job_options for m in self.middleware))
