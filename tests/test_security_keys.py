"""User keys in the store, on SQLite and PostgreSQL: creation, races, rotation,
crypto-shredding, and the cache of unwrapped keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from amqp_jobs.security import (
    DecryptionError,
    KeyShreddedError,
    MasterKey,
    UnknownKeyError,
    UserKeys,
    associated_data,
    open_sealed,
    seal,
)
from amqp_jobs.store import JobStore
from amqp_jobs.store.schema_keys import user_keys


class CountingProvider:
    """A master key that counts unwraps: each one is a cache miss that reached the store."""

    def __init__(self, master: MasterKey) -> None:
        self.master = master
        self.unwraps = 0

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self.master.wrap(key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        self.unwraps += 1
        return self.master.unwrap(blob, context)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_first_use_creates_version_one_and_every_process_reads_the_same_key(
    make_store: Callable[[], JobStore],
) -> None:
    # Given two processes (two stores on one database) sharing a master key
    master = MasterKey.generate()
    first, second = UserKeys(make_store(), master), UserKeys(make_store(), master)
    # When one asks for a new user's current key
    version, key = await first.current("u1", "acme")
    # Then it is version 1, random, and the other process reads the same key
    assert version == 1 and len(key) == 32
    assert await second.current("u1", "acme") == (1, key)
    assert await second.get("u1", "acme", 1) == key
    assert await first.versions("u1", "acme") == [1]
    # And the database holds it only wrapped
    engine = await make_store().engine()
    async with engine.connect() as connection:
        stored = (await connection.execute(sa.select(user_keys.c.wrapped_key))).scalars().all()
    assert len(stored) == 1 and key not in bytes(stored[0])


async def test_users_and_tenants_have_separate_keys(make_store: Callable[[], JobStore]) -> None:
    keys = UserKeys(make_store(), MasterKey.generate())
    found = {
        await keys.current("u1", "acme"),
        await keys.current("u1", "globex"),
        await keys.current("u1", None),
        await keys.current("u2", "acme"),
    }
    assert len({key for _, key in found}) == 4
    assert await keys.current("u1", "") == await keys.current("u1", None)  # "" is no tenant


async def test_concurrent_first_use_from_two_processes_ends_with_one_version_one(
    make_store: Callable[[], JobStore],
) -> None:
    # Given two processes with cold caches, and several users nobody has a key for yet
    master = MasterKey.generate()
    stores = [make_store(), make_store()]
    for store in stores:  # opened in turn: this test races key creation, not migrations
        await store.open()
    processes = [UserKeys(store, master) for store in stores]
    users = [f"user-{i}" for i in range(5)]
    # When both ask for every user's key at the same time, many times over
    results = await asyncio.gather(
        *(p.current(user, "acme") for user in users for p in processes for _ in range(4))
    )
    # Then each user has one version 1, and every caller got that same key
    by_user: dict[str, set[tuple[int, bytes]]] = {}
    for index, result in enumerate(results):
        by_user.setdefault(users[index // 8], set()).add(result)
    for user in users:
        assert len(by_user[user]) == 1, f"{user} got several keys"
        assert next(iter(by_user[user]))[0] == 1
        assert await processes[0].versions(user, "acme") == [1]
        fresh = UserKeys(make_store(), master)
        assert (1, await fresh.get(user, "acme", 1)) in by_user[user]


async def test_rotation_starts_a_new_version_and_keeps_old_data_readable(
    make_store: Callable[[], JobStore],
) -> None:
    # Given data sealed with version 1 of a user's key
    master = MasterKey.generate()
    keys = UserKeys(make_store(), master)
    version, key = await keys.current("u1", "acme")
    aad = associated_data("job-1", "report", "u1", "acme")
    old_data = seal(b"before rotation", key, version, aad)
    # When the key rotates
    assert await keys.rotate("u1", "acme") == 2
    # Then new data uses version 2 here and in another process
    new_version, new_key = await keys.current("u1", "acme")
    assert new_version == 2 and new_key != key
    other = UserKeys(make_store(), master)
    assert await other.current("u1", "acme") == (2, new_key)
    # And data sealed before still opens, in both processes
    for process in (keys, other):
        old_key = await process.get("u1", "acme", old_data.key_version)
        assert open_sealed(old_data, old_key, aad) == b"before rotation"
    assert await keys.rotate("u1", "acme") == 3
    assert await other.versions("u1", "acme") == [1, 2, 3]
    # Rotating a user with no key yet creates version 1
    assert await keys.rotate("new-user", None) == 1


async def test_a_version_that_never_existed_is_an_unknown_key(
    make_store: Callable[[], JobStore],
) -> None:
    keys = UserKeys(make_store(), MasterKey.generate())
    await keys.current("u1", "acme")
    with pytest.raises(UnknownKeyError, match=r"user 'u1' \(tenant 'acme'\) has no key version 2"):
        await keys.get("u1", "acme", 2)
    with pytest.raises(UnknownKeyError, match="no key version 0"):
        await keys.get("u1", "acme", 0)
    with pytest.raises(UnknownKeyError, match=r"user 'nobody' \(no tenant\)"):
        await keys.get("nobody", None, 1)
    with pytest.raises(ValueError, match="non-empty user id"):
        await keys.current("", "acme")


async def test_forgetting_a_user_shreds_every_version_for_good(
    make_store: Callable[[], JobStore],
) -> None:
    # Given a user with two key versions and data sealed with the first
    master = MasterKey.generate()
    keys = UserKeys(make_store(), master)
    version, key = await keys.current("u1", "acme")
    await keys.rotate("u1", "acme")
    sealed = seal(b"personal data", key, version, b"aad")
    other_tenant_user = await keys.current("u1", "globex")
    # When the user is forgotten
    assert await keys.forget("u1", "acme") == 2
    # Then every read of their keys fails with the time, here and in other processes
    other = UserKeys(make_store(), master)
    for process in (keys, other):
        with pytest.raises(KeyShreddedError) as caught:
            await process.get("u1", "acme", sealed.key_version)
        message = str(caught.value)
        assert message.startswith("the keys of user 'u1' (tenant 'acme') were destroyed on 20")
        assert message.endswith("the data cannot be decrypted")
        with pytest.raises(KeyShreddedError):
            await process.current("u1", "acme")  # nothing new is encrypted for them
        with pytest.raises(KeyShreddedError):
            await process.rotate("u1", "acme")
        assert await process.is_forgotten("u1", "acme")
        assert await process.versions("u1", "acme") == []
    # And the stored rows are gone (not just hidden), other users are untouched
    engine = await make_store().engine()
    async with engine.connect() as connection:
        left = await connection.scalar(
            sa.select(sa.func.count()).where(user_keys.c.tenant == "acme")
        )
    assert left == 0
    assert await other.current("u1", "globex") == other_tenant_user
    assert not await other.is_forgotten("u1", "globex")
    # Forgetting again destroys nothing more and keeps the first time
    first_time = await keys.forgotten_at("u1", "acme")
    assert await keys.forget("u1", "acme") == 0
    assert await keys.forgotten_at("u1", "acme") == first_time


async def test_another_process_may_use_a_cached_key_until_its_lifetime_ends(
    make_store: Callable[[], JobStore],
) -> None:
    # Given a worker that has a user's key cached
    master, clock = MasterKey.generate(), FakeClock()
    worker = UserKeys(make_store(), master, cache_ttl=60.0, clock=clock)
    admin = UserKeys(make_store(), master)
    _, key = await worker.current("u1", "acme")
    # When another process forgets the user
    await admin.forget("u1", "acme")
    # Then the worker still has the key until cache_ttl has passed, then not
    assert await worker.get("u1", "acme", 1) == key
    clock.now += 61
    with pytest.raises(KeyShreddedError):
        await worker.get("u1", "acme", 1)
    # And invalidate() drops an entry at once
    await admin.current("u2", "acme")
    await worker.current("u2", "acme")
    await admin.forget("u2", "acme")
    worker.invalidate("u2", "acme")
    with pytest.raises(KeyShreddedError):
        await worker.current("u2", "acme")


async def test_the_cache_is_bounded_and_entries_expire(make_store: Callable[[], JobStore]) -> None:
    # Given a cache of two keys living 10 seconds
    provider, clock = CountingProvider(MasterKey.generate()), FakeClock()
    writer = UserKeys(make_store(), provider.master)
    for user in ("a", "b", "c"):
        await writer.current(user, "t")
    keys = UserKeys(make_store(), provider, cache_size=2, cache_ttl=10.0, clock=clock)
    # When keys are read repeatedly, only misses reach the store
    for _ in range(5):
        await keys.get("a", "t", 1)
        await keys.get("b", "t", 1)
    assert provider.unwraps == 2
    assert keys.cached == 2
    # A third key evicts the least recently used one
    await keys.get("c", "t", 1)
    assert keys.cached == 2 and provider.unwraps == 3
    await keys.get("b", "t", 1)  # still cached
    assert provider.unwraps == 3
    await keys.get("a", "t", 1)  # was evicted
    assert provider.unwraps == 4
    # And after the lifetime every entry is read again
    clock.now += 10.5
    await keys.get("a", "t", 1)
    assert provider.unwraps == 5


async def test_concurrent_reads_on_a_cold_cache_share_one_store_read(
    make_store: Callable[[], JobStore],
) -> None:
    provider = CountingProvider(MasterKey.generate())
    await UserKeys(make_store(), provider.master).current("u1", "acme")
    keys = UserKeys(make_store(), provider)
    found = await asyncio.gather(*(keys.get("u1", "acme", 1) for _ in range(50)))
    assert len(set(found)) == 1
    assert provider.unwraps == 1


async def test_a_wrapped_key_copied_to_another_user_or_a_wrong_master_key_does_not_unwrap(
    make_store: Callable[[], JobStore],
) -> None:
    # Given two users' keys
    master = MasterKey.generate()
    keys = UserKeys(make_store(), master)
    await keys.current("alice", "acme")
    await keys.current("mallory", "acme")
    # When someone with database access copies alice's wrapped key into mallory's row
    engine = await make_store().engine()
    async with engine.begin() as connection:
        alice = await connection.scalar(
            sa.select(user_keys.c.wrapped_key).where(user_keys.c.user_id == "alice")
        )
        await connection.execute(
            user_keys.update().where(user_keys.c.user_id == "mallory").values(wrapped_key=alice)
        )
    # Then it does not unwrap as mallory's key
    with pytest.raises(DecryptionError, match="key version 1 of user 'mallory'"):
        await UserKeys(make_store(), master).get("mallory", "acme", 1)
    # And another master key opens nothing
    with pytest.raises(DecryptionError, match="does not open with this master key"):
        await UserKeys(make_store(), MasterKey.generate()).current("alice", "acme")
