"""Schedule maths: when a cron or interval schedule fires, across daylight-saving changes.

Pure functions of a :class:`ScheduleSpec` and instants (Unix seconds); no I/O.

Cron expressions are matched on the schedule's local wall clock (croniter on naive
wall times, zoneinfo for the offsets), with these rules where the wall clock jumps:

- **Spring (a wall time that does not exist)**: it fires once, at the instant the wall
  time would have had on the offset before the jump (PEP 495 ``fold=0``): 02:30 in
  Europe/Berlin on 2026-03-29 is 01:30 UTC (03:30 CEST). It is never skipped, and when
  that instant is also a regular occurrence (``0 * * * *``: the gap's 02:00 is 03:00
  CEST) it fires once. croniter itself fires such times at the end of the gap (03:00
  CEST), which would move ``30 2 * * *`` by half an hour more than the clock moved.
- **Autumn (a wall time that happens twice)**: a fixed-hour expression (``30 2 * * *``)
  fires once, the first time; an expression that runs every hour (hour field ``*``,
  e.g. ``0 * * * *`` or ``*/15 * * * *``) follows the clock and fires in both, so each
  UTC hour gets its share. croniter fires both for every expression, i.e. a daily job
  twice. (Vixie cron draws the same line between fixed-time and wildcard-hour jobs.)

``every=timedelta(...)`` is elapsed time: occurrences are ``anchor + k * every`` in UTC
(``anchor`` defaults to the Unix epoch, so ``every=1h`` fires on each UTC hour), and
daylight saving does not touch them.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter  # type: ignore[import-untyped]

from amqp_jobs.errors import ConfigurationError

Misfire = Literal["once", "all", "skip"]
MISFIRE_POLICIES: tuple[str, ...] = ("once", "all", "skip")
MIN_INTERVAL = 1.0
"""The shortest ``every`` (seconds); cron's finest field is the second too."""

_NEAR = 3 * 3600.0
"""How close (seconds) a UTC-offset change must be to matter: more than any real DST
shift (at most 2 h), far less than the months between two changes of one zone."""
_EPOCH = datetime(1970, 1, 1)  # naive: wall times are handled as naive datetimes


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """When a schedule fires: ``cron`` or ``every`` (exactly one), and how it catches up.

    ``timezone`` is an IANA zone name for cron expressions (``every`` is UTC elapsed
    time and ignores it). ``misfire`` says what to do with occurrences missed while no
    scheduler ran: ``"once"`` fires the latest of them, ``"all"`` each, ``"skip"`` none.
    ``jitter`` adds 0..jitter random seconds to each fire (the occurrence keeps its
    identity; only the job starts later).
    """

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    misfire: Misfire = "once"
    jitter: float = 0.0
    anchor: float = 0.0

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(
                "a schedule needs exactly one of cron='...' or every=timedelta(...)"
                + (", not both" if self.cron is not None else "")
            )
        if self.cron is not None:
            _parse_cron(self.cron)
        if self.every is not None:
            if not isinstance(self.every, int | float) or not math.isfinite(self.every):
                raise ConfigurationError(f"every={self.every!r} is not a number of seconds")
            if self.every < MIN_INTERVAL:
                raise ConfigurationError(
                    f"every={self.every:g} s is too short; the shortest interval is "
                    f"{MIN_INTERVAL:g} s"
                )
        _zone(self.timezone)
        if self.misfire not in MISFIRE_POLICIES:
            raise ConfigurationError(
                f"misfire={self.misfire!r} is not one of {', '.join(MISFIRE_POLICIES)}"
            )
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < math.inf:
            raise ConfigurationError(f"jitter={self.jitter!r} must be zero or more seconds")

    @classmethod
    def of(
        cls,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: str | None = None,
        misfire: str | None = None,
        jitter: float | None = None,
    ) -> ScheduleSpec:
        """Build a spec from user settings (``every`` as a timedelta or seconds)."""
        if isinstance(every, timedelta):
            every = every.total_seconds()
        elif every is not None and not isinstance(every, int | float):
            raise ConfigurationError(f"every={every!r} must be a timedelta or seconds")
        return cls(
            cron=cron.strip() if isinstance(cron, str) else cron,
            every=None if every is None else float(every),
            timezone=timezone or "UTC",
            misfire=cast(Misfire, misfire or "once"),
            jitter=float(jitter or 0.0),
        )

    def describe(self) -> str:
        """A short human form: ``cron 0 0 * * * Europe/Berlin`` or ``every 300s``."""
        if self.cron is not None:
            return f"cron {self.cron} {self.timezone}"
        return f"every {self.every:g}s"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for hashing a stable name, or for showing)."""
        return {
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "misfire": self.misfire,
            "jitter": self.jitter,
        }


class Timetable:
    """The occurrences of one spec; each call is a few croniter steps.

    Parsed cron expressions live in a small shared cache rather than in each
    timetable (a parsed croniter is about 1.3 KB: 10,000 of them would be 13 MB of a
    scheduler's memory); one is re-positioned for each step, which is safe because no
    step awaits.
    """

    __slots__ = ("_all_hours", "_cron", "_every", "_zone", "spec")

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self._zone = _zone(spec.timezone)
        self._every = spec.every
        self._cron = spec.cron
        self._all_hours = False
        if spec.cron is not None:
            hours = _cached_cron(spec.cron).expanded[1]
            self._all_hours = hours == ["*"] or set(hours) >= set(range(24))

    # --- public -----------------------------------------------------------------------

    def next_after(self, instant: float) -> float:
        """The first occurrence strictly after ``instant`` (Unix seconds)."""
        if self._every is not None:
            steps = math.floor((instant - self.spec.anchor) / self._every) + 1
            fire = _ms(self.spec.anchor + steps * self._every)
            return fire if fire > instant else _ms(fire + self._every)
        fire = self._cron_next(instant)
        if not fire > instant:  # a guard: between() and the scheduler rely on progress
            raise AssertionError(f"{self.spec.describe()}: {fire} is not after {instant}")
        return fire

    def between(self, start: float, end: float, *, limit: int | None = None) -> Iterator[float]:
        """Occurrences in ``(start, end]``, ascending (at most ``limit`` of them)."""
        count = 0
        fire = self.next_after(start)
        while fire <= end and (limit is None or count < limit):
            yield fire
            count += 1
            fire = self.next_after(fire)

    def catch_up(self, base: float, now: float, *, limit: int = 1000) -> list[float]:
        """What to fire now for the occurrences in ``(base, now]`` nobody fired.

        ``"once"``: the latest; ``"all"``: each (the latest ``limit`` if there are
        more); ``"skip"``: none. The schedule then goes on with :meth:`next_after`
        ``now``.
        """
        if self.spec.misfire == "skip" or now <= base:
            return []
        return self._recent(base, now, 1 if self.spec.misfire == "once" else max(1, limit))

    def _recent(self, base: float, now: float, count: int) -> list[float]:
        """The latest ``count`` occurrences in ``(base, now]``, without walking from
        ``base`` (a per-second schedule down for a week has 600,000 of them): look back
        from ``now`` over a window that doubles until it holds enough or reaches base."""
        window = 1.0
        while True:
            start = max(base, now - window)
            found = list(self.between(start, now, limit=4 * count + 4))
            if len(found) > 4 * count:
                window /= 3  # overshot: a narrower window holds enough
                continue
            if len(found) >= count or start <= base:
                return found[-count:]
            window *= 2

    def jittered(self, fire: float, rng: random.Random | None = None) -> float:
        """``fire`` plus the spec's random jitter (0..jitter seconds)."""
        if self.spec.jitter <= 0:
            return fire
        return fire + (rng or random).uniform(0.0, self.spec.jitter)

    # --- cron ---------------------------------------------------------------------------

    def _offset(self, instant: float) -> float:
        offset = datetime.fromtimestamp(instant, self._zone).utcoffset()
        return 0.0 if offset is None else offset.total_seconds()

    def _wall_next(self, wall: float) -> float:
        """The first matching wall time (naive, as seconds) strictly after ``wall``."""
        assert self._cron is not None
        parsed = _cached_cron(self._cron)
        parsed.set_current(_EPOCH + timedelta(seconds=wall), force=True)
        following = cast(datetime, parsed.get_next(datetime))
        return (following - _EPOCH).total_seconds()

    def _change_near(
        self, instant: float, radius: float = _NEAR
    ) -> tuple[float, float, float] | None:
        """The UTC-offset change within ``radius`` of ``instant``: (when, old, new)."""
        low, high = instant - radius, instant + radius
        old, new = self._offset(low), self._offset(high)
        if old == new:
            return None
        return self._change_in(low, high, old), old, new

    def _change_in(self, low: float, high: float, old: float) -> float:
        # Bisection to the whole second where the offset stops being `old` (tzdata's
        # transitions are whole seconds).
        low, high = math.floor(low), math.ceil(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self._offset(middle) == old:
                low = middle
            else:
                high = middle
        return float(high)

    def _cron_next(self, instant: float) -> float:
        cursor = instant  # no occurrence lies in (instant, cursor]
        for _ in range(16):
            change = self._change_near(cursor)
            if change is not None:
                fire = self._next_across(cursor, *change)
                if fire <= change[0] + _NEAR:
                    return fire
                # Past this change's reach; the answer may sit near another change.
                cursor = change[0] + _NEAR
                continue
            offset = self._offset(cursor)
            fire = self._wall_next(cursor + offset) - offset
            if self._offset(fire) != offset:
                # An offset change lies between, far from both: no occurrence before
                # it (the first matching wall time is beyond), so look again from it.
                cursor = self._change_in(cursor, fire, offset) - 0.5
                continue
            near = self._change_near(fire, _NEAR / 2)
            if near is not None:
                # Step to just before `fire`, close enough to the change that the next
                # round handles it (`fire` itself is not passed over).
                cursor = max(cursor, min(fire - 0.5, near[0] - _NEAR / 2))
                continue
            return fire
        raise ConfigurationError(f"no occurrence of {self.spec.describe()} after {instant}")

    def _next_across(self, cursor: float, change: float, old: float, new: float) -> float:
        """The first occurrence after ``cursor``, with the offset going from ``old`` to
        ``new`` at ``change`` nearby."""
        if cursor < change:
            # Before the change: wall times on the old offset, up to the change.
            fire = self._wall_next(cursor + old) - old
            if fire < change:
                return fire
        candidates: list[float] = []
        if new > old:
            # The gap: wall times [change+old, change+new) do not exist; each fires at
            # its old-offset instant, inside [change, change + (new - old)).
            wall = self._wall_next(max(change + old - 0.5, cursor + old))
            if wall < change + new:
                candidates.append(wall - old)
            first_after = change + new
        else:
            # The overlap: wall times [change+new, change+old) happen again. They fired
            # on the old offset; every-hour expressions fire them a second time.
            first_after = change + new if self._all_hours else change + old
        wall = self._wall_next(max(first_after - 0.5, cursor + new))
        candidates.append(wall - new)
        return min(candidates)


def _ms(value: float) -> float:
    """Round to the millisecond, so every process computes the same occurrence keys."""
    return round(value, 3)


@functools.lru_cache(maxsize=512)
def _cached_cron(expression: str) -> croniter:
    return _parse_cron(expression)


def _parse_cron(expression: str) -> croniter:
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"cron={expression!r} is not a cron expression")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ConfigurationError(
            f"cron expression {expression!r} has {len(fields)} fields; give 5 "
            "(minute hour day month weekday) or 6 (plus seconds last)"
        )
    try:
        return croniter(expression, _EPOCH)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"bad cron expression {expression!r}: {exc}") from None


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"timezone={name!r} is not a time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def utc_iso(instant: float) -> str:
    """``instant`` as an ISO 8601 UTC time with milliseconds (occurrence keys, labels)."""
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring job: fire ``job`` with ``data`` at each occurrence of ``spec``.

    ``queue`` None means the job's own queue. ``priority``, ``user`` and ``labels`` are
    given to every job it publishes (each job also gets the labels ``schedule`` and
    ``fire_at``).
    """

    name: str
    job: str
    spec: ScheduleSpec
    queue: str | None = None
    data: Any = None
    priority: int | None = None
    user: dict[str, Any] | None = None
    labels: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 255:
            raise ConfigurationError(
                f"schedule name {self.name!r} must be a non-empty string of at most 255 characters"
            )
        if not isinstance(self.job, str) or not self.job:
            raise ConfigurationError(f"schedule {self.name!r}: job must be a job name")
        if self.labels is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise ConfigurationError(f"schedule {self.name!r}: labels must map str to str")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise ConfigurationError(f"schedule {self.name!r}: priority must be an integer")

    def definition(self) -> dict[str, Any]:
        """Everything that defines it, JSON-ready (compared to see if it changed)."""
        return {
            "job": self.job,
            "queue": self.queue,
            **self.spec.as_dict(),
            "data": self.data,
            "priority": self.priority,
            "user": self.user,
            "labels": self.labels,
        }
