"""User-scoped storage: artifacts and logs a job writes, kept per tenant and user, encrypted.

Files live under ``<root>/<tenant or _>/<user>/<name>``; tenant and user ids are encoded
into safe, case-insensitive-proof path parts (letters a-z, digits and ``-`` kept, every
other character percent-encoded, long ids hashed), so no id can name another folder.
Each file is the JSON of a :class:`~amqp_jobs.envelope.Sealed` under the user's current
key, with associated data binding tenant, user and name: a file copied into another
user's folder, or renamed, does not decrypt. Destroying the user's keys makes every file
unreadable; :meth:`UserStorage.forget_user` then deletes them.

There is no API that takes a raw path: a :class:`ScopedStorage` is bound to one user and
accepts only names, which are checked (no ``..``, no absolute paths, no backslashes or
control characters, no empty parts, bounded length), and the final path is resolved
and required to stay inside that user's folder, so symlinks cannot lead out of it.

Retention counts from an artifact's last write (the file's modification time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pydantic

from amqp_jobs.envelope import Sealed
from amqp_jobs.security.encryption import bind, open_sealed, seal
from amqp_jobs.security.errors import (
    ArtifactNotFoundError,
    DecryptionError,
    StorageAccessError,
    StorageNameError,
    UnknownKeyError,
)
from amqp_jobs.security.keys import UserKeys
from amqp_jobs.security.users import UserContext

MAX_NAME_CHARS = 1024
"""Longest artifact name, in characters."""

MAX_PART_BYTES = 255
"""Longest part of a name (between slashes), in UTF-8 bytes: a file name's usual limit."""

_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_MAX_ENCODED_ID = 96  # longer encoded ids are replaced by their hash
_NO_TENANT = "_"  # never an encoded id: "_" itself is percent-encoded
_TEMP_FOLDER = ".tmp"  # under the root, never a tenant part ("." is percent-encoded)
_STALE_TEMP_SECONDS = 3600.0


def _path_part(value: str) -> str:
    """``value`` as one safe, injective path part (lower case only: case-insensitive file
    systems cannot merge two ids)."""
    encoded = "".join(
        char if char in _SAFE_CHARS else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in value
    )
    if len(encoded) > _MAX_ENCODED_ID:  # "~" is encoded otherwise, so no encoded id clashes
        return "~" + hashlib.sha256(value.encode()).hexdigest()
    return encoded


def check_name(name: str) -> tuple[str, ...]:
    """The parts of artifact name ``name``; :class:`StorageNameError` saying what is wrong."""
    if not isinstance(name, str):
        raise StorageNameError(f"an artifact name must be a string, not {type(name).__name__}")
    if not name:
        raise StorageNameError("an artifact name cannot be empty")
    if len(name) > MAX_NAME_CHARS:
        raise StorageNameError(
            f"artifact name of {len(name)} characters is too long (at most {MAX_NAME_CHARS})"
        )
    if "\x00" in name:
        raise StorageNameError(f"artifact name {name!r} contains a NUL character")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise StorageNameError(f"artifact name {name!r} contains a control character")
    if "\\" in name:
        raise StorageNameError(
            f"artifact name {name!r} contains a backslash; separate its parts with /"
        )
    if name.startswith("/"):
        raise StorageNameError(
            f"artifact name {name!r} is absolute; names are relative to the user"
        )
    parts = tuple(name.split("/"))
    for part in parts:
        if not part:
            raise StorageNameError(f"artifact name {name!r} has an empty part (// or a trailing /)")
        if part in (".", ".."):
            raise StorageNameError(f"artifact name {name!r} has a {part!r} part")
        if len(part.encode()) > MAX_PART_BYTES:
            raise StorageNameError(
                f"artifact name {name!r} has a part longer than {MAX_PART_BYTES} bytes"
            )
    return parts


class ScopedStorage:
    """One user's artifacts. Get one from :meth:`UserStorage.for_user`."""

    def __init__(self, storage: UserStorage, user_id: str, tenant: str | None) -> None:
        self._storage = storage
        self.user_id = user_id
        self.tenant = tenant or None
        self.folder = storage.folder_of(user_id, tenant)
        """Where this user's files are (for operators; the API takes only names)."""

    def _aad(self, name: str) -> bytes:
        return bind("artifact", self.tenant or "", self.user_id, name)

    def _describe(self, name: str) -> str:
        tenant = f"tenant {self.tenant!r}" if self.tenant else "no tenant"
        return f"artifact {name!r} of user {self.user_id!r} ({tenant})"

    async def put(self, name: str, data: bytes | str) -> None:
        """Store ``data`` (a str is stored as UTF-8) as ``name``, replacing what was there."""
        parts = check_name(name)
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"artifact data must be bytes or str, not {type(data).__name__}")
        version, key = await self._storage.keys.current(self.user_id, self.tenant)
        sealed = seal(bytes(data), key, version, self._aad(name))
        await asyncio.to_thread(self._write, name, parts, sealed.model_dump_json().encode())

    async def get(self, name: str) -> bytes:
        """The content of ``name``.

        :class:`ArtifactNotFoundError` if there is none; :class:`StorageAccessError` if the
        file was not written for this user and name (copied, renamed or altered);
        :class:`~amqp_jobs.security.errors.KeyShreddedError` once the user was forgotten.
        """
        parts = check_name(name)
        body = await asyncio.to_thread(self._read, name, parts)
        try:
            sealed = Sealed.model_validate_json(body)
        except pydantic.ValidationError:
            raise StorageAccessError(f"{self._describe(name)} is not a sealed artifact") from None
        try:
            key = await self._storage.keys.get(self.user_id, self.tenant, sealed.key_version)
            return open_sealed(sealed, key, self._aad(name))
        except (DecryptionError, UnknownKeyError) as exc:
            raise StorageAccessError(
                f"{self._describe(name)} cannot be decrypted: it was not written under this "
                f"name for this user, or was altered ({exc})"
            ) from exc

    async def list(self, prefix: str = "") -> list[str]:
        """Names of this user's artifacts starting with ``prefix``, sorted."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        names = await asyncio.to_thread(lambda: sorted(self._walk()))
        return [name for name in names if name.startswith(prefix)]

    async def delete(self, name: str) -> bool:
        """Delete ``name``; True if it existed."""
        parts = check_name(name)
        return await asyncio.to_thread(self._unlink, name, parts)

    # --- file system (run in a worker thread) --------------------------------------------

    def _path(self, name: str, parts: tuple[str, ...]) -> Path:
        """The file of ``name``, refused unless it resolves inside this user's folder."""
        # The expected folder is built from the resolved root, not resolved itself: a user
        # folder replaced by a symlink to another user's must be refused, not followed.
        target = self.folder.joinpath(*parts)
        if not target.resolve().is_relative_to(self.folder):
            raise StorageAccessError(
                f"{self._describe(name)} resolves outside the user's folder (a symlink?): refused"
            )
        return target

    def _write(self, name: str, parts: tuple[str, ...], body: bytes) -> None:
        target = self._path(name, parts)
        # The root is private to the service's OS user; what is inside inherits that.
        self._storage.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp_folder = self._storage.root / _TEMP_FOLDER
        temp_folder.mkdir(mode=0o700, exist_ok=True)
        temp = temp_folder / uuid.uuid4().hex
        try:
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            for attempt in (1, 2):
                target.parent.mkdir(parents=True, exist_ok=True)
                self._path(name, parts)  # checked again: nothing may have moved meanwhile
                try:
                    os.replace(temp, target)
                    break
                except FileNotFoundError:
                    if attempt == 2:  # a concurrent prune removed the emptied folder
                        raise
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise StorageNameError(
                f"cannot store {self._describe(name)}: a part of the name is already an "
                "artifact, or the name is already a folder of artifacts"
            ) from None
        finally:
            temp.unlink(missing_ok=True)

    def _read(self, name: str, parts: tuple[str, ...]) -> bytes:
        target = self._path(name, parts)
        try:
            # O_NOFOLLOW: the file itself may not have become a symlink since the check.
            descriptor = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactNotFoundError(f"there is no {self._describe(name)}") from None
        except OSError as exc:
            raise StorageAccessError(f"cannot read {self._describe(name)}: {exc}") from None
        try:
            if stat.S_ISDIR(os.fstat(descriptor).st_mode):
                raise ArtifactNotFoundError(
                    f"there is no {self._describe(name)} (it is a folder of artifacts)"
                )
            with os.fdopen(descriptor, "rb", closefd=False) as file:
                return file.read()
        finally:
            os.close(descriptor)

    def _unlink(self, name: str, parts: tuple[str, ...]) -> bool:
        target = self._path(name, parts)
        if not target.is_file() or target.is_symlink():
            return False
        target.unlink(missing_ok=True)
        _remove_empty_parents(target.parent, stop=self.folder)
        return True

    def _walk(self) -> Iterator[str]:
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        for folder, subfolders, files in os.walk(self.folder, followlinks=False):
            relative = Path(folder).relative_to(self.folder).parts
            subfolders.sort()
            for file in files:
                path = Path(folder, file)
                if path.is_symlink():
                    continue  # never written by us: not an artifact
                yield "/".join((*relative, file))


class UserStorage:
    """Artifacts of every user under ``root``, encrypted with the users' keys.

    ``retention`` is how long an artifact is kept after its last write (see :meth:`prune`).
    """

    def __init__(
        self,
        root: str | Path,
        keys: UserKeys,
        *,
        retention: timedelta = timedelta(days=30),
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError(f"retention must be positive, not {retention}")
        # Resolved once: every user folder is checked against a path under this one.
        self.root = Path(root).resolve()
        self.keys = keys
        self.retention = retention

    def folder_of(self, user_id: str, tenant: str | None = None) -> Path:
        """The folder holding the artifacts of ``user_id`` in ``tenant``."""
        if not isinstance(user_id, str) or not user_id:
            raise StorageAccessError("user storage needs a user with a user id; this one has none")
        tenant_part = _path_part(tenant) if tenant else _NO_TENANT
        return self.root / tenant_part / _path_part(user_id)

    def for_user(self, user: UserContext) -> ScopedStorage:
        """The storage of ``user`` (who must have a user id)."""
        if not isinstance(user, UserContext):
            raise TypeError(f"for_user takes a UserContext, not {type(user).__name__}")
        return ScopedStorage(self, user.user_id, user.tenant)

    async def prune(self, now: datetime | float | None = None) -> int:
        """Delete artifacts last written more than ``retention`` before ``now`` (a datetime
        or Unix seconds; default: now); return how many."""
        if now is None:
            moment = time.time()
        elif isinstance(now, datetime):
            moment = now.timestamp()
        else:
            moment = float(now)
        return await asyncio.to_thread(self._prune, moment - self.retention.total_seconds(), moment)

    async def forget_user(self, user_id: str, tenant: str | None = None) -> int:
        """Delete every artifact of the user (for an erasure); return how many files."""
        folder = self.folder_of(user_id, tenant)
        return await asyncio.to_thread(_delete_folder, folder)

    def _prune(self, cutoff: float, now: float) -> int:
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder, _, files in os.walk(self.root, topdown=False, followlinks=False):
            path = Path(folder)
            is_temp = path == self.root / _TEMP_FOLDER
            for file in files:
                entry = path / file
                try:
                    info = entry.lstat()
                except FileNotFoundError:
                    continue
                if is_temp:  # left by a process that died mid-write
                    if info.st_mtime < now - _STALE_TEMP_SECONDS:
                        entry.unlink(missing_ok=True)
                    continue
                if entry.is_file() and not entry.is_symlink() and info.st_mtime < cutoff:
                    entry.unlink(missing_ok=True)
                    removed += 1
            if path != self.root and not is_temp:
                _remove_if_empty(path)
        return removed


def _delete_folder(folder: Path) -> int:
    if folder.is_symlink():  # not ours: remove the link, never what it points to
        folder.unlink()
        return 0
    if not folder.is_dir():
        return 0
    count = sum(len(files) for _, _, files in os.walk(folder, followlinks=False))
    shutil.rmtree(folder)
    _remove_if_empty(folder.parent)
    return count


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (or already gone): keep it
        folder.rmdir()


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
