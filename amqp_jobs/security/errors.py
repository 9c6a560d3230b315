"""Errors of the security layer: signatures, encryption, user keys and user storage.

Every class derives from :class:`SecurityError`, itself an
:class:`~amqp_jobs.errors.AmqpJobsError`, so ``except AmqpJobsError`` still catches all.
Messages name the key, user or artifact concerned, never secret material.
"""

from __future__ import annotations

from amqp_jobs.errors import AmqpJobsError


class SecurityError(AmqpJobsError):
    """Base class of the security layer's errors."""


# --- Signatures ------------------------------------------------------------------------


class SignatureError(SecurityError):
    """An envelope or grant is unsigned, signed by an untrusted key, or badly signed."""


# --- Encryption and user keys ----------------------------------------------------------


class DecryptionError(SecurityError):
    """Sealed data could not be opened: altered, moved to another job or user, or wrong key."""


class UnknownKeyError(SecurityError):
    """A user key version that never existed was asked for."""


class KeyShreddedError(SecurityError):
    """The user's keys were destroyed (crypto-shredding): their data can never be decrypted."""

    def __init__(self, message: str, *, forgotten_at: float) -> None:
        super().__init__(message)
        self.forgotten_at = forgotten_at


# --- User-scoped storage ---------------------------------------------------------------


class StorageNameError(SecurityError):
    """An artifact name is not allowed (it could escape the user's folder, or is malformed)."""


class StorageAccessError(SecurityError):
    """An artifact cannot be read: missing, unreadable, or not written for this user."""


class ArtifactNotFoundError(StorageAccessError):
    """No artifact of that name exists for this user."""
