"""Security building blocks: user context, signed envelopes, per-user envelope
encryption, user keys with crypto-shredding, and user-scoped encrypted storage."""

from amqp_jobs.security.encryption import (
    associated_data,
    b64decode,
    b64encode,
    bind,
    open_json,
    open_sealed,
    seal,
    seal_json,
)
from amqp_jobs.security.errors import (
    ArtifactNotFoundError,
    DecryptionError,
    KeyShreddedError,
    SecurityError,
    SignatureError,
    StorageAccessError,
    StorageNameError,
    UnknownKeyError,
)
from amqp_jobs.security.keys import MASTER_KEY_ENV, KeyProvider, MasterKey, UserKeys
from amqp_jobs.security.signing import (
    Keyring,
    PublicKey,
    SigningKey,
    sign_envelope,
    verify_envelope,
)
from amqp_jobs.security.storage import ScopedStorage, UserStorage, check_name
from amqp_jobs.security.users import UserContext

__all__ = [
    "MASTER_KEY_ENV",
    "ArtifactNotFoundError",
    "DecryptionError",
    "KeyProvider",
    "KeyShreddedError",
    "Keyring",
    "MasterKey",
    "PublicKey",
    "ScopedStorage",
    "SecurityError",
    "SignatureError",
    "SigningKey",
    "StorageAccessError",
    "StorageNameError",
    "UnknownKeyError",
    "UserContext",
    "UserKeys",
    "UserStorage",
    "associated_data",
    "b64decode",
    "b64encode",
    "bind",
    "check_name",
    "open_json",
    "open_sealed",
    "seal",
    "seal_json",
    "sign_envelope",
    "verify_envelope",
]
