"""UserContext: who a job runs for, as it travels inside the envelope.

On the wire a user is a plain JSON object (``Envelope.user``) that the routing layer
and the store read directly: ``user_id``, ``tenant``, ``tier`` and ``group`` are top-level
keys, and so are ``roles``, ``permissions`` and every custom attribute (routing rules match
on attributes such as ``user["region"]`` by name). Absent values are left out rather
than sent as ``null``: ``"tenant" in user`` then means the user has a tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

_FIELDS = ("user_id", "tenant", "roles", "permissions", "tier", "group")
_RESERVED = frozenset((*_FIELDS, "attributes"))


class UserContext(pydantic.BaseModel):
    """The user (and tenant) a job belongs to, with what routing and access checks need.

    ``user_id`` is ``""`` for a context built from an older plain dict without one (such
    as ``{"tier": "free"}``): enough to route by tier, but an anonymous user, so it gets
    no user key and no user storage. ``attributes`` are custom values (JSON-compatible);
    their names may not shadow the fields above.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    user_id: str
    tenant: str | None = None
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    tier: str | None = None
    group: str | None = None
    attributes: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("attributes")
    @classmethod
    def _attributes_do_not_shadow_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        clashes = sorted(_RESERVED.intersection(value))
        if clashes:
            raise ValueError(
                f"attribute name(s) {', '.join(map(repr, clashes))} are user context fields; "
                "set the field itself instead"
            )
        return value

    @property
    def anonymous(self) -> bool:
        """True when the context has no user id (routing attributes only)."""
        return not self.user_id

    def to_wire(self) -> dict[str, Any]:
        """The plain JSON object carried in ``Envelope.user`` (see the module docstring)."""
        wire: dict[str, Any] = {}
        if self.user_id:
            wire["user_id"] = self.user_id
        for name in ("tenant", "tier", "group"):
            value = getattr(self, name)
            if value is not None:
                wire[name] = value
        if self.roles:
            wire["roles"] = list(self.roles)
        if self.permissions:
            wire["permissions"] = list(self.permissions)
        wire.update(self.attributes)
        return wire

    @classmethod
    def from_wire(cls, value: Mapping[str, Any] | UserContext | None) -> UserContext | None:
        """Read a user from its wire form (or pass a ``UserContext`` or None through).

        Keys other than the fields become ``attributes``, so any plain dict an older
        caller passed keeps working; a missing ``user_id`` gives ``""`` (anonymous).
        A nested ``attributes`` object, as ``model_dump()`` writes it, is merged too.
        Raises ``ValueError`` (pydantic's) when a field has the wrong type.
        """
        if value is None or isinstance(value, UserContext):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"a user must be a mapping or a UserContext, not {type(value).__name__}"
            )
        fields: dict[str, Any] = {"user_id": ""}
        attributes: dict[str, Any] = {}
        for key, item in value.items():
            if key in _FIELDS:
                fields[key] = _as_tuple(item) if key in ("roles", "permissions") else item
            elif key == "attributes" and isinstance(item, Mapping):
                attributes.update(item)
            else:
                attributes[str(key)] = item
        if fields["user_id"] is None:
            fields["user_id"] = ""
        return cls(**fields, attributes=attributes)

    def has_permission(self, permission: str) -> bool:
        """Whether the user holds ``permission``.

        A held permission ending in ``*`` grants every permission starting with what
        precedes it: ``"reports:*"`` covers ``"reports:read"``, ``"*"`` covers all.
        """
        for held in self.permissions:
            if held == permission or (held.endswith("*") and permission.startswith(held[:-1])):
                return True
        return False

    def has_role(self, role: str) -> bool:
        """Whether the user has ``role``."""
        return role in self.roles


def _as_tuple(value: Any) -> Any:
    # One role given as a bare string means that role, not its characters.
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(value)
    return value  # let pydantic reject it with its own message
