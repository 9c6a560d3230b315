"""User-scoped storage: encrypted artifacts per tenant and user, names that cannot
escape, isolation between users, retention, and erasure. Keys in SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from amqp_jobs.security import (
    ArtifactNotFoundError,
    KeyShreddedError,
    MasterKey,
    StorageAccessError,
    StorageNameError,
    UserContext,
    UserKeys,
    UserStorage,
    check_name,
)
from amqp_jobs.store import JobStore

ALICE = UserContext(user_id="alice", tenant="acme")
BOB = UserContext(user_id="bob", tenant="acme")


@pytest.fixture
def storage(make_store: Callable[[], JobStore], tmp_path: Path) -> UserStorage:
    keys = UserKeys(make_store(), MasterKey.generate())
    return UserStorage(tmp_path / "artifacts", keys, retention=timedelta(days=7))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_artifacts_round_trip_encrypted_on_disk(storage: UserStorage) -> None:
    # Given a user's storage
    alice = storage.for_user(ALICE)
    # When a job stores artifacts (bytes and text) and lists them
    await alice.put("reports/2026/summary.csv", b"name,total\nwidgets,42\n")
    await alice.put("log.txt", "started ✓")
    await alice.put("reports/2026/detail.csv", b"detail")
    # Then they read back, list by prefix, and the files hold no plaintext
    assert await alice.get("reports/2026/summary.csv") == b"name,total\nwidgets,42\n"
    assert await alice.get("log.txt") == "started ✓".encode()
    assert await alice.list() == ["log.txt", "reports/2026/detail.csv", "reports/2026/summary.csv"]
    assert await alice.list("reports/") == ["reports/2026/detail.csv", "reports/2026/summary.csv"]
    files = _files(storage.root)
    assert len(files) == 3 and all(f.is_relative_to(alice.folder) for f in files)
    for file in files:
        assert b"widgets" not in file.read_bytes() and b"started" not in file.read_bytes()
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(storage.root.stat().st_mode) == 0o700  # private to the service
    # And replacing, deleting and reading what is missing behave as expected
    await alice.put("log.txt", "replaced")
    assert await alice.get("log.txt") == b"replaced"
    assert await alice.delete("log.txt") is True
    assert await alice.delete("log.txt") is False
    with pytest.raises(
        ArtifactNotFoundError, match=r"there is no artifact 'log\.txt' of user 'alice'"
    ):
        await alice.get("log.txt")
    assert await alice.list() == ["reports/2026/detail.csv", "reports/2026/summary.csv"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/passwd", "'..' part"),
        ("reports/../../bob/secret", "'..' part"),
        ("..", "'..' part"),
        ("./x", "'.' part"),
        ("/etc/passwd", "absolute"),
        ("reports\\..\\x", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control character"),
        ("", "empty"),
        ("a//b", "empty part"),
        ("folder/", "empty part"),
        ("x" * 256, "longer than 255 bytes"),
        ("a/" * 600 + "b", "too long"),
    ],
)
async def test_names_that_could_escape_or_are_malformed_are_refused(
    storage: UserStorage, tmp_path: Path, name: str, reason: str
) -> None:
    alice = storage.for_user(ALICE)
    with pytest.raises(StorageNameError, match=reason):
        await alice.put(name, b"x")
    with pytest.raises(StorageNameError, match=reason):
        await alice.get(name)
    with pytest.raises(StorageNameError, match=reason):
        await alice.delete(name)
    written = [p for p in _files(tmp_path) if not p.name.startswith("jobs.db")]
    assert written == []  # nothing was written anywhere


def test_valid_names_split_into_parts() -> None:
    assert check_name("reports/2026/q1 summary (final).csv") == (
        "reports",
        "2026",
        "q1 summary (final).csv",
    )
    assert check_name(".hidden/..data") == (".hidden", "..data")


async def test_the_same_name_for_two_users_is_two_artifacts(storage: UserStorage) -> None:
    alice, bob = storage.for_user(ALICE), storage.for_user(BOB)
    other_acme = storage.for_user(UserContext(user_id="alice", tenant="globex"))
    no_tenant = storage.for_user(UserContext(user_id="alice"))
    for scoped, text in ((alice, "A"), (bob, "B"), (other_acme, "G"), (no_tenant, "N")):
        await scoped.put("result.json", text)
    assert await alice.get("result.json") == b"A"
    assert await bob.get("result.json") == b"B"
    assert await other_acme.get("result.json") == b"G"
    assert await no_tenant.get("result.json") == b"N"
    assert await bob.delete("result.json")
    assert await alice.get("result.json") == b"A"
    assert await bob.list() == []


async def test_a_file_copied_into_another_users_folder_does_not_decrypt(
    storage: UserStorage,
) -> None:
    # Given alice's artifact, and bob with a key of his own
    alice, bob = storage.for_user(ALICE), storage.for_user(BOB)
    await alice.put("statement.pdf", b"alice's bank statement")
    await bob.put("statement.pdf", b"bob's")
    # When someone with file access copies alice's file over bob's
    shutil.copyfile(alice.folder / "statement.pdf", bob.folder / "statement.pdf")
    # Then bob's storage refuses it instead of returning alice's data
    with pytest.raises(StorageAccessError, match="cannot be decrypted"):
        await bob.get("statement.pdf")
    # And renaming within alice's folder does not work either: the name is bound too
    os.replace(alice.folder / "statement.pdf", alice.folder / "other.pdf")
    with pytest.raises(StorageAccessError, match="cannot be decrypted"):
        await alice.get("other.pdf")


async def test_a_garbled_file_is_an_access_error(storage: UserStorage) -> None:
    alice = storage.for_user(ALICE)
    await alice.put("a.txt", b"x")
    (alice.folder / "a.txt").write_bytes(b"not sealed")
    with pytest.raises(StorageAccessError, match="is not a sealed artifact"):
        await alice.get("a.txt")


async def test_symlinks_cannot_lead_out_of_the_users_folder(
    storage: UserStorage, tmp_path: Path
) -> None:
    # Given alice's artifact, and a file outside the storage
    alice, bob = storage.for_user(ALICE), storage.for_user(BOB)
    await alice.put("secret.txt", b"alice only")
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    await bob.put("keep.txt", b"bob")
    # When bob's folder gets a symlink to the outside file, and a symlinked sub-folder
    (bob.folder / "link.txt").symlink_to(outside)
    (bob.folder / "linked").symlink_to(alice.folder, target_is_directory=True)
    # Then reading, writing or deleting through them is refused, and they are not listed
    with pytest.raises(StorageAccessError, match="outside the user's folder"):
        await bob.get("link.txt")
    with pytest.raises(StorageAccessError, match="outside the user's folder"):
        await bob.get("linked/secret.txt")
    with pytest.raises(StorageAccessError, match="outside the user's folder"):
        await bob.put("linked/secret.txt", b"overwrite")
    with pytest.raises(StorageAccessError, match="outside the user's folder"):
        await bob.delete("link.txt")
    assert await bob.list() == ["keep.txt"]
    assert outside.read_text() == "host file"
    # And a user folder replaced by a symlink to another user's folder is refused too
    shutil.rmtree(bob.folder)
    bob.folder.symlink_to(alice.folder, target_is_directory=True)
    with pytest.raises(StorageAccessError, match="outside the user's folder"):
        await bob.get("secret.txt")
    assert await alice.get("secret.txt") == b"alice only"


async def test_ids_become_safe_distinct_folders_inside_the_root(storage: UserStorage) -> None:
    tricky = ["../escape", "a/b", "Alice", "alice", ".", "_", "%2E", "x" * 250, "ünïcode"]
    folders = set()
    for user_id in tricky:
        for tenant in (None, "../t", "T"):
            scoped = storage.for_user(UserContext(user_id=user_id, tenant=tenant))
            await scoped.put("f", user_id)
            assert scoped.folder.parent.parent == storage.root
            assert all(len(part) <= 100 for part in scoped.folder.relative_to(storage.root).parts)
            folders.add(str(scoped.folder).lower())  # distinct even on case-insensitive disks
            assert await scoped.get("f") == user_id.encode()
    assert len(folders) == len(tricky) * 3
    assert all(p.is_relative_to(storage.root) for p in _files(storage.root))


async def test_anonymous_users_have_no_storage(storage: UserStorage) -> None:
    with pytest.raises(StorageAccessError, match="needs a user with a user id"):
        storage.for_user(UserContext.from_wire({"tier": "free"}))  # type: ignore[arg-type]


async def test_a_name_cannot_be_both_an_artifact_and_a_folder(storage: UserStorage) -> None:
    alice = storage.for_user(ALICE)
    await alice.put("a", b"file")
    with pytest.raises(StorageNameError, match="already an artifact"):
        await alice.put("a/b", b"x")
    await alice.put("c/d", b"x")
    with pytest.raises(StorageNameError, match="already a folder"):
        await alice.put("c", b"x")
    with pytest.raises(ArtifactNotFoundError):
        await alice.get("c")
    assert await alice.list() == ["a", "c/d"]


async def test_prune_removes_artifacts_older_than_the_retention(storage: UserStorage) -> None:
    # Given artifacts written 8 days ago, 6 days ago, and now (retention is 7 days)
    alice, bob = storage.for_user(ALICE), storage.for_user(BOB)
    now = time.time()
    for scoped, name, age_days in (
        (alice, "old/report.csv", 8),
        (bob, "old.txt", 8),
        (alice, "recent.txt", 6),
    ):
        await scoped.put(name, name)
        path = scoped.folder / name
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    await alice.put("new.txt", b"new")
    # When storage is pruned
    assert await storage.prune(now) == 2
    # Then only the old ones are gone (with their emptied folders), the rest still reads
    assert await alice.list() == ["new.txt", "recent.txt"]
    assert await bob.list() == []
    assert await alice.get("recent.txt") == b"recent.txt"
    assert not (alice.folder / "old").exists()
    assert await storage.prune() == 0


async def test_forgetting_a_user_deletes_their_artifacts_and_shreds_what_remains(
    storage: UserStorage,
) -> None:
    alice, bob = storage.for_user(ALICE), storage.for_user(BOB)
    await alice.put("a.txt", b"1")
    await alice.put("sub/b.txt", b"2")
    await bob.put("a.txt", b"bob")
    # A copy of alice's artifact kept somewhere (a backup) stays unreadable after her keys go
    backup = (alice.folder / "a.txt").read_bytes()
    assert await storage.forget_user("alice", "acme") == 2
    assert not alice.folder.exists()
    assert await alice.list() == []
    await storage.keys.forget("alice", "acme")
    alice.folder.mkdir(parents=True)
    (alice.folder / "a.txt").write_bytes(backup)
    with pytest.raises(KeyShreddedError, match="'alice'"):
        await alice.get("a.txt")
    assert await bob.get("a.txt") == b"bob"
    assert await storage.forget_user("nobody", None) == 0
