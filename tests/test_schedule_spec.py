"""Schedule maths with fixed clocks: DST in Europe/Berlin and America/New_York, misfires,
jitter, and the errors a bad definition gets. Expected instants are computed by hand."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from amqp_jobs import JobApp
from amqp_jobs.errors import ConfigurationError
from amqp_jobs.scheduling import ScheduleSpec, Timetable
from amqp_jobs.scheduling.registry import add_repeating


def utc(text: str) -> float:
    """'2026-03-29 01:30' (UTC) as Unix seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def fires(cron: str, zone: str, start: str, end: str) -> list[float]:
    return list(Timetable(ScheduleSpec(cron=cron, timezone=zone)).between(utc(start), utc(end)))


def per_utc_hour(instants: list[float]) -> Counter[str]:
    return Counter(datetime.fromtimestamp(i, UTC).strftime("%m-%d %H") for i in instants)


# --- Europe/Berlin: spring 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC) ----------------


def test_nonexistent_wall_time_fires_once_at_the_shifted_instant() -> None:
    # Given 02:30 daily in Berlin; on 2026-03-29 02:30 does not exist.
    # Then it fires once that day, at 02:30 on the old offset (+01:00) = 01:30 UTC
    # (03:30 CEST), the day before at 01:30 UTC (CET) and the day after at 00:30 UTC.
    assert fires("30 2 * * *", "Europe/Berlin", "2026-03-27 12:00", "2026-03-30 12:00") == [
        utc("2026-03-28 01:30"),
        utc("2026-03-29 01:30"),
        utc("2026-03-30 00:30"),
    ]


def test_hourly_across_the_spring_gap_fires_once_per_utc_hour() -> None:
    # The local day has 23 hours: 00:00..01:00 CET, then 03:00.. CEST. The gap's 02:00
    # maps to 01:00 UTC, which is also 03:00 CEST: one fire, not two.
    instants = fires("0 * * * *", "Europe/Berlin", "2026-03-28 23:59", "2026-03-29 23:00")
    assert instants == [utc("2026-03-29 00:00") + 3600 * h for h in range(24)]
    assert set(per_utc_hour(instants).values()) == {1}


def test_quarter_hourly_across_the_spring_gap() -> None:
    instants = fires("*/15 * * * *", "Europe/Berlin", "2026-03-28 23:59:59", "2026-03-29 02:59")
    assert instants == [utc("2026-03-29 00:00") + 900 * k for k in range(12)]


def test_a_fire_inside_the_gap_is_never_skipped_from_just_before_it() -> None:
    timetable = Timetable(ScheduleSpec(cron="30 2 * * *", timezone="Europe/Berlin"))
    # From 00:59:59 UTC (01:59:59 CET), from inside the gap's instant range, and just after.
    assert timetable.next_after(utc("2026-03-29 00:59:59")) == utc("2026-03-29 01:30")
    assert timetable.next_after(utc("2026-03-29 01:10")) == utc("2026-03-29 01:30")
    assert timetable.next_after(utc("2026-03-29 01:30")) == utc("2026-03-30 00:30")


# --- Europe/Berlin: autumn 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC) ----------------


def test_ambiguous_wall_time_fires_once() -> None:
    # 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET): fire the first only.
    assert fires("30 2 * * *", "Europe/Berlin", "2026-10-23 12:00", "2026-10-26 12:00") == [
        utc("2026-10-24 00:30"),
        utc("2026-10-25 00:30"),
        utc("2026-10-26 01:30"),
    ]


def test_hourly_across_the_autumn_overlap_fires_once_per_utc_hour() -> None:
    # The local day has 25 hours; 02:00 happens twice (00:00 and 01:00 UTC): both fire.
    instants = fires("0 * * * *", "Europe/Berlin", "2026-10-24 21:59", "2026-10-25 22:59")
    assert instants == [utc("2026-10-24 22:00") + 3600 * h for h in range(25)]
    assert set(per_utc_hour(instants).values()) == {1}


def test_fixed_hours_in_the_overlap_fire_once_each() -> None:
    # Hours 1-3 at :00 -> 01:00 CEST (23:00Z), 02:00 CEST (00:00Z), 03:00 CET (02:00Z);
    # the second 02:00 (01:00Z, CET) does not fire again.
    assert fires("0 1-3 * * *", "Europe/Berlin", "2026-10-24 20:00", "2026-10-25 12:00") == [
        utc("2026-10-24 23:00"),
        utc("2026-10-25 00:00"),
        utc("2026-10-25 02:00"),
    ]


def test_per_second_cron_across_both_transitions_fires_every_utc_second() -> None:
    timetable = Timetable(ScheduleSpec(cron="* * * * * *", timezone="Europe/Berlin"))
    for start in ("2026-03-29 00:30", "2026-10-25 00:30"):
        instants = list(timetable.between(utc(start), utc(start) + 3600))
        assert instants == [utc(start) + s for s in range(1, 3601)]


# --- America/New_York: spring 2026-03-08 07:00 UTC, autumn 2026-11-01 06:00 UTC -----------


def test_new_york_spring_and_autumn() -> None:
    # 02:30 on 2026-03-08 does not exist: 02:30 EST (-05:00) = 07:30 UTC (03:30 EDT).
    assert fires("30 2 * * *", "America/New_York", "2026-03-07 12:00", "2026-03-09 12:00") == [
        utc("2026-03-08 07:30"),
        utc("2026-03-09 06:30"),
    ]
    # 01:30 on 2026-11-01 happens twice (05:30 and 06:30 UTC): once, the first.
    assert fires("30 1 * * *", "America/New_York", "2026-10-31 12:00", "2026-11-02 12:00") == [
        utc("2026-11-01 05:30"),
        utc("2026-11-02 06:30"),
    ]


def test_hourly_new_york_across_both_transitions() -> None:
    spring = fires("0 * * * *", "America/New_York", "2026-03-08 02:59", "2026-03-08 10:00")
    assert spring == [utc("2026-03-08 03:00") + 3600 * h for h in range(8)]
    autumn = fires("0 * * * *", "America/New_York", "2026-11-01 02:59", "2026-11-01 10:00")
    assert autumn == [utc("2026-11-01 03:00") + 3600 * h for h in range(8)]


def test_yearly_and_monthly_expressions_cross_several_changes() -> None:
    # Midnight on March 29 each year; 2027 and 2028 are CEST days (DST began earlier).
    assert fires("0 0 29 3 *", "Europe/Berlin", "2026-05-01 00:00", "2028-05-01 00:00") == [
        utc("2027-03-28 22:00"),
        utc("2028-03-28 22:00"),
    ]
    monthly = fires("0 0 1 * *", "Europe/Berlin", "2026-09-15 00:00", "2026-12-15 00:00")
    assert monthly == [utc("2026-09-30 22:00"), utc("2026-10-31 23:00"), utc("2026-11-30 23:00")]


def test_every_is_elapsed_utc_time() -> None:
    # every hour, across Berlin's autumn change: exactly 3600 s apart, on UTC hours.
    spec = ScheduleSpec.of(every=timedelta(hours=1), timezone="Europe/Berlin")
    instants = list(Timetable(spec).between(utc("2026-10-24 22:30"), utc("2026-10-25 04:30")))
    assert instants == [utc("2026-10-24 23:00") + 3600 * h for h in range(6)]
    every_second = Timetable(ScheduleSpec.of(every=1))
    assert every_second.next_after(utc("2026-01-01 00:00") + 0.4) == utc("2026-01-01 00:00:01")
    assert every_second.next_after(utc("2026-01-01 00:00:01")) == utc("2026-01-01 00:00:02")


# --- misfire policies and jitter ------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("once", ["2026-01-01 00:05"]),
        (
            "all",
            [
                "2026-01-01 00:01",
                "2026-01-01 00:02",
                "2026-01-01 00:03",
                "2026-01-01 00:04",
                "2026-01-01 00:05",
            ],
        ),
        ("skip", []),
    ],
)
def test_misfire_policies(policy: str, expected: list[str]) -> None:
    # Given a per-minute schedule last fired at 00:00 and a scheduler back at 00:05:30,
    timetable = Timetable(ScheduleSpec.of(cron="* * * * *", misfire=policy))
    # then what it fires now follows the policy, and it goes on at 00:06 in every case.
    assert timetable.catch_up(utc("2026-01-01 00:00"), utc("2026-01-01 00:05:30")) == [
        utc(t) for t in expected
    ]
    assert timetable.next_after(utc("2026-01-01 00:05:30")) == utc("2026-01-01 00:06")


def test_misfire_all_keeps_the_latest_up_to_the_limit_and_nothing_when_none_missed() -> None:
    timetable = Timetable(ScheduleSpec.of(cron="* * * * * *", misfire="all"))
    base = utc("2026-01-01 00:00")
    caught = timetable.catch_up(base, base + 7 * 86_400, limit=10)  # a week down, per second
    assert caught == [base + 7 * 86_400 - 9 + k for k in range(10)]
    assert timetable.catch_up(base, base + 0.5) == []
    once = Timetable(ScheduleSpec.of(cron="0 0 * * *", misfire="once"))
    assert once.catch_up(base, base + 30 * 86_400 + 5) == [base + 30 * 86_400]


def test_jitter_stays_within_bounds() -> None:
    timetable = Timetable(ScheduleSpec.of(every=60, jitter=5))
    rng = random.Random(1)
    values = [timetable.jittered(1000.0, rng) - 1000.0 for _ in range(1000)]
    assert 0 <= min(values) < 0.1 and 4.9 < max(values) <= 5
    assert Timetable(ScheduleSpec.of(every=60)).jittered(1000.0) == 1000.0


# --- definition errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 * * * *'"),
        ({"cron": "* * *"}, "has 3 fields"),
        ({"cron": "0 0 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({}, "exactly one of cron"),
        ({"cron": "0 0 * * *", "every": timedelta(minutes=5)}, "not both"),
        ({"every": timedelta(milliseconds=10)}, "too short"),
        ({"cron": "0 0 * * *", "misfire": "sometimes"}, "misfire='sometimes'"),
        ({"every": 60, "jitter": -1}, "jitter=-1"),
    ],
)
def test_bad_specs_fail_at_definition(settings: dict[str, object], message: str) -> None:
    app = JobApp(namespace="t_spec")

    @app.job(name="maintenance.cleanup")
    async def cleanup() -> None: ...

    with pytest.raises(ConfigurationError, match=message.replace("*", r"\*")):
        app.schedule("nightly", "maintenance.cleanup", **settings)
    assert app.schedules == {}


def test_unknown_job_or_setting_or_bad_data_fail_at_definition() -> None:
    app = JobApp(namespace="t_spec")

    @app.job(name="report.send")
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError, match=r"job 'report\.sned', which is not registered"):
        app.schedule("daily", "report.sned", cron="0 8 * * *")
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) \['crn'\]"):
        app.schedule("daily", "report.send", crn="0 8 * * *")
    with pytest.raises(ConfigurationError, match=r"input of job 'report\.send' is invalid"):
        app.schedule("daily", "report.send", cron="0 8 * * *", data={"too": "x"})
    schedule = app.schedule(
        "daily", "report.send", cron="0 8 * * *", timezone="Europe/Berlin", data={"to": "a@b"}
    )
    assert app.schedules == {"daily": schedule}
    assert schedule.spec == ScheduleSpec(cron="0 8 * * *", timezone="Europe/Berlin")
    with pytest.raises(ConfigurationError, match="already defined"):
        app.schedule("daily", "report.send", cron="0 9 * * *", data={"to": "a@b"})


async def test_repeat_validates_like_schedule() -> None:
    app = JobApp(namespace="t_spec")

    @app.job(name="maintenance.cleanup")
    async def cleanup() -> None: ...

    with pytest.raises(ConfigurationError, match="unknown time zone"):
        await app.queue("default").add(
            "maintenance.cleanup", repeat={"cron": "0 0 * * *", "timezone": "Nowhere/Land"}
        )
    with pytest.raises(ConfigurationError, match="not registered"):
        await add_repeating(app, "default", "maintenance.nope", None, repeat={"every": 60})
    with pytest.raises(ConfigurationError, match="needs a job store"):
        await app.queue("default").add("maintenance.cleanup", repeat={"cron": "0 0 * * *"})
    with pytest.raises(ConfigurationError, match=r"cannot be used with repeat="):
        await app.queue("default").add("maintenance.cleanup", repeat={"cron": "0 0 * * *"}, delay=5)


# --- against a brute-force reference -------------------------------------------------------


def reference(cron: str, zone_name: str, start: float, end: float) -> list[float]:
    """The rules, applied minute by minute: each UTC minute whose wall time matches fires,
    except the second pass of a repeated wall time when the hour field is not '*'; each
    matching wall time skipped by a spring change fires at its old-offset instant."""
    from zoneinfo import ZoneInfo

    from croniter import croniter  # type: ignore[import-untyped]

    zone = ZoneInfo(zone_name)
    every_hour = cron.split()[1] == "*"
    found: set[float] = set()
    minute = start - start % 60
    previous: datetime | None = None
    while minute <= end + 7200:
        wall = datetime.fromtimestamp(minute, zone)
        naive = wall.replace(tzinfo=None)
        if croniter.match(cron, naive) and (wall.fold == 0 or every_hour):
            found.add(minute)
        if previous is not None and naive - previous > timedelta(minutes=1):
            # The clock jumped: the wall times in between do not exist. Each that
            # matches fires at its old-offset instant (PEP 495 fold=0).
            ghost = previous + timedelta(minutes=1)
            while ghost < naive:
                if croniter.match(cron, ghost):
                    found.add(ghost.replace(tzinfo=zone).timestamp())
                ghost += timedelta(minutes=1)
        previous = naive
        minute += 60
    return sorted(f for f in found if start < f <= end)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    "cron", ["30 2 * * *", "0 * * * *", "*/7 * * * *", "15 1-3 * * *", "* 2 * * *", "45 */2 * * *"]
)
def test_matches_a_brute_force_reference_around_every_2026_change(cron: str, zone: str) -> None:
    timetable = Timetable(ScheduleSpec(cron=cron, timezone=zone))
    changes = {
        "Europe/Berlin": ["2026-03-29 01:00", "2026-10-25 01:00"],
        "America/New_York": ["2026-03-08 07:00", "2026-11-01 06:00"],
        # A 30-minute shift: 02:00 -> 01:30 in April, 02:00 -> 02:30 in October.
        "Australia/Lord_Howe": ["2026-04-04 15:00", "2026-10-03 15:30"],
    }[zone]
    for change in changes:
        start, end = utc(change) - 6 * 3600, utc(change) + 6 * 3600
        assert list(timetable.between(start, end)) == reference(cron, zone, start, end)
