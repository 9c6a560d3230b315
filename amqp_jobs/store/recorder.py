"""StoreRecorder: the middleware that writes every job's life into the JobStore."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from amqp_jobs.errors import StoreError
from amqp_jobs.middleware import Middleware
from amqp_jobs.store.database import JobStore, StateChange

if TYPE_CHECKING:
    from amqp_jobs.context import JobContext
    from amqp_jobs.envelope import Envelope
    from amqp_jobs.worker import Worker

log = logging.getLogger(__name__)

MAX_TRACEBACK_CHARS = 8_000


def change_of(envelope: Envelope, state: str, **details: Any) -> StateChange:
    """A state change of the job ``envelope`` describes."""
    user_id, tenant = envelope.owner
    return StateChange(
        job_id=envelope.id,
        state=state,
        attempt=envelope.attempt,
        job=envelope.job,
        queue=envelope.queue,
        created_at=envelope.enqueued_at,
        user_id=user_id,
        tenant=tenant,
        publisher=envelope.publisher,
        correlation_id=envelope.correlation_id,
        parent_id=envelope.parent_id,
        not_before=envelope.not_before,
        labels=envelope.labels,
        **details,
    )


def _traceback_of(error: BaseException) -> str:
    # Frames and messages only: format_exception never includes local variables.
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return text[-MAX_TRACEBACK_CHARS:]


class StoreRecorder(Middleware):
    """Records queued, running, failed, succeeded and dead in the store.

    Outcomes are recorded before the message is acknowledged (the worker calls
    ``after_process``, ``on_retry`` and ``on_dead_letter`` before it settles the
    message), so a worker that cannot reach the database does not ack: the message is
    redelivered. "running" is written only for a job still running after
    ``running_after`` seconds, without holding it up: a short job's start is written
    with its outcome, in one row instead of two.
    """

    def __init__(self, store: JobStore, *, running_after: float = 0.05) -> None:
        self.store = store
        self.running_after = running_after
        self._background: set[asyncio.Task[None]] = set()
        # Jobs started here and not finished: job id -> (start time, worker, envelope),
        # and the same starts in start order for the sweeper that writes "running".
        self._starts: dict[str, tuple[float, str, Envelope]] = {}
        self._start_order: collections.deque[tuple[str, float]] = collections.deque()
        self._sweeper: asyncio.Task[None] | None = None
        # Set by the security layer: seals the output of a sealed job for its user.
        self.seal: Callable[[Envelope, str, Any], Awaitable[Any]] | None = None

    async def after_worker_start(self, worker: Worker) -> None:
        await self.store.open()

    async def before_worker_stop(self, worker: Worker) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def after_publish(self, envelope: Envelope) -> None:
        # The job is on the broker already: a store that is down must not make the
        # publisher believe otherwise. The worker's records carry the job's identity
        # too, so the job still appears once the store is back.
        delayed = envelope.not_before is not None and envelope.not_before > time.time()
        try:
            await self.store.record(change_of(envelope, "scheduled" if delayed else "queued"))
        except StoreError as exc:
            log.warning("job %s is queued but could not be recorded: %s", envelope.id, exc)

    async def before_process(self, ctx: JobContext) -> None:
        # Only remembered here: a job still running after ``running_after`` seconds is
        # written as running by the sweeper; a shorter one's start goes with its outcome.
        # One sweeper for all jobs rather than a timer per job.
        started = time.time()
        self._starts[ctx.job_id] = (started, ctx.worker_id, ctx.envelope)
        self._start_order.append((ctx.job_id, started))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_starts())

    async def _sweep_starts(self) -> None:
        """Write "running" for the jobs of this worker that have run ``running_after``."""
        tick = self.running_after / 2
        while True:
            await asyncio.sleep(tick)
            due = time.time() - self.running_after
            order, starts = self._start_order, self._starts
            while order and order[0][1] <= due:
                job_id, started = order.popleft()
                start = starts.get(job_id)
                if start is not None and start[0] == started:  # this attempt still runs
                    _, worker, envelope = start
                    change = change_of(envelope, "running", worker=worker, at=started)
                    task = asyncio.get_running_loop().create_task(self._running(change))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    def _outcome(self, envelope: Envelope, state: str, **details: Any) -> StateChange:
        """The change for an outcome, carrying its attempt's start if this worker ran it."""
        start = self._starts.pop(envelope.id, None)
        if start is not None:
            details.update(started_at=start[0], worker=start[1])
        return change_of(envelope, state, **details)

    async def _running(self, change: StateChange) -> None:
        try:
            await self.store.record(change)
        except Exception as exc:  # the outcome record still decides the ack
            log.warning("could not record that job %s is running: %s", change.job_id, exc)

    async def after_process(
        self, ctx: JobContext, result: Any, error: BaseException | None
    ) -> None:
        if error is None:
            output = ctx.definition.dump_output(result)
            if self.seal is not None:
                output = await self.seal(ctx.envelope, "result", output)
            # Not awaited here: the worker acknowledges the message once it is committed,
            # and the job's task and slot are free meanwhile. (Tasks waiting for the
            # commit made the drain slower than the writes themselves.)
            await self.store.open()
            ctx.ack_after.append(
                self.store.record_soon(self._outcome(ctx.envelope, "succeeded", result=output))
            )

    async def on_retry(self, ctx: JobContext, error: BaseException, delay: float) -> None:
        await self.store.record(
            self._outcome(
                ctx.envelope,
                "failed",
                error_type=type(error).__name__,
                error_message=str(error),
                traceback=_traceback_of(error),
            )
        )

    async def on_cancelled(self, envelope: Envelope) -> None:
        await self.store.record(self._outcome(envelope, "cancelled"))

    async def on_dead_letter(
        self, envelope: Envelope | None, reason: str, error_type: str | None
    ) -> None:
        if envelope is not None:  # an undecodable message has no job to record
            await self.store.record(
                self._outcome(envelope, "dead", error_type=error_type, error_message=reason)
            )
