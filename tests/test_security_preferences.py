"""Per-user preferences typed by an app's pydantic model (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

import pydantic
import pytest

from amqp_jobs.errors import ConfigurationError
from amqp_jobs.security.preferences import Preferences, PreferencesError
from amqp_jobs.store import JobStore


class ReportPrefs(pydantic.BaseModel):
    """What a reporting app lets its users choose."""

    report_format: Literal["pdf", "csv", "xlsx"] = "pdf"
    page_size: int = pydantic.Field(default=50, ge=1, le=500)
    timezone: str = "UTC"
    notify: bool = True


async def test_a_user_who_chose_nothing_gets_the_defaults(
    make_store: Callable[[], JobStore],
) -> None:
    prefs = Preferences(make_store(), ReportPrefs)
    assert await prefs.get("u-1") == ReportPrefs()
    assert await prefs.get("u-1", "acme") == ReportPrefs()


async def test_set_get_update_delete(make_store: Callable[[], JobStore]) -> None:
    # Given a user who sets two preferences in tenant acme
    store = make_store()
    prefs = Preferences(store, ReportPrefs)
    saved = await prefs.set("u-1", "acme", {"report_format": "csv", "page_size": 20})

    # When they update one more, and the preferences are read by another process
    updated = await prefs.update("u-1", "acme", notify=False)
    elsewhere = await Preferences(make_store(), ReportPrefs).get("u-1", "acme")

    # Then what they chose is kept, the rest follows the defaults, per tenant
    assert saved == ReportPrefs(report_format="csv", page_size=20)
    assert updated == ReportPrefs(report_format="csv", page_size=20, notify=False)
    assert elsewhere == updated
    assert await prefs.get("u-1") == ReportPrefs()  # no tenant: another set of preferences
    assert await prefs.get("u-1", "globex") == ReportPrefs()
    assert await prefs.get("u-2", "acme") == ReportPrefs()

    # And set() replaces everything, delete() goes back to the defaults
    assert await prefs.set("u-1", "acme", ReportPrefs(timezone="Europe/Berlin")) == ReportPrefs(
        timezone="Europe/Berlin"
    )
    assert await prefs.delete("u-1", "acme") is True
    assert await prefs.delete("u-1", "acme") is False
    assert await prefs.get("u-1", "acme") == ReportPrefs()


async def test_only_chosen_fields_are_stored_so_new_defaults_reach_users(
    make_store: Callable[[], JobStore],
) -> None:
    # Given a user who chose only the format, under the first version of the model
    store = make_store()
    await Preferences(store, ReportPrefs).set("u-1", None, {"report_format": "xlsx"})

    # When the app later changes a default
    class ReportPrefsV2(ReportPrefs):
        page_size: int = 100

    # Then the user keeps their choice and gets the new default
    assert await Preferences(store, ReportPrefsV2).get("u-1") == ReportPrefsV2(
        report_format="xlsx", page_size=100
    )


async def test_invalid_preferences_are_refused_and_nothing_is_stored(
    make_store: Callable[[], JobStore],
) -> None:
    prefs = Preferences(make_store(), ReportPrefs)
    await prefs.set("u-1", None, {"page_size": 10})

    with pytest.raises(PreferencesError, match=r"report_format: Input should be 'pdf'"):
        await prefs.set("u-1", None, {"report_format": "docx"})
    with pytest.raises(PreferencesError, match=r"page_size: Input should be less than or"):
        await prefs.update("u-1", None, page_size=10_000)
    with pytest.raises(PreferencesError, match=r"unknown preference\(s\) 'colour'"):
        await prefs.update("u-1", None, colour="blue")
    with pytest.raises(PreferencesError, match="must be a ReportPrefs or a dict"):
        await prefs.set("u-1", None, ["pdf"])  # type: ignore[arg-type]
    with pytest.raises(PreferencesError, match="user id must be a non-empty string"):
        await prefs.get("")

    # A fresh reader (no cache) sees the last valid preferences
    assert await Preferences(prefs.store, ReportPrefs, cache_ttl=0).get("u-1") == ReportPrefs(
        page_size=10
    )


async def test_stored_preferences_that_no_longer_fit_the_model_say_so(
    make_store: Callable[[], JobStore],
) -> None:
    store = make_store()
    await Preferences(store, ReportPrefs).set("u-1", None, {"timezone": "Asia/Tokyo"})

    class Stricter(pydantic.BaseModel):
        timezone: Literal["UTC"] = "UTC"

    with pytest.raises(PreferencesError, match="no longer fit Stricter"):
        await Preferences(store, Stricter).get("u-1")


async def test_concurrent_updates_of_different_fields_are_all_kept(
    make_store: Callable[[], JobStore],
) -> None:
    # Given two processes (two stores) updating one user's preferences at the same time
    one = Preferences(make_store(), ReportPrefs, cache_ttl=0)
    two = Preferences(make_store(), ReportPrefs, cache_ttl=0)
    await one.set("u-1", None, {})
    await two.get("u-1")  # open the second store too

    # When each changes its own fields many times over
    await asyncio.gather(
        *(one.update("u-1", None, page_size=n) for n in range(1, 11)),
        *(two.update("u-1", None, timezone=f"Etc/GMT+{n}") for n in range(1, 11)),
        two.update("u-1", None, report_format="csv"),
    )

    # Then no update was lost to another: the last of each field, and the format, are kept
    final = await one.get("u-1")
    assert final.report_format == "csv"
    assert final.page_size in range(1, 11) and final.timezone.startswith("Etc/GMT+")


async def test_namespaces_keep_apps_apart(make_store: Callable[[], JobStore]) -> None:
    store = make_store()
    reports = Preferences(store, ReportPrefs, namespace="reports")
    other = Preferences(store, ReportPrefs, namespace="mail")
    await reports.set("u-1", None, {"report_format": "csv"})
    assert await other.get("u-1") == ReportPrefs()


async def test_a_model_without_defaults_is_refused(make_store: Callable[[], JobStore]) -> None:
    class NeedsEmail(pydantic.BaseModel):
        email: str

    with pytest.raises(ConfigurationError, match="needs a default for every field"):
        Preferences(make_store(), NeedsEmail)
