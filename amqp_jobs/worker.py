"""The worker: consume job messages, run them, and settle each message exactly once.

A message is acknowledged only after its outcome is settled: the job succeeded, or
its retry was published (confirmed) into the delay levels, or it was published
(confirmed) to the dead-letter queue with its reason. Anything else leaves the
message unacknowledged, so the broker gives it to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqp_jobs import triggers
from amqp_jobs.conditions import holds
from amqp_jobs.context import JobContext, current_grant, current_user
from amqp_jobs.envelope import CONTENT_TYPE, MAX_BODY_BYTES, ChainStep, Envelope, decode
from amqp_jobs.errors import (
    ConfigurationError,
    EnvelopeError,
    JobTimeoutError,
    PublishError,
    TransportError,
    WorkerLost,
)
from amqp_jobs.errors import ValidationError as JobValidationError
from amqp_jobs.jobs import JobDefinition
from amqp_jobs.security.errors import SecurityError
from amqp_jobs.security.grants import GrantError
from amqp_jobs.store.database import StateChange
from amqp_jobs.store.progress import ProgressReporter
from amqp_jobs.transport.base import Delivery, OutgoingMessage, Subscription

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp
    from amqp_jobs.events import RuleListener
    from amqp_jobs.routes import ConsumptionPlan

log = logging.getLogger(__name__)

DEAD_REASON_HEADER = "x-amqp-jobs-reason"
DEAD_QUEUE_HEADER = "x-amqp-jobs-queue"
DEAD_AT_HEADER = "x-amqp-jobs-dead-at"
DEAD_ERROR_HEADER = "x-amqp-jobs-error"
DEAD_ATTEMPTS_HEADER = "x-amqp-jobs-attempts"


@dataclass(slots=True)
class WorkerStats:
    """Counters of what a worker did since it started."""

    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    handed_back: int = 0
    cancelled: int = 0
    duplicates: int = 0


def default_worker_id() -> str:
    """``host:pid:random``, unique across a fleet."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs the jobs of one app from the given queues.

    ``concurrency`` is the number of jobs running at once in this process; the
    broker's prefetch is sized to it (``prefetch`` overrides, per queue). Sync job
    functions run in a thread pool of ``concurrency`` threads.
    """

    def __init__(
        self,
        app: JobApp,
        *,
        queues: Sequence[str] = ("default",),
        tiers: Sequence[str] = (),
        concurrency: int = 64,
        prefetch: int | None = None,
        grace_period: float = 30.0,
        worker_id: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        tenant_prefetch: int | None = None,
        events: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.app = app
        self.queues = list(queues)
        self.tiers = list(tiers)
        self.concurrency = concurrency
        self.prefetch = prefetch or concurrency
        # Each tenant queue may hold this many of the worker's slots, so one tenant's
        # flood leaves room for the others' jobs to start at once.
        self.tenant_prefetch = tenant_prefetch or max(1, concurrency // 4)
        self.grace_period = grace_period
        self.worker_id = worker_id or default_worker_id()
        self.max_body_bytes = max_body_bytes
        self.events = events  # consume the app's event rules' queues too
        self.stats = WorkerStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._unsettled: set[asyncio.Future[Any]] = set()  # see _ack_when_done
        self._subscriptions: list[Subscription] = []
        self._consumed: set[str] = set()
        self._plan: ConsumptionPlan | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._resources: dict[str, Any] = {}
        self._stopping = False
        self._stop_requested = asyncio.Event()
        store = app.store
        self._progress = ProgressReporter(store) if store is not None else None
        self._running: dict[str, tuple[JobContext, asyncio.Task[Any]]] = {}
        self._cancelled: dict[str, None] = {}  # ids whose cancellation was requested
        self._cancel_watch: asyncio.Task[None] | None = None
        self.rule_listener: RuleListener | None = None
        security = app.security
        self._preferences = security.preferences if security is not None else None
        self.cancel_poll_interval = 0.5
        self.cancel_lookback = 86_400.0

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare the queues, run start-up hooks and begin consuming.

        With ``tiers``, the queues come from the app's routing policy: each static queue
        of those tiers gets a share of the prefetch in proportion to its weight, and
        tenant queues are picked up from the registry stream as they appear.
        """
        triggers.check_all(self.app)  # an on_success naming an unknown job fails now
        await self.app.connect()
        prefetch = {queue: self.prefetch for queue in self.queues}
        if self.tiers:
            prefetch = self._tier_prefetch()
        for queue in prefetch:
            await self.app.client.ensure_queue(queue)
        self._resources = await self.app.run_startup()
        for hook in self.app.middleware.hooks("after_worker_start"):
            await hook(self)
        since = time.time() - self.cancel_lookback
        if self.app.store is not None:
            # Known cancellations first, so no cancelled job starts in the first moments.
            for job_id in await self.app.store.cancel_requests_since(since):
                self._note_cancelled(job_id)
        for queue, count in prefetch.items():
            await self._consume(queue, count)
        if self._plan is not None and self._plan.tenant_patterns:
            await self._follow_tenant_queues()
        if self.events and self.app.rules:
            from amqp_jobs.events import RuleListener

            self.rule_listener = RuleListener(self, self.app.rules)
            await self.rule_listener.start()
        if self.app.store is not None:
            self._cancel_watch = asyncio.get_running_loop().create_task(self._watch_cancels(since))
        log.info("worker %s consuming %s", self.worker_id, ", ".join(sorted(self._consumed)))

    def _tier_prefetch(self) -> dict[str, int]:
        router = self.app.router
        if router is None:
            raise ConfigurationError(
                "a worker for tiers needs an app with a routing policy: JobApp(routing=...)"
            )
        self._plan = router.consumption_plan(self.tiers)
        total = sum(weight for _, weight in self._plan.queues) or 1
        self.queues = [queue for queue, _ in self._plan.queues]
        return {
            queue: max(1, round(self.concurrency * weight / total))
            for queue, weight in self._plan.queues
        }

    async def _consume(self, queue: str, prefetch: int) -> None:
        self._consumed.add(queue)
        self._subscriptions.append(
            await self.app.transport.consume(
                self.app.topology.queue_name(queue), self._on_delivery, prefetch=prefetch
            )
        )

    async def _follow_tenant_queues(self) -> None:
        """Read the registry stream from its start; consume each tenant queue of our tiers."""
        router = self.app.router
        assert router is not None and self._plan is not None
        plan = self._plan

        async def on_announcement(delivery: Delivery) -> None:
            delivery.ack()
            queue = router.announced_queue(delivery.body)
            if queue is None or queue in self._consumed or self._stopping:
                return
            if plan.tenant_weight(queue) is None:
                return
            try:
                await self._consume(queue, self.tenant_prefetch)
                log.info("worker %s now consumes tenant queue %s", self.worker_id, queue)
            except TransportError as exc:  # e.g. a tenant queue deleted since its announcement
                self._consumed.discard(queue)
                log.warning("cannot consume announced queue %s: %s", queue, exc)

        self._subscriptions.append(
            await self.app.transport.consume(
                router.registry_stream,
                on_announcement,
                prefetch=100,
                arguments={"x-stream-offset": "first"},
            )
        )

    async def _watch_cancels(self, since: float) -> None:
        """Poll the store for cancellation requests; stop running jobs that were cancelled.

        One query per interval for the whole worker, not one per job, so a request takes
        effect within ``cancel_poll_interval`` seconds.
        """
        store = self.app.store
        assert store is not None
        while not self._stopping:
            polled_at = time.time()
            try:
                for job_id in await store.cancel_requests_since(since):
                    self._note_cancelled(job_id)
                since = polled_at - 1.0  # overlap: a request committed late is still seen
            except Exception as exc:
                log.warning("could not poll for cancellations: %s", exc)
            await asyncio.sleep(self.cancel_poll_interval)

    def _note_cancelled(self, job_id: str) -> None:
        if job_id in self._cancelled:
            return
        self._cancelled[job_id] = None
        if len(self._cancelled) > 100_000:  # bounded: forget the oldest requests
            del self._cancelled[next(iter(self._cancelled))]
        running = self._running.get(job_id)
        if running is not None:
            ctx, task = running
            log.info("cancelling running job %s on request", job_id)
            ctx.request_cancel()
            task.cancel()

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully (safe from a signal handler)."""
        self._stop_requested.set()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop consuming, let running jobs finish for the grace period, hand back the rest.

        Jobs still running after the grace period are cancelled and their messages
        returned to the queue unacknowledged; messages not yet started are handed
        back unchanged. Nothing is lost and nothing is acknowledged half-run.
        """
        if self._stopping:
            return
        self._stopping = True
        grace = self.grace_period if grace_period is None else grace_period
        for hook in self.app.middleware.hooks("before_worker_stop"):
            await hook(self)
        for subscription in self._subscriptions:
            await subscription.cancel()
        if self._cancel_watch is not None:
            self._cancel_watch.cancel()
        if self._in_flight:
            _, unfinished = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning(
                    "handing back %d jobs still running after %.1fs", len(unfinished), grace
                )
                await asyncio.wait(unfinished, timeout=10)
        if self._unsettled:  # finished jobs whose acks wait for their records
            await asyncio.wait(set(self._unsettled), timeout=max(grace, 10.0))
        await asyncio.sleep(0)  # let the last batched acks go out before the channels close
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions.clear()
        await self.app.run_shutdown(self._resources)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped: %s", self.worker_id, self.stats)

    async def run(self) -> None:
        """Start, run until SIGTERM/SIGINT (or :meth:`request_stop`), then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    # --- one message -------------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        await self.guarded(delivery, lambda: self._process(delivery))

    async def subscribe(
        self, queue: str, handler: Callable[[Delivery], Awaitable[None]], prefetch: int
    ) -> None:
        """Consume an AMQP queue with ``handler`` (wrap it with :meth:`guarded`); the
        subscription ends when the worker stops. Used by the event rules."""
        self._subscriptions.append(
            await self.app.transport.consume(queue, handler, prefetch=prefetch)
        )

    async def guarded(self, delivery: Delivery, handle: Callable[[], Awaitable[None]]) -> None:
        """Run ``handle()`` for ``delivery`` in one of the worker's slots, tracked for a
        graceful stop; a message that arrives while stopping is handed back untouched,
        and one whose settling fails is returned to its queue."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            async with self._slots:
                if self._stopping:
                    await self._hand_back(delivery)
                else:
                    await handle()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Settling failed (e.g. the broker went away mid-way). Give the message back;
            # if even that fails, the broker redelivers it when the channel closes.
            log.exception("could not settle message %s; returning it", delivery.message_id)
            with contextlib.suppress(Exception):
                await delivery.requeue()
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _envelope_of(self, delivery: Delivery) -> Envelope | None:
        """The delivery's envelope, or None once a bad one has been dead-lettered."""
        if delivery.content_type != CONTENT_TYPE:
            await self._dead_letter(
                delivery,
                f"wrong content type {delivery.content_type!r}; expected {CONTENT_TYPE!r}",
            )
            return None
        try:
            envelope = decode(delivery.body, max_bytes=self.max_body_bytes)
        except EnvelopeError as exc:
            await self._dead_letter(delivery, str(exc))
            return None
        if self.app.security is not None:
            try:
                # Only a trusted, intact envelope counts.
                self.app.security.verify(envelope, delivery.body)
            except SecurityError as exc:
                await self._refuse(delivery, envelope, exc)
                return None
        return envelope

    async def _process(self, delivery: Delivery) -> None:
        envelope = await self._envelope_of(delivery)
        if envelope is None:
            return
        security = self.app.security
        definition = self.app.registry.get(envelope.job)
        if definition is None:
            await self._dead_letter(
                delivery,
                f"unknown job {envelope.job!r}: no job of that name is registered in this worker",
                envelope,
            )
            return
        if envelope.id in self._cancelled:
            await self._settle_cancelled(delivery, envelope)
            return
        if delivery.redelivered:
            await self._count_interrupted_attempt(delivery, envelope, definition)
            return
        if envelope.expires_at is not None and time.time() > envelope.expires_at:
            await self._dead_letter(delivery, "expired before it could start", envelope)
            return
        payload = envelope.data
        if security is not None:
            try:
                payload = await security.admit(envelope, definition)
            except (SecurityError, GrantError) as exc:
                await self._refuse(delivery, envelope, exc)
                return
        try:
            data = definition.validate_input(payload)
        except JobValidationError as exc:
            await self._dead_letter(delivery, str(exc), envelope, error_type="ValidationError")
            return
        if envelope.idempotency_key is not None and not await self._claim_run(envelope, definition):
            log.info(
                "job %s: key %s already ran; duplicate dropped",
                envelope.id,
                envelope.idempotency_key,
            )
            delivery.ack()
            self.stats.duplicates += 1
            return
        await self._run(delivery, envelope, definition, data)

    async def _refuse(self, delivery: Delivery, envelope: Envelope, error: Exception) -> None:
        """Dead-letter a job the security checks refused: never retried, always audited."""
        reason = f"refused: {error}"
        error_type = type(error).__name__
        assert self.app.security is not None
        await self.app.security.refused(envelope, reason, error_type)
        await self._dead_letter(delivery, reason, envelope, error_type=error_type, refused=True)

    async def _claim_run(self, envelope: Envelope, definition: JobDefinition) -> bool:
        store = self.app.store
        if store is None or envelope.idempotency_key is None:
            return True
        return await store.claim_run(
            envelope.idempotency_key,
            envelope.id,
            envelope.attempt,
            envelope.enqueued_at + definition.idempotency_window,
        )

    async def _settle_cancelled(self, delivery: Delivery, envelope: Envelope) -> None:
        for hook in self.app.middleware.hooks("on_cancelled"):
            await hook(envelope)
        delivery.ack()
        self.stats.cancelled += 1

    async def _run(
        self, delivery: Delivery, envelope: Envelope, definition: JobDefinition, data: Any
    ) -> None:
        ctx = self._context(envelope, definition)
        result: Any = None
        error: BaseException | None = None
        user_token = current_user.set(envelope.user)  # jobs this job enqueues inherit it
        grant_token = current_grant.set(envelope.grant)
        task = asyncio.current_task()
        if task is not None:
            self._running[envelope.id] = (ctx, task)
        try:
            if self._preferences is not None and ctx.user is not None and ctx.user.user_id:
                ctx.preferences = await self._preferences.get(ctx.user.user_id, ctx.user.tenant)
            for before in self.app.middleware.hooks("before_process"):
                await before(ctx)
            result = definition.validate_output(await self._call(definition, ctx, data))
        except asyncio.CancelledError:
            if ctx.cancelled and task is not None and not self._stopping:
                task.uncancel()  # our own cancellation, on request: settle it, don't propagate
                await self._settle_cancelled(delivery, envelope)
                return
            # Otherwise stop() cancelled it: give its message back, unacknowledged. On a
            # closed channel the broker has already taken it back.
            with contextlib.suppress(TransportError):
                await delivery.requeue()
            self.stats.handed_back += 1
            raise
        except Exception as exc:
            error = exc
        finally:
            current_user.reset(user_token)
            current_grant.reset(grant_token)
            self._running.pop(envelope.id, None)
            if self._progress is not None:
                await self._progress.finish(envelope.id)
        if error is None:
            error = await self._follow_up(envelope, definition, result)
        for after in self.app.middleware.hooks("after_process", reverse=True):
            await after(ctx, result, error)
        if error is None:
            if ctx.ack_after:
                self._ack_when_done(delivery, ctx.ack_after)
            else:
                delivery.ack()
            self.stats.succeeded += 1
        else:
            await self._failed(delivery, ctx, error)

    def _ack_when_done(self, delivery: Delivery, waits: list[asyncio.Future[Any]]) -> None:
        """Acknowledge ``delivery`` once ``waits`` are done; return it to its queue if one
        failed (its outcome was not recorded: it runs again, as after a crash)."""
        waiting = waits[0] if len(waits) == 1 else asyncio.gather(*waits)
        self._unsettled.add(waiting)

        def settle(done: asyncio.Future[Any]) -> None:
            self._unsettled.discard(done)
            error = None if done.cancelled() else done.exception()
            if error is None and not done.cancelled():
                delivery.ack()
                return
            log.warning("job %s: not acknowledged (%s); returning it", delivery.message_id, error)
            task = asyncio.get_running_loop().create_task(delivery.requeue())
            self._unsettled.add(task)
            task.add_done_callback(self._unsettled.discard)

        waiting.add_done_callback(settle)

    def _context(self, envelope: Envelope, definition: JobDefinition) -> JobContext:
        return JobContext(
            envelope,
            definition,
            client=self.app.client,
            resources=self._resources,
            worker_id=self.worker_id,
            progress=self._progress,
            security=self.app.security,
        )

    async def _call(self, definition: JobDefinition, ctx: JobContext, data: Any) -> Any:
        args: list[Any] = [ctx] if definition.takes_context else []
        kwargs: dict[str, Any] = {}
        if definition.unpack_input:
            kwargs = {name: getattr(data, name) for name in type(data).model_fields}
        else:
            args.append(data)
        if definition.is_async:
            call = definition.fn(*args, **kwargs)
        else:
            call = asyncio.get_running_loop().run_in_executor(
                self._thread_pool(),
                functools.partial(contextvars.copy_context().run, definition.fn, *args, **kwargs),
            )
        if definition.timeout is None:
            return await call
        deadline = asyncio.timeout(definition.timeout)
        try:
            async with deadline:
                return await call
        except TimeoutError:
            if deadline.expired():
                raise JobTimeoutError(
                    f"job {definition.name!r} ran longer than its time limit of "
                    f"{definition.timeout}s and was cancelled"
                ) from None
            raise

    async def _continue_chain(
        self, envelope: Envelope, definition: JobDefinition, result: Any
    ) -> None:
        """Publish the chain's next step with this output as its input, before the ack.

        A group member instead records its output; the member that completes the group
        publishes the group's callback with every output, in member order.
        """
        output = definition.dump_output(result)
        if envelope.group is not None:
            if self.app.store is None:
                raise ConfigurationError("a group member needs a worker app with a store")
            outputs = await self.app.store.complete_member(
                envelope.group.id, envelope.group.position, output
            )
            if outputs is None:
                return
            callback = envelope.group.callback
            await self.app.client.enqueue(
                callback.job,
                {callback.input_field: outputs} if callback.input_field else outputs,
                job_id=callback.id,
                queue=callback.queue,
                correlation_id=envelope.correlation_id or envelope.group.id,
                parent_id=envelope.id,
                user=envelope.user,
            )
            return
        step, rest = envelope.chain[0], envelope.chain[1:]
        if step.when is not None and not self._step_condition_holds(step, result, output):
            await self._skip_steps(envelope, envelope.chain)
            return
        await self.app.client.enqueue(
            step.job,
            {step.input_field: output} if step.input_field else output,
            job_id=step.id,
            queue=step.queue,
            chain=rest,
            correlation_id=envelope.correlation_id or envelope.id,
            parent_id=envelope.id,
            user=envelope.user,
        )

    async def _follow_up(
        self, envelope: Envelope, definition: JobDefinition, result: Any
    ) -> Exception | None:
        """Publish what follows a success (chain step, group callback, on_success jobs)
        before the ack; an error here fails the attempt (e.g. the next input is invalid)."""
        if not (envelope.chain or envelope.group or definition.on_success):
            return None
        try:
            if envelope.chain or envelope.group:
                await self._continue_chain(envelope, definition, result)
            if definition.on_success:
                await triggers.dispatch_success(self.app, envelope, definition, result)
        except Exception as exc:
            return exc
        return None

    def _step_condition_holds(self, step: ChainStep, result: Any, output: Any) -> bool:
        if isinstance(step.when, dict):
            return holds(step.when, output)
        condition = self.app.conditions.get(step.when or "")
        if condition is None:
            raise ConfigurationError(
                f"chain step {step.job!r}: no condition named {step.when!r} is registered in "
                "this worker's app"
            )
        return bool(condition(result))

    async def _skip_steps(self, envelope: Envelope, steps: Sequence[ChainStep]) -> None:
        """Record the chain's remaining steps as skipped (their condition did not hold)."""
        log.info(
            "job %s: condition of chain step %s does not hold; %d step(s) skipped",
            envelope.id,
            steps[0].job,
            len(steps),
        )
        if self.app.store is None:
            return
        user_id, tenant = envelope.owner
        now = time.time()
        for step in steps:
            definition = self.app.registry.get(step.job)
            await self.app.store.record(
                StateChange(
                    job_id=step.id,
                    state="skipped",
                    attempt=0,
                    job=step.job,
                    queue=step.queue
                    or (definition.queue if definition else self.app.default_queue),
                    created_at=now,
                    user_id=user_id,
                    tenant=tenant,
                    publisher=envelope.publisher,
                    correlation_id=envelope.correlation_id or envelope.id,
                    parent_id=envelope.id,
                    error_message=f"skipped: the condition of step {steps[0].job!r} did not hold",
                )
            )

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="amqp-jobs-sync"
            )
        return self._executor

    # --- outcomes ------------------------------------------------------------------------

    async def _failed(self, delivery: Delivery, ctx: JobContext, error: BaseException) -> None:
        envelope, policy = ctx.envelope, ctx.definition.retry
        error_type = type(error).__name__
        if not isinstance(error, JobValidationError) and policy.should_retry(
            error, envelope.attempt
        ):
            delay = policy.delay_after(envelope.attempt, error)
            log.info(
                "job %s (%s) attempt %d failed with %s; retrying in %.3fs",
                envelope.id,
                envelope.job,
                envelope.attempt,
                error_type,
                delay,
            )
            for hook in self.app.middleware.hooks("on_retry"):
                await hook(ctx, error, delay)
            await self._republish(delivery, envelope.next_attempt(not_before=time.time() + delay))
            self.stats.retried += 1
            return
        if isinstance(error, JobValidationError) or envelope.attempt >= policy.max_attempts:
            why = f"failed on attempt {envelope.attempt} of {policy.max_attempts}"
        else:
            why = f"failed with an error that is not retried (attempt {envelope.attempt})"
        await self._dead_letter(
            delivery, f"{why}: {error_type}: {error}", envelope, error_type=error_type
        )

    async def _count_interrupted_attempt(
        self, delivery: Delivery, envelope: Envelope, definition: JobDefinition
    ) -> None:
        """A redelivered message: its worker died or lost the broker during that attempt.

        The envelope is immutable on the broker, so the count is kept by publishing a
        copy with ``attempt + 1`` (after the policy's backoff) and acking the original;
        a job that kills its worker every time thus ends in the dead-letter queue.
        """
        policy = definition.retry
        if envelope.attempt >= policy.max_attempts:
            await self._dead_letter(
                delivery,
                f"redelivered after attempt {envelope.attempt} of {policy.max_attempts} was "
                "interrupted (its worker died or lost the broker); no attempts left",
                envelope,
                error_type="WorkerLost",
            )
            return
        delay = policy.delay_after(envelope.attempt)
        lost = WorkerLost(f"attempt {envelope.attempt} was interrupted; the message came back")
        ctx = self._context(envelope, definition)
        for hook in self.app.middleware.hooks("on_retry"):
            await hook(ctx, lost, delay)
        log.warning(
            "job %s (%s) was redelivered: attempt %d counts as failed; next in %.3fs",
            envelope.id,
            envelope.job,
            envelope.attempt,
            delay,
        )
        await self._republish(delivery, envelope.next_attempt(not_before=time.time() + delay))
        self.stats.retried += 1

    async def _republish(self, delivery: Delivery, envelope: Envelope) -> None:
        publication = self.app.client.publication(envelope)
        await self._publish_then_ack(
            delivery, publication.message, publication.exchange, publication.routing_key
        )

    async def _hand_back(self, delivery: Delivery) -> None:
        """Return a message that never started, unchanged, so it does not count as an attempt."""
        message = OutgoingMessage(
            body=delivery.body,
            message_id=delivery.message_id or "",
            type=delivery.type or "",
            content_type=delivery.content_type or "",
            priority=delivery.priority,
            headers=dict(delivery.headers),
        )
        await self._publish_then_ack(delivery, message, "", delivery.queue)
        self.stats.handed_back += 1

    async def dead_letter(
        self, delivery: Delivery, reason: str, *, extra_headers: Mapping[str, Any] | None = None
    ) -> None:
        """Send a message that is not a job (e.g. an event a rule failed on) to the
        dead-letter queue with ``reason``, then ack it."""
        await self._dead_letter(delivery, reason, extra_headers=extra_headers)

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        envelope: Envelope | None = None,
        *,
        error_type: str | None = None,
        extra_headers: Mapping[str, Any] | None = None,
        refused: bool = False,
    ) -> None:
        """Publish the original body to the dead-letter queue with the reason, then ack.

        If that publish fails the message is rejected instead, so the broker
        dead-letters it through the queue's DLX (the reason is then only in the log).
        """
        log.warning("dead-lettering message %s: %s", delivery.message_id, reason)
        if envelope is not None and error_type is not None and not refused:
            definition = self.app.registry.get(envelope.job)
            if definition is not None and definition.on_failure:
                await triggers.dispatch_failure(self.app, envelope, definition, reason, error_type)
        for hook in self.app.middleware.hooks("on_dead_letter"):
            await hook(envelope, reason, error_type)
        headers: dict[str, Any] = {
            DEAD_REASON_HEADER: reason[:2000],
            DEAD_QUEUE_HEADER: delivery.queue,
            DEAD_AT_HEADER: time.time(),
            "x-amqp-jobs-worker": self.worker_id,
        }
        if envelope is not None:
            headers[DEAD_ATTEMPTS_HEADER] = envelope.attempt
        if error_type is not None:
            headers[DEAD_ERROR_HEADER] = error_type
        if extra_headers:
            headers.update(extra_headers)
        message = OutgoingMessage(
            body=delivery.body,
            message_id=delivery.message_id or (envelope.id if envelope else ""),
            type=envelope.job if envelope else "",
            content_type=delivery.content_type or "application/octet-stream",
            priority=delivery.priority,
            headers=headers,
        )
        try:
            await self._publish_then_ack(
                delivery, message, self.app.topology.dead_letter_exchange, "", requeue=False
            )
        except TransportError:
            await delivery.reject()
        self.stats.dead += 1

    async def _publish_then_ack(
        self,
        delivery: Delivery,
        message: OutgoingMessage,
        exchange: str,
        routing_key: str,
        *,
        requeue: bool = True,
    ) -> None:
        try:
            await self.app.transport.publish(
                message, exchange, routing_key, timeout=self.app.publish_timeout
            )
        except PublishError:
            if not requeue:
                raise
            log.exception("could not republish %s; returning it to the queue", message.message_id)
            await delivery.requeue()
            return
        delivery.ack()
