"""The scheduler: fires the app's schedules; several may run, one leads.

Leadership is held through the broker. Every scheduler consumes ``<ns>.scheduler``, a
queue with ``x-single-active-consumer`` that holds one token message. The broker
delivers to one consumer only, and that consumer keeps the token unacknowledged for as
long as it leads. When its connection goes (a crash, SIGKILL, a lost network), the
broker hands the token to the next consumer at once. This needs features the
:class:`~amqp_jobs.transport.base.Transport` interface does not expose (knowing that the
consumer's connection died, so a leader that lost it stops firing), so the scheduler
keeps its own small aio-pika connection for the token; jobs go through ``app.enqueue``.

Leadership alone is not enough (a leader cut off from the broker may not know it yet),
so each occurrence is also claimed in the store: the INSERT of ``(schedule, fire_at)``
succeeds once, and only the scheduler whose insert succeeded publishes it.

The leader publishes each occurrence ``lead`` seconds ahead with ``at=fire_time``: the
delay levels deliver it on time, so the job starts at the intended instant instead of
"when the scheduler woke up, plus a publish". It keeps the next fire time of each
schedule in a heap, and reloads schedules when the store's cheap fingerprint changes
(about once a second), so schedules added, changed, paused or deleted at run time take
effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from yarl import URL

from amqp_jobs.errors import ConfigurationError
from amqp_jobs.scheduling.spec import Schedule, Timetable, utc_iso
from amqp_jobs.scheduling.store import Claim, ScheduleRecord, ScheduleStore
from amqp_jobs.topology import QueueDecl, Topology

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp

log = logging.getLogger(__name__)

OCCURRENCE_NAMESPACE = uuid.UUID("6f1c2a52-3f0e-5d8e-9a53-0c9f5e2d7b41")
"""uuid5 namespace of occurrence job ids: the same occurrence always gets the same id."""

_PUBLISH_CHUNK = 200
_TOKEN_CHECK = 10.0  # s between a standby's checks that a token exists
_RECOVER_WINDOW = 3600.0
_PRUNE_EVERY = 3600.0
_KEEP_FIRES = 86_400.0


def leader_queue_name(topology: Topology) -> str:
    """The AMQP name of the leadership queue of a namespace."""
    return f"{topology.namespace}.scheduler"


def leader_queue(topology: Topology) -> QueueDecl:
    """The leadership queue: single active consumer, at most one ready token."""
    return QueueDecl(
        leader_queue_name(topology),
        {"x-single-active-consumer": True, "x-max-length": 1, "x-overflow": "drop-head"},
    )


def occurrence_id(namespace: str, schedule: str, fire_at: float) -> str:
    """The job id of one occurrence: ``uuid5`` of namespace, schedule and fire time."""
    return str(uuid.uuid5(OCCURRENCE_NAMESPACE, f"{namespace}:{schedule}@{utc_iso(fire_at)}"))


@dataclass(slots=True, eq=False)
class _State:
    """What the leader keeps per schedule (small: 10,000 of them fit in a few MB)."""

    schedule: Schedule
    timetable: Timetable
    version: float
    next_fire: float | None = None


@dataclass(slots=True)
class SchedulerStats:
    """Counters of one scheduler process."""

    fired: int = 0
    lost_claims: int = 0
    publish_failures: int = 0
    recovered: int = 0
    caught_up: int = 0
    leader_since: float | None = None
    took_over_at: float | None = None
    terms: int = 0
    fired_by_schedule: dict[str, int] = field(default_factory=dict)


class Scheduler:
    """Fires the schedules of ``app`` (in code and in its store) while it leads.

    ``lead``: seconds ahead of each occurrence that it is published (with ``at=``).
    ``reload_interval``: how often the store is checked for changed schedules.
    ``misfire_grace``: an occurrence at most this late is fired normally; older ones
    that nobody fired follow the schedule's misfire policy. ``catch_up_limit`` caps how
    many missed occurrences ``misfire="all"`` fires per schedule.
    """

    def __init__(
        self,
        app: JobApp,
        *,
        lead: float = 1.0,
        reload_interval: float = 1.0,
        misfire_grace: float = 2.0,
        catch_up_limit: int = 1000,
        scheduler_id: str | None = None,
        heartbeat: int = 10,
    ) -> None:
        if app.store is None:
            raise ConfigurationError(
                "the scheduler keeps schedules and claims in the job store: "
                "give the app one (JobApp(store=...))"
            )
        if lead < 0 or reload_interval <= 0 or misfire_grace < 0:
            raise ConfigurationError("lead and misfire_grace must be >= 0, reload_interval > 0")
        self.app = app
        self.store = ScheduleStore(app.store)
        self.lead = lead
        self.reload_interval = reload_interval
        self.misfire_grace = misfire_grace
        self.catch_up_limit = catch_up_limit
        self.id = scheduler_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.heartbeat = heartbeat
        self.stats = SchedulerStats()
        self._queue = leader_queue(app.topology)
        self._states: dict[str, _State] = {}
        self._heap: list[tuple[float, int, str, _State]] = []
        self._sequence = 0
        self._fingerprint: tuple[int, float, int] | None = None
        self._unclaimed: list[tuple[_State, float]] = []  # claim failed (store down): retry
        self._unpublished: list[tuple[_State, Claim]] = []  # claimed, publish failed: retry
        self._leading = False
        self._term = 0  # bumped each time leadership is won or lost
        self._loaded_term = -1
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._release = asyncio.Event()  # set once the fire loop has ended
        self._next_reload = 0.0
        self._connection: AbstractConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_prune = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this scheduler holds the leadership token."""
        return self._leading

    async def start(self) -> None:
        """Store the in-code schedules, then compete for leadership and fire while leading."""
        await self.app.connect()
        await self.sync()
        loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._release.clear()
        self._tasks = [
            loop.create_task(self._fire_loop(), name=f"scheduler-fire-{self.id}"),
            loop.create_task(self._hold_leadership(), name=f"scheduler-leadership-{self.id}"),
        ]

    async def sync(self) -> list[ScheduleRecord]:
        """Upsert the app's in-code schedules into the store (by name; paused kept)."""
        records = []
        for schedule in self.app.schedules.values():
            records.append(await self.store.upsert(schedule, origin="code"))
        return records

    async def stop(self) -> None:
        """Finish the batch in hand, give up leadership (the token goes to the next one)."""
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        # First the fire loop (it ends after the batch in hand, so nothing it claimed is
        # left unpublished), then the token: only then may another scheduler lead.
        for task in tasks:
            await asyncio.wait([task], timeout=15.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._release.set()
        await self._close_connection()
        self._leading = False

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT, then stop and close the app."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        log.info("scheduler %s started (%d schedule(s) in code)", self.id, len(self.app.schedules))
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
            await self.app.close()

    # --- leadership ---------------------------------------------------------------------

    async def _hold_leadership(self) -> None:
        backoff = 0.5
        while not self._release.is_set():
            lost = asyncio.Event()
            try:
                channel = await self._compete(lost)
                backoff = 0.5
                while not (lost.is_set() or self._release.is_set()):
                    await _first(lost.wait(), self._release.wait(), asyncio.sleep(_TOKEN_CHECK))
                    if not (self._leading or lost.is_set() or self._release.is_set()):
                        await self._ensure_token(channel)
            except Exception as exc:
                log.warning("scheduler %s: leadership connection failed: %s", self.id, exc)
            finally:
                self._set_leading(False)
                await self._close_connection()
            if not self._release.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), backoff)
                backoff = min(backoff * 2, 10.0)

    async def _compete(self, lost: asyncio.Event) -> AbstractChannel:
        url = URL(self.app.url).update_query(heartbeat=self.heartbeat)
        connection = await aio_pika.connect(
            str(url),
            client_properties={"connection_name": f"{self.app.service_name} scheduler {self.id}"},
            timeout=10.0,
        )
        self._connection = connection
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel(publisher_confirms=True)
        channel.close_callbacks.add(lambda *_: lost.set())
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(
            self._queue.name, durable=True, arguments=dict(self._queue.arguments)
        )
        await self._ensure_token(channel)

        async def on_token(message: AbstractIncomingMessage) -> None:
            # Never acked: holding it unacknowledged is what leading means.
            log.info("scheduler %s: leading", self.id)
            self._set_leading(True)

        await queue.consume(on_token, no_ack=False)
        return channel

    async def _ensure_token(self, channel: AbstractChannel) -> None:
        """Publish a token unless one is ready (standbys check now and then, so a lost
        token, e.g. a purged queue, cannot leave the schedules without a leader).

        A token held by the leader is not "ready", so a spare one waits beside it; at
        most one waits (x-max-length 1, the rest dropped), and only the single active
        consumer ever receives one: spares never make a second leader.
        """
        declared = await channel.declare_queue(
            self._queue.name, durable=True, arguments=dict(self._queue.arguments)
        )
        if not declared.declaration_result.message_count:
            await channel.default_exchange.publish(
                aio_pika.Message(b"leader", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self._queue.name,
            )

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        self._term += 1
        if leading:
            self.stats.terms += 1
            self.stats.leader_since = time.time()
        else:
            self.stats.leader_since = None
            log.info("scheduler %s: no longer leading", self.id)
        self._wake.set()

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    # --- firing -------------------------------------------------------------------------

    async def _fire_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._leading:
                await self._sleep(self.reload_interval)
                continue
            try:
                await self._tick()
            except Exception as exc:
                # The store or the broker is down: keep leading, try again shortly.
                log.warning("scheduler %s: %s: %s", self.id, type(exc).__name__, exc)
                self._fingerprint = None
                await self._sleep(1.0)

    async def _tick(self) -> None:
        term = self._term
        if self._loaded_term != term:
            await self._take_over()
            self._loaded_term = term
            next_reload = time.monotonic() + self.reload_interval
        else:
            next_reload = self._next_reload
        if time.monotonic() >= next_reload:
            await self._reload()
            next_reload = time.monotonic() + self.reload_interval
        self._next_reload = next_reload
        due = self._due(time.time())
        if due or self._unclaimed or self._unpublished:
            await self._fire(due)
        if time.time() - self._last_prune > _PRUNE_EVERY:
            self._last_prune = time.time()
            await self.store.prune_fires(older_than=time.time() - _KEEP_FIRES)
        wait = next_reload - time.monotonic()
        if self._heap:
            wait = min(wait, self._heap[0][0] - self.lead - time.time())
        if self._unclaimed or self._unpublished:
            wait = min(wait, 0.5)
        await self._sleep(max(wait, 0.0))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _due(self, now: float) -> list[tuple[_State, float]]:
        """Pop every occurrence to publish now; plan each schedule's next one."""
        due: list[tuple[_State, float]] = []
        while self._heap and self._heap[0][0] - self.lead <= now:
            fire, _, name, state = heapq.heappop(self._heap)
            if self._states.get(name) is not state or state.next_fire != fire:
                continue  # superseded by a reload
            due.append((state, fire))
            self._plan(state, state.timetable.next_after(fire))
        return due

    def _plan(self, state: _State, fire: float | None) -> None:
        state.next_fire = fire
        if fire is not None:
            self._sequence += 1
            heapq.heappush(self._heap, (fire, self._sequence, state.schedule.name, state))

    async def _take_over(self) -> None:
        """Just became leader: load everything, catch up misfires, recover lost publishes."""
        self._states.clear()
        self._heap.clear()
        self._unclaimed.clear()
        self._unpublished.clear()
        self._fingerprint = await self.store.fingerprint()
        now = time.time()
        catch_up: list[tuple[_State, float]] = []
        async for record in self.store.records():
            state = self._state_of(record)
            if state is None:
                continue
            base = max(record.last_fired_at or 0.0, record.updated_at)
            missed = state.timetable.catch_up(
                base, now - self.misfire_grace, limit=self.catch_up_limit
            )
            catch_up += [(state, fire) for fire in missed]
            self._plan(state, state.timetable.next_after(max(base, now - self.misfire_grace)))
        if catch_up:
            self.stats.caught_up += len(catch_up)
            log.info("scheduler %s: firing %d missed occurrence(s)", self.id, len(catch_up))
        self._unclaimed += catch_up
        await self._recover(now)
        self.stats.took_over_at = now  # the instant misfires were counted up to

    async def _recover(self, now: float) -> None:
        """Publish again what a previous leader claimed but never marked published.

        Same job id and idempotency key: if it had reached the broker after all, a
        worker with a store drops the second copy.
        """
        # Ours from an earlier term too: this process's in-memory retries were dropped.
        for claim in await self.store.unpublished(since=now - _RECOVER_WINDOW):
            state = self._states.get(claim.schedule)
            if state is not None:
                self._unpublished.append((state, claim))
                self.stats.recovered += 1

    async def _reload(self) -> None:
        """Reload schedules when the store's fingerprint says something changed."""
        fingerprint = await self.store.fingerprint()
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        now = time.time()
        seen = set()
        async for record in self.store.records():
            seen.add(record.name)
            current = self._states.get(record.name)
            if current is not None and current.version == record.updated_at:
                continue
            state = self._state_of(record)
            if state is None:
                self._states.pop(record.name, None)
                continue
            # A change, resume or new schedule: from its next occurrence (what fell
            # before the change is not caught up; the claims prevent doubles).
            base = max(record.last_fired_at or 0.0, record.updated_at, now - self.misfire_grace)
            self._plan(state, state.timetable.next_after(base))
        for name in set(self._states) - seen:
            del self._states[name]
        if len(self._heap) > 2 * len(self._states) + 64:
            # Superseded entries wait in the heap until their time; drop them now.
            self._heap = [
                entry
                for entry in self._heap
                if entry[3].next_fire == entry[0] and self._states.get(entry[2]) is entry[3]
            ]
            heapq.heapify(self._heap)

    def _state_of(self, record: ScheduleRecord) -> _State | None:
        if record.paused:
            return None
        state = _State(record.schedule, Timetable(record.schedule.spec), record.updated_at)
        self._states[record.name] = state
        return state

    async def _fire(self, due: list[tuple[_State, float]]) -> None:
        """Claim ``due`` (and retries) in one transaction, publish what was won."""
        pending, self._unclaimed = self._unclaimed + due, []
        namespace = self.app.topology.namespace
        claims = [
            Claim(
                state.schedule.name,
                fire,
                occurrence_id(namespace, state.schedule.name, fire),
                state.version,
                state.next_fire,
            )
            for state, fire in pending
        ]
        try:
            won = await self.store.claim(claims, by=self.id) if claims else []
        except Exception:
            self._unclaimed = pending + self._unclaimed
            raise
        self.stats.lost_claims += len(claims) - len(won)
        by_key = {(state.schedule.name, fire): state for state, fire in pending}
        to_publish = [(by_key[(c.schedule, c.fire_at)], c) for c in won] + self._unpublished
        self._unpublished = []
        published: list[Claim] = []
        for start in range(0, len(to_publish), _PUBLISH_CHUNK):
            chunk = to_publish[start : start + _PUBLISH_CHUNK]
            outcomes = await asyncio.gather(
                *(self._publish(state, claim) for state, claim in chunk), return_exceptions=True
            )
            for (state, claim), outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    self.stats.publish_failures += 1
                    log.warning(
                        "scheduler %s: publishing %s@%s failed (%s); retrying",
                        self.id,
                        claim.schedule,
                        utc_iso(claim.fire_at),
                        outcome,
                    )
                    self._unpublished.append((state, claim))
                else:
                    published.append(claim)
                    self.stats.fired += 1
                    counts = self.stats.fired_by_schedule
                    counts[claim.schedule] = counts.get(claim.schedule, 0) + 1
        await self.store.mark_published(published)

    async def _publish(self, state: _State, claim: Claim) -> None:
        schedule = state.schedule
        fire_iso = utc_iso(claim.fire_at)
        labels = {**(schedule.labels or {}), "schedule": schedule.name, "fire_at": fire_iso}
        options: dict[str, Any] = {
            "job_id": claim.job_id,
            "at": state.timetable.jittered(claim.fire_at),
            "labels": labels,
            "idempotency_key": f"schedule:{schedule.name}@{fire_iso}",
        }
        if schedule.queue is not None:
            options["queue"] = schedule.queue
        if schedule.priority is not None:
            options["priority"] = schedule.priority
        if schedule.user is not None:
            options["user"] = schedule.user
        await self.app.enqueue(schedule.job, schedule.data, **options)


async def _first(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
