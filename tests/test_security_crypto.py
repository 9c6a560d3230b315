"""Pure security primitives: user context, Ed25519 envelope signatures, AES-GCM sealing,
and the master key. No broker, no database."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest

from amqp_jobs.envelope import Envelope, EnvelopeSignature, Sealed, decode, encode
from amqp_jobs.errors import AmqpJobsError, ConfigurationError
from amqp_jobs.security import (
    DecryptionError,
    Keyring,
    MasterKey,
    PublicKey,
    SecurityError,
    SignatureError,
    SigningKey,
    UserContext,
    associated_data,
    b64decode,
    b64encode,
    bind,
    open_json,
    open_sealed,
    seal,
    seal_json,
    sign_envelope,
    verify_envelope,
)

USER_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _envelope(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "job": "send_invoice",
        "queue": "billing",
        "data": {"invoice": 1234, "amount": "99.50", "email": "a@example.com"},
        "user": UserContext(user_id="u1", tenant="acme", tier="pro").to_wire(),
        "publisher": "billing",
    }
    return Envelope(**{**fields, **changes})


def _flip_bit(text: str, byte: int = 0, bit: int = 0) -> str:
    raw = bytearray(b64decode(text))
    raw[byte] ^= 1 << bit
    return b64encode(bytes(raw))


# --- errors -----------------------------------------------------------------------------


def test_security_errors_are_amqp_jobs_errors() -> None:
    # Given / When / Then: one base class catches every security error
    for error in (SignatureError, DecryptionError):
        assert issubclass(error, SecurityError)
        assert issubclass(error, AmqpJobsError)


# --- user context -----------------------------------------------------------------------


def test_user_context_travels_as_a_flat_json_object_and_comes_back_equal() -> None:
    # Given a full user context with a custom attribute
    user = UserContext(
        user_id="u1",
        tenant="acme",
        roles=("admin",),
        permissions=("reports:*",),
        tier="pro",
        group="eu",
        attributes={"region": "eu-west", "seats": 12},
    )
    # When it is put on the wire and read back
    wire = user.to_wire()
    # Then routing reads the fields and attributes at the top level, and nothing is lost
    assert wire == {
        "user_id": "u1",
        "tenant": "acme",
        "tier": "pro",
        "group": "eu",
        "roles": ["admin"],
        "permissions": ["reports:*"],
        "region": "eu-west",
        "seats": 12,
    }
    assert UserContext.from_wire(wire) == user
    assert UserContext.from_wire(user) is user
    assert UserContext.from_wire(None) is None


def test_a_plain_dict_without_user_id_is_an_anonymous_user_that_still_routes() -> None:
    # Given what older callers pass: a plain dict with routing attributes only
    user = UserContext.from_wire({"tier": "free", "plan": "trial", "roles": "viewer"})
    # Then it is anonymous, keeps its tier and attributes, and reads a bare role as one role
    assert user is not None
    assert user.user_id == "" and user.anonymous
    assert user.tier == "free"
    assert user.attributes == {"plan": "trial"}
    assert user.roles == ("viewer",)
    # And its wire form is the same dict (no null fields appear)
    assert user.to_wire() == {"tier": "free", "plan": "trial", "roles": ["viewer"]}


def test_a_user_without_tenant_has_no_tenant_key_on_the_wire() -> None:
    wire = UserContext(user_id="u1").to_wire()
    assert wire == {"user_id": "u1"}
    assert "tenant" not in wire  # routing checks `"tenant" in user`


def test_attributes_cannot_shadow_fields_and_wrong_types_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="'tier'"):
        UserContext(user_id="u1", attributes={"tier": "pro"})
    with pytest.raises(pydantic.ValidationError):
        UserContext.from_wire({"user_id": 42})
    with pytest.raises(TypeError, match="mapping"):
        UserContext.from_wire(["u1"])  # type: ignore[arg-type]


def test_permissions_match_exactly_or_by_trailing_wildcard() -> None:
    user = UserContext(user_id="u1", permissions=("reports:*", "jobs:cancel"))
    assert user.has_permission("reports:read")
    assert user.has_permission("jobs:cancel")
    assert not user.has_permission("jobs:cancel-all")
    assert not user.has_permission("billing:read")
    assert UserContext(user_id="root", permissions=("*",)).has_permission("anything")


# --- signing ----------------------------------------------------------------------------


def test_a_signed_envelope_verifies_after_travelling_through_the_wire() -> None:
    # Given a service key and a worker that trusts its public half
    key = SigningKey.generate("billing-1")
    keyring = Keyring([key.public_key()])
    # When an envelope is signed, encoded, and decoded on the worker
    received = decode(encode(sign_envelope(_envelope(), key)))
    # Then it verifies, and names its key
    verify_envelope(received, keyring)
    assert received.signature is not None and received.signature.key_id == "billing-1"


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"invoice": 1235, "amount": "99.50", "email": "a@example.com"}},
        {"user": {"user_id": "u2", "tenant": "acme", "tier": "pro"}},
        {"attempt": 2},
        {"queue": "urgent"},
        {"grant": "forged"},
        {"sealed": Sealed(key_version=1, wrapped_key="AA", nonce="AA", ciphertext="AA")},
    ],
    ids=["data", "user", "attempt", "queue", "grant", "sealed"],
)
def test_changing_any_field_after_signing_breaks_the_signature(change: dict[str, Any]) -> None:
    # Given a signed envelope
    key = SigningKey.generate("billing-1")
    signed = sign_envelope(_envelope(), key)
    # When a field is changed afterwards (a forged user, a replayed attempt...)
    forged = signed.model_copy(update=change)
    # Then the worker refuses it, naming the key
    with pytest.raises(SignatureError, match="signature by key 'billing-1' does not match"):
        verify_envelope(decode(encode(forged)), Keyring([key.public_key()]))


def test_unsigned_and_unknown_key_and_malformed_signatures_are_refused() -> None:
    key = SigningKey.generate("billing-1")
    keyring = Keyring([key.public_key()])
    with pytest.raises(SignatureError, match="is not signed"):
        verify_envelope(_envelope(), keyring)
    # A key the worker does not trust, even a valid signature by it
    stranger = SigningKey.generate("intruder-1")
    with pytest.raises(SignatureError, match="no public key with id 'intruder-1' is trusted"):
        verify_envelope(sign_envelope(_envelope(), stranger), keyring)
    # A signature by another key claiming a trusted key id
    impostor = SigningKey.generate("billing-1")
    with pytest.raises(SignatureError, match="does not match"):
        verify_envelope(sign_envelope(_envelope(), impostor), keyring)
    signed = sign_envelope(_envelope(), key)
    for value, reason in (("not base64!", "not URL-safe base64"), ("AAAA", "has 3 bytes")):
        bad = signed.model_copy(
            update={"signature": EnvelopeSignature(key_id="billing-1", value=value)}
        )
        with pytest.raises(SignatureError, match=reason):
            verify_envelope(bad, keyring)
    # One flipped bit in the signature itself
    assert signed.signature is not None
    flipped = EnvelopeSignature(key_id="billing-1", value=_flip_bit(signed.signature.value, 5))
    with pytest.raises(SignatureError, match="does not match"):
        verify_envelope(signed.model_copy(update={"signature": flipped}), keyring)


def test_keys_rotate_with_both_ids_in_the_keyring() -> None:
    # Given a worker trusting the old and the new key of a service
    old, new = SigningKey.generate("billing-1"), SigningKey.generate("billing-2")
    keyring = Keyring([old.public_key(), new.public_key()])
    queued_before = sign_envelope(_envelope(), old)
    published_after = sign_envelope(_envelope(), new)
    # Then jobs signed by either verify
    verify_envelope(queued_before, keyring)
    verify_envelope(published_after, keyring)
    # When the old key is retired, its jobs are refused and the new key's still accepted
    keyring.remove("billing-1")
    assert "billing-1" not in keyring and "billing-2" in keyring
    with pytest.raises(SignatureError, match="'billing-1' is trusted"):
        verify_envelope(queued_before, keyring)
    verify_envelope(published_after, keyring)
    with pytest.raises(KeyError, match="billing-1"):
        keyring.remove("billing-1")


def test_keys_round_trip_through_text_and_bad_text_is_refused() -> None:
    key = SigningKey.generate("orders-7")
    copy = SigningKey.from_text(key.to_text() + "\n")
    assert copy.key_id == "orders-7"
    message = b"hello"
    Keyring([key.public_key()]).verify("orders-7", message, copy.sign(message))
    public = PublicKey.from_text(key.public_key().to_text())
    assert public == key.public_key()
    assert "orders-7" in repr(key) and key.to_text().split(":")[1] not in repr(key)
    keyring = Keyring.from_text(
        f"{public.to_text()}, {SigningKey.generate('b').public_key().to_text()}"
    )
    assert keyring.key_ids == ["b", "orders-7"]
    with pytest.raises(ValueError, match="<key_id>:<base64"):
        SigningKey.from_text("no-colon")
    with pytest.raises(ValueError, match="has 3 bytes"):
        PublicKey.from_text("k:AAAA")
    with pytest.raises(ValueError, match="key id 'bad id' is not valid"):
        SigningKey.generate("bad id")
    with pytest.raises(ValueError, match="already trusts another key"):
        keyring.add(SigningKey.generate("orders-7").public_key())


# --- encryption -------------------------------------------------------------------------


def test_sealed_payload_opens_with_the_same_key_and_associated_data() -> None:
    aad = associated_data("job-1", "send_invoice", "u1", "acme")
    sealed = seal(b"secret payload", USER_KEY, 3, aad)
    assert sealed.key_version == 3
    assert b"secret payload" not in sealed.model_dump_json().encode()
    assert open_sealed(sealed, USER_KEY, aad) == b"secret payload"
    # A fresh data key and nonces per call: the same plaintext never seals the same way
    again = seal(b"secret payload", USER_KEY, 3, aad)
    assert again.wrapped_key != sealed.wrapped_key
    assert again.ciphertext != sealed.ciphertext and again.nonce != sealed.nonce


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_key", "nonce"])
@pytest.mark.parametrize("position", ["first", "last"])
def test_one_flipped_bit_anywhere_fails_to_decrypt(field: str, position: str) -> None:
    aad = associated_data("job-1", "send_invoice", "u1", "acme")
    sealed = seal(b"x" * 200, USER_KEY, 1, aad)
    value = getattr(sealed, field)
    index = 0 if position == "first" else len(b64decode(value)) - 1
    tampered = sealed.model_copy(update={field: _flip_bit(value, index, 7)})
    with pytest.raises(DecryptionError):
        open_sealed(tampered, USER_KEY, aad)


@pytest.mark.parametrize(
    "other",
    [
        ("job-2", "send_invoice", "u1", "acme"),  # moved to another job
        ("job-1", "refund", "u1", "acme"),  # another job name
        ("job-1", "send_invoice", "u2", "acme"),  # another user of the tenant
        ("job-1", "send_invoice", "u1", "globex"),  # the same user id in another tenant
        ("job-1", "send_invoice", "u1", None),  # the same user without a tenant
    ],
    ids=["job-id", "job-name", "user", "tenant", "no-tenant"],
)
def test_associated_data_swap_fails_to_decrypt(other: tuple[str, str, str, str | None]) -> None:
    sealed = seal_json(
        {"card": "4111"}, USER_KEY, 1, associated_data("job-1", "send_invoice", "u1", "acme")
    )
    with pytest.raises(DecryptionError, match="another job or user"):
        open_json(sealed, USER_KEY, associated_data(*other))


def test_the_wrong_user_key_fails_to_decrypt_and_bad_keys_are_refused() -> None:
    aad = associated_data("job-1", "j", "u1", None)
    sealed = seal(b"data", USER_KEY, 1, aad)
    with pytest.raises(DecryptionError):
        open_sealed(sealed, OTHER_KEY, aad)
    with pytest.raises(ValueError, match="32 bytes, not 16"):
        seal(b"data", bytes(16), 1, aad)
    malformed = sealed.model_copy(update={"nonce": "*not*base64*"})
    with pytest.raises(DecryptionError, match="nonce is not URL-safe base64"):
        open_sealed(malformed, USER_KEY, aad)


def test_json_helpers_carry_rich_values_as_json() -> None:
    aad = associated_data("job-1", "j", "u1", "t")
    value = {"when": dt.date(2026, 1, 2), "amount": decimal.Decimal("9.50"), "tags": ("a", "b")}
    assert open_json(seal_json(value, USER_KEY, 1, aad), USER_KEY, aad) == {
        "when": "2026-01-02",
        "amount": "9.50",
        "tags": ["a", "b"],
    }


def test_associated_data_encoding_is_unambiguous() -> None:
    assert bind("p", "a", "bc") != bind("p", "ab", "c")
    assert bind("p", "a", None) != bind("p", "a", "")
    assert bind("job", "x") != bind("artifact", "x")
    assert associated_data("1", "2", "3", None) != associated_data("1", "2", "3", "")


def test_base64_is_strict() -> None:
    assert b64decode(b64encode(b"\xff\xfe\x00")) == b"\xff\xfe\x00"
    assert b64decode("_-8=") == b"\xff\xef"  # padding accepted
    for bad in ("a+b/", "ab cd", "abcde"):
        with pytest.raises(ValueError, match="not URL-safe base64"):
            b64decode(bad)


# --- master key -------------------------------------------------------------------------


def test_master_key_wraps_bound_to_its_context() -> None:
    master = MasterKey.generate()
    blob = master.wrap(USER_KEY, b"tenant/user/1")
    assert USER_KEY not in blob
    assert master.unwrap(blob, b"tenant/user/1") == USER_KEY
    with pytest.raises(DecryptionError, match="does not open"):
        master.unwrap(blob, b"tenant/other/1")
    with pytest.raises(DecryptionError, match="does not open"):
        MasterKey.generate().unwrap(blob, b"tenant/user/1")
    assert "secret" in repr(master) and master.to_text() not in repr(master)


def test_master_key_from_env_and_file_with_clear_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    master = MasterKey.generate()
    monkeypatch.setenv("AMQP_JOBS_MASTER_KEY", master.to_text())
    loaded = MasterKey.from_env()
    assert loaded.unwrap(master.wrap(USER_KEY, b"c"), b"c") == USER_KEY
    path = tmp_path / "master.key"
    path.write_text(master.to_text() + "\n")
    assert MasterKey.from_file(path).to_text() == master.to_text()

    monkeypatch.delenv("AMQP_JOBS_MASTER_KEY")
    with pytest.raises(ConfigurationError, match="AMQP_JOBS_MASTER_KEY is not set"):
        MasterKey.from_env()
    monkeypatch.setenv("MY_KEY", b64encode(bytes(16)))
    with pytest.raises(ConfigurationError, match="MY_KEY decodes to 16 bytes"):
        MasterKey.from_env("MY_KEY")
    monkeypatch.setenv("MY_KEY", "not base64!")
    with pytest.raises(ConfigurationError, match="not URL-safe base64"):
        MasterKey.from_env("MY_KEY")
    with pytest.raises(ConfigurationError, match="cannot read the master key file"):
        MasterKey.from_file(tmp_path / "missing.key")
