"""Schedules in the job store: add, change, pause, resume, delete, list; and the claims.

Every change of a definition (or of ``paused``) bumps the row's ``updated_at``; a
scheduler notices a change by the cheap fingerprint ``(count, max, sum)`` of those
stamps (a deletion lowers the count, any edit changes the sum) and reloads.

Occurrences are claimed by INSERTing ``(schedule, fire_at)`` into
``amqp_jobs_schedule_fires``, whose primary key lets exactly one insert succeed: only
that scheduler publishes the occurrence.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from amqp_jobs.errors import ConfigurationError
from amqp_jobs.scheduling.spec import Schedule, ScheduleSpec, Timetable
from amqp_jobs.store import JobStore
from amqp_jobs.store.schema_scheduling import schedule_fires, schedules


class UnknownScheduleError(ConfigurationError):
    """No schedule has that name."""


class ScheduleExistsError(ConfigurationError):
    """A schedule with that name already exists."""


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule as the store holds it, with its run-time state."""

    schedule: Schedule
    origin: str
    paused: bool
    next_fire_at: float | None
    last_fired_at: float | None
    created_at: float
    updated_at: float

    @property
    def name(self) -> str:
        """The schedule's name."""
        return self.schedule.name

    def upcoming(self, now: float | None = None) -> float | None:
        """When it fires next (None while paused): the leader's plan if it has one
        that is still ahead, else computed from the spec."""
        if self.paused:
            return None
        now = time.time() if now is None else now
        if self.next_fire_at is not None and self.next_fire_at > now:
            return self.next_fire_at
        return Timetable(self.schedule.spec).next_after(now)


@dataclass(frozen=True, slots=True)
class Claim:
    """One occurrence a scheduler wants to fire.

    ``version`` is the ``updated_at`` of the definition it was computed from: if the
    schedule changed, was paused or deleted since, the claim is refused.
    """

    schedule: str
    fire_at: float
    job_id: str
    version: float
    next_fire_at: float | None = None


_SETTINGS = (
    "job",
    "queue",
    "cron",
    "every",
    "timezone",
    "misfire",
    "jitter",
    "data",
    "priority",
    "user",
    "labels",
)


class ScheduleStore:
    """Schedule persistence on a :class:`~amqp_jobs.store.JobStore` (SQLite or PostgreSQL)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    # --- definitions -------------------------------------------------------------------

    async def add(self, schedule: Schedule, *, origin: str = "store") -> ScheduleRecord:
        """Store a new schedule; :class:`ScheduleExistsError` if the name is taken."""
        engine = await self.store.engine()
        now = time.time()
        statement = (
            self.store.insert()(schedules)
            .values(**_row(schedule), origin=origin, paused=False, created_at=now, updated_at=now)
            .on_conflict_do_nothing()
        )
        async with engine.begin() as connection:
            created = await connection.execute(statement)
        if created.rowcount != 1:
            raise ScheduleExistsError(
                f"a schedule named {schedule.name!r} already exists; change or delete it"
            )
        return await self._require(schedule.name)

    async def upsert(self, schedule: Schedule, *, origin: str = "store") -> ScheduleRecord:
        """Store ``schedule`` under its name, replacing its definition if it differs.

        Paused state, fire times and ``created_at`` are kept; ``updated_at`` moves only
        if something changed (so syncing unchanged in-code schedules at every scheduler
        start does not hide their misfires).
        """
        existing = await self.get(schedule.name)
        if existing is None:
            try:
                return await self.add(schedule, origin=origin)
            except ScheduleExistsError:  # another scheduler synced it just now
                existing = await self._require(schedule.name)
        if _same(existing.schedule, schedule) and existing.origin == origin:
            return existing
        engine = await self.store.engine()
        async with engine.begin() as connection:
            await connection.execute(
                schedules.update()
                .where(schedules.c.name == schedule.name)
                .values(**_row(schedule), origin=origin, next_fire_at=None, updated_at=time.time())
            )
        return await self._require(schedule.name)

    async def change(self, name: str, **settings: Any) -> ScheduleRecord:
        """Change some of a schedule's settings (``cron``, ``every``, ``timezone``,
        ``data``, ``misfire``, ``jitter``, ``queue``, ``priority``, ``user``, ``labels``,
        ``job``); giving ``cron`` drops ``every`` and the other way round."""
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise ConfigurationError(
                f"unknown schedule setting(s) {sorted(unknown)}; known: {', '.join(_SETTINGS)}"
            )
        current = (await self._require(name)).schedule
        merged = {**current.spec.as_dict(), **settings}
        if "cron" in settings and settings["cron"] is not None:
            merged["every"] = None
        if "every" in settings and settings["every"] is not None:
            merged["cron"] = None
        schedule = Schedule(
            name=name,
            job=settings.get("job", current.job),
            spec=ScheduleSpec.of(
                cron=merged["cron"],
                every=merged["every"],
                timezone=merged["timezone"],
                misfire=merged["misfire"],
                jitter=merged["jitter"],
            ),
            queue=settings.get("queue", current.queue),
            data=settings.get("data", current.data),
            priority=settings.get("priority", current.priority),
            user=settings.get("user", current.user),
            labels=settings.get("labels", current.labels),
        )
        values = _row(schedule)
        del values["name"]
        await self._update(name, **values, next_fire_at=None)
        return await self._require(name)

    async def pause(self, name: str) -> ScheduleRecord:
        """Stop firing ``name`` until :meth:`resume`."""
        await self._update(name, paused=True, next_fire_at=None)
        return await self._require(name)

    async def resume(self, name: str) -> ScheduleRecord:
        """Fire ``name`` again from its next occurrence (what fell while paused is not
        caught up: the resume counts as the last definition change)."""
        await self._update(name, paused=False, next_fire_at=None)
        return await self._require(name)

    async def delete(self, name: str) -> None:
        """Delete ``name`` and its claims; :class:`UnknownScheduleError` if there is none."""
        engine = await self.store.engine()
        async with engine.begin() as connection:
            deleted = await connection.execute(schedules.delete().where(schedules.c.name == name))
            await connection.execute(
                schedule_fires.delete().where(schedule_fires.c.schedule == name)
            )
        if deleted.rowcount != 1:
            raise UnknownScheduleError(f"no schedule named {name!r}")

    async def get(self, name: str) -> ScheduleRecord | None:
        """One schedule, or None."""
        engine = await self.store.engine()
        async with engine.connect() as connection:
            row = (
                await connection.execute(sa.select(schedules).where(schedules.c.name == name))
            ).first()
        return None if row is None else _record(row)

    async def list(self) -> builtins.list[ScheduleRecord]:
        """Every schedule, by name."""
        engine = await self.store.engine()
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.select(schedules).order_by(schedules.c.name))).all()
        return [_record(row) for row in rows]

    async def records(self) -> AsyncIterator[ScheduleRecord]:
        """Every schedule, streamed by name (a scheduler loading 10,000 does not hold
        all the rows and all the records at once)."""
        engine = await self.store.engine()
        async with engine.connect() as connection:
            rows = await connection.stream(
                sa.select(schedules).order_by(schedules.c.name).execution_options(yield_per=500)
            )
            async for row in rows:
                yield _record(row)

    async def fingerprint(self) -> tuple[int, float, int]:
        """``(count, max, sum)`` of ``updated_at``: changes whenever any schedule does.

        The sum is of whole milliseconds, so it is exact (a float sum of 10,000 stamps
        would hide a change of a few milliseconds, and its rounding may depend on the
        order PostgreSQL adds them in).
        """
        engine = await self.store.engine()
        stamp = schedules.c.updated_at
        millis = sa.cast(stamp * 1000, sa.BigInteger)
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(sa.func.count(), sa.func.max(stamp), sa.func.sum(millis))
                )
            ).one()
        return int(row[0]), float(row[1] or 0.0), int(row[2] or 0)

    # --- claims -------------------------------------------------------------------------

    async def claim(self, claims: Sequence[Claim], *, by: str) -> builtins.list[Claim]:
        """Claim occurrences in one transaction; return those this caller won.

        For each: the schedule must still be at ``version`` and not paused (a
        conditional update that also records ``last_fired_at``/``next_fire_at``), then
        the INSERT of ``(schedule, fire_at)`` decides; losing it means another
        scheduler fires that occurrence.
        """
        if not claims:
            return []
        engine = await self.store.engine()
        insert = self.store.insert()
        now = time.time()
        won: builtins.list[Claim] = []
        async with engine.begin() as connection:
            for claim in claims:
                current = await connection.execute(
                    schedules.update()
                    .where(
                        schedules.c.name == claim.schedule,
                        schedules.c.updated_at == claim.version,
                        schedules.c.paused == sa.false(),
                    )
                    .values(
                        last_fired_at=sa.case(
                            (
                                sa.or_(
                                    schedules.c.last_fired_at.is_(None),
                                    schedules.c.last_fired_at < claim.fire_at,
                                ),
                                claim.fire_at,
                            ),
                            else_=schedules.c.last_fired_at,
                        ),
                        next_fire_at=claim.next_fire_at,
                    )
                )
                if current.rowcount != 1:
                    continue  # changed, paused or deleted since it was planned
                inserted = await connection.execute(
                    insert(schedule_fires)
                    .values(
                        schedule=claim.schedule,
                        fire_at=claim.fire_at,
                        job_id=claim.job_id,
                        claimed_by=by,
                        claimed_at=now,
                    )
                    .on_conflict_do_nothing()
                )
                if inserted.rowcount == 1:
                    won.append(claim)
        return won

    async def mark_published(self, claims: Sequence[Claim]) -> None:
        """Record that these claimed occurrences reached the broker."""
        if not claims:
            return
        engine = await self.store.engine()
        now = time.time()
        async with engine.begin() as connection:
            for claim in claims:
                await connection.execute(
                    schedule_fires.update()
                    .where(
                        schedule_fires.c.schedule == claim.schedule,
                        schedule_fires.c.fire_at == claim.fire_at,
                    )
                    .values(published_at=now)
                )

    async def unpublished(self, *, since: float, not_by: str | None = None) -> builtins.list[Claim]:
        """Claims made since ``since`` (by schedulers other than ``not_by``) and never
        marked published: their scheduler died between claiming and publishing, or
        just after."""
        engine = await self.store.engine()
        query = sa.select(
            schedule_fires.c.schedule, schedule_fires.c.fire_at, schedule_fires.c.job_id
        ).where(
            schedule_fires.c.published_at.is_(None),
            schedule_fires.c.claimed_at >= since,
        )
        if not_by is not None:
            query = query.where(schedule_fires.c.claimed_by != not_by)
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [Claim(row.schedule, float(row.fire_at), row.job_id, 0.0) for row in rows]

    async def fires(self, name: str) -> builtins.list[tuple[float, str, str, float | None]]:
        """``(fire_at, job_id, claimed_by, published_at)`` of each claimed occurrence."""
        engine = await self.store.engine()
        query = (
            sa.select(
                schedule_fires.c.fire_at,
                schedule_fires.c.job_id,
                schedule_fires.c.claimed_by,
                schedule_fires.c.published_at,
            )
            .where(schedule_fires.c.schedule == name)
            .order_by(schedule_fires.c.fire_at)
        )
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [(float(r[0]), r[1], r[2], None if r[3] is None else float(r[3])) for r in rows]

    async def prune_fires(self, *, older_than: float) -> int:
        """Delete claims of occurrences before ``older_than``; return how many."""
        engine = await self.store.engine()
        async with engine.begin() as connection:
            result = await connection.execute(
                schedule_fires.delete().where(schedule_fires.c.fire_at < older_than)
            )
        return int(result.rowcount or 0)

    # --- helpers ------------------------------------------------------------------------

    async def _update(self, name: str, **values: Any) -> None:
        engine = await self.store.engine()
        async with engine.begin() as connection:
            result = await connection.execute(
                schedules.update()
                .where(schedules.c.name == name)
                .values(**values, updated_at=time.time())
            )
        if result.rowcount != 1:
            raise UnknownScheduleError(f"no schedule named {name!r}")

    async def _require(self, name: str) -> ScheduleRecord:
        record = await self.get(name)
        if record is None:
            raise UnknownScheduleError(f"no schedule named {name!r}")
        return record


def _row(schedule: Schedule) -> dict[str, Any]:
    spec = schedule.spec
    return {
        "name": schedule.name,
        "job": schedule.job,
        "queue": schedule.queue,
        "cron": spec.cron,
        "every": spec.every,
        "timezone": spec.timezone,
        "misfire": spec.misfire,
        "jitter": spec.jitter,
        "data": schedule.data,
        "priority": schedule.priority,
        "user_context": schedule.user,
        "labels": schedule.labels,
    }


def _same(left: Schedule, right: Schedule) -> bool:
    # Compared as stored JSON, so a tuple in code equals the list read back.
    def canonical(schedule: Schedule) -> str:
        return json.dumps(schedule.definition(), sort_keys=True, default=str)

    return canonical(left) == canonical(right)


def _record(row: Any) -> ScheduleRecord:
    every = row.every
    spec = ScheduleSpec.of(
        cron=row.cron,
        every=None if every is None else timedelta(seconds=float(every)),
        timezone=row.timezone,
        misfire=row.misfire,
        jitter=float(row.jitter or 0.0),
    )
    schedule = Schedule(
        name=row.name,
        job=row.job,
        spec=spec,
        queue=row.queue,
        data=row.data,
        priority=row.priority,
        user=row.user_context,
        labels=row.labels,
    )
    return ScheduleRecord(
        schedule=schedule,
        origin=row.origin,
        paused=bool(row.paused),
        next_fire_at=None if row.next_fire_at is None else float(row.next_fire_at),
        last_fired_at=None if row.last_fired_at is None else float(row.last_fired_at),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
    )
