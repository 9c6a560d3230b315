"""User keys: random, versioned, stored wrapped by a key provider, cached unwrapped.

Every user (within a tenant) has one or more 32-byte keys, numbered from 1; the highest
is the current one, used for new data, and older versions stay readable so data sealed
before a rotation still opens. Keys are stored only wrapped by a :class:`KeyProvider`
(the :class:`MasterKey`, or a cloud KMS behind the same two methods), with a context that
binds tenant, user and version, so a wrapped key copied to another row does not unwrap.

:meth:`UserKeys.forget` destroys a user's keys (crypto-shredding) and leaves a tombstone,
after which every read of that user's keys raises :class:`KeyShreddedError` with the time.
Forgetting is final for that identity: new keys are never made for it again, so nothing
is encrypted for a user whose erasure was requested.

Unwrapped keys are cached per process (bounded LRU with a lifetime), so a worker does not
query the store per job. ``forget`` and ``rotate`` update this process's cache; other
processes keep using a cached key for at most ``cache_ttl`` seconds (a forgotten user's
jobs may still open there during that time; a rotated user's jobs keep being sealed with
the previous version, which remains readable). Call :meth:`UserKeys.invalidate` to drop
an entry sooner.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncConnection

from amqp_jobs.errors import ConfigurationError, StoreError
from amqp_jobs.security.encryption import KEY_BYTES, NONCE_BYTES, b64decode, b64encode, bind
from amqp_jobs.security.errors import DecryptionError, KeyShreddedError, UnknownKeyError
from amqp_jobs.store.database import JobStore
from amqp_jobs.store.schema_keys import forgotten_users, user_keys

MASTER_KEY_ENV = "AMQP_JOBS_MASTER_KEY"
"""The environment variable :meth:`MasterKey.from_env` reads by default."""

_BLOB_FORMAT = b"\x01"  # first byte of a MasterKey blob: lets a later format coexist
_MAX_ID_CHARS = 255  # the width of the key tables' tenant and user_id columns
_ROTATE_ATTEMPTS = 20

Identity = tuple[str, str]  # (tenant or "", user_id)


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps user keys: the master key, or a cloud KMS.

    ``context`` is associated data: ``unwrap`` must fail unless given the same context
    ``wrap`` was. Both are called in a worker thread, so a network KMS may block.
    """

    def wrap(self, key: bytes, context: bytes) -> bytes:
        """Encrypt ``key`` bound to ``context``."""
        ...

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Decrypt what :meth:`wrap` returned, raising if ``blob`` or ``context`` differ."""
        ...


class MasterKey(KeyProvider):
    """A :class:`KeyProvider` holding one 32-byte AES-256-GCM master key.

    Its text form is URL-safe base64; keep it out of the database (environment variable,
    secret file or secret manager): the database and the master key together open every
    user key.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ConfigurationError(f"a master key must be {KEY_BYTES} bytes, not {size}")
        self._cipher = AESGCM(bytes(key))
        self._raw = bytes(key)

    @classmethod
    def generate(cls) -> MasterKey:
        """A new random master key (store :meth:`to_text` somewhere safe)."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, source: str = "the master key") -> MasterKey:
        """Parse the URL-safe base64 of 32 bytes (as :meth:`to_text` writes)."""
        try:
            raw = b64decode(text.strip(), source)
        except ValueError as exc:
            raise ConfigurationError(f"{exc}: expected the text of MasterKey.to_text()") from None
        if len(raw) != KEY_BYTES:
            raise ConfigurationError(
                f"{source} decodes to {len(raw)} bytes; a master key is {KEY_BYTES} bytes "
                "(generate one with MasterKey.generate().to_text())"
            )
        return cls(raw)

    @classmethod
    def from_env(cls, var: str = MASTER_KEY_ENV) -> MasterKey:
        """The master key in environment variable ``var``."""
        text = os.environ.get(var)
        if not text:
            raise ConfigurationError(
                f"environment variable {var} is not set: it must hold the master key "
                "(URL-safe base64 of 32 bytes; generate one with MasterKey.generate().to_text())"
            )
        return cls.from_text(text, source=f"environment variable {var}")

    @classmethod
    def from_file(cls, path: str | Path) -> MasterKey:
        """The master key written in the file at ``path`` (surrounding whitespace ignored)."""
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"cannot read the master key file {str(path)!r}: {exc}"
            ) from None
        return cls.from_text(text, source=f"master key file {str(path)!r}")

    def to_text(self) -> str:
        """The key as URL-safe base64: a secret."""
        return b64encode(self._raw)

    def wrap(self, key: bytes, context: bytes) -> bytes:
        """``format byte || nonce || AES-GCM(master key, key, context)``."""
        nonce = os.urandom(NONCE_BYTES)
        return _BLOB_FORMAT + nonce + self._cipher.encrypt(nonce, key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """The key inside ``blob``; :class:`DecryptionError` if it does not open here."""
        if blob[:1] != _BLOB_FORMAT or len(blob) < 1 + NONCE_BYTES + 16:
            raise DecryptionError("the wrapped key is not in the master key's format")
        try:
            return self._cipher.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], context)
        except InvalidTag:
            raise DecryptionError(
                "the wrapped key does not open with this master key: another master key "
                "wrapped it, or the stored row was altered or copied from another user"
            ) from None

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"


class _KeyCache:
    """A bounded LRU of unwrapped keys, each entry living ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        # (tenant, user_id, version or 0 for "current") -> (expires at, version, key)
        self._entries: OrderedDict[tuple[str, str, int], tuple[float, int, bytes]] = OrderedDict()

    def get(self, slot: tuple[str, str, int]) -> tuple[int, bytes] | None:
        entry = self._entries.get(slot)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[slot]
            return None
        self._entries.move_to_end(slot)
        return entry[1], entry[2]

    def put(self, slot: tuple[str, str, int], version: int, key: bytes) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        self._entries[slot] = (self._clock() + self.ttl, version, key)
        self._entries.move_to_end(slot)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, identity: Identity) -> None:
        for slot in [s for s in self._entries if s[:2] == identity]:
            del self._entries[slot]

    def __len__(self) -> int:
        return len(self._entries)


class UserKeys:
    """The store-backed keys of every user, with a per-process cache of unwrapped keys.

    A user is identified by ``(tenant or "", user_id)``. See the module docstring for
    the cache's consistency across processes. ``clock`` (monotonic seconds) is for tests.
    """

    def __init__(
        self,
        store: JobStore,
        provider: KeyProvider,
        *,
        cache_size: int = 10_000,
        cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_size < 0 or cache_ttl < 0:
            raise ValueError("cache_size and cache_ttl must be >= 0 (0 disables the cache)")
        self._store = store
        self._provider = provider
        self._cache = _KeyCache(cache_size, cache_ttl, clock)
        self._loading: dict[tuple[str, str, int], asyncio.Future[tuple[int, bytes]]] = {}
        self._epoch = 0  # bumped by every invalidation: loads begun before it do not cache

    @property
    def cached(self) -> int:
        """How many unwrapped keys this process holds in its cache now."""
        return len(self._cache)

    # --- reading -----------------------------------------------------------------------

    async def current(self, user_id: str, tenant: str | None = None) -> tuple[int, bytes]:
        """``(version, key)`` of the user's current key, creating version 1 on first use.

        Two processes creating it at once end with one version 1 (the primary key
        decides; the loser reads the winner's). :class:`KeyShreddedError` once forgotten.
        """
        identity = _identity(user_id, tenant)
        return await self._cached((*identity, 0), lambda: self._load_current(identity))

    async def get(self, user_id: str, tenant: str | None, version: int) -> bytes:
        """The user's key of ``version``.

        :class:`UnknownKeyError` for a version that never existed, :class:`KeyShreddedError`
        once the user was forgotten.
        """
        identity = _identity(user_id, tenant)
        if not isinstance(version, int) or version < 1:
            raise UnknownKeyError(f"{_describe(identity)} has no key version {version!r}")
        _, key = await self._cached(
            (*identity, version), lambda: self._load_version(identity, version)
        )
        return key

    async def versions(self, user_id: str, tenant: str | None = None) -> list[int]:
        """The user's key versions still stored, oldest first ([] if none or forgotten)."""
        identity = _identity(user_id, tenant)
        engine = await self._store.engine()
        query = (
            sa.select(user_keys.c.version)
            .where(*_matches(user_keys, identity))
            .order_by(user_keys.c.version)
        )
        async with engine.connect() as connection:
            return [row.version for row in await connection.execute(query)]

    async def forgotten_at(self, user_id: str, tenant: str | None = None) -> float | None:
        """When the user's keys were destroyed (Unix seconds), or None."""
        identity = _identity(user_id, tenant)
        engine = await self._store.engine()
        async with engine.connect() as connection:
            return await _tombstone(connection, identity)

    async def is_forgotten(self, user_id: str, tenant: str | None = None) -> bool:
        """Whether the user's keys were destroyed."""
        return await self.forgotten_at(user_id, tenant) is not None

    # --- changing ----------------------------------------------------------------------

    async def rotate(self, user_id: str, tenant: str | None = None) -> int:
        """Start a new key version for new data (returned); older versions stay readable."""
        identity = _identity(user_id, tenant)
        engine = await self._store.engine()
        for _ in range(_ROTATE_ATTEMPTS):
            async with engine.connect() as connection:
                await self._refuse_forgotten(connection, identity)
                latest = await connection.scalar(
                    sa.select(sa.func.max(user_keys.c.version)).where(
                        *_matches(user_keys, identity)
                    )
                )
            version = int(latest or 0) + 1
            key = os.urandom(KEY_BYTES)
            if await self._insert(identity, version, key):
                self._cache.put((*identity, 0), version, key)
                self._cache.put((*identity, version), version, key)
                return version
        raise StoreError(
            f"could not rotate the key of {_describe(identity)}: {_ROTATE_ATTEMPTS} concurrent "
            "rotations won the race; try again"
        )

    async def forget(self, user_id: str, tenant: str | None = None) -> int:
        """Destroy every key of the user (crypto-shredding); return how many versions.

        Leaves a tombstone so that later reads raise :class:`KeyShreddedError` with the
        time; forgetting again keeps the first time. Drops this process's cache entries.
        """
        identity = _identity(user_id, tenant)
        engine = await self._store.engine()
        insert = self._store.insert()
        now = time.time()
        self.invalidate(user_id, tenant)
        async with engine.begin() as connection:
            # The tombstone first: a concurrent current() that checks it after inserting
            # its version 1 then removes that version itself (see _insert).
            statement = insert(forgotten_users).values(
                tenant=identity[0], user_id=identity[1], forgotten_at=now, versions_destroyed=0
            )
            await connection.execute(statement.on_conflict_do_nothing())
            deleted = await connection.execute(
                user_keys.delete().where(*_matches(user_keys, identity))
            )
            destroyed = int(deleted.rowcount or 0)
            if destroyed:
                await connection.execute(
                    forgotten_users.update()
                    .where(*_matches(forgotten_users, identity))
                    .values(versions_destroyed=forgotten_users.c.versions_destroyed + destroyed)
                )
        self.invalidate(user_id, tenant)
        return destroyed

    def invalidate(self, user_id: str, tenant: str | None = None) -> None:
        """Drop this process's cached keys of the user (the next read goes to the store)."""
        identity = _identity(user_id, tenant)
        self._epoch += 1
        self._cache.drop(identity)
        for slot in [s for s in self._loading if s[:2] == identity]:
            del self._loading[slot]

    # --- internals ---------------------------------------------------------------------

    async def _cached(
        self, slot: tuple[str, str, int], load: Callable[[], Awaitable[tuple[int, bytes]]]
    ) -> tuple[int, bytes]:
        hit = self._cache.get(slot)
        if hit is not None:
            return hit
        # Jobs of one user arriving together on a cold cache share one store read.
        loading = self._loading.get(slot)
        if loading is None:
            loading = asyncio.ensure_future(self._load_and_cache(slot, load, self._epoch))
            self._loading[slot] = loading
            loading.add_done_callback(lambda done: self._loaded(slot, done))
        return await asyncio.shield(loading)

    async def _load_and_cache(
        self,
        slot: tuple[str, str, int],
        load: Callable[[], Awaitable[tuple[int, bytes]]],
        epoch: int,
    ) -> tuple[int, bytes]:
        version, key = await load()
        if epoch == self._epoch:  # not invalidated (forgotten, say) while loading
            self._cache.put(slot, version, key)
            if slot[2] == 0:
                self._cache.put((slot[0], slot[1], version), version, key)
        return version, key

    def _loaded(self, slot: tuple[str, str, int], done: asyncio.Future[tuple[int, bytes]]) -> None:
        if self._loading.get(slot) is done:
            del self._loading[slot]
        if not done.cancelled():
            done.exception()  # retrieved here, so an unawaited failure logs no warning

    async def _load_current(self, identity: Identity) -> tuple[int, bytes]:
        engine = await self._store.engine()
        query = (
            sa.select(user_keys.c.version, user_keys.c.wrapped_key)
            .where(*_matches(user_keys, identity))
            .order_by(user_keys.c.version.desc())
            .limit(1)
        )
        for _ in range(2):
            async with engine.connect() as connection:
                await self._refuse_forgotten(connection, identity)
                row = (await connection.execute(query)).first()
            if row is not None:
                return row.version, await self._unwrap(identity, row.version, row.wrapped_key)
            key = os.urandom(KEY_BYTES)
            if await self._insert(identity, 1, key):
                return 1, key
            # Another process created version 1 first: read theirs.
        raise StoreError(f"the current key of {_describe(identity)} vanished while being read")

    async def _load_version(self, identity: Identity, version: int) -> tuple[int, bytes]:
        engine = await self._store.engine()
        query = sa.select(user_keys.c.wrapped_key).where(
            *_matches(user_keys, identity), user_keys.c.version == version
        )
        async with engine.connect() as connection:
            await self._refuse_forgotten(connection, identity)
            wrapped = await connection.scalar(query)
        if wrapped is None:
            raise UnknownKeyError(f"{_describe(identity)} has no key version {version}")
        return version, await self._unwrap(identity, version, wrapped)

    async def _insert(self, identity: Identity, version: int, key: bytes) -> bool:
        """Store ``key`` as ``version`` unless that version exists; True if this call did."""
        wrapped = await asyncio.to_thread(self._provider.wrap, key, _context(identity, version))
        engine = await self._store.engine()
        statement = (
            self._store.insert()(user_keys)
            .values(
                tenant=identity[0],
                user_id=identity[1],
                version=version,
                wrapped_key=wrapped,
                created_at=time.time(),
            )
            .on_conflict_do_nothing()
        )
        async with engine.begin() as connection:
            created = (await connection.execute(statement)).rowcount == 1
            forgotten = await _tombstone(connection, identity)
            if forgotten is not None:  # forgotten meanwhile: never leave a live key behind
                await connection.execute(user_keys.delete().where(*_matches(user_keys, identity)))
        if forgotten is not None:
            raise _shredded(identity, forgotten)
        return created

    async def _unwrap(self, identity: Identity, version: int, wrapped: bytes) -> bytes:
        try:
            key = await asyncio.to_thread(
                self._provider.unwrap, bytes(wrapped), _context(identity, version)
            )
        except DecryptionError as exc:
            raise DecryptionError(
                f"key version {version} of {_describe(identity)}: {exc}"
            ) from None
        if len(key) != KEY_BYTES:
            raise DecryptionError(
                f"key version {version} of {_describe(identity)} unwrapped to {len(key)} bytes"
            )
        return key

    async def _refuse_forgotten(self, connection: AsyncConnection, identity: Identity) -> None:
        forgotten = await _tombstone(connection, identity)
        if forgotten is not None:
            raise _shredded(identity, forgotten)


def _identity(user_id: str, tenant: str | None) -> Identity:
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user keys need a non-empty user id (an anonymous user has no key)")
    tenant = tenant or ""
    if len(user_id) > _MAX_ID_CHARS or len(tenant) > _MAX_ID_CHARS:
        raise ValueError(f"user ids and tenants are at most {_MAX_ID_CHARS} characters")
    return tenant, user_id


def _matches(table: sa.Table, identity: Identity) -> tuple[sa.ColumnElement[bool], ...]:
    return table.c.tenant == identity[0], table.c.user_id == identity[1]


def _context(identity: Identity, version: int) -> bytes:
    return bind("user-key", identity[0], identity[1], str(version))


async def _tombstone(connection: AsyncConnection, identity: Identity) -> float | None:
    at = await connection.scalar(
        sa.select(forgotten_users.c.forgotten_at).where(*_matches(forgotten_users, identity))
    )
    return None if at is None else float(at)


def _describe(identity: Identity) -> str:
    tenant, user_id = identity
    return f"user {user_id!r} (tenant {tenant!r})" if tenant else f"user {user_id!r} (no tenant)"


def _shredded(identity: Identity, forgotten_at: float) -> KeyShreddedError:
    when = datetime.fromtimestamp(forgotten_at, UTC).isoformat(timespec="seconds")
    return KeyShreddedError(
        f"the keys of {_describe(identity)} were destroyed on {when.replace('+00:00', 'Z')}: "
        "the data cannot be decrypted",
        forgotten_at=forgotten_at,
    )
