"""Per-user preferences, typed by each app with a pydantic model.

An app defines what a preference is (``class Prefs(BaseModel): report_format: str =
"pdf"``); :class:`Preferences` keeps each user's choices in the store, per tenant.
Only what a user chose is stored: every other field follows the model's defaults, so
changing a default reaches everyone who never chose otherwise.

Writes are conditional on a version number (read, then write only if nobody wrote in
between, else try again), so two processes updating different fields of one user's
preferences never lose each other's change, on SQLite or PostgreSQL, without locks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

import pydantic
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from amqp_jobs.errors import AmqpJobsError, ConfigurationError
from amqp_jobs.store.database import JobStore
from amqp_jobs.store.schema_security import preferences as preferences_table

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

_NO_TENANT: Final = ""  # primary-key columns cannot be NULL
_MAX_ATTEMPTS: Final = 20
_MAX_ID_CHARS: Final = 255


class PreferencesError(AmqpJobsError):
    """Preferences that do not fit the app's model, or a user or tenant id that is unfit."""


class Preferences(Generic[ModelT]):
    """The preferences of each (user, tenant), as instances of ``model``.

    ``model`` must be constructible without arguments (every field has a default): that
    is what :meth:`get` returns for a user who chose nothing. ``namespace`` keeps the
    preferences of several apps sharing one store apart. Reads are cached for
    ``cache_ttl`` seconds (up to ``cache_size`` users); this object's own writes are
    seen at once, another process's within ``cache_ttl``.
    """

    def __init__(
        self,
        store: JobStore,
        model: type[ModelT],
        *,
        namespace: str = "default",
        cache_ttl: float = 5.0,
        cache_size: int = 1024,
    ) -> None:
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise ConfigurationError(f"preferences need a pydantic model class, not {model!r}")
        try:
            model()
        except pydantic.ValidationError as exc:
            missing = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
            raise ConfigurationError(
                f"preference model {model.__name__} needs a default for every field "
                f"(none for: {missing}); a user who chose nothing gets the defaults"
            ) from None
        self.store = store
        self.model = model
        self.namespace = _checked_id("namespace", namespace)
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._known = _field_names(model)

    async def get(self, user_id: str, tenant: str | None = None) -> ModelT:
        """The user's preferences: what they chose, the model's defaults elsewhere."""
        key = self._key(user_id, tenant)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return self._stored_model(key, cached[1])
        engine = await self.store.engine()
        async with engine.connect() as connection:
            row = await self._read(connection, key)
        chosen = {} if row is None else dict(row.value)
        self._remember(key, chosen)
        return self._stored_model(key, chosen)

    async def set(
        self, user_id: str, tenant: str | None, value: ModelT | Mapping[str, Any]
    ) -> ModelT:
        """Replace the user's preferences with ``value`` (a model, or a dict of fields).

        Fields not given follow the defaults. Raises :class:`PreferencesError` for an
        unknown field or a value that does not validate; nothing is stored then.
        """
        key = self._key(user_id, tenant)
        chosen = self._chosen(value)
        return await self._write(key, lambda _: chosen)

    async def update(self, user_id: str, tenant: str | None, **changes: Any) -> ModelT:
        """Change some preferences, keeping the others: ``update("u1", None, theme="dark")``."""
        key = self._key(user_id, tenant)
        self._check_names(changes)
        return await self._write(key, lambda stored: self._chosen({**stored, **changes}))

    async def delete(self, user_id: str, tenant: str | None = None) -> bool:
        """Forget the user's preferences (back to the defaults); whether any were stored."""
        key = self._key(user_id, tenant)
        engine = await self.store.engine()
        async with engine.begin() as connection:
            result = await connection.execute(preferences_table.delete().where(*self._match(key)))
        self._cache.pop(key, None)
        return bool(result.rowcount)

    # --- internals ----------------------------------------------------------------------

    def _key(self, user_id: str, tenant: str | None) -> tuple[str, str]:
        user = _checked_id("user id", user_id)
        if tenant is None:
            return user, _NO_TENANT
        return user, _checked_id("tenant", tenant)

    def _match(self, key: tuple[str, str]) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            preferences_table.c.namespace == self.namespace,
            preferences_table.c.user_id == key[0],
            preferences_table.c.tenant == key[1],
        )

    async def _read(self, connection: AsyncConnection, key: tuple[str, str]) -> Any:
        query = sa.select(preferences_table.c.value, preferences_table.c.version).where(
            *self._match(key)
        )
        return (await connection.execute(query)).first()

    def _check_names(self, values: Mapping[str, Any]) -> None:
        if self.model.model_config.get("extra") == "allow":
            return
        unknown = sorted(set(values) - self._known)
        if unknown:
            raise PreferencesError(
                f"unknown preference(s) {', '.join(map(repr, unknown))} for "
                f"{self.model.__name__}; known: {', '.join(sorted(self._known))}"
            )

    def _chosen(self, value: pydantic.BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        """The fields a user chose, validated, as JSON-ready values."""
        if isinstance(value, pydantic.BaseModel):
            if not isinstance(value, self.model):
                raise PreferencesError(
                    f"preferences must be a {self.model.__name__}, not a {type(value).__name__}"
                )
            # Re-validate: a model may have been built with model_construct or mutated.
            value = value.model_dump(mode="json", exclude_unset=True, by_alias=True)
        if not isinstance(value, Mapping):
            raise PreferencesError(
                f"preferences must be a {self.model.__name__} or a dict, not {type(value).__name__}"
            )
        self._check_names(value)
        model = self._validate(value)
        chosen = model.model_dump(mode="json", exclude_unset=True, by_alias=True)
        return dict(chosen)

    def _validate(self, value: Mapping[str, Any]) -> ModelT:
        try:
            return self.model.model_validate(dict(value))
        except pydantic.ValidationError as exc:
            raise PreferencesError(
                f"invalid preferences for {self.model.__name__}: {_problems(exc)}"
            ) from None

    def _stored_model(self, key: tuple[str, str], chosen: dict[str, Any]) -> ModelT:
        try:
            return self.model.model_validate(chosen)
        except pydantic.ValidationError as exc:
            raise PreferencesError(
                f"the stored preferences of user {key[0]!r} no longer fit "
                f"{self.model.__name__} ({_problems(exc)}); set() new ones or delete() them"
            ) from None

    async def _write(self, key: tuple[str, str], change: Any) -> ModelT:
        """Apply ``change(stored) -> chosen`` and write it, if nobody wrote since we read;
        else read again and retry."""
        engine = await self.store.engine()
        for _ in range(_MAX_ATTEMPTS):
            # Read outside the write transaction: on SQLite a transaction that reads and
            # then writes fails outright if another process wrote in between, while a
            # single conditional write just finds the version changed.
            async with engine.connect() as connection:
                row = await self._read(connection, key)
            stored = {} if row is None else dict(row.value)
            chosen: dict[str, Any] = change(stored)
            async with engine.begin() as connection:
                written = await self._store(
                    connection, key, chosen, None if row is None else row.version
                )
            if written:
                self._remember(key, chosen)
                return self._stored_model(key, chosen)
        raise PreferencesError(
            f"the preferences of user {key[0]!r} kept changing under this write "
            f"({_MAX_ATTEMPTS} attempts); try again"
        )

    async def _store(
        self,
        connection: AsyncConnection,
        key: tuple[str, str],
        chosen: dict[str, Any],
        version: int | None,
    ) -> bool:
        now = time.time()
        if version is None:
            inserted = await connection.execute(
                self.store.insert()(preferences_table)
                .values(
                    namespace=self.namespace,
                    user_id=key[0],
                    tenant=key[1],
                    value=chosen,
                    version=1,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )
            return bool(inserted.rowcount == 1)
        updated = await connection.execute(
            preferences_table.update()
            .where(*self._match(key), preferences_table.c.version == version)
            .values(value=chosen, version=version + 1, updated_at=now)
        )
        return bool(updated.rowcount == 1)

    def _remember(self, key: tuple[str, str], chosen: dict[str, Any]) -> None:
        if self.cache_ttl <= 0:
            return
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))  # the oldest entry
        self._cache[key] = (time.monotonic(), chosen)


def _field_names(model: type[pydantic.BaseModel]) -> frozenset[str]:
    names = set(model.model_fields)
    for field in model.model_fields.values():
        if isinstance(field.alias, str):
            names.add(field.alias)
    return frozenset(names)


def _checked_id(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PreferencesError(f"the {what} must be a non-empty string, not {value!r}")
    if len(value) > _MAX_ID_CHARS:
        raise PreferencesError(f"the {what} is longer than {_MAX_ID_CHARS} characters")
    return value


def _problems(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
        for err in exc.errors(include_url=False)[:5]
    )
