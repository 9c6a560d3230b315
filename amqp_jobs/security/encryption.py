"""Envelope encryption: AES-256-GCM under a fresh data key, wrapped by the user's key.

Each :func:`seal` draws a new random 32-byte data key, encrypts the payload with it and
wraps the data key with the user's key; both use the same associated data, which binds
the ciphertext to one job of one user (:func:`associated_data`). Moving a ciphertext to
another job, user or tenant, flipping one bit of it, or opening it with another key
all fail with :class:`DecryptionError`. Destroying the user's key makes every data key
wrapped by it, and so every payload, unreadable (crypto-shredding).

Binary values are URL-safe base64 without padding (``b64encode`` / ``b64decode``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import struct
from typing import Any

import pydantic_core
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from amqp_jobs.envelope import Sealed
from amqp_jobs.security.errors import DecryptionError

KEY_BYTES = 32
"""AES-256: user keys, data keys and master keys are 32 random bytes."""

NONCE_BYTES = 12
"""AES-GCM's standard 96-bit nonce, random per encryption."""

_TAG_BYTES = 16
_NONE = 0xFFFF_FFFF  # length marker of an absent field: distinct from an empty string


def b64encode(raw: bytes) -> str:
    """URL-safe base64 of ``raw`` without ``=`` padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: str, what: str = "value") -> bytes:
    """Decode URL-safe base64 (padding optional); ``ValueError`` naming ``what`` if malformed.

    Strict: characters outside the URL-safe alphabet are refused, not skipped.
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string, not {type(text).__name__}")
    # binascii validates the alphabet in C (validate=True); "+" and "/" would pass it
    # after the altchars translation, so they are refused here. It runs 4 times per job.
    if "+" in text or "/" in text:
        raise ValueError(f"{what} is not URL-safe base64")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not URL-safe base64") from None


def bind(purpose: str, *fields: str | None) -> bytes:
    """An unambiguous byte encoding of ``purpose`` and ``fields`` for associated data.

    Each field is length-prefixed (4 bytes, big-endian), and ``None`` has its own marker,
    so no two different field lists give the same bytes: ``("a", "bc")`` differs from
    ``("ab", "c")`` and a missing tenant differs from an empty one. ``purpose`` keeps
    the associated data of jobs, artifacts and wrapped keys apart.
    """
    parts = [b"amqp-jobs/1", _field(purpose)]
    parts.extend(_field(field) for field in fields)
    return b"".join(parts)


def _field(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">I", _NONE)
    raw = value.encode()
    return struct.pack(">I", len(raw)) + raw


def associated_data(job_id: str, job: str, user_id: str, tenant: str | None) -> bytes:
    """The associated data of a job's sealed payload (and result, and progress data)."""
    return bind("job", job_id, job, user_id, tenant)


def seal(plaintext: bytes, user_key: bytes, key_version: int, aad: bytes) -> Sealed:
    """Encrypt ``plaintext`` under a fresh data key, wrapped by ``user_key`` of ``key_version``."""
    user_cipher = _cipher(user_key, "user key")
    data_key = os.urandom(KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = wrap_nonce + user_cipher.encrypt(wrap_nonce, data_key, aad)
    return Sealed(
        key_version=key_version,
        wrapped_key=b64encode(wrapped),
        nonce=b64encode(nonce),
        ciphertext=b64encode(ciphertext),
    )


def open_sealed(sealed: Sealed, user_key: bytes, aad: bytes) -> bytes:
    """Decrypt what :func:`seal` produced; :class:`DecryptionError` if anything does not match."""
    user_cipher = _cipher(user_key, "user key")
    try:
        wrapped = b64decode(sealed.wrapped_key, "wrapped_key")
        nonce = b64decode(sealed.nonce, "nonce")
        ciphertext = b64decode(sealed.ciphertext, "ciphertext")
    except ValueError as exc:
        raise DecryptionError(f"sealed data is malformed: {exc}") from None
    if len(wrapped) != NONCE_BYTES + KEY_BYTES + _TAG_BYTES:
        raise DecryptionError(f"sealed data is malformed: wrapped_key has {len(wrapped)} bytes")
    if len(nonce) != NONCE_BYTES:
        raise DecryptionError(f"sealed data is malformed: nonce has {len(nonce)} bytes")
    try:
        data_key = user_cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError(
            f"the data key (user key version {sealed.key_version}) does not open: the sealed "
            "data was altered, belongs to another job or user, or the key is not the one used"
        ) from None
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptionError(
            "the ciphertext does not match its data key and associated data: it was altered"
        ) from None


def seal_json(value: Any, user_key: bytes, key_version: int, aad: bytes) -> Sealed:
    """:func:`seal` the JSON of ``value`` (pydantic models, dates, decimals... as pydantic
    serialises them)."""
    return seal(pydantic_core.to_json(value), user_key, key_version, aad)


def open_json(sealed: Sealed, user_key: bytes, aad: bytes) -> Any:
    """:func:`open_sealed` and parse the JSON inside (plain JSON values come back)."""
    plaintext = open_sealed(sealed, user_key, aad)
    try:
        return pydantic_core.from_json(plaintext)
    except ValueError as exc:
        raise DecryptionError(f"the sealed data decrypted but is not JSON: {exc}") from None


def _cipher(key: bytes, what: str) -> AESGCM:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"the {what} must be {KEY_BYTES} bytes, not {size}")
    return _user_cipher(bytes(key))


@functools.lru_cache(maxsize=256)
def _user_cipher(key: bytes) -> AESGCM:
    # Building an AESGCM context costs ~8 us, once per job for the same few user keys.
    # Only the holder of the key bytes can find an entry, and the bound keeps few.
    return AESGCM(key)
