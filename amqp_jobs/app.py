"""JobApp: the registry of jobs and services, and the one place configuration lives.

There is no global app: create one, pass it around, import it where a worker
needs it (``amqp-jobs worker myproject.jobs:app``).
"""

from __future__ import annotations

import contextvars
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import quote

from yarl import URL

from amqp_jobs import triggers
from amqp_jobs.client import Client, EnqueueRequest, JobHandle
from amqp_jobs.conditions import Condition, FieldMap
from amqp_jobs.context import current_grant, current_user
from amqp_jobs.errors import ConfigurationError, UnknownJobError, UnknownJobOptionError
from amqp_jobs.events import Rule, emit, make_rule
from amqp_jobs.jobs import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    IdempotencyKey,
    Job,
    JobDefinition,
    idempotency_function,
    introspect,
)
from amqp_jobs.middleware import Middleware, MiddlewareStack
from amqp_jobs.retries import Backoff, RetryPolicy
from amqp_jobs.routes import Router, RoutingPolicy
from amqp_jobs.security.guard import Security, SecurityMiddleware
from amqp_jobs.security.users import UserContext
from amqp_jobs.store import JobStore, StoreRecorder
from amqp_jobs.store.results import JobResults
from amqp_jobs.topology import DEFAULT_MAX_PRIORITY, DEFAULT_NAMESPACE, Topology
from amqp_jobs.transport.amqp import AmqpTransport
from amqp_jobs.transport.base import Transport

DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"

if TYPE_CHECKING:
    from amqp_jobs.security.audit import AuditLog
    from amqp_jobs.security.grants import Grants
    from amqp_jobs.security.preferences import Preferences
    from amqp_jobs.worker import Worker

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[[dict[str, Any]], Awaitable[None]]
FollowUps = str | Job | Sequence[str | Job] | None


class JobApp:
    """An amqp-jobs application: jobs, services, middleware and broker settings.

    ``url`` defaults to the ``AMQP_URL`` environment variable, then to a local
    RabbitMQ. ``service`` names the publishing service (the envelope's
    ``publisher``). ``namespace`` prefixes every exchange and queue name.
    ``routing`` is a routing policy; ``store`` a job store (or its SQLAlchemy URL,
    e.g. ``sqlite+aiosqlite:///./amqp_jobs.db``) that records every job and its result.
    ``security`` signs, verifies, encrypts and audits (see :class:`Security`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        service: str = "amqp-jobs",
        namespace: str = DEFAULT_NAMESPACE,
        default_queue: str = "default",
        max_priority: int = DEFAULT_MAX_PRIORITY,
        publish_timeout: float = 10.0,
        middleware: Iterable[Middleware] = (),
        transport: Transport | None = None,
        routing: RoutingPolicy | None = None,
        store: str | JobStore | None = None,
        security: Security | None = None,
    ) -> None:
        self.url = url or os.environ.get("AMQP_URL", DEFAULT_URL)
        self.service_name = service
        self.topology = Topology(namespace=namespace, max_priority=max_priority)
        self.default_queue = default_queue
        self.publish_timeout = publish_timeout
        self.middleware = MiddlewareStack(list(middleware))
        self.transport = transport or AmqpTransport(self.url, connection_name=service)
        vhost_transport = None
        if transport is None:

            def vhost_transport(vhost: str) -> Transport:
                return AmqpTransport(url_for_vhost(self.url, vhost), connection_name=service)

        self.registry: dict[str, JobDefinition] = {}
        self.conditions: dict[str, Callable[[Any], Any]] = {}
        """Chain-step conditions (``@app.condition``), by name."""
        self.rules: list[Rule] = []
        """Event rules (``app.on``): which events dispatch which jobs."""
        self.schedules: dict[str, Any] = {}
        """Schedules defined in code (``app.schedule``), by name; see amqp_jobs.scheduling."""
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self.router = Router(routing, self.topology) if routing is not None else None
        self.client = Client(
            transport=self.transport,
            topology=self.topology,
            registry=self.registry,
            middleware=self.middleware,
            service=service,
            default_queue=default_queue,
            publish_timeout=publish_timeout,
            router=self.router,
            vhost_transport=vhost_transport,
        )
        self.store = JobStore(store) if isinstance(store, str) else store
        recorder = StoreRecorder(self.store) if self.store is not None else None
        if recorder is not None:
            self.middleware.add(recorder)
        self.jobs = JobResults(self.store, self.registry)
        """Records, queries and results of jobs (needs ``store=``)."""
        self.client.results = self.jobs if self.store is not None else None
        self.security = security
        if security is not None:
            security.bind(self)
            self.middleware.add(SecurityMiddleware(security))
            self.client.signer = security.sign_body
            self.jobs.security = security
            if recorder is not None:
                recorder.seal = security.seal_value

    # --- defining jobs --------------------------------------------------------------

    @overload
    def job(self, fn: F, /) -> Job: ...
    @overload
    def job(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int = 3,
        backoff: Backoff = "exponential",
        backoff_base: float = 1.0,
        max_backoff: float = 3600.0,
        jitter: float = 0.1,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        timeout: float | None = None,
        priority: int | None = None,
        idempotency_key: IdempotencyKey = None,
        idempotency_window: float | timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        on_success: FollowUps = None,
        on_failure: FollowUps = None,
        **options: Any,
    ) -> Callable[[F], Job]: ...

    def job(  # type: ignore[misc]  # **settings forwards the overload's keywords
        self, fn: Callable[..., Any] | None = None, /, **settings: Any
    ) -> Any:
        """Register a function as a job (``@app.job`` or ``@app.job(queue=..., ...)``).

        Input and output schemas come from the annotations. ``max_attempts``,
        ``backoff`` (``"fixed"``, ``"exponential"`` or ``f(attempt) -> seconds``),
        ``backoff_base``, ``max_backoff``, ``jitter`` and ``retry_on`` make its
        retry policy; ``timeout`` is its time limit in seconds. ``idempotency_key``
        (field names, a function of the input, or True for the whole input) makes the
        job run once per key within ``idempotency_window`` (needs a store).
        ``on_success`` jobs run with this job's output as input; ``on_failure`` jobs with
        a :class:`~amqp_jobs.triggers.JobFailure` when it ends dead. Other keyword
        options must be claimed by an installed middleware.
        """

        def register(function: Callable[..., Any]) -> Job:
            return self._register(function, **settings)

        return register(fn) if fn is not None else register

    def _register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int = 3,
        backoff: Backoff = "exponential",
        backoff_base: float = 1.0,
        max_backoff: float = 3600.0,
        jitter: float = 0.1,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        timeout: float | None = None,
        priority: int | None = None,
        idempotency_key: IdempotencyKey = None,
        idempotency_window: float | timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        on_success: FollowUps = None,
        on_failure: FollowUps = None,
        **options: Any,
    ) -> Job:
        job_name = name or f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        if name is None and fn.__module__ in ("__main__", "builtins"):
            job_name = fn.__name__
        unknown = set(options) - self.middleware.job_options
        if unknown:
            raise UnknownJobOptionError(
                f"job {job_name!r} has unknown option(s) {sorted(unknown)}; "
                "did you forget to add the middleware that understands them?"
            )
        if job_name in self.registry:
            raise ConfigurationError(f"a job named {job_name!r} is already registered")
        if priority is not None and not 0 <= priority <= self.topology.max_priority:
            raise ConfigurationError(
                f"job {job_name!r}: priority {priority} is outside 0..{self.topology.max_priority}"
            )
        queue_name = queue or self.default_queue
        self.topology.queue_name(queue_name)  # validates the name now, not at first publish
        definition = introspect(
            job_name,
            fn,
            queue=queue_name,
            retry=RetryPolicy(
                max_attempts=max_attempts,
                backoff=backoff,
                base_delay=backoff_base,
                max_delay=max_backoff,
                jitter=jitter,
                retry_on=retry_on,
            ),
            timeout=timeout,
            priority=priority,
            options=options,
        )
        definition.idempotency = idempotency_function(
            job_name, idempotency_key, definition.input_model
        )
        definition.idempotency_window = (
            idempotency_window.total_seconds()
            if isinstance(idempotency_window, timedelta)
            else float(idempotency_window)
        )
        definition.on_success = triggers.target_names(on_success, where=f"job {job_name!r}")
        definition.on_failure = triggers.target_names(on_failure, where=f"job {job_name!r}")
        triggers.check(self, definition, strict=False)
        self.registry[job_name] = definition
        try:
            for other in self.registry.values():  # those that named this job before it existed
                if job_name in other.on_success or job_name in other.on_failure:
                    triggers.check(self, other, strict=False)
        except ConfigurationError:
            del self.registry[job_name]
            raise
        return Job(definition, self)

    def condition(self, fn: F | None = None, /, *, name: str | None = None) -> Any:
        """Register a condition for chain steps (``step.s(when=fn)``): a function of the
        previous step's output. Conditions travel by name, so the worker must import the
        module that registers them (as it does the jobs)."""

        def register(function: F) -> F:
            key = name or f"{function.__module__}.{function.__qualname__}"
            if key in self.conditions and self.conditions[key] is not function:
                raise ConfigurationError(f"a condition named {key!r} is already registered")
            self.conditions[key] = function
            return function

        return register(fn) if fn is not None else register

    def service(self, name: str, instance: object, **settings: Any) -> list[Job]:
        """Register the public methods of ``instance`` as jobs named ``"<name>.<method>"``.

        ``settings`` are the ``@app.job`` options applied to every method.
        """
        jobs = []
        for attr, member in inspect.getmembers(instance, callable):
            if attr.startswith("_") or inspect.isclass(member):
                continue
            jobs.append(self._register(member, name=f"{name}.{attr}", **settings))
        if not jobs:
            raise ConfigurationError(f"service {name!r} has no public methods to register")
        return jobs

    def add_middleware(self, middleware: Middleware) -> None:
        """Install a middleware; add it before defining jobs that use its options."""
        self.middleware.add(middleware)

    def on_startup(self, hook: Hook) -> Hook:
        """Register ``async def hook(resources)``, run when a worker starts; fill ``resources``."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Register ``async def hook(resources)``, run when a worker stops."""
        self._shutdown.append(hook)
        return hook

    async def run_startup(self) -> dict[str, Any]:
        """Run the start-up hooks; return the resources they made (``ctx.resources``)."""
        resources: dict[str, Any] = {"app": self}
        for hook in self._startup:
            await hook(resources)
        return resources

    async def run_shutdown(self, resources: dict[str, Any]) -> None:
        """Run the shut-down hooks, last registered first."""
        for hook in reversed(self._shutdown):
            await hook(resources)

    # --- events ---------------------------------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any = None,
        *,
        user: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> bool:
        """Publish event ``event`` (dotted name, e.g. ``"user.signed_up"``) with ``data``.

        ``user`` defaults to the current user (of ``acting_as`` or the running job); the
        jobs that rules dispatch run for that user. Returns False when no rule listens.
        """
        return await emit(self, event, data, user=user, event_id=event_id)

    @overload
    def on(
        self,
        event: str,
        *,
        when: Condition | None = None,
        map: FieldMap | None = None,
        name: str | None = None,
        exchange: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Callable[[Job | Callable[..., Any]], Job]: ...
    @overload
    def on(
        self,
        event: str,
        *,
        jobs: str | Job | Sequence[str | Job],
        when: Condition | None = None,
        map: FieldMap | None = None,
        name: str | None = None,
        exchange: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Rule: ...

    def on(
        self,
        event: str,
        *,
        jobs: str | Job | Sequence[str | Job] | None = None,
        when: Condition | None = None,
        map: FieldMap | None = None,
        name: str | None = None,
        exchange: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Any:
        """A rule: event ``event`` (a name or topic pattern such as ``"user.*"``)
        dispatches jobs when ``when`` holds.

        ``when`` is a function of the :class:`~amqp_jobs.events.Event` (its data fields
        read as attributes: ``lambda e: e.plan == "pro"``) or a mapping of field tests
        (``{"plan": "pro", "seats": {"gte": 10}}``). ``map`` turns the event into the
        jobs' input (a function, or ``{"input_field": "path.in.data"}``); by default the
        event's data is the input. ``exchange`` listens to an existing topic exchange of
        yours instead of the app's events. Use as ``@app.on(...)`` over a job (or over a
        function, which becomes a job), or with ``jobs=`` naming registered jobs.
        Workers of the app run the rules.
        """
        settings: dict[str, Any] = {
            "when": when,
            "map": map,
            "name": name,
            "exchange": exchange,
            "queue": queue,
            "priority": priority,
        }
        if jobs is not None:
            targets = [jobs] if isinstance(jobs, str | Job) else list(jobs)
            names = [t.name if isinstance(t, Job) else t for t in targets]
            rule = make_rule(self, event, names, **settings)
            self.rules.append(rule)
            return rule

        def decorate(target: Job | Callable[..., Any]) -> Job:
            job = target if isinstance(target, Job) else self.job(target)
            self.rules.append(make_rule(self, event, [job.name], **settings))
            return job

        return decorate

    def schedule(self, name: str, job: str, **settings: Any) -> Any:
        """Define a recurring job: ``app.schedule("nightly", "maintenance.cleanup",
        cron="0 0 * * *", timezone="Europe/Berlin", data={...})`` or ``every=timedelta(...)``.

        ``amqp-jobs scheduler module:app`` fires it; see :mod:`amqp_jobs.scheduling`.
        """
        from amqp_jobs.scheduling.registry import define_schedule

        return define_schedule(self, name, job, **settings)

    def get_job(self, name: str) -> JobDefinition:
        """The definition of a registered job, or a clear error."""
        try:
            return self.registry[name]
        except KeyError:
            raise UnknownJobError(
                f"no job named {name!r} is registered; known: {sorted(self.registry)}"
            ) from None

    # --- publishing ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the broker connection (done on first use too)."""
        await self.transport.connect()

    async def close(self) -> None:
        """Close the broker connection."""
        await self.client.close_vhosts()
        await self.transport.close()
        self.client.forget_declarations()
        if self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> JobApp:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def enqueue(self, job: str, data: Any = None, **options: Any) -> JobHandle:
        """Publish job ``job`` (by name) with ``data``, and wait for the broker's confirm.

        Options: ``queue``, ``delay`` (seconds or timedelta), ``at`` (aware datetime),
        ``priority`` (0..max_priority), ``job_id``, ``labels``, ``correlation_id``,
        ``parent_id``, ``user``, ``expires``, ``idempotency_key``.
        """
        await self.connect()
        return await self.client.enqueue(job, data, **options)

    async def enqueue_many(
        self,
        jobs: Iterable[EnqueueRequest | tuple[str, Any] | dict[str, Any]],
        *,
        window: int = 500,
    ) -> list[JobHandle]:
        """Publish many jobs with their confirms pipelined (``window`` in flight)."""
        await self.connect()
        return await self.client.enqueue_many(jobs, window=window)

    def acting_as(self, user: Mapping[str, Any] | UserContext, *, grant: Any = None) -> ActingAs:
        """Publish as ``user`` inside a ``with``/``async with`` block (when no ``user=``).

        ``grant`` (an impersonation grant or its token, from ``app.grants.issue``) lets
        the block act on the user's behalf; workers check it when each job starts.
        """
        wire = user.to_wire() if isinstance(user, UserContext) else dict(user)
        return ActingAs(wire, getattr(grant, "token", grant))

    @property
    def grants(self) -> Grants:
        """Impersonation grants: issue, check, list, revoke (needs security and a store)."""
        if self.security is None or self.security.grants is None:
            raise ConfigurationError(
                "grants need JobApp(security=Security(signing_key=...), store=...)"
            )
        return self.security.grants

    @property
    def audit(self) -> AuditLog:
        """The hash-chained audit log (needs security and a store)."""
        if self.security is None or self.security.audit is None:
            raise ConfigurationError("the audit log needs JobApp(security=Security(), store=...)")
        return self.security.audit

    @property
    def preferences(self) -> Preferences[Any]:
        """Per-user preferences (needs ``Security(preferences=Model)`` and a store)."""
        if self.security is None or self.security.preferences is None:
            raise ConfigurationError(
                "preferences need JobApp(security=Security(preferences=Model), store=...)"
            )
        return self.security.preferences

    def queue(self, name: str) -> QueueClient:
        """The queue-first form: ``await app.queue("emails").add("email.send", data)``."""
        self.topology.queue_name(name)
        return QueueClient(self, name)

    def worker(self, queues: Sequence[str] | None = None, **settings: Any) -> Worker:
        """A :class:`~amqp_jobs.worker.Worker` for ``queues`` (default: every job's queue).

        ``tiers=[...]`` instead takes the queues from the routing policy.
        """
        from amqp_jobs.worker import Worker

        chosen = list(queues) if queues else sorted({d.queue for d in self.registry.values()})
        return Worker(self, queues=chosen or [self.default_queue], **settings)


def url_for_vhost(url: str, vhost: str) -> str:
    """``url`` with its virtual host replaced by ``vhost`` (percent-encoded as AMQP wants)."""
    return str(URL(url).with_path("/" + quote(vhost, safe=""), encoded=True))


class ActingAs:
    """Sets the user that jobs published in the block belong to (see ``JobApp.acting_as``)."""

    def __init__(self, user: dict[str, Any], grant: str | None = None) -> None:
        self.user = user
        self.grant = grant
        self._tokens: list[
            tuple[contextvars.Token[dict[str, Any] | None], contextvars.Token[str | None]]
        ] = []

    def __enter__(self) -> dict[str, Any]:
        self._tokens.append((current_user.set(self.user), current_grant.set(self.grant)))
        return self.user

    def __exit__(self, *exc_info: object) -> None:
        user_token, grant_token = self._tokens.pop()
        current_user.reset(user_token)
        current_grant.reset(grant_token)

    async def __aenter__(self) -> dict[str, Any]:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()


class QueueClient:
    """Publishes into one named queue."""

    def __init__(self, app: JobApp, name: str) -> None:
        self.app = app
        self.name = name

    async def add(self, job: str, data: Any = None, **options: Any) -> Any:
        """Publish ``job`` into this queue; options as :meth:`JobApp.enqueue`.

        With ``repeat={"cron": "0 0 * * *"}`` (or ``{"every": timedelta(...)}``) it
        stores a schedule instead and returns it (see :mod:`amqp_jobs.scheduling`).
        """
        if "repeat" in options:
            from amqp_jobs.scheduling.registry import add_repeating

            return await add_repeating(self.app, self.name, job, data, **options)
        return await self.app.enqueue(job, data, queue=self.name, **options)

    async def add_many(self, jobs: Iterable[tuple[str, Any]]) -> list[JobHandle]:
        """Publish many ``(job, data)`` pairs into this queue."""
        return await self.app.enqueue_many(
            EnqueueRequest(job, data, {"queue": self.name}) for job, data in jobs
        )

    async def size(self) -> int:
        """Number of jobs ready in this queue (declaring it if it does not exist yet)."""
        await self.app.connect()
        await self.app.client.ensure_queue(self.name)
        return await self.app.transport.message_count(self.app.topology.queue_name(self.name))
