"""Ed25519 signatures of envelopes (and of anything else given as bytes).

Each publishing service signs with its own :class:`SigningKey`; workers hold a
:class:`Keyring` of trusted :class:`PublicKey` s, looked up by the key id that travels
with the signature. A keyring holds several keys per service, so a key rotates by
adding the new public key everywhere, switching the publisher to the new private key,
and removing the old public key once no message signed by it can still be queued.

Keys travel as text ``"<key_id>:<URL-safe base64 of the 32 raw bytes>"`` (for an
environment variable or a file); key ids are 1-128 characters of letters, digits and
``. _ @ / -``, starting with a letter or digit.

Signatures go through libsodium (PyNaCl) rather than OpenSSL (cryptography): on the
benchmark machine it verifies in 56 us instead of 108 us and signs in 23 us instead of
41 us, and a worker verifies every job it runs (BENCHMARKS.md, Security). The keys are
plain 32-byte Ed25519 keys either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import nacl.exceptions
import nacl.signing

from amqp_jobs.envelope import Envelope, EnvelopeSignature, signing_bytes
from amqp_jobs.security.encryption import b64decode, b64encode
from amqp_jobs.security.errors import SignatureError

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}")
_RAW_KEY_BYTES = 32
_SIGNATURE_BYTES = 64


def _check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise ValueError(
            f"key id {key_id!r} is not valid: use 1-128 letters, digits or '._@/-', "
            "starting with a letter or digit"
        )
    return key_id


def _parse_text(text: str, what: str) -> tuple[str, bytes]:
    key_id, colon, encoded = text.strip().rpartition(":")
    if not colon:
        raise ValueError(f"a {what} must be written '<key_id>:<base64 of 32 bytes>'")
    _check_key_id(key_id)
    raw = b64decode(encoded, f"the {what} {key_id!r}")
    if len(raw) != _RAW_KEY_BYTES:
        raise ValueError(f"the {what} {key_id!r} has {len(raw)} bytes, not {_RAW_KEY_BYTES}")
    return key_id, raw


class PublicKey:
    """A trusted Ed25519 public key and its id."""

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, key_id: str, raw: bytes) -> None:
        self.key_id = _check_key_id(key_id)
        if len(raw) != _RAW_KEY_BYTES:
            raise ValueError(f"public key {key_id!r} has {len(raw)} bytes, not {_RAW_KEY_BYTES}")
        self.raw = bytes(raw)
        try:
            self._key = nacl.signing.VerifyKey(self.raw)
        except (nacl.exceptions.ValueError, nacl.exceptions.TypeError) as exc:
            raise ValueError(f"public key {key_id!r} is not an Ed25519 key: {exc}") from None

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """Parse ``"<key_id>:<base64>"`` (surrounding whitespace ignored)."""
        return cls(*_parse_text(text, "public key"))

    def to_text(self) -> str:
        """``"<key_id>:<base64>"``: safe to publish, it is the public half."""
        return f"{self.key_id}:{b64encode(self.raw)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (raw 64 bytes) is this key's signature of ``message``."""
        try:
            self._key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (other.key_id, other.raw) == (self.key_id, self.raw)

    def __hash__(self) -> int:
        return hash((self.key_id, self.raw))

    def __repr__(self) -> str:
        return f"PublicKey({self.to_text()!r})"


class SigningKey:
    """A service's Ed25519 private key and its id. Keep its text form secret."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key_id: str, key: nacl.signing.SigningKey) -> None:
        self.key_id = _check_key_id(key_id)
        self._key = key

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        """A new random key."""
        return cls(key_id, nacl.signing.SigningKey.generate())

    @classmethod
    def from_private_bytes(cls, key_id: str, raw: bytes) -> SigningKey:
        """The key whose 32 raw private bytes are ``raw``."""
        if len(raw) != _RAW_KEY_BYTES:
            raise ValueError(f"signing key {key_id!r} has {len(raw)} bytes, not {_RAW_KEY_BYTES}")
        return cls(key_id, nacl.signing.SigningKey(bytes(raw)))

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        """Parse ``"<key_id>:<base64 of the 32 private bytes>"`` (as :meth:`to_text` writes)."""
        key_id, raw = _parse_text(text, "signing key")
        return cls.from_private_bytes(key_id, raw)

    def to_text(self) -> str:
        """``"<key_id>:<base64>"`` of the private key: a secret, for an env var or a file."""
        return f"{self.key_id}:{b64encode(bytes(self._key))}"

    def sign(self, message: bytes) -> str:
        """The signature of ``message``, URL-safe base64."""
        return b64encode(self._key.sign(message).signature)

    def public_key(self) -> PublicKey:
        """The public half, with the same key id, for the workers' keyrings."""
        return PublicKey(self.key_id, bytes(self._key.verify_key))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"  # never the secret


class Keyring:
    """The public keys a worker trusts, by key id (several per service, for rotation)."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def from_text(cls, text: str) -> Keyring:
        """A keyring from ``"<id>:<b64>"`` entries separated by commas, spaces or newlines
        (the form of an environment variable or a file of trusted keys)."""
        return cls(PublicKey.from_text(item) for item in re.split(r"[\s,]+", text) if item)

    def add(self, key: PublicKey) -> None:
        """Trust ``key``. A different key under an id already trusted is refused."""
        known = self._keys.get(key.key_id)
        if known is not None and known != key:
            raise ValueError(
                f"the keyring already trusts another key with id {key.key_id!r}; "
                "remove it first or give the new key a new id"
            )
        self._keys[key.key_id] = key

    def remove(self, key_id: str) -> None:
        """Stop trusting the key ``key_id`` (KeyError if it was not trusted)."""
        try:
            del self._keys[key_id]
        except KeyError:
            raise KeyError(f"no public key with id {key_id!r} is trusted") from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        """The trusted key ids, sorted."""
        return sorted(self._keys)

    def verify(
        self, key_id: str, message: bytes, signature: str, *, subject: str = "message"
    ) -> None:
        """Check that ``signature`` is key ``key_id``'s signature of ``message``.

        Raises :class:`SignatureError` for an untrusted key id, a malformed signature or a
        signature that does not match; ``subject`` names what was signed in the message.
        """
        key = self._keys.get(key_id)
        if key is None:
            raise SignatureError(f"no public key with id {key_id!r} is trusted")
        try:
            raw = b64decode(signature, "signature")
        except ValueError:
            raise SignatureError(f"signature by key {key_id!r} is not URL-safe base64") from None
        if len(raw) != _SIGNATURE_BYTES:
            raise SignatureError(
                f"signature by key {key_id!r} has {len(raw)} bytes, not {_SIGNATURE_BYTES}"
            )
        if not key.verify(message, raw):
            raise SignatureError(f"signature by key {key_id!r} does not match the {subject}")


def sign_envelope(envelope: Envelope, key: SigningKey) -> Envelope:
    """A copy of ``envelope`` signed by ``key`` (over every field but the signature)."""
    signature = EnvelopeSignature(key_id=key.key_id, value=key.sign(signing_bytes(envelope)))
    return envelope.model_copy(update={"signature": signature})


def verify_envelope(envelope: Envelope, keyring: Keyring) -> None:
    """Check the envelope's signature; :class:`SignatureError` if unsigned, by an untrusted
    key, or not matching (any field changed after signing)."""
    if envelope.signature is None:
        raise SignatureError(f"job {envelope.id} ({envelope.job}) is not signed")
    signature = envelope.signature
    keyring.verify(signature.key_id, signing_bytes(envelope), signature.value, subject="envelope")
